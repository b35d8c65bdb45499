package machineapi

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"

	"github.com/pxejoin/pxejoin/deploy/crd"
	"github.com/pxejoin/pxejoin/lab/controlplane"
	"github.com/pxejoin/pxejoin/lab/testenv"
)

func TestMain(m *testing.M) { os.Exit(controlplane.Run(m)) }

// installed starts from the package's control plane with the CRD installed and Established.
func installed(t *testing.T) (*controlplane.ControlPlane, dynamic.Interface) {
	t.Helper()
	testenv.RequireRoot(t)
	cp := controlplane.Shared(t)
	dyn := dynamic.NewForConfigOrDie(cp.AdminConfig())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := crd.Install(ctx, dyn, crd.Machines, "pxejoin-test"); err != nil {
		t.Fatal(err)
	}
	return cp, dyn
}

// TestCRDValidation creates Machines through the real apiserver: valid ones are stored, invalid
// ones refused with the CRD's message.
func TestCRDValidation(t *testing.T) {
	_, dyn := installed(t)
	spec := func(kv ...any) map[string]any {
		s := map[string]any{"profile": "worker"}
		for i := 0; i < len(kv); i += 2 {
			s[kv[i].(string)] = kv[i+1]
		}
		return s
	}
	taint := func(effect string) []any {
		return []any{map[string]any{"key": "pxejoin.io/new", "effect": effect}}
	}
	tests := []struct {
		name    string
		spec    map[string]any
		wantErr string // "" for a valid Machine
	}{
		{"one MAC", spec("macs", []any{"52:54:00:aa:bb:01"}), ""},
		{"two MACs and a UUID", spec("macs", []any{"52:54:00:aa:bb:02", "52:54:00:aa:bb:03"}, "uuid", "4c4c4544-0042-3510-8052-b4c04f4b4d32"), ""},
		{"UUID only", spec("uuid", "4c4c4544-0042-3510-8052-b4c04f4b4d33"), ""},
		{"everything", spec("macs", []any{"52:54:00:aa:bb:04"}, "segment", "rack-1", "ipv4", "10.0.0.21",
			"labels", map[string]any{"rack": "r1"}, "taints", taint("NoSchedule"), "disabled", true), ""},
		{"upper-case MAC", spec("macs", []any{"52:54:00:AA:BB:05"}), "a MAC is six lower-case hex pairs"},
		{"dashed MAC", spec("macs", []any{"52-54-00-aa-bb-06"}), "a MAC is six lower-case hex pairs"},
		{"short MAC", spec("macs", []any{"52:54:00:aa:bb"}), "a MAC is six lower-case hex pairs"},
		{"MAC twice", spec("macs", []any{"52:54:00:aa:bb:07", "52:54:00:aa:bb:07"}), "Duplicate value"},
		{"upper-case UUID", spec("uuid", "4C4C4544-0042-3510-8052-B4C04F4B4D32"), "a UUID is lower-case 8-4-4-4-12 hex"},
		{"UUID without dashes", spec("uuid", "4c4c4544004235108052b4c04f4b4d32"), "a UUID is lower-case 8-4-4-4-12 hex"},
		{"no MAC, no UUID", spec(), "a Machine needs at least one MAC (spec.macs) or its SMBIOS UUID (spec.uuid)"},
		{"empty MAC list", spec("macs", []any{}), "a Machine needs at least one MAC (spec.macs) or its SMBIOS UUID (spec.uuid)"},
		{"IPv6 address", spec("macs", []any{"52:54:00:aa:bb:08"}, "ipv4", "fd00::1"), "ipv4 must be an IPv4 address like 10.0.0.21"},
		{"not an address", spec("macs", []any{"52:54:00:aa:bb:09"}, "ipv4", "10.0.0.256"), "ipv4 must be an IPv4 address like 10.0.0.21"},
		{"bad taint effect", spec("macs", []any{"52:54:00:aa:bb:0a"}, "taints", taint("NoWay")), `Unsupported value: "NoWay"`},
		{"no profile", map[string]any{"macs": []any{"52:54:00:aa:bb:0b"}}, "spec.profile: Required value"},
		{"disk by path", spec("macs", []any{"52:54:00:aa:bb:0c"}, "disk", map[string]any{"path": "/dev/disk/by-path/pci-0000:00:04.0", "policy": "wipe"}), ""},
		{"disk by size", spec("macs", []any{"52:54:00:aa:bb:0d"}, "disk", map[string]any{"minSizeGiB": int64(20)}), ""},
		{"disk by kernel name", spec("macs", []any{"52:54:00:aa:bb:0e"}, "disk", map[string]any{"path": "/dev/sda"}), "path must be a stable name"},
		{"disk with a quote", spec("macs", []any{"52:54:00:aa:bb:0f"}, "disk", map[string]any{"path": `/dev/disk/by-id/a"b`}), "path must be a stable name"},
		{"disk without path or size", spec("macs", []any{"52:54:00:aa:bb:10"}, "disk", map[string]any{"policy": "install"}), "a disk needs path"},
		{"disk policy", spec("macs", []any{"52:54:00:aa:bb:11"}, "disk", map[string]any{"minSizeGiB": int64(1), "policy": "always"}), `Unsupported value: "always"`},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := &unstructured.Unstructured{Object: map[string]any{"spec": tt.spec}}
			u.SetGroupVersionKind(GVK)
			u.SetName("crd-case-" + string(rune('a'+i)))
			_, err := dyn.Resource(GVR).Create(context.Background(), u, metav1.CreateOptions{})
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("a valid Machine was refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("an invalid Machine was stored; want %q", tt.wantErr)
			}
			if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("refused with %v, want Invalid with %q", err, tt.wantErr)
			}
		})
	}
}

// TestCRDRoundTrip stores a Machine made from the Go types, reads it back through the
// converter unchanged, and shows kubectl's short name and printer columns.
func TestCRDRoundTrip(t *testing.T) {
	cp, dyn := installed(t)
	ctx := context.Background()
	in := &Machine{
		ObjectMeta: metav1.ObjectMeta{Name: "roundtrip-1"},
		Spec: MachineSpec{MACs: []string{"52:54:00:cc:00:01"}, UUID: "4c4c4544-0042-3510-8052-b4c04f4b4d40", Profile: "worker",
			Segment: "rack-1", IPv4: "10.0.0.40", Labels: map[string]string{"rack": "r1"}},
	}
	u, err := ToUnstructured(in)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dyn.Resource(GVR).Create(ctx, u, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	now := metav1.NewTime(time.Now().Truncate(time.Second))
	status := map[string]any{"apiVersion": GVK.GroupVersion().String(), "kind": Kind, "metadata": map[string]any{"name": in.Name},
		"status": map[string]any{"phase": "join-file", "boot": int64(3), "lastEvent": "join file served", "nodeRef": map[string]any{"name": "roundtrip-1"},
			"conditions": []any{map[string]any{"type": ConditionConflict, "status": "False", "reason": "Unique", "message": "ok",
				"lastTransitionTime": now.UTC().Format(time.RFC3339)}}}}
	data, _ := (&unstructured.Unstructured{Object: status}).MarshalJSON()
	if _, err := dyn.Resource(GVR).Patch(ctx, in.Name, "application/apply-patch+yaml", data,
		metav1.PatchOptions{FieldManager: "pxejoin-test"}, "status"); err != nil {
		t.Fatal(err)
	}
	got, err := dyn.Resource(GVR).Get(ctx, in.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := FromUnstructured(got)
	if err != nil {
		t.Fatal(err)
	}
	if m.Spec.IPv4 != in.Spec.IPv4 || m.Spec.UUID != in.Spec.UUID || m.Spec.Labels["rack"] != "r1" || m.Status.Boot != 3 ||
		len(m.Status.Conditions) != 1 || m.Status.NodeRef == nil || m.Status.NodeRef.Name != "roundtrip-1" {
		t.Fatalf("read back %+v", m)
	}

	kubectl := filepath.Join(testenv.K8sBinDir(), "kubectl")
	out, err := exec.Command(kubectl, "--kubeconfig", cp.AdminKubeconfig(), "get", ShortName, in.Name).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl get %s: %v\n%s", ShortName, err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 2 || strings.Join(strings.Fields(lines[0]), " ") != "NAME NODE PROFILE PHASE BOOT LAST EVENT AGE" ||
		!strings.HasPrefix(strings.Join(strings.Fields(lines[1]), " "), "roundtrip-1 roundtrip-1 worker join-file 3 join file served ") {
		t.Fatalf("kubectl get %s:\n%s", ShortName, out)
	}
}

package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"

	"github.com/pxejoin/pxejoin/bootserver/machineapi"
	"github.com/pxejoin/pxejoin/deploy/crd"
	"github.com/pxejoin/pxejoin/lab/controlplane"
	"github.com/pxejoin/pxejoin/lab/testenv"
)

func TestMain(m *testing.M) { os.Exit(controlplane.Run(m)) }

func TestParseInventory(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       []string // fragments of the error; none for a valid file
	}{
		{"valid", `
machines:
  - {mac: 52-54-00-AA-BB-01, name: w1, profile: worker, labels: {rack: r1}, taints: [{key: a/b, effect: NoSchedule}]}
  - {macs: [52:54:00:aa:bb:02, 52:54:00:aa:bb:03], uuid: 4C4C4544-0042-3510-8052-B4C04F4B4D32, profile: worker, ipv4: 10.0.0.5}
  - {uuid: 4c4c4544-0042-3510-8052-b4c04f4b4d33, name: by-uuid, profile: gpu, segment: rack-2, disabled: true}
`, nil},
		{"a boot server configuration", `
interface: eth0
profiles: {worker: {kernel: /k}}
machines:
  - {mac: 52:54:00:aa:bb:01, profile: worker}
`, nil},
		{"bad MAC", "machines:\n  - {mac: 52:54:zz:aa:bb:01, profile: worker}\n", []string{"inv.yaml:2: machines[0]: mac:"}},
		{"bad UUID", "machines:\n  - {uuid: nope, name: x, profile: worker}\n", []string{"inv.yaml:2: machines[0]: uuid \"nope\" is not a UUID"}},
		{"no MAC, no UUID", "machines:\n  - {name: x, profile: worker}\n", []string{"machines[0]: a machine needs a mac (or macs) or a uuid"}},
		{"UUID only, no name", "machines:\n  - {uuid: 4c4c4544-0042-3510-8052-b4c04f4b4d33, profile: worker}\n", []string{"name: required"}},
		{"no profile", "machines:\n  - {mac: 52:54:00:aa:bb:01}\n", []string{"profile: required"}},
		{"duplicate MAC", "machines:\n  - {mac: 52:54:00:aa:bb:01, profile: w}\n  - {mac: 52:54:00:AA:BB:01, name: other, profile: w}\n",
			[]string{"inv.yaml:3: machines[1]: MAC 52:54:00:aa:bb:01 is also machines[0]"}},
		{"bad ipv4", "machines:\n  - {mac: 52:54:00:aa:bb:01, profile: w, ipv4: fd00::1}\n", []string{"ipv4 \"fd00::1\" is not an IPv4 address"}},
		{"bad taint", "machines:\n  - {mac: 52:54:00:aa:bb:01, profile: w, taints: [{key: a, effect: Never}]}\n", []string{"effect \"Never\" is not NoSchedule"}},
		{"unknown field", "machines:\n  - {mac: 52:54:00:aa:bb:01, profile: w, rack: 3}\n", []string{"inv.yaml:2: machines[0]:", "field rack not found"}},
		{"bad name", "machines:\n  - {mac: 52:54:00:aa:bb:01, profile: w, name: Bad_Name}\n", []string{"name \"Bad_Name\" is not a valid node name"}},
		{"two bad entries, both reported", "machines:\n  - {mac: x, profile: w}\n  - {mac: y, profile: w}\n", []string{"inv.yaml:2:", "inv.yaml:3:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ms, err := parseInventory("inv.yaml", []byte(tt.yaml), "")
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted %d machines, want an error with %q", len(ms), tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
	ms, err := parseInventory("inv.yaml", []byte("machines:\n  - {mac: 52-54-00-AA-BB-01, profile: worker}\n"), "rack-1")
	if err != nil {
		t.Fatal(err)
	}
	if m := ms[0]; m.Name != "node-525400aabb01" || m.Spec.MACs[0] != "52:54:00:aa:bb:01" || m.Spec.Segment != "rack-1" {
		t.Errorf("got %s %v %q, want the name from the MAC, the MAC's canonical form and --segment", m.Name, m.Spec.MACs, m.Spec.Segment)
	}
}

// TestImport writes an inventory into Machines through the real apiserver: created, then
// unchanged on a second run, changed when an entry changes; a bad file writes nothing.
func TestImport(t *testing.T) {
	testenv.RequireRoot(t)
	cp := controlplane.Shared(t)
	dyn := dynamic.NewForConfigOrDie(cp.AdminConfig())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := crd.Install(ctx, dyn, crd.Machines, "pxejoin-test"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	run := func(body string) (int, string, string) {
		t.Helper()
		f := filepath.Join(dir, "inv.yaml")
		if err := os.WriteFile(f, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		var out, errOut bytes.Buffer
		code := importCmd([]string{"--kubeconfig", cp.AdminKubeconfig(), f}, &out, &errOut)
		return code, out.String(), errOut.String()
	}
	inv := `machines:
  - {mac: 52:54:00:77:00:01, name: imp-1, profile: worker, labels: {rack: r1}}
  - {uuid: 4c4c4544-0042-3510-8052-b4c04f4b4d77, name: imp-2, profile: worker, ipv4: 10.0.0.77}
`
	code, out, errOut := run(inv)
	if code != 0 || !strings.Contains(out, "machine imp-1 created") || !strings.Contains(out, "machine imp-2 created") {
		t.Fatalf("first import: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = run(inv)
	if code != 0 || !strings.Contains(out, "2 machines: 0 created, 0 changed, 2 unchanged") {
		t.Fatalf("second import: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = run(strings.Replace(inv, "rack: r1", "rack: r2", 1))
	if code != 0 || !strings.Contains(out, "machine imp-1 changed") || !strings.Contains(out, "machine imp-2 unchanged") {
		t.Fatalf("changed import: exit %d\n%s%s", code, out, errOut)
	}
	u, err := dyn.Resource(machineapi.GVR).Get(ctx, "imp-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := machineapi.FromUnstructured(u)
	if err != nil {
		t.Fatal(err)
	}
	if m.Spec.Labels["rack"] != "r2" || m.Spec.MACs[0] != "52:54:00:77:00:01" || m.Spec.Profile != "worker" {
		t.Errorf("imp-1's spec %+v", m.Spec)
	}
	code, out, errOut = run("machines:\n  - {mac: 52:54:00:77:00:03, name: imp-3, profile: worker}\n  - {mac: bad, name: imp-4, profile: worker}\n")
	if code != 2 || !strings.Contains(errOut, "inv.yaml:3: machines[1]: mac:") {
		t.Fatalf("bad file: exit %d\n%s%s", code, out, errOut)
	}
	if _, err := dyn.Resource(machineapi.GVR).Get(ctx, "imp-3", metav1.GetOptions{}); err == nil {
		t.Error("a bad file wrote its good entries")
	}
}

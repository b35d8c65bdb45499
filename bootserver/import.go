package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/bootserver/inventory"
	"github.com/pxejoin/pxejoin/bootserver/machineapi"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// importFieldManager owns the spec fields `bootserver import` writes.
const importFieldManager = "pxejoin-import"

// importEntry is one machine of an inventory file: the configuration's machines: entries (mac,
// uuid, name, profile, labels) and what only a Machine holds.
type importEntry struct {
	MAC      string            `yaml:"mac"`
	MACs     []string          `yaml:"macs"`
	UUID     string            `yaml:"uuid"`
	Name     string            `yaml:"name"`
	Profile  string            `yaml:"profile"`
	Labels   map[string]string `yaml:"labels"`
	Segment  string            `yaml:"segment"`
	IPv4     string            `yaml:"ipv4"`
	Taints   []importTaint     `yaml:"taints"`
	Disabled bool              `yaml:"disabled"`
}

type importTaint struct {
	Key    string `yaml:"key"`
	Value  string `yaml:"value"`
	Effect string `yaml:"effect"`
}

// importCmd writes the machines: list of a YAML file (a boot server configuration works) into
// Machine objects by server-side apply: idempotent, it prints what it created or changed. A bad
// entry refuses the whole file, with its line, and nothing is written.
func importCmd(args []string, out, errOut io.Writer) int {
	fs := flag.NewFlagSet("bootserver import", flag.ContinueOnError)
	fs.SetOutput(errOut)
	kubeconfig := fs.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig allowed to get and patch machines.pxejoin.io")
	segment := fs.String("segment", "", "spec.segment of the machines that name none")
	fs.Usage = func() {
		fmt.Fprintln(errOut, "usage: bootserver import [--kubeconfig KC] [--segment S] FILE")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 || *kubeconfig == "" {
		fs.Usage()
		return 2
	}
	file := fs.Arg(0)
	data, err := os.ReadFile(file)
	if err != nil {
		fmt.Fprintln(errOut, "bootserver import:", err)
		return 2
	}
	ms, err := parseInventory(file, data, *segment)
	if err != nil {
		fmt.Fprintf(errOut, "bootserver import: nothing written; fix these machines:\n%v\n", err)
		return 2
	}
	rc, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fmt.Fprintf(errOut, "bootserver import: kubeconfig %s: %v\n", *kubeconfig, err)
		return 1
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		fmt.Fprintln(errOut, "bootserver import:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := applyMachines(ctx, dyn, ms, out); err != nil {
		fmt.Fprintln(errOut, "bootserver import:", err)
		return 1
	}
	return 0
}

// parseInventory reads the machines: list of data; errors name file and line.
func parseInventory(file string, data []byte, segment string) ([]*machineapi.Machine, error) {
	var doc struct {
		Machines []yaml.Node `yaml:"machines"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if len(doc.Machines) == 0 {
		return nil, fmt.Errorf("%s: no machines: list", file)
	}
	var errs []error
	fail := func(n *yaml.Node, i int, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s:%d: machines[%d]: %s", file, n.Line, i, fmt.Sprintf(format, args...)))
	}
	seen := map[string]int{} // "name x" / "MAC y" / "UUID z" → entry index
	claim := func(n *yaml.Node, i int, what string) {
		if j, dup := seen[what]; dup {
			fail(n, i, "%s is also machines[%d]", what, j)
		}
		seen[what] = i
	}
	var out []*machineapi.Machine
	for i := range doc.Machines {
		n := &doc.Machines[i]
		var e importEntry
		dec := yaml.NewDecoder(bytes.NewReader(mustYAML(n)))
		dec.KnownFields(true)
		if err := dec.Decode(&e); err != nil {
			fail(n, i, "%v", strings.TrimPrefix(err.Error(), "yaml: "))
			continue
		}
		m := &machineapi.Machine{Spec: machineapi.MachineSpec{Profile: e.Profile, UUID: e.UUID, Segment: e.Segment, IPv4: e.IPv4,
			Labels: e.Labels, Disabled: e.Disabled}}
		m.SetGroupVersionKind(machineapi.GVK)
		var macs []hwaddr.MAC
		for _, s := range append([]string{e.MAC}, e.MACs...) {
			if s == "" {
				continue
			}
			mac, err := hwaddr.Parse(s)
			if err != nil {
				fail(n, i, "mac: %v", err)
				continue
			}
			if !slices.Contains(macs, mac) {
				macs = append(macs, mac)
				m.Spec.MACs = append(m.Spec.MACs, mac.String())
				claim(n, i, "MAC "+mac.String())
			}
		}
		if e.UUID != "" {
			u, ok := config.CanonicalUUID(e.UUID)
			if !ok {
				fail(n, i, "uuid %q is not a UUID (want 8-4-4-4-12 hex digits, as dmidecode -s system-uuid prints)", e.UUID)
			}
			m.Spec.UUID = u
			claim(n, i, "UUID "+u)
		}
		if len(macs) == 0 && e.UUID == "" {
			fail(n, i, "a machine needs a mac (or macs) or a uuid")
		}
		m.Name = e.Name
		if m.Name == "" && len(macs) > 0 {
			m.Name = inventory.NodeName(macs[0])
		}
		if m.Name == "" {
			fail(n, i, "name: required for a machine known by its UUID only (it is the node name)")
		} else if es := validation.IsDNS1123Subdomain(m.Name); len(es) > 0 {
			fail(n, i, "name %q is not a valid node name: %s", m.Name, strings.Join(es, "; "))
		} else {
			claim(n, i, "name "+m.Name)
		}
		if e.Profile == "" {
			fail(n, i, "profile: required (a profile of the boot servers' configuration)")
		} else if !config.ProfileNameRE.MatchString(e.Profile) {
			fail(n, i, "profile %q is not a profile name", e.Profile)
		}
		if m.Spec.Segment == "" {
			m.Spec.Segment = segment
		}
		if s := m.Spec.Segment; s != "" && len(validation.IsDNS1123Label(s)) > 0 {
			fail(n, i, "segment %q is not a segment name (lower-case letters, digits and '-')", s)
		}
		if e.IPv4 != "" {
			if a, err := netip.ParseAddr(e.IPv4); err != nil || !a.Is4() {
				fail(n, i, "ipv4 %q is not an IPv4 address like 10.0.0.21", e.IPv4)
			}
		}
		for _, k := range slices.Sorted(maps.Keys(e.Labels)) {
			if es := validation.IsQualifiedName(k); len(es) > 0 {
				fail(n, i, "label key %q: %s", k, strings.Join(es, "; "))
			}
			if es := validation.IsValidLabelValue(e.Labels[k]); len(es) > 0 {
				fail(n, i, "label value %q: %s", e.Labels[k], strings.Join(es, "; "))
			}
		}
		for _, t := range e.Taints {
			switch corev1.TaintEffect(t.Effect) {
			case corev1.TaintEffectNoSchedule, corev1.TaintEffectPreferNoSchedule, corev1.TaintEffectNoExecute:
			default:
				fail(n, i, "taint %s: effect %q is not NoSchedule, PreferNoSchedule or NoExecute", t.Key, t.Effect)
			}
			if es := validation.IsQualifiedName(t.Key); len(es) > 0 {
				fail(n, i, "taint key %q: %s", t.Key, strings.Join(es, "; "))
			}
			m.Spec.Taints = append(m.Spec.Taints, corev1.Taint{Key: t.Key, Value: t.Value, Effect: corev1.TaintEffect(t.Effect)})
		}
		out = append(out, m)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

func mustYAML(n *yaml.Node) []byte {
	b, err := yaml.Marshal(n)
	if err != nil {
		panic(err) // a node yaml.Unmarshal produced always marshals
	}
	return b
}

// applyMachines applies each Machine's spec and prints whether it was created, changed or
// unchanged.
func applyMachines(ctx context.Context, dyn dynamic.Interface, ms []*machineapi.Machine, out io.Writer) error {
	r := dyn.Resource(machineapi.GVR)
	counts := map[string]int{}
	for _, m := range ms {
		before, err := r.Get(ctx, m.Name, metav1.GetOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return importError(m.Name, err)
		}
		if apierrors.IsNotFound(err) {
			before = nil
		}
		data, err := applyBody(m)
		if err != nil {
			return err
		}
		force := true
		after, err := r.Patch(ctx, m.Name, types.ApplyPatchType, data, metav1.PatchOptions{FieldManager: importFieldManager, Force: &force})
		if err != nil {
			return importError(m.Name, err)
		}
		what := "created"
		switch {
		case before == nil:
		case before.GetResourceVersion() == after.GetResourceVersion():
			what = "unchanged"
		default:
			what = "changed"
		}
		counts[what]++
		fmt.Fprintf(out, "machine %s %s\n", m.Name, what)
	}
	fmt.Fprintf(out, "%d machines: %d created, %d changed, %d unchanged\n", len(ms), counts["created"], counts["changed"], counts["unchanged"])
	return nil
}

// applyBody is the apply patch of m: apiVersion, kind, name and spec only.
func applyBody(m *machineapi.Machine) ([]byte, error) {
	u, err := machineapi.ToUnstructured(m)
	if err != nil {
		return nil, err
	}
	spec, _, _ := unstructured.NestedMap(u.Object, "spec")
	body := &unstructured.Unstructured{Object: map[string]any{"spec": spec}}
	body.SetGroupVersionKind(machineapi.GVK)
	body.SetName(m.Name)
	return body.MarshalJSON()
}

func importError(name string, err error) error {
	if meta.IsNoMatchError(err) || (apierrors.IsNotFound(err) && strings.Contains(err.Error(), "the server could not find the requested resource")) {
		return fmt.Errorf("machine %s: %s", name, inventory.CRDHint)
	}
	return fmt.Errorf("machine %s: %w (machines before it were written; run the import again once fixed)", name, err)
}

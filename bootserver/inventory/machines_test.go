package inventory

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pxejoin/pxejoin/bootserver/machineapi"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

func machine(name string, spec machineapi.MachineSpec) *machineapi.Machine {
	if spec.Profile == "" {
		spec.Profile = "worker"
	}
	return &machineapi.Machine{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec}
}

func TestFromMachines(t *testing.T) {
	const (
		mac1, mac2, mac3 = "52:54:00:00:01:01", "52:54:00:00:01:02", "52:54:00:00:01:03"
		uuid1            = "4c4c4544-0000-1000-8000-000000000101"
	)
	taint := corev1.Taint{Key: "pxejoin.io/new", Effect: corev1.TaintEffectNoSchedule}
	tests := []struct {
		name     string
		segment  string
		unknown  string // unknown machines' profile
		machines []*machineapi.Machine
		mac      string // looked up
		uuid     string
		wantNode string // "" for no answer
		wantConf map[string]string
		states   map[string]int
	}{
		{name: "by MAC, labels and taints", mac: mac1, wantNode: "m1", states: map[string]int{StateServed: 1},
			machines: []*machineapi.Machine{machine("m1", machineapi.MachineSpec{MACs: []string{mac1}, Labels: map[string]string{"rack": "r1"}, Taints: []corev1.Taint{taint}})}},
		{name: "second MAC", mac: mac2, wantNode: "m1", states: map[string]int{StateServed: 1},
			machines: []*machineapi.Machine{machine("m1", machineapi.MachineSpec{MACs: []string{mac1, mac2}})}},
		{name: "by UUID", mac: mac3, uuid: strings.ToUpper(uuid1), wantNode: "m1", states: map[string]int{StateServed: 1},
			machines: []*machineapi.Machine{machine("m1", machineapi.MachineSpec{UUID: uuid1})}},
		{name: "disabled: silent even with an unknown profile", unknown: "worker", mac: mac1, states: map[string]int{StateDisabled: 1},
			machines: []*machineapi.Machine{machine("m1", machineapi.MachineSpec{MACs: []string{mac1}, Disabled: true})}},
		{name: "other segment: ignored", segment: "a", mac: mac1, states: map[string]int{StateOtherSegment: 1},
			machines: []*machineapi.Machine{machine("m1", machineapi.MachineSpec{MACs: []string{mac1}, Segment: "b"})}},
		{name: "own segment", segment: "a", mac: mac1, wantNode: "m1", states: map[string]int{StateServed: 1},
			machines: []*machineapi.Machine{machine("m1", machineapi.MachineSpec{MACs: []string{mac1}, Segment: "a"})}},
		{name: "a segment, server without one", mac: mac1, states: map[string]int{StateOtherSegment: 1},
			machines: []*machineapi.Machine{machine("m1", machineapi.MachineSpec{MACs: []string{mac1}, Segment: "a"})}},
		{name: "no segment: every server", segment: "a", mac: mac1, wantNode: "m1", states: map[string]int{StateServed: 1},
			machines: []*machineapi.Machine{machine("m1", machineapi.MachineSpec{MACs: []string{mac1}})}},
		{name: "MAC claimed twice: neither answered", unknown: "worker", mac: mac1, states: map[string]int{StateConflict: 2},
			machines: []*machineapi.Machine{
				machine("m1", machineapi.MachineSpec{MACs: []string{mac1}}),
				machine("m2", machineapi.MachineSpec{MACs: []string{mac2, mac1}}),
			},
			wantConf: map[string]string{"m1": "MAC " + mac1 + " is also claimed by Machine m2", "m2": "MAC " + mac1 + " is also claimed by Machine m1"}},
		{name: "MAC claimed twice: the other MAC is silent too", mac: mac2, states: map[string]int{StateConflict: 2},
			machines: []*machineapi.Machine{
				machine("m1", machineapi.MachineSpec{MACs: []string{mac1}}),
				machine("m2", machineapi.MachineSpec{MACs: []string{mac2, mac1}}),
			},
			wantConf: map[string]string{"m1": "MAC " + mac1 + " is also claimed by Machine m2", "m2": "MAC " + mac1 + " is also claimed by Machine m1"}},
		{name: "UUID claimed twice", mac: mac3, uuid: uuid1, states: map[string]int{StateConflict: 2},
			machines: []*machineapi.Machine{
				machine("m1", machineapi.MachineSpec{UUID: uuid1}),
				machine("m2", machineapi.MachineSpec{MACs: []string{mac2}, UUID: uuid1}),
			},
			wantConf: map[string]string{"m1": "UUID " + uuid1 + " is also claimed by Machine m2", "m2": "UUID " + uuid1 + " is also claimed by Machine m1"}},
		{name: "ipv4 reserved twice", mac: mac1, states: map[string]int{StateConflict: 2},
			machines: []*machineapi.Machine{
				machine("m1", machineapi.MachineSpec{MACs: []string{mac1}, IPv4: "10.0.0.5"}),
				machine("m2", machineapi.MachineSpec{MACs: []string{mac2}, IPv4: "10.0.0.5"}),
			},
			wantConf: map[string]string{"m1": "ipv4 10.0.0.5 is also claimed by Machine m2", "m2": "ipv4 10.0.0.5 is also claimed by Machine m1"}},
		{name: "the same MAC in another segment is no conflict", segment: "a", mac: mac1, wantNode: "m1", states: map[string]int{StateServed: 1, StateOtherSegment: 1},
			machines: []*machineapi.Machine{
				machine("m1", machineapi.MachineSpec{MACs: []string{mac1}, Segment: "a"}),
				machine("m2", machineapi.MachineSpec{MACs: []string{mac1}, Segment: "b"}),
			}},
		{name: "the same MAC without a segment conflicts with every segment", segment: "b", mac: mac1, states: map[string]int{StateConflict: 1, StateOtherSegment: 1},
			machines: []*machineapi.Machine{
				machine("m1", machineapi.MachineSpec{MACs: []string{mac1}, Segment: "a"}),
				machine("m2", machineapi.MachineSpec{MACs: []string{mac1}}),
			},
			wantConf: map[string]string{"m1": "MAC " + mac1 + " is also claimed by Machine m2", "m2": "MAC " + mac1 + " is also claimed by Machine m1"}},
		{name: "profile this server lacks: silent", unknown: "worker", mac: mac1, states: map[string]int{StateInvalid: 1},
			machines: []*machineapi.Machine{machine("m1", machineapi.MachineSpec{MACs: []string{mac1}, Profile: "gpu"})}},
		{name: "bad label: silent", mac: mac1, states: map[string]int{StateInvalid: 1},
			machines: []*machineapi.Machine{machine("m1", machineapi.MachineSpec{MACs: []string{mac1}, Labels: map[string]string{"bad key!": "x"}})}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := testConfig(tt.unknown)
			c.Machines = nil
			delete(c.Profiles, "gpu")
			base, err := withProfiles(c)
			if err != nil {
				t.Fatal(err)
			}
			b := FromMachines(base, tt.segment, tt.machines)
			mac, _ := hwaddr.Parse(tt.mac)
			a, ok := b.Inventory.Lookup(mac, tt.uuid)
			switch {
			case tt.wantNode == "" && ok:
				t.Errorf("answered as %q (known %v), want silence", a.NodeName, a.Known)
			case tt.wantNode != "" && (!ok || a.NodeName != tt.wantNode || !a.Known):
				t.Errorf("got %q ok=%v known=%v, want %q", a.NodeName, ok, a.Known, tt.wantNode)
			}
			if tt.wantNode == "" && !b.Inventory.Silent(mac, tt.uuid) && b.States[StateOtherSegment] == 0 {
				t.Error("not Silent: DHCP would still give an address")
			}
			if tt.wantConf == nil {
				tt.wantConf = map[string]string{}
			}
			if !maps.Equal(b.Conflicts, tt.wantConf) {
				t.Errorf("conflicts %v, want %v", b.Conflicts, tt.wantConf)
			}
			if !maps.Equal(b.States, tt.states) {
				t.Errorf("states %v, want %v", b.States, tt.states)
			}
			if ok && tt.name == "by MAC, labels and taints" && (a.Labels["rack"] != "r1" || !slices.Equal(a.Taints, []corev1.Taint{taint})) {
				t.Errorf("labels %v taints %v", a.Labels, a.Taints)
			}
		})
	}
}

func TestReservations(t *testing.T) {
	c := testConfig("")
	c.Machines = nil
	base, err := withProfiles(c)
	if err != nil {
		t.Fatal(err)
	}
	b := FromMachines(base, "", []*machineapi.Machine{
		machine("m1", machineapi.MachineSpec{MACs: []string{"52:54:00:00:01:01", "52:54:00:00:01:02"}, IPv4: "10.0.0.5"}),
		machine("m2", machineapi.MachineSpec{MACs: []string{"52:54:00:00:01:03"}}),
		machine("m3", machineapi.MachineSpec{MACs: []string{"52:54:00:00:01:04"}, IPv4: "10.0.0.6", Disabled: true}),
		claimed(machine("m4", machineapi.MachineSpec{MACs: []string{"52:54:00:00:01:05"}}), "10.0.0.7"),
		claimed(machine("m5", machineapi.MachineSpec{MACs: []string{"52:54:00:00:01:06"}, IPv4: "10.0.0.8"}), "10.0.0.9"),
	})
	got := b.Inventory.Reservations()
	want := map[hwaddr.MAC]string{{0x52, 0x54, 0, 0, 1, 1}: "10.0.0.5", {0x52, 0x54, 0, 0, 1, 5}: "10.0.0.7", {0x52, 0x54, 0, 0, 1, 6}: "10.0.0.8"}
	if len(got) != len(want) {
		t.Errorf("reservations %v, want %v", got, want)
	}
	for mac, ip := range want {
		if got[mac].String() != ip {
			t.Errorf("%v: reservation %v, want %v (spec.ipv4 first, then status.claimedIPv4)", mac, got[mac], ip)
		}
	}
	a, _ := b.Inventory.Lookup(hwaddr.MAC{0x52, 0x54, 0, 0, 1, 5}, "")
	if a.IPv4.String() != "10.0.0.7" || !a.Claimed {
		t.Errorf("m4: %v claimed %v", a.IPv4, a.Claimed)
	}
}

func claimed(m *machineapi.Machine, ip string) *machineapi.Machine {
	m.Status.ClaimedIPv4 = ip
	return m
}

// BenchmarkFromMachines builds a snapshot of 1,000 Machines: what every Machine change costs the
// Kubernetes source.
func BenchmarkFromMachines(b *testing.B) {
	c := testConfig("")
	c.Machines = nil
	base, err := withProfiles(c)
	if err != nil {
		b.Fatal(err)
	}
	ms := make([]*machineapi.Machine, 1000)
	for i := range ms {
		ms[i] = machine(fmt.Sprintf("m%04d", i), machineapi.MachineSpec{MACs: []string{fmt.Sprintf("52:54:00:00:%02x:%02x", i>>8, i&0xff)},
			Labels: map[string]string{"rack": "r1"}, IPv4: fmt.Sprintf("10.1.%d.%d", i/250, i%250+1)})
	}
	b.ReportAllocs()
	for b.Loop() {
		if got := FromMachines(base, "", ms); got.States[StateServed] != len(ms) {
			b.Fatalf("states %v", got.States)
		}
	}
}

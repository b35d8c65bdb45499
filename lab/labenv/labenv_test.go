package labenv

import (
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

func TestBootServerConfig(t *testing.T) {
	b := &BootServer{Interface: "br0", Addr: "10.77.42.1", Dir: "/x", Kubeconfig: "/cp/admin.conf",
		Image:    &Image{Kernel: "/i/vmlinuz", Initrd: "/i/initramfs.cpio.zst", Root: "/i/root.squashfs"},
		Machines: map[string]string{"52:54:00:77:2a:01": "node-1"}, Cmdline: "quiet"}
	var c struct {
		Interface string `json:"interface"`
		ServerURL string `json:"serverURL"`
		DHCP      struct {
			Mode string `json:"mode"`
			Pool struct{ Start, End, Router string }
		} `json:"dhcp"`
		Profiles map[string]struct {
			Kernel    string   `json:"kernel"`
			Initrds   []string `json:"initrds"`
			RootImage string   `json:"rootImage"`
			Cmdline   string   `json:"cmdline"`
		} `json:"profiles"`
		Machines []struct{ MAC, Name, Profile string } `json:"machines"`
	}
	if err := yaml.Unmarshal([]byte(b.config()), &c); err != nil {
		t.Fatalf("%v\n%s", err, b.config())
	}
	p := c.Profiles["node"]
	switch {
	case c.Interface != "br0" || c.ServerURL != "http://10.77.42.1:8080" || c.DHCP.Mode != "full":
		t.Errorf("server: %+v", c)
	case c.DHCP.Pool.Start != "10.77.42.100" || c.DHCP.Pool.End != "10.77.42.200" || c.DHCP.Pool.Router != "10.77.42.1":
		t.Errorf("pool: %+v", c.DHCP.Pool)
	case p.Kernel != "/i/vmlinuz" || len(p.Initrds) != 1 || p.RootImage != "/i/root.squashfs":
		t.Errorf("profile: %+v", p)
	case !strings.Contains(p.Cmdline, "pxejoin.url={{.JoinURL}}") || !strings.Contains(p.Cmdline, "pxejoin.image={{.RootImageURL}}") ||
		!strings.HasSuffix(p.Cmdline, "quiet"):
		t.Errorf("cmdline: %q", p.Cmdline)
	case len(c.Machines) != 1 || c.Machines[0].MAC != "52:54:00:77:2a:01" || c.Machines[0].Name != "node-1":
		t.Errorf("machines: %+v", c.Machines)
	}
}

func TestFormatTimeline(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	got := FormatTimeline(t0, Machine{MAC: hwaddr.MAC{0x52, 0x54, 0, 0, 0, 1}, NodeName: "n", Boot: 1, Phases: []MachinePhase{
		{Phase: "dhcp", State: "done", Source: "dhcp", End: t0.Add(2500 * time.Millisecond)},
		{Phase: "join", State: "error", Source: "agent", Start: t0.Add(10 * time.Second), Error: "pin mismatch"},
	}})
	for _, w := range []string{"52:54:00:00:00:01 (n), boot 1", "2.50s dhcp", "10.00s join", "error: pin mismatch"} {
		if !strings.Contains(got, w) {
			t.Errorf("missing %q in\n%s", w, got)
		}
	}
}

func TestPersistentProfileConfig(t *testing.T) {
	b := &BootServer{Interface: "br0", Addr: "10.77.42.1", Dir: "/x", Kubeconfig: "/cp/admin.conf",
		Image:    &Image{Kernel: "/i/vmlinuz", Initrd: "/i/initramfs.cpio.zst", Root: "/i/root.squashfs"},
		Machines: map[string]string{"52:54:00:77:2a:01": "node-1"}}
	var c struct {
		Profiles map[string]struct {
			Disk *struct{ Path string } `json:"disk"`
		} `json:"profiles"`
	}
	for _, disk := range []string{"", "/dev/disk/by-id/virtio-state"} {
		b.Disk = disk
		if err := yaml.Unmarshal([]byte(b.config()), &c); err != nil {
			t.Fatalf("%v\n%s", err, b.config())
		}
		got := c.Profiles["node"].Disk
		if (disk == "") != (got == nil) || (got != nil && got.Path != disk) {
			t.Errorf("Disk %q: profile's disk %+v", disk, got)
		}
	}
}

func TestCompareTimelines(t *testing.T) {
	t0, t1 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 1, 1, 1, 0, 0, 0, time.UTC)
	first := Machine{Boot: 1, Phases: []MachinePhase{
		{Phase: "dhcp", State: "done", End: t0.Add(2 * time.Second)},
		{Phase: "join", State: "done", End: t0.Add(30 * time.Second)},
		{Phase: "node-ready", State: "done", End: t0.Add(60 * time.Second)},
	}}
	second := Machine{Boot: 2, Phases: []MachinePhase{
		{Phase: "dhcp", State: "done", End: t1.Add(3 * time.Second)},
		{Phase: "resume", State: "done", End: t1.Add(20 * time.Second)},
		{Phase: "node-ready", State: "done", End: t1.Add(40 * time.Second)},
	}}
	got := CompareTimelines([]Boot{{"boot 1", t0, first}, {"boot 2", t1, second}})
	lines := strings.Split(strings.TrimSpace(got), "\n")
	want := [][]string{{"phase", "boot 1", "boot 2"}, {"dhcp", "2.0s done", "3.0s done"}, {"resume", "-", "20.0s done"},
		{"join", "30.0s done", "-"}, {"node-ready", "60.0s done", "40.0s done"}}
	if len(lines) != len(want) {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(want), got)
	}
	for i, w := range want {
		fields := strings.Join(strings.Fields(lines[i]), " ")
		for _, s := range w {
			if !strings.Contains(fields, s) {
				t.Errorf("line %d %q lacks %q", i, lines[i], s)
			}
		}
	}
}

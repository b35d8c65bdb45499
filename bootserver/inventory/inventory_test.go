package inventory

import (
	"testing"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

func testConfig(unknown string) *config.Config {
	return &config.Config{
		Unknown: config.Unknown{Profile: unknown},
		Profiles: map[string]config.Profile{
			"worker": {Kernel: "/srv/vmlinuz", Initrds: []string{"/srv/initramfs.cpio.gz"}, Cmdline: "url={{.JoinURL}}"},
			"gpu":    {Kernel: "/srv/gpu/vmlinuz", Initrds: []string{"/srv/gpu/initrd.img"}, RootImage: "http://images/gpu.squashfs"},
		},
		Machines: []config.Machine{
			{MAC: hwaddr.MAC{0x52, 0x54, 0, 0, 0, 1}, Name: "worker-1", Profile: "worker", Labels: map[string]string{"rack": "r1"}},
			{UUID: "4c4c4544-0000-1000-8000-000000000001", Name: "gpu-1", Profile: "gpu"},
			{MAC: hwaddr.MAC{0x52, 0x54, 0, 0, 0, 3}, UUID: "4c4c4544-0000-1000-8000-000000000003", Profile: "worker"},
		},
	}
}

func TestLookup(t *testing.T) {
	tests := []struct {
		name, unknown, mac, uuid string
		wantOK, wantKnown        bool
		wantNode, wantProfile    string
	}{
		{"by MAC", "", "52:54:00:00:00:01", "", true, true, "worker-1", "worker"},
		{"by MAC, other spelling", "", "52-54-00-00-00-01", "", true, true, "worker-1", "worker"},
		{"by MAC, upper case", "", "52:54:00:00:00:01", "", true, true, "worker-1", "worker"},
		{"by UUID", "", "aa:bb:cc:dd:ee:ff", "4C4C4544-0000-1000-8000-000000000001", true, true, "gpu-1", "gpu"},
		{"MAC wins over UUID", "", "52:54:00:00:00:01", "4c4c4544-0000-1000-8000-000000000001", true, true, "worker-1", "worker"},
		{"no name: derived from the MAC", "", "52:54:00:00:00:03", "", true, true, "node-525400000003", "worker"},
		{"unknown, no default", "", "52:54:00:00:00:99", "", false, false, "", ""},
		{"unknown, bad UUID", "", "52:54:00:00:00:99", "not-a-uuid", false, false, "", ""},
		{"unknown, default profile", "worker", "52:54:00:00:00:99", "", true, false, "node-525400000099", "worker"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inv, err := New(testConfig(tt.unknown))
			if err != nil {
				t.Fatal(err)
			}
			mac, err := hwaddr.Parse(tt.mac)
			if err != nil {
				t.Fatal(err)
			}
			a, ok := inv.Lookup(mac, tt.uuid)
			if ok != tt.wantOK || a.Known != tt.wantKnown {
				t.Fatalf("ok=%v known=%v, want %v %v", ok, a.Known, tt.wantOK, tt.wantKnown)
			}
			if !ok {
				return
			}
			if a.NodeName != tt.wantNode || a.Profile.Name != tt.wantProfile {
				t.Errorf("got node %q profile %q, want %q %q", a.NodeName, a.Profile.Name, tt.wantNode, tt.wantProfile)
			}
		})
	}
}

func TestFiles(t *testing.T) {
	inv, err := New(testConfig(""))
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		"/images/worker/vmlinuz":           "/srv/vmlinuz",
		"/images/worker/initramfs.cpio.gz": "/srv/initramfs.cpio.gz",
		"/images/gpu/initrd.img":           "/srv/gpu/initrd.img",
	} {
		if f, ok := inv.File(path); !ok || f.Path != want {
			t.Errorf("File(%s) = %v %v, want %s", path, f, ok, want)
		}
	}
	if _, ok := inv.File("/images/gpu/gpu.squashfs"); ok {
		t.Error("a remote root image must not be served locally")
	}
	if _, ok := inv.File("/images/worker/../../etc/passwd"); ok {
		t.Error("only profile files are served")
	}
}

func TestSMBIOSUUID(t *testing.T) {
	b := []byte{0x44, 0x45, 0x4c, 0x4c, 0x00, 0x00, 0x00, 0x10, 0x80, 0x00, 0, 0, 0, 0, 0, 1}
	if got, want := SMBIOSUUID(append([]byte{0}, b...)), "4c4c4544-0000-1000-8000-000000000001"; got != want {
		t.Errorf("got %s want %s", got, want)
	}
	if SMBIOSUUID([]byte{1, 2}) != "" {
		t.Error("short input must give empty")
	}
}

package disk

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/pxejoin/pxejoin/internal/diskspec"
)

// fakeDisk is a /sys/block entry: its device directory under /sys (relative), size in GiB and
// attribute files.
type fakeDisk struct {
	name      string
	device    string // "devices/pci0000:00/0000:00:04.0/virtio1/block/vda"
	gib       int64
	removable bool
	files     map[string]string // relative to /sys/block/<name>
}

// fakeHost writes a /sys with the given disks and an empty /dev.
func fakeHost(t *testing.T, disks ...fakeDisk) Host {
	t.Helper()
	root := t.TempDir()
	h := Host{Sys: filepath.Join(root, "sys"), Dev: filepath.Join(root, "dev")}
	mkdir(t, filepath.Join(h.Sys, "block"))
	mkdir(t, h.Dev)
	for _, d := range disks {
		dir := filepath.Join(h.Sys, d.device)
		mkdir(t, dir)
		rm := "0"
		if d.removable {
			rm = "1"
		}
		files := map[string]string{"size": strconv.FormatInt(d.gib*GiB/512, 10) + "\n", "removable": rm + "\n"}
		for k, v := range d.files {
			files[k] = v
		}
		for k, v := range files {
			mkdir(t, filepath.Dir(filepath.Join(dir, k)))
			if err := os.WriteFile(filepath.Join(dir, k), []byte(v), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Symlink(filepath.Join("..", d.device), filepath.Join(h.Sys, "block", d.name)); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

func mkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}

func virtio(name, pci string, gib int64, serial string) fakeDisk {
	d := fakeDisk{name: name, device: "devices/pci0000:00/" + pci + "/virtio3/block/" + name, gib: gib}
	if serial != "" {
		d.files = map[string]string{"serial": serial + "\n"}
	}
	return d
}

// rack is a machine with a USB stick, a loop device, two virtio disks and an NVMe disk.
var rack = []fakeDisk{
	{name: "sda", device: "devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0/host0/target0:0:0/0:0:0:0/block/sda", gib: 64, removable: true},
	{name: "loop0", device: "devices/virtual/block/loop0", gib: 100},
	virtio("vdb", "0000:00:05.0", 40, "state"),
	virtio("vda", "0000:00:04.0", 8, ""),
	{name: "nvme0n1", device: "devices/pci0000:00/0000:00:1c.0/0000:03:00.0/nvme/nvme0/nvme0n1", gib: 500,
		files: map[string]string{"nsid": "1\n", "device/model": "Samsung SSD 980 PRO 1TB             \n", "device/serial": "  S5GXNF0R123456\n"}},
	{name: "sr0", device: "devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sr0", gib: 0, removable: true},
}

func TestDisks(t *testing.T) {
	h := fakeHost(t, rack...)
	disks, err := h.Disks()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range disks {
		got = append(got, d.Name+" "+strings.Join(d.Names, ","))
	}
	want := []string{
		"sda ",
		"vda by-path/pci-0000:00:04.0",
		"vdb by-path/pci-0000:00:05.0,by-id/virtio-state",
		"nvme0n1 by-path/pci-0000:03:00.0-nvme-1,by-id/nvme-Samsung_SSD_980_PRO_1TB_S5GXNF0R123456",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("disks:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if disks[1].Dev != filepath.Join(h.Dev, "vda") || disks[1].Size != 8*GiB || !disks[0].Removable {
		t.Errorf("vda = %+v, sda = %+v", disks[1], disks[0])
	}
}

func TestSelect(t *testing.T) {
	h := fakeHost(t, rack...)
	// A link udev made (an installed system): followed to its disk.
	mkdir(t, filepath.Join(h.Dev, "disk/by-id"))
	for _, n := range []string{"vda", "sda"} {
		if err := os.WriteFile(filepath.Join(h.Dev, n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("../../vda", filepath.Join(h.Dev, "disk/by-id/wwn-0x5000c500a1b2c3d4")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		spec diskspec.Spec
		want string // disk name, or an error's words
	}{
		{diskspec.Spec{Path: "/dev/disk/by-id/virtio-state"}, "vdb"},
		{diskspec.Spec{Path: "/dev/disk/by-path/pci-0000:00:04.0"}, "vda"},
		{diskspec.Spec{Path: "/dev/disk/by-path/pci-0000:03:00.0-nvme-1", MinSizeGiB: 100}, "nvme0n1"},
		{diskspec.Spec{Path: "/dev/disk/by-id/nvme-Samsung_SSD_980_PRO_1TB_S5GXNF0R123456"}, "nvme0n1"},
		{diskspec.Spec{Path: "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4"}, "vda"},
		// auto: the USB stick (removable) and the loop device (virtual) are never chosen.
		{diskspec.Spec{MinSizeGiB: 1}, "vda"},
		{diskspec.Spec{MinSizeGiB: 10}, "vdb"},
		{diskspec.Spec{MinSizeGiB: 41}, "nvme0n1"},
		{diskspec.Spec{MinSizeGiB: 1000}, "no disk of at least 1000 GiB"},
		{diskspec.Spec{Path: "/dev/disk/by-path/pci-0000:00:04.0", MinSizeGiB: 20}, "is 8.0 GiB, smaller than the profile's minSizeGiB 20: nothing was written"},
		{diskspec.Spec{Path: "/dev/disk/by-id/virtio-other"}, "no disk is named /dev/disk/by-id/virtio-other (disks here: "},
	} {
		d, err := h.Select(tc.spec)
		got := d.Name
		if err != nil {
			got = err.Error()
		}
		if !strings.Contains(got, tc.want) || (err == nil) != !strings.Contains(tc.want, " ") {
			t.Errorf("Select(%+v) = %q, want %q", tc.spec, got, tc.want)
		}
	}
}

func TestDecide(t *testing.T) {
	d := Disk{Name: "vda", Dev: "/dev/vda"}
	ours := Contents{Signatures: []string{"gpt", "gpt", "PMBR"}, State: &Partition{Node: "/dev/vda1", Name: diskspec.PartLabel}}
	foreignGPT := Contents{Signatures: []string{"gpt", "gpt", "PMBR"}}
	ext4 := Contents{Signatures: []string{"ext4"}}
	for _, tc := range []struct {
		name    string
		policy  diskspec.Policy
		reimage bool
		c       Contents
		want    Action
		words   string
	}{
		{"blank disk installs", diskspec.PolicyInstall, false, Contents{}, Install, "/dev/vda was blank"},
		{"ours is mounted", diskspec.PolicyInstall, false, ours, Mount, "holds pxejoin's partition /dev/vda1"},
		{"ours is mounted under wipe too", diskspec.PolicyWipe, false, ours, Mount, "pxejoin's partition"},
		{"re-image wipes ours", diskspec.PolicyInstall, true, ours, Wipe, "held a gpt partition table; re-image asked (pxejoin.reimage=1)"},
		{"re-image wipes a foreign disk", diskspec.PolicyInstall, true, ext4, Wipe, "held a filesystem (ext4)"},
		{"wipe policy wipes a foreign disk", diskspec.PolicyWipe, false, foreignGPT, Wipe, "held a gpt partition table; the profile's policy is wipe"},
		{"install refuses a partition table", diskspec.PolicyInstall, false, foreignGPT, "",
			"disk /dev/vda holds a gpt partition table; the profile's policy is install, so pxejoin leaves it alone: set the profile's disk policy: wipe, or run `bootserver reimage <mac>`"},
		{"install refuses a filesystem", diskspec.PolicyInstall, false, Contents{Signatures: []string{"xfs"}}, "", "holds a filesystem (xfs)"},
		{"install refuses unknown data", diskspec.PolicyInstall, false, Contents{Data: true}, "", "holds data no tool recognises"},
		{"install refuses LVM", diskspec.PolicyInstall, false, Contents{Signatures: []string{"LVM2_member"}}, "", "holds an LVM physical volume"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Decide(tc.policy, tc.reimage, d, tc.c)
			got := p.Reason
			if err != nil {
				got = err.Error()
			}
			if p.Action != tc.want || !strings.Contains(got, tc.words) {
				t.Errorf("Decide = %q %q, %v; want %q %q", p.Action, p.Reason, err, tc.want, tc.words)
			}
		})
	}
}

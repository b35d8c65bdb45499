// Package disk finds a persistent profile's disk (internal/diskspec) and prepares it for node state:
// it decides from what the disk holds whether to mount, install or wipe it, or to leave it alone, and
// partitions and formats it with Debian's tools (wipefs, sfdisk, mkfs.ext4) carried in the initramfs.
// It never writes to a disk other than the one the profile names.
package disk

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/pxejoin/pxejoin/internal/diskspec"
)

// GiB is a gibibyte, the unit of diskspec.Spec.MinSizeGiB.
const GiB = 1 << 30

// Disk is a whole disk as /sys/block shows it.
type Disk struct {
	// Name is the kernel's name ("vda", "nvme0n1").
	Name string
	// Dev is its device node ("/dev/vda").
	Dev string
	// Size is in bytes.
	Size int64
	// Removable is the kernel's removable flag (USB sticks, card readers).
	Removable bool
	// Names are the stable names under /dev/disk/ this disk answers to ("by-id/virtio-state",
	// "by-path/pci-0000:00:04.0"), computed from /sys as udev's persistent-storage rules name them.
	Names []string
}

func (d Disk) String() string {
	s := fmt.Sprintf("%s (%s", d.Dev, formatSize(d.Size))
	if d.Removable {
		s += ", removable"
	}
	for _, n := range d.Names {
		s += ", " + n
	}
	return s + ")"
}

// Host is where the agent looks for disks: the kernel's /sys and /dev (tests use a fake /sys).
type Host struct {
	Sys string // "/sys"
	Dev string // "/dev"
}

// Linux is the running machine.
var Linux = Host{Sys: "/sys", Dev: "/dev"}

// Disks lists the whole disks of real hardware in /sys/block, in name order ("vda" before "vdb",
// "sda" before "sdb"): virtual block devices (loop, ram, zram, dm, md, nbd: under
// /sys/devices/virtual) and empty drives (size 0: a card reader without a card) are left out.
func (h Host) Disks() ([]Disk, error) {
	entries, err := os.ReadDir(filepath.Join(h.Sys, "block"))
	if err != nil {
		return nil, fmt.Errorf("listing disks: %w", err)
	}
	var disks []Disk
	for _, e := range entries {
		dir := filepath.Join(h.Sys, "block", e.Name())
		real, err := filepath.EvalSymlinks(dir)
		if err != nil {
			return nil, fmt.Errorf("listing disks: %w", err)
		}
		if strings.Contains(real, "/devices/virtual/") {
			continue
		}
		sectors, err := readInt(filepath.Join(dir, "size"))
		if err != nil {
			return nil, fmt.Errorf("listing disks: %w", err)
		}
		if sectors == 0 {
			continue
		}
		removable, _ := readInt(filepath.Join(dir, "removable"))
		disks = append(disks, Disk{
			Name:      e.Name(),
			Dev:       filepath.Join(h.Dev, e.Name()),
			Size:      sectors * 512, // /sys/block/*/size counts 512-byte sectors whatever the disk's own
			Removable: removable == 1,
			Names:     stableNames(e.Name(), dir, real),
		})
	}
	sort.Slice(disks, func(i, j int) bool { return lessName(disks[i].Name, disks[j].Name) })
	return disks, nil
}

// Select finds the profile's disk: the one answering to spec.Path, else the first one that is not
// removable and has at least spec.MinSizeGiB. A disk smaller than MinSizeGiB is an error either way.
// The errors say which disks there are, so that the operator can fix the profile.
func (h Host) Select(spec diskspec.Spec) (Disk, error) {
	disks, err := h.Disks()
	if err != nil {
		return Disk{}, err
	}
	min := int64(spec.MinSizeGiB) * GiB
	if spec.Path == "" {
		for _, d := range disks {
			if !d.Removable && d.Size >= min {
				return d, nil
			}
		}
		return Disk{}, fmt.Errorf("no disk of at least %d GiB that is not removable (disks here: %s): give the machine a disk, or lower the profile's minSizeGiB", spec.MinSizeGiB, list(disks))
	}
	d, ok := h.byName(spec.Path, disks)
	if !ok {
		return Disk{}, fmt.Errorf("no disk is named %s (disks here: %s): fix the profile's disk path (this agent knows by-id/virtio-<serial>, by-id/nvme-<model>_<serial>, by-path/pci-<address> for virtio and by-path/pci-<address>-nvme-<namespace>), or use minSizeGiB alone for the first large enough disk", spec.Path, list(disks))
	}
	if d.Size < min {
		return Disk{}, fmt.Errorf("disk %s is %s, smaller than the profile's minSizeGiB %d: nothing was written; give the machine a larger disk or lower minSizeGiB", spec.Path, formatSize(d.Size), spec.MinSizeGiB)
	}
	return d, nil
}

// byName finds the disk answering to a /dev/disk/… path: one of the names computed from /sys, or,
// where udev made the link (an installed system, a test), the disk the link resolves to.
func (h Host) byName(path string, disks []Disk) (Disk, bool) {
	rel := strings.TrimPrefix(path, "/dev/disk/")
	for _, d := range disks {
		for _, n := range d.Names {
			if n == rel {
				return d, true
			}
		}
	}
	link := filepath.Join(h.Dev, "disk", rel)
	target, err := filepath.EvalSymlinks(link)
	if err != nil {
		return Disk{}, false
	}
	for _, d := range disks {
		if dev, err := filepath.EvalSymlinks(d.Dev); err == nil && dev == target {
			return d, true
		}
	}
	return Disk{}, false
}

var pciAddr = regexp.MustCompile(`^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$`)

// stableNames are the /dev/disk/ names udev's 60-persistent-storage.rules and path_id give a
// virtio or NVMe disk, computed from /sys: the initramfs has no udev to make the links. Other
// transports (SATA, SAS, USB) get none: their by-id needs the drive's IDENTIFY data and their
// by-path the port numbering, which /sys does not spell out; such machines use minSizeGiB.
// dir is /sys/block/<name>, real the device's directory it resolves to.
func stableNames(name, dir, real string) []string {
	var names []string
	parts := strings.Split(real, "/")
	// The innermost PCI function above the disk, and what sits between it and the disk.
	pci, between := "", []string(nil)
	for i, p := range parts {
		if pciAddr.MatchString(p) {
			pci, between = p, nil
			continue
		}
		if pci != "" && p != "block" && p != name && i < len(parts)-1 {
			between = append(between, p)
		}
	}
	virtio := len(between) > 0
	for _, p := range between {
		virtio = virtio && strings.HasPrefix(p, "virtio")
	}
	nvme := len(between) > 0 && between[0] == "nvme"
	switch {
	case virtio:
		if pci != "" {
			names = append(names, "by-path/pci-"+pci)
		}
		if serial := udevString(readString(filepath.Join(dir, "serial"))); serial != "" {
			names = append(names, "by-id/virtio-"+serial)
		}
	case nvme:
		if nsid := readString(filepath.Join(dir, "nsid")); pci != "" && nsid != "" {
			names = append(names, "by-path/pci-"+pci+"-nvme-"+nsid)
		}
		model := udevString(readString(filepath.Join(dir, "device/model")))
		serial := udevString(readString(filepath.Join(dir, "device/serial")))
		if model != "" && serial != "" {
			names = append(names, "by-id/nvme-"+model+"_"+serial)
		}
	}
	return names
}

// udevString is s as udev puts it in a link name: trimmed, inner white space as "_".
func udevString(s string) string {
	return strings.Join(strings.Fields(s), "_")
}

func readString(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func readInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return n, nil
}

// lessName orders kernel names as people do: "vdb" before "vdaa", "nvme0n2" before "nvme0n10".
func lessName(a, b string) bool {
	if len(a) != len(b) {
		return len(a) < len(b)
	}
	return a < b
}

func list(disks []Disk) string {
	if len(disks) == 0 {
		return "none"
	}
	s := make([]string, len(disks))
	for i, d := range disks {
		s[i] = d.String()
	}
	return strings.Join(s, "; ")
}

func formatSize(b int64) string {
	return fmt.Sprintf("%.1f GiB", float64(b)/GiB)
}

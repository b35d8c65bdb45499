package disk

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/pxejoin/pxejoin/internal/diskspec"
)

// Tools are the Debian programs the agent prepares a disk with (util-linux's wipefs and sfdisk,
// e2fsprogs' mkfs.ext4); the initramfs carries them (see package initramfs).
var Tools = []string{"wipefs", "sfdisk", "mkfs.ext4"}

// Contents is what a disk holds, as wipefs and sfdisk see it.
type Contents struct {
	// Signatures are the types of the signatures wipefs finds on the whole disk, in its order
	// ("PMBR", "gpt", "ext4", "LVM2_member"…); none: the disk is blank.
	Signatures []string
	// Data: without a signature, the disk's first or last MiB is not all zeros. Such a disk holds
	// something wipefs does not know (or had its signatures erased), so it is not blank.
	Data bool
	// State is pxejoin's state partition (the GPT partition named diskspec.PartLabel), if any.
	State *Partition
}

// Partition is a GPT partition as sfdisk lists it.
type Partition struct {
	// Node is its device node as the kernel names it ("/dev/vda1", "/dev/nvme0n1p1").
	Node string `json:"node"`
	// Start and Size are in the disk's sectors.
	Start int64  `json:"start"`
	Size  int64  `json:"size"`
	Name  string `json:"name"`
	// SectorSize is the disk's logical sector size in bytes.
	SectorSize int64 `json:"-"`
}

// Blank says whether the disk holds nothing: no signature and zeros at both ends (a new disk).
func (c Contents) Blank() bool { return len(c.Signatures) == 0 && !c.Data }

// String describes the contents for an operator: "a gpt partition table", "an ext4 filesystem".
func (c Contents) String() string {
	var what []string
	seen := map[string]bool{}
	for _, s := range c.Signatures {
		d := describe(s)
		if d != "" && !seen[d] {
			seen[d] = true
			what = append(what, d)
		}
	}
	if c.Data {
		what = append(what, "data no tool recognises (its first or last MiB is not zeros)")
	}
	if len(what) == 0 {
		return "nothing"
	}
	return strings.Join(what, " and ")
}

func describe(sig string) string {
	switch sig {
	case "PMBR": // the GPT's protective MBR: "gpt" says it
		return ""
	case "gpt", "dos", "atari", "bsd", "sun", "sgi", "mac":
		return "a " + sig + " partition table"
	case "LVM2_member":
		return "an LVM physical volume"
	case "linux_raid_member":
		return "a Linux RAID member"
	case "swap":
		return "a swap area"
	case "crypto_LUKS":
		return "a LUKS volume"
	case "ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "exfat", "ntfs", "f2fs", "iso9660", "squashfs":
		return "a filesystem (" + sig + ")"
	}
	return "a signature (" + sig + ")"
}

// Inspect reads what dev holds (nothing is written).
func Inspect(ctx context.Context, dev string) (Contents, error) {
	out, err := run(ctx, nil, "wipefs", "--no-act", "--json", dev)
	if err != nil {
		return Contents{}, err
	}
	var w struct {
		Signatures []struct {
			Type string `json:"type"`
		} `json:"signatures"`
	}
	if len(bytes.TrimSpace(out)) > 0 { // wipefs prints nothing for a blank disk on some versions
		if err := json.Unmarshal(out, &w); err != nil {
			return Contents{}, fmt.Errorf("wipefs --json %s: %w", dev, err)
		}
	}
	var c Contents
	gpt := false
	for _, s := range w.Signatures {
		c.Signatures = append(c.Signatures, s.Type)
		gpt = gpt || s.Type == "gpt"
	}
	if len(c.Signatures) == 0 {
		c.Data, err = nonZeroEnds(dev)
		return c, err
	}
	if !gpt {
		return c, nil
	}
	parts, err := partitions(ctx, dev)
	if err != nil {
		return Contents{}, err
	}
	for i, p := range parts {
		if p.Name == diskspec.PartLabel {
			c.State = &parts[i]
			break
		}
	}
	return c, nil
}

// nonZeroEnds says whether dev's first or last MiB holds anything but zeros.
func nonZeroEnds(dev string) (bool, error) {
	f, err := os.Open(dev)
	if err != nil {
		return false, err
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return false, fmt.Errorf("%s: %w", dev, err)
	}
	n := min(size, 1<<20)
	buf := make([]byte, n)
	for _, off := range []int64{0, size - n} {
		if _, err := f.ReadAt(buf, off); err != nil {
			return false, fmt.Errorf("reading %s: %w", dev, err)
		}
		for _, b := range buf {
			if b != 0 {
				return true, nil
			}
		}
	}
	return false, nil
}

// partitions lists dev's GPT partitions.
func partitions(ctx context.Context, dev string) ([]Partition, error) {
	out, err := run(ctx, nil, "sfdisk", "--json", dev)
	if err != nil {
		return nil, err
	}
	var t struct {
		Table struct {
			SectorSize int64       `json:"sectorsize"`
			Partitions []Partition `json:"partitions"`
		} `json:"partitiontable"`
	}
	if err := json.Unmarshal(out, &t); err != nil {
		return nil, fmt.Errorf("sfdisk --json %s: %w", dev, err)
	}
	if t.Table.SectorSize == 0 {
		t.Table.SectorSize = 512
	}
	for i := range t.Table.Partitions {
		t.Table.Partitions[i].SectorSize = t.Table.SectorSize
	}
	return t.Table.Partitions, nil
}

// Action is what the agent does to the profile's disk.
type Action string

const (
	// Mount: the disk already holds pxejoin's state partition.
	Mount Action = diskspec.DiskMounted
	// Install: the disk is blank; partition and format it.
	Install Action = diskspec.DiskInstalled
	// Wipe: erase what the disk holds, then install.
	Wipe Action = diskspec.DiskWiped
)

// Plan is the decision for a disk, with the reason an operator reads in the boot's status.
type Plan struct {
	Action Action
	Reason string
}

// Decide applies the policy to what the disk holds. A disk holding anything but pxejoin's partition
// is written only under diskspec.PolicyWipe or a re-image (pxejoin.reimage=1); otherwise the answer
// is an error that says what to do.
func Decide(policy diskspec.Policy, reimage bool, d Disk, c Contents) (Plan, error) {
	switch {
	case reimage:
		return Plan{Wipe, fmt.Sprintf("%s held %s; re-image asked (%s=1)", d.Dev, c, diskspec.KeyReimage)}, nil
	case c.State != nil:
		return Plan{Mount, fmt.Sprintf("%s holds pxejoin's partition %s", d.Dev, c.State.Node)}, nil
	case c.Blank():
		return Plan{Install, fmt.Sprintf("%s was blank", d.Dev)}, nil
	case policy == diskspec.PolicyWipe:
		return Plan{Wipe, fmt.Sprintf("%s held %s; the profile's policy is wipe", d.Dev, c)}, nil
	}
	return Plan{}, fmt.Errorf("disk %s holds %s; the profile's policy is %s, so pxejoin leaves it alone: set the profile's disk policy: wipe, or run `bootserver reimage <mac>`", d.Dev, c, diskspec.PolicyInstall)
}

// Preparer partitions and formats disks.
type Preparer struct {
	// PartitionNode returns the device node to format for p, a partition the kernel was just told
	// about. nil: wait for the kernel's node (devtmpfs makes it when sfdisk re-reads the table).
	PartitionNode func(ctx context.Context, p Partition) (string, error)
}

// Prepare carries out a plan on d and returns the state partition's device node, ready to mount.
// Mount writes nothing; Install writes one GPT partition named diskspec.PartLabel spanning the disk
// and an ext4 filesystem labelled diskspec.FSLabel on it; Wipe first erases every signature on d.
func (p Preparer) Prepare(ctx context.Context, d Disk, plan Plan, c Contents) (string, error) {
	if plan.Action == Mount {
		return p.node(ctx, *c.State)
	}
	if plan.Action == Wipe {
		if _, err := run(ctx, nil, "wipefs", "--all", "--force", d.Dev); err != nil {
			return "", err
		}
	}
	script := fmt.Sprintf("label: gpt\ntype=L, name=%q\n", diskspec.PartLabel)
	if _, err := run(ctx, strings.NewReader(script), "sfdisk", "--quiet", "--wipe", "always", "--wipe-partitions", "always", d.Dev); err != nil {
		return "", err
	}
	parts, err := partitions(ctx, d.Dev)
	if err != nil {
		return "", err
	}
	if len(parts) != 1 || parts[0].Name != diskspec.PartLabel {
		return "", fmt.Errorf("%s: sfdisk wrote %d partitions, not one named %s", d.Dev, len(parts), diskspec.PartLabel)
	}
	node, err := p.node(ctx, parts[0])
	if err != nil {
		return "", err
	}
	if _, err := run(ctx, nil, "mkfs.ext4", "-q", "-F", "-L", diskspec.FSLabel, node); err != nil {
		return "", err
	}
	return node, nil
}

func (p Preparer) node(ctx context.Context, part Partition) (string, error) {
	if p.PartitionNode != nil {
		return p.PartitionNode(ctx, part)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		if _, err := os.Stat(part.Node); err == nil {
			return part.Node, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("the kernel made no device node %s for partition %s: does it lack GPT support (CONFIG_EFI_PARTITION)?", part.Node, part.Name)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// run runs a tool and returns its standard output; a failure carries its standard error.
func run(ctx context.Context, stdin *strings.Reader, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = stdin
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return nil, fmt.Errorf("%s is not in this initramfs (PATH %s): rebuild it with the disk tools (initramfs.DiskTools)", name, os.Getenv("PATH"))
		}
		return nil, fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// Result is the profile's disk, ready to mount.
type Result struct {
	Disk Disk
	Plan Plan
	// Partition is the state partition's device node (ext4, labelled diskspec.FSLabel).
	Partition string
}

// Setup selects the profile's disk on h, decides what to do from what it holds and does it. Only
// the selected disk is ever written.
func (p Preparer) Setup(ctx context.Context, h Host, spec diskspec.Spec, reimage bool) (Result, error) {
	d, err := h.Select(spec)
	if err != nil {
		return Result{}, err
	}
	c, err := Inspect(ctx, d.Dev)
	if err != nil {
		return Result{Disk: d}, err
	}
	plan, err := Decide(spec.EffectivePolicy(), reimage, d, c)
	if err != nil {
		return Result{Disk: d}, err
	}
	part, err := p.Prepare(ctx, d, plan, c)
	if err != nil {
		return Result{Disk: d, Plan: plan}, fmt.Errorf("%s (%s): %w", plan.Action, plan.Reason, err)
	}
	return Result{Disk: d, Plan: plan, Partition: part}, nil
}

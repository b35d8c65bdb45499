package disk

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/pxejoin/pxejoin/internal/diskspec"
	"github.com/pxejoin/pxejoin/lab/testenv"
)

// loopDisk attaches a new image file of size bytes, filled by fill, to a loop device (without
// partition scanning, so that the test behaves the same on every kernel) and returns its node.
func loopDisk(t *testing.T, size int64, fill func(dev string)) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.Truncate(img, 0); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	dev := losetup(t, img)
	if fill != nil {
		fill(dev)
	}
	return dev
}

func losetup(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("losetup", append([]string{"--find", "--show"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup %v: %v: %s", args, err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "--detach", dev).Run() })
	return dev
}

func sum(t *testing.T, dev string) string {
	t.Helper()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// TestSetupWritesOnlyTheNamedDisk runs Setup on three loop devices presented as virtio disks: the
// profile's (blank at first), one holding an ext4 filesystem and one holding random bytes. Every
// step checks that the disks the step may not write are byte for byte unchanged.
func TestSetupWritesOnlyTheNamedDisk(t *testing.T) {
	testenv.RequireRoot(t)
	for _, tool := range append([]string{"losetup"}, Tools...) {
		testenv.RequireTool(t, tool)
	}
	ctx := context.Background()
	const size = 64 << 20
	named := loopDisk(t, size, nil)
	ext4 := loopDisk(t, size, func(dev string) {
		if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", "data", dev).CombinedOutput(); err != nil {
			t.Fatalf("mkfs.ext4: %v: %s", err, out)
		}
	})
	noise := loopDisk(t, size, func(dev string) {
		b := make([]byte, size)
		rand.Read(b)
		b[0x1fe], b[0x1ff] = 0, 0 // no MBR signature: noise, not a partition table
		if err := os.WriteFile(dev, b, 0o600); err != nil {
			t.Fatal(err)
		}
	})
	var fakes []fakeDisk
	for i, dev := range []string{named, ext4, noise} {
		name := filepath.Base(dev)
		d := virtio(name, fmt.Sprintf("0000:00:%02x.0", 4+i), 0, []string{"state", "data", "noise"}[i])
		d.files["size"] = strconv.Itoa(size/512) + "\n"
		fakes = append(fakes, d)
	}
	h := fakeHost(t, fakes...)
	h.Dev = "/dev"
	// Partition nodes: a loop device over the partition's bytes (this kernel may have no GPT support).
	p := Preparer{PartitionNode: func(ctx context.Context, part Partition) (string, error) {
		disk := strings.TrimSuffix(strings.TrimSuffix(part.Node, "1"), "p")
		return losetup(t, "--offset", strconv.FormatInt(part.Start*part.SectorSize, 10),
			"--sizelimit", strconv.FormatInt(part.Size*part.SectorSize, 10), disk), nil
	}}
	sums := map[string]string{named: sum(t, named), ext4: sum(t, ext4), noise: sum(t, noise)}
	unchanged := func(step string, devs ...string) {
		t.Helper()
		for _, dev := range devs {
			if s := sum(t, dev); s != sums[dev] {
				t.Errorf("%s: %s was written", step, dev)
			}
		}
	}
	written := func(step, dev string) {
		t.Helper()
		if s := sum(t, dev); s == sums[dev] {
			t.Errorf("%s: %s was not written", step, dev)
		} else {
			sums[dev] = s
		}
	}
	state := diskspec.Spec{Path: "/dev/disk/by-id/virtio-state"}

	r, err := p.Setup(ctx, h, state, false)
	if err != nil || r.Plan.Action != Install || r.Disk.Dev != named {
		t.Fatalf("first boot: %+v, %v; want %s installed", r, err, named)
	}
	written("first boot", named)
	unchanged("first boot", ext4, noise)
	if out, _ := exec.Command("wipefs", "--no-act", r.Partition).Output(); !strings.Contains(string(out), "ext4") || !strings.Contains(string(out), diskspec.FSLabel) {
		t.Errorf("the state partition holds:\n%s\nwant ext4 labelled %s", out, diskspec.FSLabel)
	}

	r, err = p.Setup(ctx, h, state, false)
	if err != nil || r.Plan.Action != Mount {
		t.Fatalf("second boot: %+v, %v; want mounted", r, err)
	}
	unchanged("second boot", named, ext4, noise)

	for _, path := range []string{"/dev/disk/by-id/virtio-data", "/dev/disk/by-id/virtio-noise"} {
		_, err = p.Setup(ctx, h, diskspec.Spec{Path: path}, false)
		if err == nil || !strings.Contains(err.Error(), "pxejoin leaves it alone") {
			t.Errorf("%s under policy install: %v; want a refusal", path, err)
		}
		unchanged(path+" under policy install", named, ext4, noise)
	}
	_, err = p.Setup(ctx, h, diskspec.Spec{Path: "/dev/disk/by-id/virtio-state", MinSizeGiB: 1}, true)
	if err == nil || !strings.Contains(err.Error(), "smaller than the profile's minSizeGiB 1: nothing was written") {
		t.Errorf("a disk below minSizeGiB: %v; want a refusal", err)
	}
	unchanged("a disk below minSizeGiB", named, ext4, noise)

	r, err = p.Setup(ctx, h, state, true)
	if err != nil || r.Plan.Action != Wipe {
		t.Fatalf("re-image: %+v, %v; want wiped", r, err)
	}
	written("re-image", named)
	unchanged("re-image", ext4, noise)

	r, err = p.Setup(ctx, h, diskspec.Spec{Path: "/dev/disk/by-id/virtio-data", Policy: diskspec.PolicyWipe}, false)
	if err != nil || r.Plan.Action != Wipe || !strings.Contains(r.Plan.Reason, "held a filesystem (ext4); the profile's policy is wipe") {
		t.Fatalf("policy wipe: %+v, %v; want the ext4 disk wiped", r, err)
	}
	written("policy wipe", ext4)
	unchanged("policy wipe", named, noise)
}

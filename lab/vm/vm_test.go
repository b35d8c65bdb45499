package vm

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

func TestQemuArgs(t *testing.T) {
	mac, _ := hwaddr.Parse("52:54:00:77:00:01")
	vars := filepath.Join(t.TempDir(), "vars.fd")
	if err := os.WriteFile(vars, []byte("vars"), 0o644); err != nil {
		t.Fatal(err)
	}
	defer func(old string) { OVMFVars = old }(OVMFVars)
	OVMFVars = vars
	for _, tc := range []struct {
		fw              Firmware
		nic             string
		want, forbidden []string
	}{
		{BIOS, "", []string{"-cpu qemu64,+rdrand", "virtio-net-pci,netdev=n0,mac=52:54:00:77:00:01,bootindex=1 ", "-no-reboot"}, []string{"pflash", "romfile="}},
		{UEFI, "e1000", []string{"if=pflash,format=raw,unit=0,readonly=on", "e1000,netdev=n0"}, []string{"romfile="}},
		{UEFIPXE, "", []string{"if=pflash", ",romfile= "}, []string{"-fw_cfg"}},
		{UEFIHTTP, "", []string{"if=pflash", ",romfile= ", "opt/org.tianocore/IPv4PXESupport,string=n",
			"opt/org.tianocore/IPv6PXESupport,string=n"}, nil},
	} {
		t.Run(string(tc.fw), func(t *testing.T) {
			o := Options{Name: "t", MAC: mac, Firmware: tc.fw, NIC: tc.nic, Dir: t.TempDir(), Tap: "tap-t", MemoryMB: 512, CPUs: 1}
			if o.NIC == "" {
				o.NIC = "virtio-net-pci"
			}
			args, err := o.qemuArgs()
			if err != nil {
				t.Fatal(err)
			}
			line := strings.Join(args, " ") + " "
			for _, w := range tc.want {
				if !strings.Contains(line, w) {
					t.Errorf("missing %q in %s", w, line)
				}
			}
			for _, f := range tc.forbidden {
				if strings.Contains(line, f) {
					t.Errorf("unexpected %q in %s", f, line)
				}
			}
		})
	}
	o := Options{Name: "t", MAC: mac, Firmware: BIOS, Dir: t.TempDir(), Tap: "tap-t", NIC: "virtio-net-pci", Disk: &Disk{Path: "/var/lib/lab/node-1.img"}}
	args, err := o.qemuArgs()
	if err != nil {
		t.Fatal(err)
	}
	if line := strings.Join(args, " "); !strings.Contains(line, "-drive file=/var/lib/lab/node-1.img,if=none,id=d0,format=raw -device virtio-blk-pci,drive=d0,serial=state") {
		t.Errorf("no virtio disk in %s", line)
	}
	if o.Disk.ByID() != "/dev/disk/by-id/virtio-state" {
		t.Errorf("ByID = %s", o.Disk.ByID())
	}
	if _, err := (Options{Firmware: "coreboot", Dir: t.TempDir()}).qemuArgs(); err == nil {
		t.Error("unknown firmware accepted")
	}
}

// TestDiskKept: the image is made once and kept (a power cycle finds what the guest wrote).
func TestDiskKept(t *testing.T) {
	d := Disk{Path: filepath.Join(t.TempDir(), "d.img"), SizeGiB: 1}
	if err := d.create(); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(d.Path); err != nil || st.Size() != 1<<30 {
		t.Fatalf("new image: %v, %v", st, err)
	}
	if err := os.WriteFile(d.Path, []byte("guest data"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := d.create(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(d.Path); string(b) != "guest data" {
		t.Errorf("the image was made again: %q", b)
	}
}

func TestConsole(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.log")
	c, err := newConsole(path, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	r, w, _ := os.Pipe()
	go c.copyFrom(r)
	w.Write([]byte("Linux vers"))
	w.Write([]byte("ion 6.1\r\nnext line\n"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Wait(ctx, "Linux version"); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if _, err := c.Wait(ctx, "never printed"); err == nil || !strings.Contains(err.Error(), "console closed") {
		t.Fatalf("Wait after close = %v", err)
	}
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "[") || !strings.HasSuffix(lines[0], "Linux version 6.1") ||
		!strings.HasSuffix(lines[1], "] next line") {
		t.Fatalf("console file:\n%s", b)
	}
}

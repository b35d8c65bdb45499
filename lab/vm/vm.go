// Package vm runs QEMU virtual machines that network-boot inside a network namespace, for the VM
// end-to-end tests and `make lab`: one tap per VM on the namespace's bridge, BIOS (SeaBIOS + the NIC's
// iPXE ROM), UEFI (OVMF + the NIC's iPXE ROM) or UEFI with OVMF's own PXE client (romfile= empties the
// NIC ROM), the serial console recorded with timestamps. Under TCG (no KVM) the CPU is
// qemu64,+rdrand so that the guest kernel's CRNG is ready at once (see notes/pxe-lab.md).
package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// Firmware is how a VM boots.
type Firmware string

// The boot paths the lab covers.
const (
	// BIOS is SeaBIOS running the NIC's iPXE option ROM.
	BIOS Firmware = "bios"
	// UEFI is OVMF running the NIC's iPXE EFI ROM.
	UEFI Firmware = "uefi"
	// UEFIPXE is OVMF's own PXE client (no NIC ROM): DHCP, TFTP of ipxe.efi, then iPXE.
	UEFIPXE Firmware = "uefi-pxe"
	// UEFIHTTP is OVMF's own UEFI HTTP boot client (no NIC ROM, PXE switched off through fw_cfg so
	// that the HTTPv4 boot option comes first): DHCP as "HTTPClient", HTTP GET of ipxe.efi, then iPXE.
	UEFIHTTP Firmware = "uefi-http"
)

// Firmware files (Debian's ovmf package).
var (
	OVMFCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	OVMFVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// Options describe a VM.
type Options struct {
	// Name names the VM's files and tap device.
	Name string
	// NetNS is the network namespace the VM's tap lives in ("" for the host's).
	NetNS string
	// Bridge is the bridge in NetNS the tap joins.
	Bridge string
	// Tap is the tap device name (default "tap-" + Name, at most 15 characters).
	Tap string
	// MAC of the NIC.
	MAC hwaddr.MAC
	// Firmware: BIOS (default), UEFI, UEFIPXE or UEFIHTTP.
	Firmware Firmware
	// NIC is the qemu device model: virtio-net-pci (default), e1000, e1000e.
	NIC string
	// MemoryMB defaults to 1024.
	MemoryMB int
	// CPUs defaults to 1.
	CPUs int
	// Dir holds the console log and the UEFI variable store.
	Dir string
	// Extra qemu arguments.
	Extra []string
	// KVM uses /dev/kvm if present (default: TCG, which is what the notes measured).
	KVM bool
	// Disk, if set, is a virtio disk kept across power cycles (a persistent node's).
	Disk *Disk
}

// Disk is a raw disk image file attached as virtio-blk. The guest sees it as
// /dev/disk/by-id/virtio-<Serial> and /dev/disk/by-path/pci-<address>.
type Disk struct {
	// Path is the image file; Start creates it (sparse, SizeGiB) when it does not exist and keeps it
	// otherwise, so that a power cycle finds what the guest wrote.
	Path string
	// SizeGiB is the size of a new image (default 8).
	SizeGiB int
	// Serial is the disk's serial number (default "state").
	Serial string
}

// ByID is the guest's stable name of the disk.
func (d Disk) ByID() string { return "/dev/disk/by-id/virtio-" + d.serial() }

func (d Disk) serial() string {
	if d.Serial == "" {
		return "state"
	}
	return d.Serial
}

// create makes the image file if it is missing.
func (d Disk) create() error {
	if _, err := os.Stat(d.Path); err == nil {
		return nil
	}
	size := d.SizeGiB
	if size == 0 {
		size = 8
	}
	f, err := os.OpenFile(d.Path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("vm: disk image: %w", err)
	}
	if err := f.Truncate(int64(size) << 30); err != nil {
		f.Close()
		return fmt.Errorf("vm: disk image: %w", err)
	}
	return f.Close()
}

// VM is a running qemu.
type VM struct {
	Opts    Options
	Console *Console
	Started time.Time
	cmd     *exec.Cmd
	done    chan struct{}
	err     error
	stop    sync.Once
}

// Start creates the tap and starts qemu. The caller must Stop the VM.
func Start(o Options) (*VM, error) {
	if o.Name == "" || o.MAC.IsZero() || o.Dir == "" {
		return nil, errors.New("vm: Name, MAC and Dir are required")
	}
	if o.Firmware == "" {
		o.Firmware = BIOS
	}
	if o.NIC == "" {
		o.NIC = "virtio-net-pci"
	}
	if o.MemoryMB == 0 {
		o.MemoryMB = 1024
	}
	if o.CPUs == 0 {
		o.CPUs = 1
	}
	if o.Tap == "" {
		o.Tap = "tap-" + o.Name
	}
	if len(o.Tap) > 15 {
		return nil, fmt.Errorf("vm: tap name %q longer than 15 characters", o.Tap)
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, err
	}
	if o.Disk != nil {
		if err := o.Disk.create(); err != nil {
			return nil, err
		}
	}
	if err := o.tap(); err != nil {
		return nil, err
	}
	args, err := o.qemuArgs()
	if err != nil {
		return nil, err
	}
	var cmd *exec.Cmd
	if o.NetNS != "" {
		// ip netns exec execs qemu in place: the PID is qemu's.
		cmd = exec.Command("ip", append([]string{"netns", "exec", o.NetNS, "qemu-system-x86_64"}, args...)...)
	} else {
		cmd = exec.Command("qemu-system-x86_64", args...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = cmd.Stdout
	cmd.Stdin = nil
	if err := os.WriteFile(filepath.Join(o.Dir, o.Name+".cmdline"), []byte(strings.Join(cmd.Args, " ")+"\n"), 0o644); err != nil {
		return nil, err
	}
	v := &VM{Opts: o, cmd: cmd, done: make(chan struct{})}
	v.Started = time.Now()
	v.Console, err = newConsole(filepath.Join(o.Dir, o.Name+".console"), v.Started)
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("vm: start qemu: %w", err)
	}
	_ = os.WriteFile(filepath.Join(o.Dir, o.Name+".pid"), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644)
	go func() {
		v.Console.copyFrom(stdout)
		v.err = cmd.Wait()
		close(v.done)
	}()
	return v, nil
}

func (o Options) tap() error {
	run := func(args ...string) error {
		if o.NetNS != "" {
			args = append([]string{"netns", "exec", o.NetNS, "ip"}, args...)
		}
		out, err := exec.Command("ip", args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("vm: ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := run("tuntap", "add", "dev", o.Tap, "mode", "tap"); err != nil {
		return err
	}
	if o.Bridge != "" {
		if err := run("link", "set", o.Tap, "master", o.Bridge); err != nil {
			return err
		}
	}
	return run("link", "set", o.Tap, "up")
}

func (o Options) qemuArgs() ([]string, error) {
	accel := []string{"-accel", "tcg", "-cpu", "qemu64,+rdrand"}
	if o.KVM {
		if _, err := os.Stat("/dev/kvm"); err == nil {
			accel = []string{"-accel", "kvm", "-cpu", "host"}
		}
	}
	args := append([]string{"-machine", "q35", "-m", strconv.Itoa(o.MemoryMB), "-smp", strconv.Itoa(o.CPUs),
		"-display", "none", "-vga", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot", "-nodefaults",
		"-name", o.Name}, accel...)
	nic := fmt.Sprintf("%s,netdev=n0,mac=%s,bootindex=1", o.NIC, o.MAC)
	switch o.Firmware {
	case BIOS:
	case UEFI, UEFIPXE, UEFIHTTP:
		vars := filepath.Join(o.Dir, o.Name+".vars.fd")
		if err := copyFile(OVMFVars, vars); err != nil {
			return nil, fmt.Errorf("vm: UEFI variables (install ovmf): %w", err)
		}
		args = append(args,
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+OVMFCode,
			"-drive", "if=pflash,format=raw,unit=1,file="+vars)
		if o.Firmware != UEFI {
			nic += ",romfile="
		}
		if o.Firmware == UEFIHTTP {
			// Read by OvmfPkg's PxeBcPcdProducerLib (edk2 ≥ 2020): no PXEv4/PXEv6 boot options.
			args = append(args, "-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=n",
				"-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=n")
		}
	default:
		return nil, fmt.Errorf("vm: unknown firmware %q", o.Firmware)
	}
	args = append(args, "-netdev", fmt.Sprintf("tap,id=n0,ifname=%s,script=no,downscript=no", o.Tap), "-device", nic)
	if d := o.Disk; d != nil {
		if strings.ContainsAny(d.Path+d.serial(), ",") {
			return nil, fmt.Errorf("vm: disk path %q or serial %q has a comma, which qemu's -drive cannot take", d.Path, d.serial())
		}
		args = append(args, "-drive", "file="+d.Path+",if=none,id=d0,format=raw",
			"-device", "virtio-blk-pci,drive=d0,serial="+d.serial())
	}
	return append(args, o.Extra...), nil
}

// PowerCycle stops the VM as a power cut does (qemu killed; the disk image keeps what reached it)
// and starts it again with the same options: the same MAC and disk. The first run's console is kept
// as <name>.console.1 (then .2, …) beside the new one.
func (v *VM) PowerCycle() (*VM, error) {
	v.Stop()
	console := filepath.Join(v.Opts.Dir, v.Opts.Name+".console")
	for n := 1; ; n++ {
		prev := console + "." + strconv.Itoa(n)
		if _, err := os.Stat(prev); os.IsNotExist(err) {
			if err := os.Rename(console, prev); err != nil && !os.IsNotExist(err) {
				return nil, err
			}
			break
		}
	}
	return Start(v.Opts)
}

// Done is closed when qemu has ended.
func (v *VM) Done() <-chan struct{} { return v.done }

// Wait waits for qemu to end (the guest powered off: -no-reboot) or ctx.
func (v *VM) Wait(ctx context.Context) error {
	select {
	case <-v.done:
		return v.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// PID is qemu's process id.
func (v *VM) PID() int { return v.cmd.Process.Pid }

// Stop kills qemu (if it still runs) and removes the tap.
func (v *VM) Stop() {
	v.stop.Do(func() {
		select {
		case <-v.done:
		default:
			_ = v.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-v.done:
			case <-time.After(5 * time.Second):
				_ = v.cmd.Process.Kill()
				<-v.done
			}
		}
		args := []string{"link", "del", v.Opts.Tap}
		if v.Opts.NetNS != "" {
			args = append([]string{"netns", "exec", v.Opts.NetNS, "ip"}, args...)
		}
		_ = exec.Command("ip", args...).Run()
	})
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

package initmode

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/u-root/u-root/pkg/dhclient"
	"github.com/u-root/u-root/pkg/mount"
	"github.com/u-root/u-root/pkg/mount/loop"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/pxejoin/pxejoin/internal/diskspec"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
	"github.com/pxejoin/pxejoin/nodeagent/disk"
)

// Linux is the real System: netlink, u-root's dhclient, loop + squashfs + overlayfs, switch_root.
type Linux struct {
	Logf func(format string, args ...any)
	// RunDir is a tmpfs for the overlay's upper and work directories.
	RunDir string
}

// Network waits for the boot interface, brings it up and configures it with DHCPv4. Without a router
// in the lease it adds an on-link default route: kubelet picks the node IP from the default route.
func (l *Linux) Network(ctx context.Context, mac hwaddr.MAC) (string, error) {
	links, err := waitLinks(ctx, mac)
	if err != nil {
		return "", err
	}
	// Up and operational before dhclient looks: its own wait polls every 100 ms.
	if err := linksUp(ctx, links, 5*time.Second); err != nil {
		l.logf("%v; DHCP tries anyway", err)
	}
	cfg := dhclient.Config{
		Timeout: 5 * time.Second,
		Retries: 3,
		// The agent is not a PXE client: an ordinary vendor class, so the boot server gives it a lease
		// and no boot file.
		Modifiers4: []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("pxejoin-agent"))},
	}
	var errs []string
	for r := range dhclient.SendRequests(ctx, links, true, false, cfg, 20*time.Second) {
		if r.Err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", r.Interface.Attrs().Name, r.Err))
			continue
		}
		if err := r.Lease.Configure(); err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", r.Interface.Attrs().Name, err))
			continue
		}
		ack, _ := r.Lease.Message()
		desc := fmt.Sprintf("%s %s", r.Interface.Attrs().Name, r.Lease.(*dhclient.Packet4).Lease())
		if gw := ack.Router(); len(gw) > 0 {
			desc += " via " + gw[0].String()
		} else {
			rt := &netlink.Route{LinkIndex: r.Interface.Attrs().Index, Scope: netlink.SCOPE_LINK,
				Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}}
			if err := netlink.RouteReplace(rt); err != nil {
				l.logf("no router in the lease and no on-link default route: %v", err)
			}
			desc += " (no router: on-link default route)"
		}
		if hn := ack.HostName(); hn != "" {
			_ = unix.Sethostname([]byte(hn))
		}
		return desc, nil
	}
	if len(errs) == 0 {
		errs = append(errs, "no interface came up")
	}
	return "", fmt.Errorf("DHCP: %s", strings.Join(errs, "; "))
}

// linksUp sets the links up and waits, on netlink's link notifications, until each is operational
// (OperUp, or OperUnknown for drivers that do not report carrier) or timeout passes.
func linksUp(ctx context.Context, links []netlink.Link, timeout time.Duration) error {
	updates := make(chan netlink.LinkUpdate, 16)
	done := make(chan struct{})
	defer close(done)
	if err := netlink.LinkSubscribe(updates, done); err != nil {
		return fmt.Errorf("netlink link notifications: %w", err)
	}
	waiting := map[int]string{}
	for _, l := range links {
		if err := netlink.LinkSetUp(l); err != nil {
			return fmt.Errorf("set %s up: %w", l.Attrs().Name, err)
		}
		waiting[l.Attrs().Index] = l.Attrs().Name
	}
	operational := func(s netlink.LinkOperState) bool { return s == netlink.OperUp || s == netlink.OperUnknown }
	// The state may have changed before the subscription: look once after it.
	for i := range waiting {
		if l, err := netlink.LinkByIndex(i); err == nil && operational(l.Attrs().OperState) {
			delete(waiting, i)
		}
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for len(waiting) > 0 {
		select {
		case u := <-updates:
			if operational(u.Attrs().OperState) {
				delete(waiting, u.Attrs().Index)
			}
		case <-timer.C:
			var names []string
			for _, n := range waiting {
				names = append(names, n)
			}
			return fmt.Errorf("no carrier on %s after %s: is the cable in?", strings.Join(names, ", "), timeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// waitLinks waits up to 30 s for the interface with mac (or any ethernet interface) to appear: drivers
// probe asynchronously after their module loads.
func waitLinks(ctx context.Context, mac hwaddr.MAC) ([]netlink.Link, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		all, err := netlink.LinkList()
		if err != nil {
			return nil, err
		}
		var out []netlink.Link
		var seen []string
		for _, l := range all {
			a := l.Attrs()
			hw, ok := hwaddr.FromHardwareAddr(a.HardwareAddr)
			if a.Flags&net.FlagLoopback != 0 || !ok {
				continue
			}
			seen = append(seen, a.Name+"="+hw.String())
			if mac.IsZero() || hw == mac {
				out = append(out, l)
			}
		}
		if len(out) > 0 {
			return out, nil
		}
		if time.Now().After(deadline) {
			if !mac.IsZero() {
				return nil, fmt.Errorf("no interface with MAC %s (have %v): is its driver in the initramfs?", mac, seen)
			}
			return nil, fmt.Errorf("no ethernet interface: is its driver in the initramfs?")
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// MountRoot attaches image to a loop device, mounts it (squashfs, read-only) and puts a tmpfs overlay
// over it at newroot. On failure it undoes what it did, so that a retry starts clean.
func (l *Linux) MountRoot(image, newroot string) (err error) {
	base := l.RunDir
	if base == "" {
		base = "/run/pxejoin"
	}
	lower, rw := filepath.Join(base, "lower"), filepath.Join(base, "rw")
	for _, d := range []string{lower, rw, newroot} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	lp, err := loop.New(image, "squashfs", "")
	if err != nil {
		return fmt.Errorf("loop device for %s: %w", image, err)
	}
	undo = append(undo, func() { _ = lp.Free() })
	if _, err := lp.Mount(lower, unix.MS_RDONLY); err != nil {
		return fmt.Errorf("mount squashfs %s: %w", lp.DevName(), err)
	}
	undo = append(undo, func() { _ = unix.Unmount(lower, unix.MNT_DETACH) })
	if err := unix.Mount("tmpfs", rw, "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("mount tmpfs %s: %w", rw, err)
	}
	undo = append(undo, func() { _ = unix.Unmount(rw, unix.MNT_DETACH) })
	up, work := filepath.Join(rw, "upper"), filepath.Join(rw, "work")
	for _, d := range []string{up, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, up, work)
	if err := unix.Mount("overlay", newroot, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mount overlay at %s: %w", newroot, err)
	}
	undo = append(undo, func() { _ = unix.Unmount(newroot, unix.MNT_DETACH) })
	// Lstat: /sbin/init is an absolute symlink (→ /lib/systemd/systemd) that only resolves after
	// switch_root.
	if _, err := os.Lstat(filepath.Join(newroot, "sbin/init")); err != nil {
		return fmt.Errorf("root image has no /sbin/init: %w", err)
	}
	return nil
}

// SetHostname sets the kernel's host name.
func (l *Linux) SetHostname(name string) error { return unix.Sethostname([]byte(name)) }

// SwitchRoot moves /dev, /proc, /sys and /run into newroot, makes it / (MS_MOVE + chroot), frees the
// initramfs and execs /sbin/init (u-root's mount.SwitchRoot).
func (l *Linux) SwitchRoot(newroot string) error {
	return mount.SwitchRoot(newroot, "/sbin/init")
}

// PowerOff syncs and powers the machine off.
func (l *Linux) PowerOff() error {
	unix.Sync()
	return unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}

func (l *Linux) logf(format string, args ...any) {
	if l.Logf != nil {
		l.Logf(format, args...)
	}
}

// crngReady says whether getrandom(2) would return without blocking.
func crngReady() bool {
	var b [1]byte
	_, err := unix.Getrandom(b[:], unix.GRND_NONBLOCK)
	return !errors.Is(err, unix.EAGAIN)
}

// LinuxStorage is the machine's Storage: package disk with the initramfs's tools, ext4 and bind
// mounts.
type LinuxStorage struct{}

// Prepare runs disk.Preparer.Setup on the machine's disks.
func (LinuxStorage) Prepare(ctx context.Context, spec diskspec.Spec, reimage bool) (disk.Result, error) {
	if os.Getenv("PATH") == "" { // PID 1 gets no PATH from the kernel; the tools are in /usr/sbin
		os.Setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
	}
	return disk.Preparer{}.Setup(ctx, disk.Linux, spec, reimage)
}

// Mount mounts an ext4 partition at dir.
func (LinuxStorage) Mount(dev, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return unix.Mount(dev, dir, "ext4", 0, "")
}

// Bind bind-mounts src onto dst.
func (LinuxStorage) Bind(src, dst string) error {
	return unix.Mount(src, dst, "", unix.MS_BIND, "")
}

package fleet

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"

	"github.com/pxejoin/pxejoin/bootserver/machineapi"
	"github.com/pxejoin/pxejoin/deploy/crd"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// Machines with an address on the HA segment (HAOptions.Known): machine i of run KnownRun for
// i < Known has a Machine; the even ones reserve 10.80.3.0 + i/2 (spec.ipv4), the odd ones claim
// theirs from dhcp.ha.claims. The claims range and the reservations lie in the subnet, outside the
// pool.
const (
	KnownRun      = 1
	haClaimsStart = "10.80.1.1"
	haClaimsEnd   = "10.80.2.254"
	haReserved    = "10.80.3.0"
	// MaxKnown is what the reservations (512) and the claims range (508) hold.
	MaxKnown = 1016
)

// knownName is known machine i's Machine (and node) name.
func knownName(i int) string { return fmt.Sprintf("ha-m%04d", i) }

// reservedIP is the reservation of known machine i (even i only).
func reservedIP(i int) netip.Addr {
	b := netip.MustParseAddr(haReserved).As4()
	x := int(b[2])<<8 | int(b[3]) + i/2
	b[2], b[3] = byte(x>>8), byte(x)
	return netip.AddrFrom4(b)
}

// writeKnown installs the Machine CRD and writes a Machine for every known machine before the
// servers start.
func (h *HA) writeKnown(ctx context.Context) error {
	rc := h.opts.CP.AdminConfig()
	rc.QPS, rc.Burst = 1000, 2000
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return err
	}
	if err := crd.Install(ctx, dyn, crd.Machines, "pxejoin-fleet"); err != nil {
		return fmt.Errorf("ha: installing the Machine CRD: %w", err)
	}
	h.dyn = dyn
	for i := range h.opts.Known {
		spec := machineapi.MachineSpec{MACs: []string{haMAC(KnownRun, i).String()}, Profile: "node"}
		if i%2 == 0 {
			spec.IPv4 = reservedIP(i).String()
		}
		u, err := machineapi.ToUnstructured(&machineapi.Machine{
			TypeMeta:   metav1.TypeMeta{APIVersion: machineapi.GVK.GroupVersion().String(), Kind: machineapi.Kind},
			ObjectMeta: metav1.ObjectMeta{Name: knownName(i)}, Spec: spec,
		})
		if err == nil {
			_, err = dyn.Resource(machineapi.GVR).Create(ctx, u, metav1.CreateOptions{})
		}
		if err != nil {
			return fmt.Errorf("ha: Machine %s: %w", knownName(i), err)
		}
	}
	h.opts.logf("ha: %d Machines written (%d reserved, %d to claim)", h.opts.Known, (h.opts.Known+1)/2, h.opts.Known/2)
	return nil
}

// InPool reports whether ip is in the segment's dynamic pool (the shards'), not a reservation or
// a claim.
func InPool(ip netip.Addr) bool {
	return !ip.Less(netip.MustParseAddr(haPoolStart)) && !netip.MustParseAddr(haPoolEnd).Less(ip)
}

// CheckKnown checks the known machines against acks and their Machines: each got one address
// (whichever server answered, every time), the reserved one its spec.ipv4, a claimed one an
// address of the claims range recorded in its status.claimedIPv4; no address is two machines'.
// Machine status is written asynchronously: poll it.
func (h *HA) CheckKnown(ctx context.Context, acks []Ack) error {
	got := map[hwaddr.MAC][]netip.Addr{}
	for _, a := range acks {
		if !slices.Contains(got[a.MAC], a.IP) {
			got[a.MAC] = append(got[a.MAC], a.IP)
		}
	}
	list, err := h.dyn.Resource(machineapi.GVR).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	status := map[string]*machineapi.Machine{}
	for i := range list.Items {
		m, err := machineapi.FromUnstructured(&list.Items[i])
		if err != nil {
			return err
		}
		status[m.Name] = m
	}
	claimStart, claimEnd := netip.MustParseAddr(haClaimsStart), netip.MustParseAddr(haClaimsEnd)
	owner := map[netip.Addr]int{}
	var errs []string
	for i := range h.opts.Known {
		mac, _ := hwaddr.FromHardwareAddr(haMAC(KnownRun, i))
		ips := got[mac]
		if len(ips) != 1 {
			errs = append(errs, fmt.Sprintf("%s was ACKed %v, want one address", knownName(i), ips))
			continue
		}
		ip := ips[0]
		if j, ok := owner[ip]; ok {
			errs = append(errs, fmt.Sprintf("%s ACKed to %s and %s", ip, knownName(j), knownName(i)))
		}
		owner[ip] = i
		m := status[knownName(i)]
		switch {
		case m == nil:
			errs = append(errs, knownName(i)+": no Machine")
		case i%2 == 0 && ip != reservedIP(i):
			errs = append(errs, fmt.Sprintf("%s was ACKed %s, its spec.ipv4 is %s", knownName(i), ip, reservedIP(i)))
		case i%2 == 1 && (ip.Less(claimStart) || claimEnd.Less(ip)):
			errs = append(errs, fmt.Sprintf("%s was ACKed %s, outside the claims range %s-%s", knownName(i), ip, claimStart, claimEnd))
		case i%2 == 1 && m.Status.ClaimedIPv4 != ip.String():
			errs = append(errs, fmt.Sprintf("%s was ACKed %s, its status.claimedIPv4 is %q", knownName(i), ip, m.Status.ClaimedIPv4))
		}
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "\n"))
	}
	return nil
}

// knownConfig is the configuration's part for known machines: the Machine inventory and the
// profile they boot (images made up in dir).
func knownConfig(dir string) (string, error) {
	images := filepath.Join(dir, "images")
	if err := os.MkdirAll(images, 0o755); err != nil {
		return "", err
	}
	for _, f := range []string{"vmlinuz", "initramfs.cpio.zst"} {
		if err := os.WriteFile(filepath.Join(images, f), []byte(f), 0o644); err != nil {
			return "", err
		}
	}
	return fmt.Sprintf(`inventory: {source: kubernetes}
profiles:
  node:
    kernel: %s
    initrds: [%s]
    cmdline: console=ttyS0 pxejoin.url={{.JoinURL}} pxejoin.status={{.StatusURL}}
`, filepath.Join(images, "vmlinuz"), filepath.Join(images, "initramfs.cpio.zst")), nil
}

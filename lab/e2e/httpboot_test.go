package e2e

import (
	"context"
	"strings"
	"testing"

	"github.com/pxejoin/pxejoin/lab/vm"
)

// TestUEFIHTTPBootJoin: OVMF's own UEFI HTTP boot client (no NIC ROM, PXE off) → DHCP as
// "HTTPClient" → the boot server's offer names http://…/ipxe/ipxe.efi → HTTP GET → iPXE → script →
// kernel → a Ready Node. The boot server's TFTP root is laid out as an operator's would be: a link to
// Debian's /usr/lib/ipxe/ipxe.efi, itself a link to /boot/ipxe.efi (lab/labenv).
func TestUEFIHTTPBootJoin(t *testing.T) { extended(t); runJoin(t, joinCase{fw: vm.UEFIHTTP}) }

// Console lines of OVMF's HTTP boot (NetworkPkg/HttpBootDxe) and of iPXE.
const (
	ovmfHTTPBootStart = ">>Start HTTP Boot over IPv4"
	ovmfPXEStart      = ">>Start PXE over IPv4"
	ovmfBootFailed    = `failed to load Boot`
	ipxeBanner        = "iPXE initialising devices"
	kernelBanner      = "Linux version"
)

// watchHTTPBoot follows a UEFIHTTP VM's firmware until the kernel starts. If the firmware gives up on
// its HTTPv4 boot option (a 404 for the NBP, a refused offer) nothing else can boot: it says why and
// stops the VM at once, so the test fails in seconds, not at its timeout. Once the kernel runs it
// checks that the chain went firmware HTTP boot → iPXE → kernel (not PXE) and logs when each started.
func watchHTTPBoot(ctx context.Context, t *testing.T, v *vm.VM) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		failed := make(chan struct{})
		go func() {
			if _, err := v.Console.Wait(ctx, ovmfBootFailed); err == nil {
				close(failed)
			}
		}()
		kernel := make(chan error, 1)
		go func() { _, err := v.Console.Wait(ctx, kernelBanner); kernel <- err }()
		select {
		case <-ctx.Done():
		case <-failed:
			t.Errorf("the firmware's UEFI HTTP boot failed; console:\n%s", v.Console.Tail(20))
			v.Stop()
		case err := <-kernel:
			if err != nil {
				return
			}
			text := v.Console.Text()
			http, ipxe := strings.Index(text, ovmfHTTPBootStart), strings.Index(text, ipxeBanner)
			switch {
			case http < 0:
				t.Errorf("the firmware never started HTTP boot (no %q on the console)", ovmfHTTPBootStart)
			case strings.Contains(text, ovmfPXEStart):
				t.Errorf("the firmware tried PXE (%q): IPv4PXESupport=n was not honoured", ovmfPXEStart)
			case ipxe < http:
				t.Errorf("iPXE did not start after the firmware's HTTP boot")
			}
			for _, m := range []string{ovmfHTTPBootStart, ipxeBanner, kernelBanner} {
				if at, ok := v.Console.FirstSeen(m); ok {
					t.Logf("  %7.2fs %s", at.Seconds(), m)
				}
			}
		}
	}()
}

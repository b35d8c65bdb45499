package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pxejoin/pxejoin/lab/labenv"
	"github.com/pxejoin/pxejoin/lab/vm"
)

// TestUEFIHTTPBootJoin: OVMF's own UEFI HTTP boot client (no NIC ROM, PXE off) → DHCP as
// "HTTPClient" → the boot server's offer names http://…/ipxe/ipxe.efi → HTTP GET → iPXE → script →
// kernel → a Ready Node. The boot server's TFTP root is laid out as an operator's would be: a link to
// Debian's /usr/lib/ipxe/ipxe.efi, itself a link to /boot/ipxe.efi (lab/labenv).
func TestUEFIHTTPBootJoin(t *testing.T) { extended(t); runJoin(t, joinCase{fw: vm.UEFIHTTP}) }

// TestUEFIHTTPBootChain is the firmware half of TestUEFIHTTPBootJoin, in about a minute and without
// the control plane or the node image: OVMF's HTTP boot → GET /ipxe/ipxe.efi (the operator's link to
// Debian's file) → iPXE → script → the host's kernel starts. No cluster answers: the boot server only
// needs a kubeconfig with a CA to start.
func TestUEFIHTTPBootChain(t *testing.T) {
	extended(t)
	needRoot(t)
	bin := bootserverBin(t)
	if bin == "" {
		t.Fatal("no bootserver to test")
	}
	n := labNet(t)
	ctx := ctxFor(t, durationEnv("PXEJOIN_JOIN_TIMEOUT", 5*time.Minute))
	dir := t.TempDir()
	kernels, _ := filepath.Glob("/boot/vmlinuz-*")
	if len(kernels) == 0 {
		t.Fatal("no /boot/vmlinuz-*: run make deps (linux-image-amd64)")
	}
	img := &labenv.Image{Dir: dir, Kernel: kernels[len(kernels)-1], Initrd: filepath.Join(dir, "initrd"), Root: filepath.Join(dir, "root")}
	for _, f := range []string{img.Initrd, img.Root} {
		if err := os.WriteFile(f, []byte("not used\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mac := n.MAC(1)
	rb := &labenv.BootServer{Bin: bin, NS: n.NS, Interface: n.Bridge, Addr: n.BridgeAddr, Dir: dir,
		Kubeconfig: unreachableKubeconfig(t, dir, n.BridgeAddr), Image: img,
		Machines: map[string]string{mac.String(): "httpchain"}, Cmdline: "panic=-1"}
	if err := rb.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rb.Stop)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("bootserver log:\n%s", rb.LogTail(40))
		}
	})
	v := startVM(t, n, "httpchain", mac, vm.UEFIHTTP, 1024)
	<-watchHTTPBoot(ctx, t, v)
	if _, ok := v.Console.FirstSeen(kernelBanner); !ok {
		t.Fatalf("the kernel did not start: %v", ctx.Err())
	}
}

// unreachableKubeconfig writes a kubeconfig for an API server at addr:6443 that does not run, with a
// throwaway CA (the boot server derives the machines' CA pin from it at start).
func unreachableKubeconfig(t *testing.T, dir, addr string) string {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "lab-ca"}, IsCA: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "kubeconfig")
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: lab, cluster: {server: "https://%s:6443", certificate-authority: %q}}]
users: [{name: lab, user: {token: unused}}]
contexts: [{name: lab, context: {cluster: lab, user: lab}}]
current-context: lab
`, addr, ca)
	if err := os.WriteFile(path, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

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
// The channel returned is closed once it is done.
func watchHTTPBoot(ctx context.Context, t *testing.T, v *vm.VM) <-chan struct{} {
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
			t.Errorf("OVMF gave up on its HTTPv4 boot option (%q, the console is below): nothing else can boot", ovmfBootFailed)
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
	return done
}

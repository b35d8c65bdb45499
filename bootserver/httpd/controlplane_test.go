package httpd

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/bootserver/inventory"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

const testCertificateKey = "0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c"

// withControlPlaneProfile gives f's handler a profile "cp" (the "worker" one's files, with a
// controlPlane section whose key is in keyFile) and puts machines in it.
func withControlPlaneProfile(t *testing.T, f *fixture, keyFile string, machines ...config.Machine) {
	t.Helper()
	w := f.h.cfg.Inventory.Current().Profiles()[0] // the fixture's only profile, "worker"
	c := &config.Config{Profiles: map[string]config.Profile{
		"worker": {Kernel: w.Kernel, Initrds: w.Initrds, RootImage: w.RootImage, Cmdline: "pxejoin.url={{.JoinURL}}"},
		"cp": {Kernel: w.Kernel, Initrds: w.Initrds, RootImage: w.RootImage, Cmdline: "pxejoin.url={{.JoinURL}}",
			ControlPlane: &config.ControlPlaneProfile{CertificateKeyFile: keyFile, BindPort: 6443}},
	}, Machines: machines}
	inv, err := inventory.New(c)
	if err != nil {
		t.Fatal(err)
	}
	f.h.cfg.Inventory = inv
}

// TestControlPlaneJoinFile: a control-plane profile's machines get the controlPlane section (the
// certificate key from the file, read at every request; the advertise address their DHCP lease holds);
// an unreadable key is refused before a token is minted, counted, and the key shows nowhere but in the
// join file.
func TestControlPlaneJoinFile(t *testing.T) {
	cp1 := config.Machine{MAC: mustMAC("52:54:00:00:00:01"), Name: "cp-1", Profile: "cp"}
	w1 := config.Machine{MAC: mustMAC("52:54:00:00:00:02"), Name: "worker-1", Profile: "worker"}
	f := newFixture(t, "http://10.80.0.1:8080", 1024, false)
	keyFile := filepath.Join(f.dir, "certificate-key")
	if err := os.WriteFile(keyFile, []byte(testCertificateKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	withControlPlaneProfile(t, f, keyFile, cp1, w1)
	// httptest's requests come from 192.0.2.1, which holds cp-1's lease.
	f.h.cfg.LeaseHolder = func(ip netip.Addr) (hwaddr.MAC, bool) { return cp1.MAC, ip == netip.MustParseAddr("192.0.2.1") }

	w := get(t, f.h, "GET", "/join/52:54:00:00:00:01", nil)
	if w.Code != 200 {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	golden(t, "join-control-plane.yaml", w.Body.Bytes())

	// A worker of the same server gets no controlPlane section.
	f.h.cfg.LeaseHolder = nil
	if w := get(t, f.h, "GET", "/join/52:54:00:00:00:02", nil); w.Code != 200 || strings.Contains(w.Body.String(), "controlPlane") {
		t.Errorf("worker join file: %d\n%s", w.Code, w.Body)
	}
	// Without leases the advertise address is left to the agent (its default route's address).
	if w := get(t, f.h, "GET", "/join/52:54:00:00:00:01", nil); w.Code != 200 || strings.Contains(w.Body.String(), "advertiseAddress") {
		t.Errorf("join file without leases: %d\n%s", w.Code, w.Body)
	}

	// A new key is used without a restart; a key file that became unreadable is refused before minting.
	const newKey = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"
	os.WriteFile(keyFile, []byte(newKey), 0o600)
	if w := get(t, f.h, "GET", "/join/52:54:00:00:00:01", nil); !strings.Contains(w.Body.String(), "certificateKey: "+newKey) {
		t.Errorf("the new key is not served:\n%s", w.Body)
	}
	f.tokens.mu.Lock()
	minted := len(f.tokens.issued)
	f.tokens.mu.Unlock()
	os.WriteFile(keyFile, []byte("not a key: "+newKey[:40]), 0o600)
	w = get(t, f.h, "GET", "/join/52:54:00:00:00:01", nil)
	if w.Code != 503 || !strings.Contains(w.Body.String(), "cannot read this machine's control-plane certificate key") {
		t.Errorf("unreadable key: %d %s", w.Code, w.Body)
	}
	if got := testutil.ToFloat64(f.h.gate.refused.WithLabelValues(JoinRefusedNoCertificateKey)); got != 1 {
		t.Errorf("no-certificate-key refusals %v, want 1", got)
	}
	f.tokens.mu.Lock()
	if len(f.tokens.issued) != minted {
		t.Errorf("a refused join file minted a token")
	}
	f.tokens.mu.Unlock()
	if !strings.Contains(f.logs.String(), "does not hold 64 hex digits") {
		t.Errorf("the log does not say what is wrong with the key file:\n%s", f.logs)
	}

	for name, out := range map[string]string{
		"logs":     f.logs.String(),
		"machines": get(t, f.h, "GET", "/machines", nil).Body.String(),
		"page":     get(t, f.h, "GET", "/", nil).Body.String(),
		"fleet":    get(t, f.h, "GET", "/fleet.json", nil).Body.String(),
		"machine":  get(t, f.h, "GET", "/machine/52:54:00:00:00:01", nil).Body.String(),
		"metrics":  get(t, f.h, "GET", "/metrics", nil).Body.String(),
	} {
		for _, k := range []string{testCertificateKey, newKey[:40]} {
			if strings.Contains(out, k) {
				t.Errorf("the certificate key appears in %s", name)
			}
		}
	}
}

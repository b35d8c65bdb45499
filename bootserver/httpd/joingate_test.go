package httpd

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/bootserver/status"
	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// TestJoinOncePerBoot: with OncePerBoot a join file is handed out once per boot; a second fetch
// is refused with the reason and counted, until the agent reports a failed join or the machine
// boots again.
func TestJoinOncePerBoot(t *testing.T) {
	known := config.Machine{MAC: mustMAC("52:54:00:00:00:01"), Name: "worker-1", Profile: "worker"}
	f := newFixture(t, "http://10.80.0.1:8080", 1024, false, known)
	f.h.cfg.OncePerBoot = true
	const path = "/join/52:54:00:00:00:01"
	fetch := func(want int) string {
		t.Helper()
		w := get(t, f.h, "GET", path, nil)
		if w.Code != want {
			t.Fatalf("GET %s: %d %s, want %d", path, w.Code, w.Body, want)
		}
		return w.Body.String()
	}
	fetch(200)
	if body := fetch(409); !strings.Contains(body, "once per boot") || !strings.Contains(body, "reboot") {
		t.Errorf("refusal: %q", body)
	}
	if got := testutil.ToFloat64(f.h.gate.refused.WithLabelValues(JoinRefusedAlreadyServed)); got != 1 {
		t.Errorf("already-served refusals %v", got)
	}
	// The agent's join failed: it fetches again, and gets the file once more.
	report, _ := json.Marshal([]bootstatus.Event{{Phase: "join", State: bootstatus.StateError, Error: "discovery timed out", Attempt: 1}})
	if w := get(t, f.h, "POST", "/status/52:54:00:00:00:01", report); w.Code/100 != 2 {
		t.Fatalf("status: %d %s", w.Code, w.Body)
	}
	fetch(200)
	fetch(409)
	// A new boot gets a new join file.
	mac := known.MAC
	f.store.Record(mac, status.Event{Event: bootstatus.Event{Phase: status.PhaseScript, State: bootstatus.StateDone}, Source: status.SourceHTTP})
	f.store.Record(mac, status.Event{Event: bootstatus.Event{Phase: status.PhaseDHCP, State: bootstatus.StateStart}, Source: status.SourceDHCP, StartsBoot: true})
	fetch(200)
	if a, ok := f.h.JoinAddr(mac); !ok || a != netip.MustParseAddr("192.0.2.1") {
		t.Errorf("JoinAddr = %v %v", a, ok)
	}
}

// TestJoinLeaseHolder: with LeaseHolder a join file goes only to the address holding the MAC's lease.
func TestJoinLeaseHolder(t *testing.T) {
	a := config.Machine{MAC: mustMAC("52:54:00:00:00:01"), Name: "worker-1", Profile: "worker"}
	b := config.Machine{MAC: mustMAC("52:54:00:00:00:02"), Name: "worker-2", Profile: "worker"}
	f := newFixture(t, "http://10.80.0.1:8080", 1024, false, a, b)
	// httptest's requests come from 192.0.2.1: it holds a's lease.
	f.h.cfg.LeaseHolder = func(ip netip.Addr) (hwaddr.MAC, bool) {
		return a.MAC, ip == netip.MustParseAddr("192.0.2.1")
	}
	if w := get(t, f.h, "GET", "/join/52:54:00:00:00:01", nil); w.Code != 200 {
		t.Errorf("the lease holder: %d %s", w.Code, w.Body)
	}
	w := get(t, f.h, "GET", "/join/52:54:00:00:00:02", nil)
	if w.Code != 403 || !strings.Contains(w.Body.String(), "DHCP lease") {
		t.Errorf("another machine's join file: %d %s", w.Code, w.Body)
	}
	if got := testutil.ToFloat64(f.h.gate.refused.WithLabelValues(JoinRefusedNotLeaseHolder)); got != 1 {
		t.Errorf("not-lease-holder refusals %v", got)
	}
	f.tokens.mu.Lock()
	defer f.tokens.mu.Unlock()
	if len(f.tokens.issued) != 1 {
		t.Errorf("tokens minted: %d (a refused join file mints none)", len(f.tokens.issued))
	}
}

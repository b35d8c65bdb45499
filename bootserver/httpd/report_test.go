package httpd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/bootserver/status"
	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/lab/netlab"
	"github.com/pxejoin/pxejoin/lab/testenv"
)

// TestStatusBacklog sends an agent's backlog of 600 events, then a batch the server refuses, through the
// protocol's client to the real handler over loopback: every valid event is accepted, and the refusal
// shows in the machine's timeline as a status-dropped error.
func TestStatusBacklog(t *testing.T) {
	f := newFixture(t, "http://10.80.0.1:8080", 1024, false)
	var mu sync.Mutex
	accepted, posts := 0, 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		rec := httptest.NewRecorder()
		f.h.ServeHTTP(rec, r)
		var evs []json.RawMessage
		_ = json.Unmarshal(body, &evs)
		mu.Lock()
		posts++
		if rec.Code == http.StatusNoContent {
			accepted += len(evs)
		}
		mu.Unlock()
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
	}))
	defer srv.Close()
	const mac = "52:54:00:00:00:42"
	c := &bootstatus.Client{URL: srv.URL + "/status/" + mac}
	evs := make([]bootstatus.Event, 600)
	for i := range evs {
		evs[i] = bootstatus.Event{Phase: bootstatus.PhaseNetwork, State: bootstatus.StateStart, Detail: fmt.Sprint("try ", i)}
	}
	if n, err := c.Send(context.Background(), evs); err != nil || n != len(evs) {
		t.Fatalf("sent %d of %d: %v", n, len(evs), err)
	}
	if accepted != 600 || posts != 3 {
		t.Fatalf("%d events accepted in %d POSTs, want 600 in 3", accepted, posts)
	}
	m, _ := f.store.Get(mustMAC(mac))
	if m.LastPhase != bootstatus.PhaseNetwork || m.Phases[0].Detail != "try 599" {
		t.Fatalf("timeline: %+v", m)
	}

	// A batch with an invalid event is refused (400): dropped, and said in the next POST.
	bad := []bootstatus.Event{{Phase: bootstatus.PhaseJoin, State: "running"}}
	if n, err := c.Send(context.Background(), bad); err != nil || n != 1 {
		t.Fatalf("sent %d: %v", n, err)
	}
	m, _ = f.store.Get(mustMAC(mac))
	if m.LastPhase != bootstatus.PhaseStatusDropped || m.LastState != bootstatus.StateError {
		t.Fatalf("timeline after the refusal: %+v", m)
	}
	p := m.Phases[len(m.Phases)-1]
	if !strings.Contains(p.Error, "1 status events were dropped; the last because the boot server refused them: 400 event 0: state must be one of") {
		t.Errorf("status-dropped error: %q", p.Error)
	}
	metrics := get(t, f.h, "GET", "/metrics", nil).Body.String()
	if !strings.Contains(metrics, `pxejoin_status_reports_rejected_total{reason="invalid-event"} 1`) {
		t.Errorf("refusal not counted:\n%s", grep(metrics, "rejected"))
	}
}

// TestStatusFloodOverLink posts status reports from more unknown MACs than their timeline budget, over
// a veth pair between two namespaces, around an inventory machine's boot: the inventory machine keeps
// its timeline and its reports are accepted, and unknown timelines stay within the budget (evictions
// counted in /metrics).
func TestStatusFloodOverLink(t *testing.T) {
	testenv.RequireRoot(t)
	const inv = "52:54:00:00:00:01"
	f := newFixture(t, "http://10.89.0.1:8080", 1024, false, config.Machine{MAC: mustMAC(inv), Profile: "worker"})
	srvNS, cliNS := netlab.New(t, "bsst"), netlab.New(t, "bsct")
	netlab.Veth(t, srvNS, "eth0", "10.89.0.1/24", cliNS, "eth0", "10.89.0.2/24")
	var ln net.Listener
	if err := srvNS.Do(func() (err error) { ln, err = net.Listen("tcp", "10.89.0.1:8080"); return err }); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: f.h}
	go srv.Serve(ln)
	defer srv.Close()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		err = cliNS.Do(func() error { c, err = (&net.Dialer{}).DialContext(ctx, network, addr); return err })
		return c, err
	}}}
	post := func(mac string, ev bootstatus.Event) {
		t.Helper()
		c := &bootstatus.Client{URL: "http://10.89.0.1:8080/status/" + mac, HTTP: hc}
		if n, err := c.Send(context.Background(), []bootstatus.Event{ev}); err != nil || n != 1 {
			t.Fatalf("status of %s: %v", mac, err)
		}
	}
	// The inventory machine fetches its script (the boot server learns it is known) and starts its join.
	resp, err := hc.Get("http://10.89.0.1:8080/boot/" + inv + ".ipxe")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("script: %v %v", resp, err)
	}
	resp.Body.Close()
	post(inv, bootstatus.Event{Phase: bootstatus.PhaseAgentStart, State: bootstatus.StateDone})
	const flood = status.DefaultMaxUnknown + 200
	for i := range flood {
		post(fmt.Sprintf("02:00:00:00:%02x:%02x", i>>8, i&0xff), bootstatus.Event{Phase: "preflight", State: bootstatus.StateStart})
		if i == flood/2 {
			post(inv, bootstatus.Event{Phase: "preflight", State: bootstatus.StateDone})
		}
	}
	post(inv, bootstatus.Event{Phase: bootstatus.PhaseSwitchRoot, State: bootstatus.StateStart})
	m, ok := f.store.Get(mustMAC(inv))
	if !ok || !m.Known || len(m.Phases) != 4 || m.LastPhase != bootstatus.PhaseSwitchRoot {
		t.Fatalf("inventory machine's timeline after the flood: %+v", m)
	}
	if n := len(f.store.All()); n != status.DefaultMaxUnknown+1 {
		t.Errorf("%d timelines, want %d unknown + 1", n, status.DefaultMaxUnknown)
	}
	metrics := get(t, f.h, "GET", "/metrics", nil).Body.String()
	if want := fmt.Sprintf("pxejoin_status_unknown_evicted_total %d", flood-status.DefaultMaxUnknown); !strings.Contains(metrics, want) {
		t.Errorf("evictions not counted (want %q):\n%s", want, grep(metrics, "pxejoin_status_unknown"))
	}
}

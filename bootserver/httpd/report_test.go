package httpd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/pxejoin/pxejoin/internal/bootstatus"
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
	m, _ := f.store.Get(mac)
	if m.LastPhase != bootstatus.PhaseNetwork || m.Phases[0].Detail != "try 599" {
		t.Fatalf("timeline: %+v", m)
	}

	// A batch with an invalid event is refused (400): dropped, and said in the next POST.
	bad := []bootstatus.Event{{Phase: bootstatus.PhaseJoin, State: "running"}}
	if n, err := c.Send(context.Background(), bad); err != nil || n != 1 {
		t.Fatalf("sent %d: %v", n, err)
	}
	m, _ = f.store.Get(mac)
	if m.LastPhase != bootstatus.PhaseStatusDropped || m.LastState != bootstatus.StateError {
		t.Fatalf("timeline after the refusal: %+v", m)
	}
	p := m.Phases[len(m.Phases)-1]
	if !strings.Contains(p.Error, "refused 1 status events: 400 event 0: state must be one of") {
		t.Errorf("status-dropped error: %q", p.Error)
	}
	metrics := get(t, f.h, "GET", "/metrics", nil).Body.String()
	if !strings.Contains(metrics, `pxejoin_status_reports_rejected_total{reason="invalid-event"} 1`) {
		t.Errorf("refusal not counted:\n%s", grep(metrics, "rejected"))
	}
}

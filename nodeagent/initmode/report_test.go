package initmode

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pxejoin/pxejoin/internal/bootstatus"
)

// TestReporterBacklog queues more events than one POST may carry (the agent's whole queue, as when the
// boot server was away), more than the queue holds, and a few the server refuses: every other event
// arrives, in order, and what was dropped (trimmed from the queue, or a refused batch, which used to
// block the queue for good) is reported first.
func TestReporterBacklog(t *testing.T) {
	var mu sync.Mutex
	var got []bootstatus.Event
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The boot server's limits (bootserver/httpd/report.go).
		var evs []bootstatus.Event
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, bootstatus.MaxBody)).Decode(&evs); err != nil {
			http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
			return
		}
		if len(evs) > bootstatus.MaxEvents {
			http.Error(w, "too many events", http.StatusBadRequest)
			return
		}
		for i := range evs {
			if evs[i].Phase == "refused" {
				http.Error(w, "refused", http.StatusBadRequest)
				return
			}
		}
		mu.Lock()
		got = append(got, evs...)
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	tests := []struct {
		name        string
		events      int
		refuseAt    int // -1: none
		wantRefused int
	}{
		{"a full queue", maxQueue, -1, 0},
		{"more than the queue holds", 600, -1, 0}, // the oldest 88 go before the network is up
		{"a refused event", 300, 5, bootstatus.MaxEvents},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			got = nil
			mu.Unlock()
			r := &Reporter{URL: srv.URL, RetryEvery: 10 * time.Millisecond}
			for i := range tc.events {
				ev := bootstatus.Event{Phase: bootstatus.PhaseNetwork, State: bootstatus.StateStart, Detail: fmt.Sprint(i)}
				if i == tc.refuseAt {
					ev.Phase = "refused"
				}
				r.Report(context.Background(), ev)
			}
			r.SetOnline(true)
			if !r.Drain(context.Background(), time.Minute) {
				t.Fatalf("%d events still queued", r.Pending())
			}
			mu.Lock()
			defer mu.Unlock()
			trimmed := max(0, tc.events-maxQueue)
			kept := min(tc.events, maxQueue) - tc.wantRefused
			first := trimmed + tc.wantRefused
			if dropped := trimmed + tc.wantRefused; dropped > 0 {
				if len(got) == 0 || got[0].Phase != bootstatus.PhaseStatusDropped || got[0].Detail != fmt.Sprint(dropped, " events") {
					t.Fatalf("no status-dropped event for %d events first: %+v", dropped, got[:min(1, len(got))])
				}
				got = got[1:]
			}
			if len(got) != kept {
				t.Fatalf("%d events arrived, want %d", len(got), kept)
			}
			for i, e := range got {
				if e.Detail != fmt.Sprint(first+i) {
					t.Fatalf("event %d is %q, want %d", i, e.Detail, first+i)
				}
			}
		})
	}
}

// TestReporterFallsBack: the boot server of pxejoin.status= is dead (nothing listens), fails (503)
// or holds the POST without answering: the reports go to the next server of pxejoin.servers=, every
// one, in order, and later reports go there straight away (the broken server sees one POST).
func TestReporterFallsBack(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String()
	ln.Close()
	tests := []struct {
		name  string
		first func(w http.ResponseWriter, r *http.Request, release <-chan struct{}) // nil: dead
	}{
		{"connection refused", nil},
		{"503", func(w http.ResponseWriter, r *http.Request, _ <-chan struct{}) {
			http.Error(w, "cannot store the events", http.StatusServiceUnavailable)
		}},
		// The Reporter's POST gives up after its 5 s; the next one goes to the next server.
		{"no answer", func(w http.ResponseWriter, r *http.Request, release <-chan struct{}) { <-release }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			first := dead
			var firstPosts atomic.Int32
			if tc.first != nil {
				release := make(chan struct{})
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					firstPosts.Add(1)
					tc.first(w, r, release)
				}))
				defer srv.Close()
				defer close(release)
				first = srv.URL
			}
			var mu sync.Mutex
			var got []string
			next := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/status/m" {
					t.Errorf("status posted to %s, want /status/m", r.URL.Path)
				}
				var evs []bootstatus.Event
				if err := json.NewDecoder(r.Body).Decode(&evs); err != nil {
					t.Errorf("status body: %v", err)
				}
				mu.Lock()
				for _, e := range evs {
					got = append(got, e.Detail)
				}
				mu.Unlock()
				w.WriteHeader(http.StatusNoContent)
			}))
			defer next.Close()

			cl := Cmdline{JoinURL: first + "/join/m", Servers: []string{next.URL}}
			r := &Reporter{URL: first + "/status/m", Mirrors: cl.Mirrors(first + "/status/m")[1:], RetryEvery: 10 * time.Millisecond}
			r.SetOnline(true)
			var want []string
			for batch := range 3 {
				for i := range 5 {
					d := fmt.Sprintf("event %d.%d", batch, i)
					want = append(want, d)
					r.Report(context.Background(), bootstatus.Event{Phase: bootstatus.PhaseNetwork, State: bootstatus.StateStart, Detail: d})
				}
				if !r.Drain(context.Background(), time.Minute) {
					t.Fatalf("batch %d: %d events not delivered", batch, r.Pending())
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if strings.Join(got, ",") != strings.Join(want, ",") {
				t.Fatalf("the next server got %v\nwant %v", got, want)
			}
			if tc.first != nil && firstPosts.Load() != 1 {
				t.Errorf("the broken server saw %d POSTs, want 1", firstPosts.Load())
			}
		})
	}
}

package initmode

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
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

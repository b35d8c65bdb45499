package bootstatus

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// limitServer answers as the boot server does: 413 past MaxBody, 400 past MaxEvents or for an
// invalid event, 400 for any event whose phase is in refuse; 503 while down is set. It keeps what it
// accepted, POST by POST.
type limitServer struct {
	mu     sync.Mutex
	posts  [][]Event
	refuse map[string]bool
	down   bool
}

func (s *limitServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.down {
		http.Error(w, "restarting", http.StatusServiceUnavailable)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		http.Error(w, "too large", http.StatusRequestEntityTooLarge)
		return
	}
	var evs []Event
	if err := json.Unmarshal(body, &evs); err != nil || len(evs) == 0 || len(evs) > MaxEvents {
		http.Error(w, fmt.Sprintf("send 1 to %d events", MaxEvents), http.StatusBadRequest)
		return
	}
	for i := range evs {
		if err := evs[i].Validate(); err != nil || s.refuse[evs[i].Phase] {
			http.Error(w, fmt.Sprintf("event %d: refused", i), http.StatusBadRequest)
			return
		}
	}
	s.posts = append(s.posts, evs)
	w.WriteHeader(http.StatusNoContent)
}

func (s *limitServer) details() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, p := range s.posts {
		for _, e := range p {
			out = append(out, e.Detail)
		}
	}
	return out
}

func events(n int, detail int) []Event {
	evs := make([]Event, n)
	for i := range evs {
		d := fmt.Sprintf("%d ", i)
		evs[i] = Event{Phase: PhaseNetwork, State: StateStart, Time: time.Unix(1700000000, 0), Detail: d + strings.Repeat("x", max(0, detail-len(d)))}
	}
	return evs
}

// TestClientChunks sends backlogs larger than one POST may hold, by count and by size: every event
// arrives, in order, and no POST is past a limit.
func TestClientChunks(t *testing.T) {
	tests := []struct {
		name   string
		n      int
		detail int
		posts  int // 0: as few as the body limit allows
	}{
		{"one event", 1, 0, 1},
		{"exactly MaxEvents", MaxEvents, 0, 1},
		{"600 small events", 600, 0, 3},
		{"600 events at the detail limit", 600, MaxDetail, 0},
		{"events of escaped characters", 100, MaxDetail, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := &limitServer{}
			hs := httptest.NewServer(srv)
			defer hs.Close()
			evs := events(tc.n, tc.detail)
			if strings.Contains(tc.name, "escaped") {
				for i := range evs {
					d := fmt.Sprintf("%d ", i)
					evs[i].Detail = d + strings.Repeat("<", tc.detail-len(d)) // "\u003c" in JSON
				}
			}
			c := &Client{URL: hs.URL}
			n, err := c.Send(context.Background(), evs)
			if err != nil || n != tc.n {
				t.Fatalf("sent %d of %d: %v", n, tc.n, err)
			}
			var want []string
			for _, e := range evs {
				want = append(want, e.Detail)
			}
			if got := srv.details(); strings.Join(got, ",") != strings.Join(want, ",") {
				t.Fatalf("delivered %d events, want %d in order", len(got), len(want))
			}
			if tc.posts == 0 { // the events have the same size, give or take a digit
				js, _ := json.Marshal(evs[len(evs)-1])
				perPost := (MaxBody - 1) / (len(js) + 1)
				tc.posts = (tc.n + perPost - 1) / perPost
			}
			if len(srv.posts) != tc.posts {
				t.Errorf("%d POSTs, want %d", len(srv.posts), tc.posts)
			}
		})
	}
}

// TestClientDropsRefused: a batch refused with a 4xx is dropped, not retried, and the next POST says
// so; a 5xx or a network error leaves the events to send again.
func TestClientDropsRefused(t *testing.T) {
	srv := &limitServer{refuse: map[string]bool{"bad": true}}
	hs := httptest.NewServer(srv)
	defer hs.Close()
	c := &Client{URL: hs.URL}
	ctx := context.Background()

	// 300 events, one refused: the first POST (256 events) is dropped, the other 44 arrive, after a
	// status-dropped event.
	evs := events(300, 0)
	evs[10].Phase = "bad"
	if n, err := c.Send(ctx, evs); err != nil || n != 300 {
		t.Fatalf("sent %d: %v", n, err)
	}
	if len(srv.posts) != 1 || len(srv.posts[0]) != 45 {
		t.Fatalf("posts: %d", len(srv.posts))
	}
	d := srv.posts[0][0]
	if d.Phase != PhaseStatusDropped || d.State != StateError || d.Detail != "256 events" ||
		d.Error != "256 status events were dropped; the last because the boot server refused them: 400 event 10: refused" {
		t.Fatalf("status-dropped event: %+v", d)
	}
	if srv.posts[0][1].Detail != "256 " {
		t.Fatalf("first event after the drop: %+v", srv.posts[0][1])
	}

	// A refusal at the end of a backlog is reported by a POST of its own.
	if n, err := c.Send(ctx, []Event{{Phase: "bad", State: StateDone}}); err != nil || n != 1 {
		t.Fatalf("sent %d: %v", n, err)
	}
	if last := srv.posts[len(srv.posts)-1]; len(last) != 1 || last[0].Phase != PhaseStatusDropped || last[0].Detail != "1 events" {
		t.Fatalf("last post: %+v", last)
	}

	// The server is down: nothing is done with, the events are kept for the next try.
	srv.down = true
	if n, err := c.Send(ctx, events(3, 0)); err == nil || n != 0 {
		t.Fatalf("sent %d to a server answering 503: %v", n, err)
	}
	srv.down = false
	if n, err := c.Send(ctx, events(3, 0)); err != nil || n != 3 {
		t.Fatalf("sent %d: %v", n, err)
	}
	hs.Close()
	if n, err := c.Send(ctx, events(3, 0)); err == nil || n != 0 {
		t.Fatalf("sent %d to a closed server: %v", n, err)
	}
}

// TestKnown: every name in this package is a known phase, and nothing else is.
func TestKnown(t *testing.T) {
	for _, p := range append([]string{PhaseDHCP, PhaseNodeRegistered, PhaseStatusDropped, PhaseJoin, "kubelet-start/tls-bootstrap"}, JoinPhases...) {
		if !Known(p) {
			t.Errorf("%s is not known", p)
		}
	}
	for _, p := range []string{"", "other", "kubelet-start/", "x"} {
		if Known(p) {
			t.Errorf("%q is known", p)
		}
	}
}

func TestTruncate(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"0123456789abc", 10, "0123456..."},
		{"ééééé", 8, "éé..."}, // never half a character
	} {
		if got := Truncate(tc.in, tc.n); got != tc.want {
			t.Errorf("Truncate(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
}

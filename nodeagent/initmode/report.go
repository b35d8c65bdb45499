package initmode

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/pxejoin/pxejoin/bootstatus"
)

// Reporter sends bootstatus events to the boot server. Events wait in a queue while the network is not
// up or the boot server does not answer (e.g. it restarts), and go out in order with the next report.
// Secrets registered with AddSecret never leave the machine.
type Reporter struct {
	URL    string
	Client *http.Client
	// Log, if set, sees every event (the console).
	Log func(bootstatus.Event)

	mu      sync.Mutex
	queue   []bootstatus.Event
	secrets []string
	online  bool
}

// maxQueue bounds the events kept while the boot server is unreachable (the oldest go first).
const maxQueue = 512

// AddSecret registers a string (a token, a key) to be replaced by "<redacted>" in every event.
func (r *Reporter) AddSecret(s string) {
	if len(s) < 4 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.secrets = append(r.secrets, s)
	// A bootstrap token's secret half can appear on its own.
	if _, sec, ok := strings.Cut(s, "."); ok && len(sec) >= 8 {
		r.secrets = append(r.secrets, sec)
	}
}

// Redact replaces the registered secrets in s.
func (r *Reporter) Redact(s string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, sec := range r.secrets {
		s = strings.ReplaceAll(s, sec, "<redacted>")
	}
	return s
}

// SetOnline says whether the network is up; reports before that are only queued.
func (r *Reporter) SetOnline(on bool) {
	r.mu.Lock()
	r.online = on
	r.mu.Unlock()
}

// Report queues an event (redacted, timestamped if it has no time) and tries to send the queue.
func (r *Reporter) Report(ctx context.Context, ev bootstatus.Event) {
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	ev.Error = truncate(r.Redact(ev.Error), 4096)
	ev.Detail = truncate(r.Redact(ev.Detail), 1024)
	if r.Log != nil {
		r.Log(ev)
	}
	r.mu.Lock()
	r.queue = append(r.queue, ev)
	if len(r.queue) > maxQueue {
		r.queue = r.queue[len(r.queue)-maxQueue:]
	}
	r.mu.Unlock()
	r.Flush(ctx)
}

// Flush sends the queued events if the network is up; it returns whether the queue is empty.
func (r *Reporter) Flush(ctx context.Context) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.queue) == 0 {
		return true
	}
	if r.URL == "" {
		r.queue = nil
		return true
	}
	if !r.online {
		return false
	}
	hc := r.Client
	if hc == nil {
		hc = http.DefaultClient
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := bootstatus.Post(ctx, hc, r.URL, r.queue...); err != nil {
		return false
	}
	r.queue = nil
	return true
}

// Pending is the number of events not yet delivered.
func (r *Reporter) Pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.queue)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

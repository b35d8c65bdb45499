package initmode

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/pxejoin/pxejoin/internal/bootstatus"
)

// Reporter sends bootstatus events to the boot server. Report only queues: a sender goroutine posts
// what is queued in the background, in order, batching what piled up during the previous post, so a
// slow or absent boot server never holds up the boot (each post used to cost the agent a round trip).
// Events wait in the queue while the network is not up or the boot server does not answer (e.g. it
// restarts); Flush sends synchronously (before switch_root). A backlog goes out in POSTs within the
// protocol's limits, and events the server refuses (4xx) are dropped and reported as such
// (bootstatus.Client), so the queue always drains. When the boot server dies, the reports go to
// the next of the others (Mirrors). Secrets registered with AddSecret never leave the
// machine.
type Reporter struct {
	URL string
	// Mirrors are URL's path on the other boot servers (pxejoin.servers=): reports go to the next
	// of them when URL's server does not answer or answers a 5xx, and stay with the one that
	// answers (bootstatus.Client.Mirrors).
	Mirrors []string
	Client  *http.Client
	// Log, if set, sees every event (the console).
	Log func(bootstatus.Event)
	// RetryEvery is how often the sender retries a failed post while online (default 1 s).
	RetryEvery time.Duration

	mu      sync.Mutex
	queue   []bootstatus.Event
	base    uint64 // sequence number of queue[0]
	lost    int    // events trimmed from a full queue, not yet reported
	secrets []string
	online  bool

	sendMu sync.Mutex        // one post at a time, so events arrive in order
	client bootstatus.Client // under sendMu
	start  sync.Once
	kick   chan struct{}
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
	if on {
		r.wake()
	}
}

// Report queues an event (redacted, timestamped if it has no time) for the sender.
func (r *Reporter) Report(ctx context.Context, ev bootstatus.Event) {
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	ev.Error = bootstatus.Truncate(r.Redact(ev.Error), bootstatus.MaxError)
	ev.Detail = bootstatus.Truncate(r.Redact(ev.Detail), bootstatus.MaxDetail)
	if r.Log != nil {
		r.Log(ev)
	}
	r.mu.Lock()
	r.queue = append(r.queue, ev)
	if over := len(r.queue) - maxQueue; over > 0 {
		r.queue = r.queue[over:]
		r.base += uint64(over)
		r.lost += over
	}
	r.mu.Unlock()
	r.wake()
}

// wake starts the sender on first use and tells it there is work.
func (r *Reporter) wake() {
	r.start.Do(func() {
		r.kick = make(chan struct{}, 1)
		go r.sender()
	})
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// sender posts the queue whenever kicked, and retries while online and something is left.
func (r *Reporter) sender() {
	every := r.RetryEvery
	if every <= 0 {
		every = time.Second
	}
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	for {
		select {
		case <-r.kick:
		case <-retry.C:
		}
		if !r.Flush(context.Background()) && r.isOnline() {
			retry.Reset(every)
		}
	}
}

func (r *Reporter) isOnline() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.online
}

// Flush sends the queued events if the network is up; it returns whether the queue is empty.
func (r *Reporter) Flush(ctx context.Context) bool {
	r.sendMu.Lock()
	defer r.sendMu.Unlock()
	r.mu.Lock()
	if len(r.queue) == 0 {
		r.mu.Unlock()
		return true
	}
	if r.URL == "" {
		r.base += uint64(len(r.queue))
		r.queue = nil
		r.mu.Unlock()
		return true
	}
	if !r.online {
		r.mu.Unlock()
		return false
	}
	batch := append([]bootstatus.Event(nil), r.queue...)
	start := r.base
	r.client.Drop(r.lost, fmt.Sprintf("the agent keeps at most %d while the boot server is unreachable", maxQueue))
	r.lost = 0
	r.mu.Unlock()

	r.client.URL, r.client.Mirrors, r.client.HTTP = r.URL, r.Mirrors, r.Client
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	n, err := r.client.Send(ctx, batch)
	r.mu.Lock()
	defer r.mu.Unlock()
	// Drop what was delivered or refused; events queued during the post stay (some of the batch may
	// have been trimmed by maxQueue meanwhile).
	if end := start + uint64(n); end > r.base {
		r.queue = r.queue[min(int(end-r.base), len(r.queue)):]
		r.base = end
	}
	return err == nil && len(r.queue) == 0
}

// Drain flushes until the queue is empty, retrying every RetryEvery, for at most d; it returns whether
// everything was delivered.
func (r *Reporter) Drain(ctx context.Context, d time.Duration) bool {
	every := r.RetryEvery
	if every <= 0 {
		every = time.Second
	}
	deadline := time.Now().Add(d)
	for !r.Flush(ctx) {
		if time.Now().Add(every).After(deadline) {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(every):
		}
	}
	return true
}

// Pending is the number of events not yet delivered.
func (r *Reporter) Pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.queue)
}

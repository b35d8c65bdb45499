// Package statussync writes the boot timelines to Machine.status: server-side apply (field manager
// FieldManager, forced) through a queue that holds one entry per machine however often it changes,
// so that a write carries the latest timeline rather than each event. Important changes (a new
// boot, an error, the node registered or ready) are written first and at once; the others once
// they have waited Options.Delay, so a clean boot costs about three writes. The rate of writes is
// the client's budget (config api.statusWrites, client-go's rate limiter).
//
// The local store (bootserver/status) stays the durable record: an API outage only delays the
// writes (the failed ones stay queued, retried with a backoff), and the latest timeline is written
// once the API answers again. Only machines that have a Machine object get writes: the writer never
// creates one (a 404 drops the write, counted; the machine is asked about again after a minute).
//
// Boot count: Machine.status.boot counts the machine's boots across servers. At first sight of a
// machine the writer reads its Machine; if status.boot there counts boots this server has not seen
// (another server served them, or this server's store is new), the local count is offset so that
// the next boot continues from the cluster's number. A boot whose bootStarted matches the one in
// the API (written by this server) is the same boot, not a new one. A boot that moves to another
// server midway is counted twice.
package statussync

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"github.com/pxejoin/pxejoin/bootserver/machineapi"
	"github.com/pxejoin/pxejoin/bootserver/ratelog"
	"github.com/pxejoin/pxejoin/bootserver/status"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// FieldManager is the server-side apply field manager of the status writes.
const FieldManager = "pxejoin-bootserver"

// Defaults of Options.
const (
	DefaultDelay    = 10 * time.Second
	DefaultWorkers  = 4
	DefaultMaxQueue = 4096
	// absentFor is how long a machine without a Machine object is not asked about again.
	absentFor = time.Minute
	// maxBackoff is the longest a worker waits after a failed write before the next one.
	maxBackoff = 5 * time.Second
)

// Timelines is what the writer reads of the local store.
type Timelines interface {
	Get(mac hwaddr.MAC) (status.Machine, bool)
}

// Options configure a Writer.
type Options struct {
	// Client writes Machines' status; its rate limiter is the writes' budget.
	Client dynamic.Interface
	// Timelines is the local store.
	Timelines Timelines
	// NameOf is the Machine name (node name) of an inventory machine; false for others.
	NameOf func(hwaddr.MAC) (string, bool)
	// ServerName is status.servedBy.
	ServerName string
	// MaxQueue bounds the machines waiting for a write; past it a change is dropped and counted.
	// Default DefaultMaxQueue.
	MaxQueue int
	// Delay is how long an unimportant change waits, so that the next ones join it in one write.
	// Default DefaultDelay.
	Delay time.Duration
	// Workers is how many writes may be under way at once; default DefaultWorkers.
	Workers int
	// Logger; default discards.
	Logger *slog.Logger
	// Registerer gets the pxejoin_status_sync_* metrics.
	Registerer prometheus.Registerer
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Writer writes Machine.status. Changed queues a machine; Run writes.
type Writer struct {
	opts     Options
	log      *slog.Logger
	warn     *ratelog.Logger
	q        *queue
	failures atomic.Int32 // failed writes in a row (all workers)

	mu       sync.Mutex
	machines map[hwaddr.MAC]*machine // inventory machines seen

	writes  *prometheus.CounterVec
	dropped *prometheus.CounterVec
	lag     prometheus.Histogram
}

// machine is what the writer keeps of a machine between writes.
type machine struct {
	read        bool      // its Machine was read (offset and last are set)
	absentUntil time.Time // no Machine object: not asked about again before
	offset      int       // cluster-wide boot = local boot + offset
	last        *machineapi.MachineStatus
}

// New makes a writer and registers its metrics.
func New(opts Options) (*Writer, error) {
	if opts.Client == nil || opts.Timelines == nil || opts.NameOf == nil {
		return nil, errors.New("statussync: Client, Timelines and NameOf are required")
	}
	if opts.MaxQueue <= 0 {
		opts.MaxQueue = DefaultMaxQueue
	}
	if opts.Delay <= 0 {
		opts.Delay = DefaultDelay
	}
	if opts.Workers <= 0 {
		opts.Workers = DefaultWorkers
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	w := &Writer{opts: opts, log: opts.Logger, warn: ratelog.New(opts.Logger, 0), q: newQueue(opts.MaxQueue, opts.Delay, opts.Now),
		machines: map[hwaddr.MAC]*machine{}}
	w.writes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pxejoin_status_sync_writes_total",
		Help: "Machine.status writes (server-side apply), by result: ok, error (retried), not-found (no Machine object: dropped)."}, []string{"result"})
	w.dropped = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pxejoin_status_sync_dropped_total",
		Help: "Timeline changes not written to Machine.status, by reason: queue-full (api.statusQueue machines waiting), no-machine (no Machine object)."}, []string{"reason"})
	w.lag = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "pxejoin_status_sync_lag_seconds",
		Help:    "Time from a machine's oldest unwritten change to its Machine.status write.",
		Buckets: []float64{0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600}})
	depth := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "pxejoin_status_sync_queue_depth",
		Help: "Machines waiting for a Machine.status write."}, func() float64 { return float64(w.q.len()) })
	for _, r := range []string{"ok", "error", "not-found"} {
		w.writes.WithLabelValues(r)
	}
	if r := opts.Registerer; r != nil {
		for _, c := range []prometheus.Collector{w.writes, w.dropped, w.lag, depth} {
			if err := r.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return w, nil
}

// Changed queues the machine of a timeline change (status.Options.OnChange). It never blocks and
// never calls the store; strangers' changes are ignored.
func (w *Writer) Changed(c status.Change) {
	if !c.Known {
		return
	}
	if !w.q.add(c.MAC, c.Important) {
		w.dropped.WithLabelValues("queue-full").Inc()
	}
}

// Run writes until ctx ends.
func (w *Writer) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for range w.opts.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.work(ctx)
		}()
	}
	wg.Wait()
	return nil
}

func (w *Writer) work(ctx context.Context) {
	for {
		mac, since, wait, ok := w.q.take()
		if !ok {
			if !w.sleep(ctx, wait) {
				return
			}
			continue
		}
		err := w.write(ctx, mac, since)
		w.q.done(mac, err != nil, false, since)
		if err == nil {
			w.failures.Store(0)
			continue
		}
		// The API is failing: wait before the next write (every worker does), so that an outage
		// costs a few attempts a second, not the whole budget.
		n := w.failures.Add(1)
		backoff := min(maxBackoff, 250*time.Millisecond<<min(n, 5))
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
	}
}

// sleep waits for the queue's wake-up, or wait (if not negative), or the end of ctx (false).
func (w *Writer) sleep(ctx context.Context, wait time.Duration) bool {
	var timer <-chan time.Time
	if wait >= 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		timer = t.C
	}
	select {
	case <-ctx.Done():
		return false
	case <-w.q.wake:
	case <-timer:
	}
	return true
}

// write applies mac's current timeline to its Machine's status. An error means "try again".
func (w *Writer) write(ctx context.Context, mac hwaddr.MAC, since time.Time) error {
	name, ok := w.opts.NameOf(mac)
	tl, found := w.opts.Timelines.Get(mac)
	if !ok || !found {
		return nil // no longer an inventory machine, or its timeline was dropped
	}
	m := w.machine(mac)
	now := w.opts.Now()
	if now.Before(m.absentUntil) {
		w.dropped.WithLabelValues("no-machine").Inc()
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	machines := w.opts.Client.Resource(machineapi.GVR)
	if !m.read {
		obj, err := machines.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			w.absent(m, now)
			return nil
		}
		if err != nil {
			w.failed(mac, name, err)
			return err
		}
		if err := w.seed(m, obj, &tl); err != nil {
			w.log.Warn("cannot read a Machine's status; writing it afresh", "machine", name, "err", err)
		}
		m.read = true
	}
	st := machineStatus(&tl, tl.Boot+m.offset, w.opts.ServerName)
	if m.last != nil {
		st.History = m.last.History
		if m.last.Boot != 0 && m.last.Boot != st.Boot {
			st.History = append([]machineapi.BootResult{result(m.last)}, st.History...)
		}
		st.History = st.History[:min(len(st.History), machineapi.MaxHistory)]
	}
	body, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&st)
	if err != nil {
		return fmt.Errorf("statussync: %w", err) // cannot happen: the types convert
	}
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": machineapi.GVK.GroupVersion().String(), "kind": machineapi.Kind,
		"metadata": map[string]any{"name": name}, "status": body,
	}}
	applied, err := machines.ApplyStatus(ctx, name, obj, metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
	switch {
	case apierrors.IsNotFound(err):
		w.writes.WithLabelValues("not-found").Inc()
		w.absent(m, now)
		return nil
	case err != nil:
		w.writes.WithLabelValues("error").Inc()
		w.failed(mac, name, err)
		return err
	}
	w.writes.WithLabelValues("ok").Inc()
	w.lag.Observe(w.opts.Now().Sub(since).Seconds())
	m.last = &st
	if done := tl.Install.Reimaged; done != "" && applied.GetAnnotations()[machineapi.AnnotationReimage] == done {
		return w.clearReimage(ctx, name, done)
	}
	return nil
}

// clearReimage removes a Machine's re-image annotation once a wipe carried out its request done:
// a JSON patch that tests the value first, so that a newer request (another value) stays. An
// error means "try again" (the next write reads the annotation again).
func (w *Writer) clearReimage(ctx context.Context, name, done string) error {
	path := "/metadata/annotations/" + strings.ReplaceAll(machineapi.AnnotationReimage, "/", "~1")
	patch, err := json.Marshal([]map[string]string{{"op": "test", "path": path, "value": done}, {"op": "remove", "path": path}})
	if err != nil {
		return err
	}
	if _, err := w.opts.Client.Resource(machineapi.GVR).Patch(ctx, name, types.JSONPatchType, patch, metav1.PatchOptions{FieldManager: FieldManager}); err != nil {
		w.warn.Warn("cannot remove a Machine's re-image annotation after its wipe; retried", "machine", name, "err", err)
		return err
	}
	w.log.Info("re-image done: annotation removed", "machine", name, "request", done)
	return nil
}

// machine returns what is kept of mac, making it at first sight (inventory machines only, so
// bounded by the inventory).
func (w *Writer) machine(mac hwaddr.MAC) *machine {
	w.mu.Lock()
	defer w.mu.Unlock()
	m := w.machines[mac]
	if m == nil {
		m = &machine{}
		w.machines[mac] = m
	}
	return m
}

// absent notes that mac has no Machine object: its writes are dropped for a while.
func (w *Writer) absent(m *machine, now time.Time) {
	w.dropped.WithLabelValues("no-machine").Inc()
	m.absentUntil, m.read = now.Add(absentFor), false
}

func (w *Writer) failed(mac hwaddr.MAC, name string, err error) {
	w.warn.Warn("cannot write a Machine's status; it is retried, and the local store keeps the timeline",
		"machine", name, "mac", mac, "err", err)
}

// seed takes the boot count and history a Machine's status already holds (see the package's doc).
func (w *Writer) seed(m *machine, obj *unstructured.Unstructured, tl *status.Machine) error {
	raw, ok := obj.Object["status"].(map[string]any)
	if !ok {
		return nil
	}
	var st machineapi.MachineStatus
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(raw, &st); err != nil {
		return err
	}
	if st.Boot > 0 {
		// The same boot if this server wrote it and it began in the same second (the API keeps
		// seconds); a boot another server wrote is an earlier one.
		same := st.ServedBy == w.opts.ServerName && st.BootStarted != nil && st.BootStarted.Unix() == tl.BootStarted.Unix()
		if same {
			m.offset = st.Boot - tl.Boot
		} else {
			m.offset = st.Boot + 1 - tl.Boot
		}
		m.offset = max(m.offset, 0)
	}
	m.last = &st
	return nil
}

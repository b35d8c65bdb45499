package statussync

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	bolt "go.etcd.io/bbolt"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"

	"github.com/pxejoin/pxejoin/bootserver/machineapi"
	"github.com/pxejoin/pxejoin/bootserver/status"
	"github.com/pxejoin/pxejoin/deploy/crd"
	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
	"github.com/pxejoin/pxejoin/lab/controlplane"
	"github.com/pxejoin/pxejoin/lab/eventually"
	"github.com/pxejoin/pxejoin/lab/testenv"
)

func TestMain(m *testing.M) { os.Exit(controlplane.Run(m)) }

// requests counts a client's requests by method.
type requests struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *requests) get(method string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[method]
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

var crdOnce sync.Once

// setup installs the Machine CRD (once) and returns the control plane and an admin dynamic client.
func setup(t *testing.T) (*controlplane.ControlPlane, dynamic.Interface) {
	t.Helper()
	testenv.RequireRoot(t)
	cp := controlplane.Shared(t)
	admin, err := dynamic.NewForConfig(cp.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	crdOnce.Do(func() {
		if err := crd.Install(context.Background(), admin, crd.Machines, "pxejoin-test"); err != nil {
			t.Fatal(err)
		}
	})
	return cp, admin
}

// fixture is a writer over a real local store, its requests counted.
type fixture struct {
	st    *status.Store
	w     *Writer
	reqs  *requests
	names map[hwaddr.MAC]string
	reg   *prometheus.Registry
}

func newFixture(t *testing.T, cp *controlplane.ControlPlane, opts Options, names map[hwaddr.MAC]string) *fixture {
	t.Helper()
	f := &fixture{reqs: &requests{n: map[string]int{}}, names: names, reg: prometheus.NewRegistry()}
	rc := cp.AdminConfig()
	rc.QPS, rc.Burst = 10, 20
	rc.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			f.reqs.mu.Lock()
			f.reqs.n[r.Method]++
			f.reqs.mu.Unlock()
			return rt.RoundTrip(r)
		})
	})
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(filepath.Join(t.TempDir(), "s.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	var w *Writer
	f.st, err = status.Open(db, status.Options{Known: func(mac hwaddr.MAC) bool { _, ok := names[mac]; return ok },
		OnChange: func(c status.Change) { w.Changed(c) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.st.Close() })
	if opts.ServerName == "" {
		opts.ServerName = "rack-7"
	}
	opts.Client, opts.Timelines, opts.Registerer = dyn, f.st, f.reg
	opts.NameOf = func(mac hwaddr.MAC) (string, bool) { n, ok := names[mac]; return n, ok }
	if w, err = New(opts); err != nil {
		t.Fatal(err)
	}
	f.w = w
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = w.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return f
}

func createMachine(t *testing.T, dyn dynamic.Interface, name string, mac hwaddr.MAC) {
	t.Helper()
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": machineapi.GVK.GroupVersion().String(), "kind": machineapi.Kind,
		"metadata": map[string]any{"name": name},
		"spec":     map[string]any{"macs": []any{mac.String()}, "profile": "worker"},
	}}
	if _, err := dyn.Resource(machineapi.GVR).Create(context.Background(), obj, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dyn.Resource(machineapi.GVR).Delete(context.Background(), name, metav1.DeleteOptions{}) })
}

func machineStatusOf(t *testing.T, dyn dynamic.Interface, name string) machineapi.MachineStatus {
	t.Helper()
	obj, err := dyn.Resource(machineapi.GVR).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var st machineapi.MachineStatus
	if raw, ok := obj.Object["status"].(map[string]any); ok {
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(raw, &st); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

func ev(phase, state string, startsBoot bool) status.Event {
	return status.Event{Event: bootstatus.Event{Phase: phase, State: state, Detail: phase + " " + state}, Source: status.SourceHTTP, StartsBoot: startsBoot}
}

// cleanBoot records a whole clean boot at once, with a burst of agent reports in the middle.
func cleanBoot(st *status.Store, mac hwaddr.MAC, name string, reports int) {
	st.Record(mac, status.Event{Event: bootstatus.Event{Phase: status.PhaseDHCP, State: bootstatus.StateStart}, Source: status.SourceDHCP, StartsBoot: true})
	st.Record(mac, status.Event{Event: bootstatus.Event{Phase: status.PhaseDHCP, State: bootstatus.StateDone, Detail: "10.0.0.42 file=undionly.kpxe"}, Source: status.SourceDHCP})
	for _, p := range []string{status.PhaseNBP, status.PhaseScript, status.PhaseKernel, status.PhaseInitrd, bootstatus.PhaseJoinFile} {
		st.Record(mac, ev(p, bootstatus.StateStart, p == status.PhaseScript))
		st.Record(mac, ev(p, bootstatus.StateDone, false))
	}
	for i := range reports {
		st.Record(mac, status.Event{Event: bootstatus.Event{Phase: bootstatus.PhaseJoin, State: bootstatus.StateStart, Detail: fmt.Sprintf("step %d", i)}, Source: status.SourceAgent})
	}
	st.Record(mac, ev(bootstatus.PhaseJoin, bootstatus.StateDone, false))
	st.Record(mac, status.Event{Event: bootstatus.Event{Phase: status.PhaseNodeRegistered, State: bootstatus.StateDone, Detail: name}, Source: status.SourceCluster})
	st.Record(mac, status.Event{Event: bootstatus.Event{Phase: bootstatus.PhaseNodeReady, State: bootstatus.StateDone, Detail: name}, Source: status.SourceCluster})
}

// TestBootReachesStatus: a clean boot, with a burst of 200 agent reports in it, reaches
// Machine.status (phases, summary, last event, address, node, servedBy, boot 1) in at most three
// writes; the next boot is boot 2 and the first one's result moves to the history.
func TestBootReachesStatus(t *testing.T) {
	cp, admin := setup(t)
	mac, name := hwaddr.MAC{0x52, 0x54, 0, 0x5e, 0, 1}, "ss-boot-1"
	createMachine(t, admin, name, mac)
	f := newFixture(t, cp, Options{}, map[hwaddr.MAC]string{mac: name})
	f.st.SetIdentity(mac, name, "worker", true)
	cleanBoot(f.st, mac, name, 200)

	eventually.True(t, "the boot reaches Machine.status", func() bool { return machineStatusOf(t, admin, name).Phase == bootstatus.PhaseNodeReady })
	eventually.True(t, "the writer is idle", f.w.q.idle)
	st := machineStatusOf(t, admin, name)
	if st.Boot != 1 || len(st.Phases) != 9 || st.ServedBy != "rack-7" || st.NodeRef == nil || st.NodeRef.Name != name ||
		len(st.Addresses) != 1 || st.Addresses[0] != "10.0.0.42" || st.LastEvent != "node-ready done: "+name || st.BootStarted == nil {
		t.Errorf("status: %+v", st)
	}
	t.Logf("%d status writes and %d reads for a clean boot of 216 events", f.reqs.get(http.MethodPatch), f.reqs.get(http.MethodGet))
	if n := f.reqs.get(http.MethodPatch); n > 3 || n < 1 {
		t.Errorf("%d status writes for a clean boot of %d events, want 1 to 3", n, 216)
	}
	if n := f.reqs.get(http.MethodGet); n != 1 {
		t.Errorf("%d reads of the Machine, want 1 (at first sight)", n)
	}
	if ok := testutil.ToFloat64(f.w.writes.WithLabelValues("ok")); int(ok) != f.reqs.get(http.MethodPatch) {
		t.Errorf("pxejoin_status_sync_writes_total{result=ok} = %v, PATCHes %d", ok, f.reqs.get(http.MethodPatch))
	}

	f.st.Record(mac, status.Event{Event: bootstatus.Event{Phase: status.PhaseDHCP, State: bootstatus.StateStart}, Source: status.SourceDHCP, StartsBoot: true})
	eventually.True(t, "the next boot is boot 2", func() bool { return machineStatusOf(t, admin, name).Boot == 2 })
	st = machineStatusOf(t, admin, name)
	if len(st.History) != 1 || st.History[0].Boot != 1 || st.History[0].Result != "ready" || st.Phase != status.PhaseDHCP || len(st.Phases) != 1 || st.NodeRef != nil {
		t.Errorf("boot 2: %+v", st)
	}
}

// TestAttemptsReachStatus: a join the agent retried twice after failures reaches Machine.status as
// one phase, the latest attempt (done) in its fields and the two failed ones in attempts, oldest
// first, each with its error.
func TestAttemptsReachStatus(t *testing.T) {
	cp, admin := setup(t)
	mac, name := hwaddr.MAC{0x52, 0x54, 0, 0x5e, 0, 9}, "ss-attempts-1"
	createMachine(t, admin, name, mac)
	f := newFixture(t, cp, Options{}, map[hwaddr.MAC]string{mac: name})
	f.st.SetIdentity(mac, name, "worker", true)
	f.st.Record(mac, status.Event{Event: bootstatus.Event{Phase: status.PhaseDHCP, State: bootstatus.StateStart}, Source: status.SourceDHCP, StartsBoot: true})
	for a := 1; a <= 3; a++ {
		end := bootstatus.Event{Phase: bootstatus.PhaseJoin, State: bootstatus.StateDone, Attempt: a}
		if a < 3 {
			end.State, end.Error = bootstatus.StateError, fmt.Sprintf("discovery timed out (attempt %d)", a)
		}
		f.st.Record(mac, status.Event{Event: bootstatus.Event{Phase: bootstatus.PhaseJoin, State: bootstatus.StateStart, Attempt: a}, Source: status.SourceAgent})
		f.st.Record(mac, status.Event{Event: end, Source: status.SourceAgent})
	}
	var join machineapi.PhaseStatus
	eventually.True(t, "the join's third attempt reaches Machine.status", func() bool {
		for _, p := range machineStatusOf(t, admin, name).Phases {
			if p.Name == bootstatus.PhaseJoin && p.Attempt == 3 {
				join = p
				return true
			}
		}
		return false
	})
	if join.State != bootstatus.StateDone || len(join.Attempts) != 2 {
		t.Fatalf("join in Machine.status: %+v, want done with two earlier attempts", join)
	}
	for i, a := range join.Attempts {
		if a.Attempt != i+1 || a.State != bootstatus.StateError || a.Error != fmt.Sprintf("discovery timed out (attempt %d)", i+1) || a.Start == nil {
			t.Errorf("attempt %d: %+v", i+1, a)
		}
	}
}

// TestBootCountAcrossServers: a second server (a new local store) that first sees a machine whose
// Machine says boot 2 counts its boot as boot 3, and the history carries on.
func TestBootCountAcrossServers(t *testing.T) {
	cp, admin := setup(t)
	mac, name := hwaddr.MAC{0x52, 0x54, 0, 0x5e, 0, 2}, "ss-across-1"
	createMachine(t, admin, name, mac)
	names := map[hwaddr.MAC]string{mac: name}
	a := newFixture(t, cp, Options{}, names)
	cleanBoot(a.st, mac, name, 0)
	eventually.True(t, "server a wrote boot 1", func() bool { return machineStatusOf(t, admin, name).Phase == bootstatus.PhaseNodeReady })
	a.st.Record(mac, ev(status.PhaseDHCP, bootstatus.StateStart, true))
	eventually.True(t, "server a wrote boot 2", func() bool { return machineStatusOf(t, admin, name).Boot == 2 })

	b := newFixture(t, cp, Options{ServerName: "rack-8"}, names)
	cleanBoot(b.st, mac, name, 0)
	eventually.True(t, "server b's boot is boot 3", func() bool {
		st := machineStatusOf(t, admin, name)
		return st.Boot == 3 && st.Phase == bootstatus.PhaseNodeReady
	})
	if st := machineStatusOf(t, admin, name); st.ServedBy != "rack-8" || len(st.History) != 2 || st.History[0].Boot != 2 || st.History[1].Boot != 1 {
		t.Errorf("history: %+v", st.History)
	}
}

// TestNoMachine: an inventory machine without a Machine object gets no write and no error: one
// read says it is not there, the rest is dropped and counted.
func TestNoMachine(t *testing.T) {
	cp, _ := setup(t)
	mac := hwaddr.MAC{0x52, 0x54, 0, 0x5e, 0, 3}
	f := newFixture(t, cp, Options{Delay: 10 * time.Millisecond}, map[hwaddr.MAC]string{mac: "ss-nowhere"})
	for range 5 {
		cleanBoot(f.st, mac, "ss-nowhere", 10)
		eventually.True(t, "the writer is idle", f.w.q.idle)
	}
	if p, g := f.reqs.get(http.MethodPatch), f.reqs.get(http.MethodGet); p != 0 || g != 1 {
		t.Errorf("%d writes and %d reads for a machine without a Machine object, want 0 and 1", p, g)
	}
	if d, e := testutil.ToFloat64(f.w.dropped.WithLabelValues("no-machine")), testutil.ToFloat64(f.w.writes.WithLabelValues("error")); d < 5 || e != 0 {
		t.Errorf("dropped{no-machine} = %v (want ≥ 5), writes{error} = %v (want 0)", d, e)
	}
}

// TestAPIOutage: the apiserver stops in the middle of a burst of boots: the writes fail and are
// retried with a backoff (a few attempts a second, not the budget), the local store keeps every
// timeline, and once the apiserver is back every Machine's status converges, each in a few writes.
func TestAPIOutage(t *testing.T) {
	cp, admin := setup(t)
	const machines = 10
	names := map[hwaddr.MAC]string{}
	for i := range machines {
		mac, name := hwaddr.MAC{0x52, 0x54, 0, 0x5e, 1, byte(i)}, fmt.Sprintf("ss-outage-%d", i)
		names[mac] = name
		createMachine(t, admin, name, mac)
	}
	f := newFixture(t, cp, Options{Delay: 200 * time.Millisecond}, names)
	for mac, name := range names {
		f.st.SetIdentity(mac, name, "worker", true)
		cleanBoot(f.st, mac, name, 0)
	}
	eventually.True(t, "the first boots reach Machine.status", func() bool { return f.w.q.idle() && f.reqs.get(http.MethodPatch) >= machines })
	before := f.reqs.get(http.MethodPatch)

	cp.StopAPIServer()
	stopped := time.Now()
	restarted := false
	defer func() {
		if !restarted {
			_ = cp.StartAPIServer(context.Background())
		}
	}()
	for mac, name := range names {
		f.st.Record(mac, ev(status.PhaseDHCP, bootstatus.StateStart, true)) // boot 2, important
		cleanBoot(f.st, mac, name, 20)
	}
	eventually.True(t, "writes fail while the apiserver is down", func() bool { return testutil.ToFloat64(f.w.writes.WithLabelValues("error")) >= 4 })
	failed := testutil.ToFloat64(f.w.writes.WithLabelValues("error"))
	if err := cp.StartAPIServer(context.Background()); err != nil {
		t.Fatal(err)
	}
	restarted = true
	down := time.Since(stopped)

	for _, name := range names {
		eventually.True(t, name+"'s status converges to boot 2", func() bool {
			st := machineStatusOf(t, admin, name)
			return st.Boot == 2 && st.Phase == bootstatus.PhaseNodeReady
		})
	}
	eventually.True(t, "the writer is idle", f.w.q.idle)
	failed = testutil.ToFloat64(f.w.writes.WithLabelValues("error"))
	after := f.reqs.get(http.MethodPatch) - before - int(failed)
	t.Logf("apiserver down %.1fs: %v failed writes; then %d writes for %d machines", down.Seconds(), failed, after, machines)
	// Each worker waits at least 250 ms after a failure: at most 4 attempts a second each.
	if limit := float64(DefaultWorkers) * 4 * (down.Seconds() + 1); failed > limit {
		t.Errorf("%v failed writes in %.1fs of outage: the backoff does not hold them back (limit %v)", failed, down.Seconds(), limit)
	}
	if after > 3*machines {
		t.Errorf("%d writes after the outage for %d machines: want at most 3 each (a write carries the latest timeline)", after, machines)
	}
}

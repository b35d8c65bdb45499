package shards

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/pxejoin/pxejoin/bootserver/leases"
	"github.com/pxejoin/pxejoin/bootserver/peers"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
	"github.com/pxejoin/pxejoin/lab/controlplane"
	"github.com/pxejoin/pxejoin/lab/eventually"
	"github.com/pxejoin/pxejoin/lab/tcpproxy"
)

func TestMain(m *testing.M) { os.Exit(controlplane.Run(m)) }

func TestRanges(t *testing.T) {
	for _, tt := range []struct {
		start, end string
		n          int
	}{{"10.0.0.100", "10.0.0.200", 12}, {"10.0.0.1", "10.0.0.1", 1}, {"10.0.0.250", "10.0.1.9", 4}, {"10.0.0.0", "10.0.3.255", 7}} {
		m, err := New(Config{Start: netip.MustParseAddr(tt.start), End: netip.MustParseAddr(tt.end), Shards: tt.n,
			LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second, MCLT: time.Minute, MirrorInterval: time.Second,
			Identity: "a", Namespace: "ns", NamePrefix: "p-", Live: func() []string { return []string{"a"} }, Client: fake.NewClientset(), Store: &leases.Store{}})
		if err != nil {
			t.Fatal(err)
		}
		next := netip.MustParseAddr(tt.start)
		sizes := map[int]int{}
		for i := range tt.n {
			first, last := m.Range(i)
			if first != next {
				t.Errorf("%v: shard %d starts at %v, want %v (contiguous)", tt, i, first, next)
			}
			for a := first; ; a = a.Next() {
				if got := m.Of(a); got != i {
					t.Fatalf("%v: Of(%v) = %d, want %d", tt, a, got, i)
				}
				sizes[i]++
				if a == last {
					break
				}
			}
			next = last.Next()
		}
		if next != netip.MustParseAddr(tt.end).Next() {
			t.Errorf("%v: shards end before %v", tt, next)
		}
		lo, hi := slices.Min(slices.Collect(mapValues(sizes))), slices.Max(slices.Collect(mapValues(sizes)))
		if hi-lo > 1 {
			t.Errorf("%v: shard sizes from %d to %d", tt, lo, hi)
		}
		if m.Of(netip.MustParseAddr(tt.start).Prev()) != -1 || m.Of(netip.MustParseAddr(tt.end).Next()) != -1 {
			t.Errorf("%v: addresses outside the range have a shard", tt)
		}
	}
}

func mapValues(m map[int]int) func(func(int) bool) {
	return func(yield func(int) bool) {
		for _, v := range m {
			if !yield(v) {
				return
			}
		}
	}
}

// testServer is one Manager with its own store, talking to the apiserver through its own proxy.
type testServer struct {
	id    string
	m     *Manager
	store *leases.Store
	proxy *tcpproxy.Proxy
	reg   *prometheus.Registry
	stop  context.CancelFunc
	done  chan struct{}
}

const testShards = 6

func testConfig(id, prefix string) Config {
	return Config{Start: netip.MustParseAddr("10.9.0.10"), End: netip.MustParseAddr("10.9.0.69"), Shards: testShards,
		LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 300 * time.Millisecond,
		MirrorInterval: 200 * time.Millisecond, MCLT: 4 * time.Second, LeaseTime: time.Hour,
		Namespace: "pxejoin-system", NamePrefix: prefix, Identity: id}
}

func startServer(t *testing.T, cp *controlplane.ControlPlane, cfg Config) *testServer {
	t.Helper()
	rc, err := clientcmd.BuildConfigFromFlags("", cp.AdminKubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	p := tcpproxy.Start(t, strings.TrimPrefix(rc.Host, "https://"))
	rc.Host = "https://" + p.Addr()
	rc.Timeout, rc.QPS, rc.Burst = time.Second, 200, 400
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := leases.Open(filepath.Join(t.TempDir(), "leases.db"))
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	// The presence, as the boot server keeps it (bootserver/server): through the same proxy.
	pr, err := peers.New(peers.Options{Client: cs, Namespace: cfg.Namespace, Prefix: cfg.NamePrefix, Identity: cfg.Identity,
		URL: "http://" + cfg.Identity, LeaseDuration: cfg.LeaseDuration, RetryPeriod: cfg.RetryPeriod, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Client, cfg.Store, cfg.Registerer, cfg.Live = cs, st, reg, pr.Live
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &testServer{id: cfg.Identity, m: m, store: st, proxy: p, reg: reg, stop: cancel, done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = pr.Run(ctx) }()
	go func() { defer wg.Done(); _ = m.Serve(ctx) }()
	go func() { wg.Wait(); close(s.done) }()
	t.Cleanup(func() { s.proxy.Heal(); cancel(); <-s.done; st.Close() })
	return s
}

func namespace(t *testing.T, cp *controlplane.ControlPlane) {
	_, err := cp.Admin().CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "pxejoin-system"}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// watchOwners samples every server's held shards at one instant, over and over, and reports a
// shard two servers could allocate from at once.
func watchOwners(t *testing.T, servers ...*testServer) (stop func()) {
	var wg sync.WaitGroup
	quit := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-quit:
				return
			case <-time.After(2 * time.Millisecond):
			}
			now := time.Now()
			owner := map[int]string{}
			for _, s := range servers {
				for _, i := range s.m.Held(now) {
					if o, ok := owner[i]; ok {
						t.Errorf("shard %d held by %s and %s at %s", i, o, s.id, now.Format(time.StampMicro))
					}
					owner[i] = s.id
				}
			}
		}
	}()
	return func() { close(quit); wg.Wait() }
}

func decisions(s *testServer, d string) float64 {
	return testutil.ToFloat64(s.m.metrics.decisions.WithLabelValues(d))
}

func heldBoth(a, b *testServer, na, nb int) func() bool {
	return func() bool {
		now := time.Now()
		return len(a.m.Held(now)) == na && len(b.m.Held(now)) == nb
	}
}

// TestShareAndGiveBack: a second server gets its fair share from the first, which gives the shards
// back cleanly (no adoption, no MCLT wait), and never are two holders allocating from one shard.
func TestShareAndGiveBack(t *testing.T) {
	cp := controlplane.Shared(t)
	namespace(t, cp)
	prefix := "share-"
	a := startServer(t, cp, testConfig("a", prefix))
	eventually.True(t, "a holds every shard", func() bool { return len(a.m.Held(time.Now())) == testShards })
	b := startServer(t, cp, testConfig("b", prefix))
	defer watchOwners(t, a, b)()
	eventually.True(t, "a and b hold half each", heldBoth(a, b, testShards/2, testShards/2))
	if decisions(b, "adopt") != 0 || decisions(b, "acquire") != testShards/2 || decisions(a, "release") != testShards/2 {
		t.Errorf("decisions: b adopt %v acquire %v, a release %v", decisions(b, "adopt"), decisions(b, "acquire"), decisions(a, "release"))
	}
	// A clean hand-off needs no MCLT wait.
	for _, i := range b.m.Held(time.Now()) {
		first, _ := b.m.Range(i)
		if !b.m.Reusable(first, time.Now()) {
			t.Errorf("shard %d handed over cleanly waits MCLT", i)
		}
	}
	// b stops: a takes its shards back at once (released, not expired).
	b.stop()
	<-b.done
	eventually.True(t, "a holds every shard again", func() bool { return len(a.m.Held(time.Now())) == testShards })
	if decisions(a, "adopt") != 0 {
		t.Errorf("a adopted shards b released")
	}
}

// TestPartition: a server cut off from the API stops allocating from its shards before the other
// may take them; the other adopts them (bindings loaded, MCLT wait), and gives them back on heal.
func TestPartition(t *testing.T) {
	cp := controlplane.Shared(t)
	namespace(t, cp)
	prefix := "part-"
	a := startServer(t, cp, testConfig("a", prefix))
	eventually.True(t, "a holds every shard", func() bool { return len(a.m.Held(time.Now())) == testShards })
	b := startServer(t, cp, testConfig("b", prefix))
	eventually.True(t, "a and b hold half each", heldBoth(a, b, testShards/2, testShards/2))
	defer watchOwners(t, a, b)()

	// A binding a made, mirrored into the API.
	shard := a.m.Held(time.Now())[0]
	ip, _ := a.m.Range(shard)
	mac := hwaddr.MAC{0x52, 0x54, 0, 0, 0, 0x42}
	if err := a.store.Commit(leases.Lease{MAC: mac, IP: ip, Expiry: time.Now().Add(a.m.Expiry(mac, ip, time.Now(), time.Now().Add(time.Hour)).Sub(time.Now()))}); err != nil {
		t.Fatal(err)
	}
	var mirrored binding
	eventually.True(t, "a's binding mirrored", func() bool {
		cm, err := cp.Admin().CoreV1().ConfigMaps("pxejoin-system").Get(context.Background(), fmt.Sprintf("%s%d", prefix, shard), metav1.GetOptions{})
		if err != nil {
			return false
		}
		_, b, err := decodeBinding(ip.String(), cm.Data[ip.String()])
		mirrored = b
		return err == nil && b.MAC == mac
	})

	a.proxy.Stall()
	eventually.True(t, "b holds every shard", func() bool { return len(b.m.Held(time.Now())) == testShards })
	if len(a.m.Held(time.Now())) != 0 {
		t.Errorf("a, cut off, still allocates from %v", a.m.Held(time.Now()))
	}
	eventually.True(t, "a says it lost its shards", func() bool { return decisions(a, "lost") == testShards/2 })
	if decisions(b, "adopt") != testShards/2 || decisions(a, "lost") != testShards/2 {
		t.Errorf("decisions: b adopt %v, a lost %v; want %d each", decisions(b, "adopt"), decisions(a, "lost"), testShards/2)
	}
	if !b.m.Serves(ip, time.Now()) {
		t.Fatalf("b does not serve %v", ip)
	}
	// The adopted binding is kept MCLT past its mirrored expiry, and the shard's free-looking
	// addresses wait MCLT.
	if l, ok := b.store.Get(mac); !ok || l.IP != ip || !l.Expiry.Equal(mirrored.Until.Add(b.m.cfg.MCLT)) {
		t.Errorf("b's store has %+v (%v), want %v until %v", l, ok, ip, mirrored.Until.Add(b.m.cfg.MCLT))
	}
	if b.m.Reusable(ip.Next(), time.Now()) {
		t.Errorf("b reuses an adopted shard's free-looking address at once")
	}
	eventually.True(t, "the MCLT wait ends", func() bool { return b.m.Reusable(ip.Next(), time.Now()) })

	a.proxy.Heal()
	eventually.True(t, "a and b hold half each again", heldBoth(a, b, testShards/2, testShards/2))
	if got := decisions(b, "release"); got != testShards/2 {
		t.Errorf("b released %v shards on heal, want %d", got, testShards/2)
	}
	if decisions(a, "adopt") != 0 {
		t.Errorf("a adopted the shards b gave back")
	}
}

// TestReleaseOnlyOwnLease: client-go releases with a fresh Get but decides on its last observed
// record; after a SIGSTOP that record still names this server while another holds the Lease. The
// fenced lock refuses such a release (pure logic: a fake clientset).
func TestReleaseOnlyOwnLease(t *testing.T) {
	cs := fake.NewClientset()
	m, err := New(Config{Start: netip.MustParseAddr("10.0.0.1"), End: netip.MustParseAddr("10.0.0.9"), Shards: 1,
		LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second, MCLT: time.Minute, MirrorInterval: time.Second,
		Identity: "a", Namespace: "ns", NamePrefix: "p-", Live: func() []string { return []string{"a"} }, Client: cs, Store: &leases.Store{}})
	if err != nil {
		t.Fatal(err)
	}
	other := &fencedLock{m: m, s: m.shards[0], Interface: &resourcelock.LeaseLock{LeaseMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p-0"},
		Client: cs.CoordinationV1(), LockConfig: resourcelock.ResourceLockConfig{Identity: "b"}}}
	ctx := context.Background()
	now := metav1.Now()
	if err := other.Interface.Create(ctx, resourcelock.LeaderElectionRecord{HolderIdentity: "b", LeaseDurationSeconds: 15, RenewTime: now, AcquireTime: now}); err != nil {
		t.Fatal(err)
	}
	mine := &fencedLock{m: m, s: m.shards[0], Interface: &resourcelock.LeaseLock{LeaseMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p-0"},
		Client: cs.CoordinationV1(), LockConfig: resourcelock.ResourceLockConfig{Identity: "a"}}}
	if _, _, err := mine.Get(ctx); err != nil { // what tryRelease does first
		t.Fatal(err)
	}
	if err := mine.Update(ctx, resourcelock.LeaderElectionRecord{LeaseDurationSeconds: 1, RenewTime: now, AcquireTime: now}); err == nil {
		t.Fatal("released a Lease b holds")
	}
	r, _, err := other.Get(ctx)
	if err != nil || r.HolderIdentity != "b" {
		t.Errorf("the Lease is now %+v, %v; want b's", r, err)
	}
}

// TestNoTakeBackWhileRenewing: client-go's renew loop takes a Lease it finds released as if it were
// a renewal. After a SIGSTOP longer than the Lease, the thawed server took back a shard the other
// had adopted and released, and renewed it forever without loading or serving it (TestHAStop held
// 3 of 4 shards there). The fenced lock refuses that write; a new candidate may take the Lease.
func TestNoTakeBackWhileRenewing(t *testing.T) {
	cs := fake.NewClientset()
	m, err := New(Config{Start: netip.MustParseAddr("10.0.0.1"), End: netip.MustParseAddr("10.0.0.9"), Shards: 1,
		LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second, MCLT: time.Minute, MirrorInterval: time.Second,
		Identity: "a", Namespace: "ns", NamePrefix: "p-", Live: func() []string { return []string{"a"} }, Client: cs, Store: &leases.Store{}})
	if err != nil {
		t.Fatal(err)
	}
	lock := func(id string) *fencedLock {
		return &fencedLock{m: m, s: m.shards[0], Interface: &resourcelock.LeaseLock{LeaseMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p-0"},
			Client: cs.CoordinationV1(), LockConfig: resourcelock.ResourceLockConfig{Identity: id}}}
	}
	ctx := context.Background()
	rec := func(id string) resourcelock.LeaderElectionRecord {
		now := metav1.Now()
		return resourcelock.LeaderElectionRecord{HolderIdentity: id, LeaseDurationSeconds: 15, RenewTime: now, AcquireTime: now}
	}
	mine, other := lock("a"), lock("b")
	if err := mine.Create(ctx, rec("a")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := mine.Get(ctx); err != nil {
		t.Fatal(err)
	}
	if err := mine.Update(ctx, rec("a")); err != nil {
		t.Fatalf("a renewal of its own Lease was refused: %v", err)
	}
	// a is stopped; b adopts the expired Lease, then gives it back (released: no holder).
	for _, id := range []string{"b", ""} {
		if _, _, err := other.Get(ctx); err != nil {
			t.Fatal(err)
		}
		if err := other.Interface.Update(ctx, rec(id)); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := mine.Get(ctx); err != nil { // a thaws: its renew loop reads the released Lease
		t.Fatal(err)
	}
	if err := mine.Update(ctx, rec("a")); !errors.Is(err, errTakenMeanwhile) {
		t.Fatalf("the renew loop's take-back returned %v, want errTakenMeanwhile", err)
	}
	fresh := lock("a") // the candidate that balance starts next
	if _, _, err := fresh.Get(ctx); err != nil {
		t.Fatal(err)
	}
	if err := fresh.Update(ctx, rec("a")); err != nil {
		t.Fatalf("a new candidate could not take the released Lease: %v", err)
	}
}

// TestMayTake: a candidate takes any Lease of its home shards; a standby only one whose holder let
// it expire and is no longer live (pure logic).
func TestMayTake(t *testing.T) {
	live := []string{"a", "b"}
	m, err := New(Config{Start: netip.MustParseAddr("10.0.0.1"), End: netip.MustParseAddr("10.0.0.9"), Shards: 2,
		LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second, MCLT: time.Minute, MirrorInterval: time.Second,
		Identity: "a", Namespace: "ns", NamePrefix: "p-", Live: func() []string { return live }, Client: fake.NewClientset(), Store: &leases.Store{}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		live   []string
		shard  int
		holder string
		ok     bool
	}{
		{[]string{"a", "b"}, 0, "", true},        // home: a new or released Lease
		{[]string{"a", "b"}, 0, "b", true},       // home: expired, from a live server
		{[]string{"a", "b"}, 1, "", false},       // b's shard, released or not created yet: b takes it
		{[]string{"a", "b"}, 1, "b", false},      // b's, expired but b is live: b takes it back
		{[]string{"a", "b"}, 1, "a", false},      // b's, once this server's: b adopts it
		{[]string{"a", "b"}, 1, "c", true},       // b's, but c (gone) let it expire: adopt it now
		{[]string{"a", "b", "c"}, 1, "c", false}, // c is live
		{[]string{"b", "c"}, 1, "", true},        // a not among the live yet: every shard is home
		{[]string{"a"}, 1, "", true},             // alone
		{nil, 1, "b", true},                      // the live servers not known: no standby rule
	} {
		live = tt.live
		if err := m.mayTake(m.shards[tt.shard], tt.holder); (err == nil) != tt.ok {
			t.Errorf("live %v, shard %d, holder %q: mayTake = %v, want ok=%v", tt.live, tt.shard, tt.holder, err, tt.ok)
		}
	}
}

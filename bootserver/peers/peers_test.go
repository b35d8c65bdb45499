package peers

import (
	"context"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pxejoin/pxejoin/lab/controlplane"
	"github.com/pxejoin/pxejoin/lab/testenv"
)

func TestMain(m *testing.M) { os.Exit(controlplane.Run(m)) }

// clock is a settable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); defer c.mu.Unlock(); c.t = c.t.Add(d) }

// TestPeers: three servers of a segment see each other; one of another segment is not listed; a
// server that stops renewing drops out of the others' lists once its Lease expired, and is back
// when it renews.
func TestPeers(t *testing.T) {
	testenv.RequireRoot(t)
	cp := controlplane.Shared(t)
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "peers-test"}}
	if _, err := cp.Admin().CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	// Lease times are kept in microseconds; the fake clock starts at the real time so that
	// the Leases' renewTime looks sane.
	clk := &clock{t: time.Now().Truncate(time.Second)}
	mk := func(prefix, id, url string) *Peers {
		p, err := New(Options{Client: cp.Admin(), Namespace: ns.Name, Prefix: prefix, Identity: id, URL: url,
			LeaseDuration: 15 * time.Second, RetryPeriod: 2 * time.Second, Now: clk.now})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	a, b, c := mk("seg-1-", "bs-a", "http://10.0.0.1:8080"), mk("seg-1-", "bs-b", "http://10.0.0.2:8080"), mk("seg-1-", "bs-c", "http://10.0.0.3:8080")
	other := mk("seg-2-", "bs-x", "http://10.9.0.1:8080")
	sync := func(ps ...*Peers) {
		t.Helper()
		for _, p := range ps {
			if err := p.Sync(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	sync(a, b, c, other, a) // a again: it sees the Leases b and c wrote after its first sync
	if got, want := a.Others(), []string{"http://10.0.0.2:8080", "http://10.0.0.3:8080"}; !slices.Equal(got, want) {
		t.Errorf("a sees %v, want %v", got, want)
	}
	if got, want := a.Live(), []string{"bs-a", "bs-b", "bs-c"}; !slices.Equal(got, want) {
		t.Errorf("a's live servers: %v, want %v", got, want)
	}
	// c stops renewing (it died): 10 s later it is still listed, 16 s later no more.
	clk.add(10 * time.Second)
	sync(a, b)
	if got := a.Others(); len(got) != 2 {
		t.Errorf("a sees %v before c's Lease expired", got)
	}
	clk.add(6 * time.Second)
	sync(a, b)
	if got, want := a.Others(), []string{"http://10.0.0.2:8080"}; !slices.Equal(got, want) {
		t.Errorf("a sees %v after c's Lease expired, want %v", got, want)
	}
	sync(c, a)
	if got := a.Others(); len(got) != 2 {
		t.Errorf("a sees %v after c came back", got)
	}
	if got, want := other.Others(), []string(nil); !slices.Equal(got, want) {
		t.Errorf("another segment's server sees %v", got)
	}
	if got, want := other.Live(), []string{"bs-x"}; !slices.Equal(got, want) {
		t.Errorf("another segment's server's live servers: %v, want %v", got, want)
	}
	// b stops: its Lease is deleted, and a counts it out at once, before the Lease would expire.
	bctx, stop := context.WithCancel(ctx)
	stop()
	if err := b.Run(bctx); err != nil {
		t.Fatal(err)
	}
	sync(a)
	if got, want := a.Live(), []string{"bs-a", "bs-c"}; !slices.Equal(got, want) {
		t.Errorf("a's live servers after b stopped: %v, want %v", got, want)
	}
}

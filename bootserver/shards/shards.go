// Package shards lets several boot servers on one segment hand out addresses of one pool without a
// replication protocol of their own (DESIGN.md, "One machine, then many"; issue 15).
//
// The pool is cut into a fixed number of contiguous shards: shard i covers the i-th n-th of the range
// (the first size%n shards one address more). Contiguous ranges keep the shard of an address a
// division away, make a shard's addresses readable in logs and metrics, and let the local store's
// scan stay in order. Each shard is owned through a coordination.k8s.io Lease (client-go leader
// election); a server allocates only from shards it holds.
//
// Who should hold what: the live servers (Config.Live: bootserver/peers' presence Leases), sorted,
// divide the shards round robin (shard i's home is live[i % len(live)]), so each holds its fair
// share. A server runs a candidate for every shard: for its home shards one that takes a free,
// released or expired Lease; for the others a standby, which takes only a Lease whose holder let it
// expire and is no longer live. The standby has watched the Lease all along, so a dead server's
// shards are adopted LeaseDuration after its last renewal, not LeaseDuration after its presence
// expired (client-go counts a Lease expired from the moment its candidate first saw it unchanged:
// a candidate started only once the presence expired needed 8.2–9.4 s with the bench's 4 s
// Leases, where the target is LeaseDuration + MCLT = 9 s; standbys need 4.6–5.2 s). A server gives back, cleanly, any shard it holds
// whose home is another live server: it stops allocating, writes the shard's bindings to the API,
// then releases the Lease, and the home server takes it at once.
//
// Safety: leader election does not fence, so
//   - a holder allocates from a shard only until its last successful renewal plus RenewDeadline,
//     which is before any other server may take the Lease (LeaseDuration after it last saw it change);
//   - a binding not yet mirrored into the API gets a lease that ends within MCLT, and a mirrored one
//     within MCLT after the expiry the API holds for it (Expiry);
//   - a server that adopts a shard whose holder vanished (the Lease expired instead of being released)
//     loads the shard's mirrored bindings into its store, keeping each until its mirrored expiry plus
//     MCLT, and waits MCLT before it hands out an address of the shard that looks free (Reusable).
//
// Bindings are mirrored as one ConfigMap per shard (<prefix><shard>), written at most once per
// MirrorInterval and only when it changed: at 1,000 machines a burst costs at most shards writes a
// second in all, where one object per binding would cost 1,000 creations plus a write per renewal.
package shards

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/kubernetes"

	"github.com/pxejoin/pxejoin/bootserver/leases"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// Config configures a Manager.
type Config struct {
	// Start and End bound the pool's dynamic range (both included).
	Start, End netip.Addr
	// Shards is how many parts the range is cut into.
	Shards int
	// MCLT bounds how far a lease may end past what the API holds for its binding, and how long an
	// adopted shard's free-looking addresses wait.
	MCLT time.Duration
	// LeaseDuration, RenewDeadline and RetryPeriod are leader election's timings; LeaseDuration is a
	// whole number of seconds.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// MirrorInterval is how often changed bindings are written to the API.
	MirrorInterval time.Duration
	// LeaseTime is the pool's lease time: how far past its write a mirrored binding may be renewed.
	LeaseTime time.Duration
	// Namespace and NamePrefix place the Leases and ConfigMaps.
	Namespace, NamePrefix string
	// Identity is this server's name as Lease holder.
	Identity string
	// Live returns the identities of the live servers of the pool, sorted, Identity included, or
	// nil while they are not known yet (bootserver/peers' Live): a server whose presence is gone
	// from the API (deleted when it stopped, or expired) no longer counts, and its shards are
	// re-homed.
	Live func() []string
	// Client talks to the API.
	Client kubernetes.Interface
	// Store is the local durable lease store (the hot path); adopted bindings are written into it.
	Store *leases.Store
	// Logger receives decisions at Info; nil discards.
	Logger *slog.Logger
	// Registerer, if set, gets the metrics.
	Registerer prometheus.Registerer
}

// Manager holds this server's shards. Its methods are safe for concurrent use.
type Manager struct {
	cfg     Config
	start   uint32
	size    uint32
	shards  []*shard
	metrics *metrics
	log     *slog.Logger
}

// shard is one part of the range and what this server knows of it.
type shard struct {
	i          int
	name       string
	first, end uint32 // the range [first, end)

	mu sync.Mutex
	// running is the candidate's cancel func while one runs; done closes when it returned.
	cancel context.CancelFunc
	done   chan struct{}
	// validUntil is the last renewal's time plus RenewDeadline: allocation stops then.
	validUntil time.Time
	// ready is set once the mirrored bindings are in the store after an acquisition.
	ready bool
	// prevHolder is the holder seen before this server took the Lease.
	prevHolder string
	// noRelease keeps the Lease from being released (giveBack could not mirror the bindings).
	noRelease  bool
	adopted    bool
	reuseAfter time.Time
	// mirror is what the API holds for the shard (as last read or written), by address; rv its
	// resourceVersion ("" if the ConfigMap does not exist yet).
	mirror map[netip.Addr]binding
	rv     string
	synced time.Time // when the mirror last matched the store
}

// New checks cfg and returns a Manager; Serve runs it.
func New(cfg Config) (*Manager, error) {
	switch {
	case !cfg.Start.Is4() || !cfg.End.Is4() || cfg.End.Less(cfg.Start):
		return nil, fmt.Errorf("shards: range %v-%v is not an IPv4 range", cfg.Start, cfg.End)
	case cfg.Client == nil || cfg.Store == nil:
		return nil, errors.New("shards: a client and a store are needed")
	case cfg.LeaseDuration%time.Second != 0 || cfg.LeaseDuration < time.Second:
		return nil, fmt.Errorf("shards: lease duration %v is not a whole number of seconds", cfg.LeaseDuration)
	case cfg.RenewDeadline >= cfg.LeaseDuration || cfg.RetryPeriod <= 0 || cfg.MCLT <= 0 || cfg.MirrorInterval <= 0:
		return nil, errors.New("shards: want RetryPeriod < RenewDeadline < LeaseDuration and positive MCLT and MirrorInterval")
	case cfg.Identity == "" || cfg.Namespace == "" || cfg.NamePrefix == "" || cfg.Live == nil:
		return nil, errors.New("shards: identity, namespace, name prefix and the live servers are needed")
	}
	start, end := u32(cfg.Start), u32(cfg.End)
	size := end - start + 1
	if cfg.Shards < 1 || uint32(cfg.Shards) > size {
		return nil, fmt.Errorf("shards: %d shards do not fit %d addresses", cfg.Shards, size)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	m := &Manager{cfg: cfg, start: start, size: size, log: cfg.Logger}
	n := uint32(cfg.Shards)
	for i := uint32(0); i < n; i++ {
		first := i*(size/n) + min(i, size%n)
		m.shards = append(m.shards, &shard{i: int(i), name: fmt.Sprintf("%s%d", cfg.NamePrefix, i),
			first: start + first, end: start + first + size/n + b2u(i < size%n)})
	}
	m.metrics = newMetrics(cfg.Registerer, cfg.Shards)
	return m, nil
}

func b2u(b bool) uint32 {
	if b {
		return 1
	}
	return 0
}

func u32(a netip.Addr) uint32 { b := a.As4(); return binary.BigEndian.Uint32(b[:]) }

func addr32(u uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], u)
	return netip.AddrFrom4(b)
}

// Of returns the shard holding ip, or -1 if ip is outside the range.
func (m *Manager) Of(ip netip.Addr) int {
	if !ip.Is4() {
		return -1
	}
	u := u32(ip)
	if u < m.start || u-m.start >= m.size {
		return -1
	}
	i := slices.IndexFunc(m.shards, func(s *shard) bool { return u < s.end })
	return i
}

// Range returns shard i's first and last address.
func (m *Manager) Range(i int) (first, last netip.Addr) {
	s := m.shards[i]
	return addr32(s.first), addr32(s.end - 1)
}

// Serves reports whether this server may bind ip at now: it holds ip's shard, has loaded the
// shard's mirrored bindings, and renewed the shard's Lease less than RenewDeadline ago. Addresses
// outside the range are not served (reservations do not ask).
func (m *Manager) Serves(ip netip.Addr, now time.Time) bool {
	i := m.Of(ip)
	if i < 0 {
		return false
	}
	s := m.shards[i]
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ready && now.Before(s.validUntil)
}

// Reusable reports whether ip, free in the local store, may be handed to a new holder at now: not
// while the adopted shard holding it waits out MCLT.
func (m *Manager) Reusable(ip netip.Addr, now time.Time) bool {
	i := m.Of(ip)
	if i < 0 {
		return false
	}
	s := m.shards[i]
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.adopted || !now.Before(s.reuseAfter)
}

// Expiry caps the end of a lease of ip by mac that would end at want: at most MCLT past the expiry
// the API holds for the binding, or past now when the API has none yet (ISC failover's rule).
func (m *Manager) Expiry(mac hwaddr.MAC, ip netip.Addr, now, want time.Time) time.Time {
	limit := now
	if i := m.Of(ip); i >= 0 {
		s := m.shards[i]
		s.mu.Lock()
		if b, ok := s.mirror[ip]; ok && b.MAC == mac && b.Until.After(now) {
			limit = b.Until
		}
		s.mu.Unlock()
	}
	limit = limit.Add(m.cfg.MCLT)
	if want.Before(limit) {
		return want
	}
	return limit
}

// Held returns the shards this server may allocate from at now, in order.
func (m *Manager) Held(now time.Time) []int {
	var held []int
	for _, s := range m.shards {
		s.mu.Lock()
		if s.ready && now.Before(s.validUntil) {
			held = append(held, s.i)
		}
		s.mu.Unlock()
	}
	return held
}

// Serve runs the candidates and the mirror until ctx ends; then it gives every held shard back
// (mirrored first) and returns. The presence (Config.Live) is kept by its owner, which deletes it
// when it stops.
func (m *Manager) Serve(ctx context.Context) error {
	// The candidates outlive ctx until each shard is given back: canceling one releases its Lease.
	cands, stop := context.WithCancel(context.WithoutCancel(ctx))
	defer stop()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); m.mirrorLoop(ctx) }()
	tick := time.NewTicker(m.cfg.RetryPeriod)
	defer tick.Stop()
	for {
		m.balance(cands)
		select {
		case <-ctx.Done():
			wg.Wait()
			for _, s := range m.shards {
				m.giveBack(s, "stopping")
			}
			return nil
		case <-tick.C:
		}
	}
}

// balance reads who is live, runs a candidate for every shard (a standby for the shards of other
// servers: mayTake), and gives back the shards it holds whose home is another live server. Until the live servers are known it runs none (a view without the others
// would start a candidate for every shard, only to give most back). A stale view only moves shards
// between servers: the shards' own Leases keep allocation safe.
func (m *Manager) balance(cands context.Context) {
	m.stepDown(time.Now())
	live := m.cfg.Live()
	if len(live) == 0 {
		return
	}
	m.metrics.live.Set(float64(len(live)))
	for _, s := range m.shards {
		s.mu.Lock()
		running, ready := s.cancel != nil, s.ready
		s.mu.Unlock()
		switch {
		case !running:
			m.runCandidate(cands, s)
		case ready && !m.home(s, live):
			m.giveBack(s, "rebalance")
		}
	}
}

// home reports whether s's home is this server among live (all shards are, while this server is
// not among them yet).
func (m *Manager) home(s *shard, live []string) bool {
	me := slices.Index(live, m.cfg.Identity)
	return me < 0 || live[s.i%len(live)] == m.cfg.Identity
}

// errStandby refuses a standby's take of a Lease that is free, released, or held by a live server.
var errStandby = errors.New("shards: not this server's shard, and its holder is live or let it go cleanly; the home server takes it")

// mayTake reports whether this server's candidate may take s's Lease, whose holder was holder ("" if
// released, or if there was no Lease yet): always at home; as a standby, only from a holder that is
// no longer live (it let the Lease expire: the shard is adopted).
func (m *Manager) mayTake(s *shard, holder string) error {
	live := m.cfg.Live()
	if len(live) == 0 || m.home(s, live) {
		return nil
	}
	if holder != "" && holder != m.cfg.Identity && !slices.Contains(live, holder) {
		return nil
	}
	return errStandby
}

// stepDown marks the shards whose renew deadline passed as lost: allocation stopped at the deadline
// already (Serves); this makes the metrics and the log say so without waiting for client-go, and
// ends the shard's candidate so that a late renewal cannot keep a Lease this server no longer uses.
// The Lease is left to expire (its bindings may not be mirrored): the next holder adopts it.
func (m *Manager) stepDown(now time.Time) {
	for _, s := range m.shards {
		s.mu.Lock()
		lost := s.ready && !now.Before(s.validUntil)
		if lost {
			s.ready, s.noRelease = false, true
			if s.cancel != nil {
				s.cancel()
			}
		}
		s.mu.Unlock()
		if lost {
			m.metrics.held.WithLabelValues(s.label()).Set(0)
			m.metrics.adopted.WithLabelValues(s.label()).Set(0)
			m.decide(s, "lost", "the Lease was not renewed within the renew deadline")
		}
	}
}

// Share returns this server's index among the live servers (sorted) and their number: the DHCP
// server answers at once the DISCOVERs whose hash falls to its index (dhcpd's balance.go).
func (m *Manager) Share() (index, of int) {
	live := m.cfg.Live()
	return slices.Index(live, m.cfg.Identity), len(live)
}

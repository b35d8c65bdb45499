package shards

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// mirrorLabel marks the ConfigMaps mirroring the shards of one pool; its value is a hash of the
// name prefix (the pool's shards).
const mirrorLabel = "pxejoin.io/dhcp-servers"

func (m *Manager) mirrorValue() string {
	sum := sha256.Sum256([]byte(m.cfg.NamePrefix))
	return hex.EncodeToString(sum[:8])
}

// runCandidate starts a leader election for s; when it ends (given back, or lost) s is free to run
// again.
func (m *Manager) runCandidate(ctx context.Context, s *shard) {
	lock := &fencedLock{m: m, s: s, Interface: &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: m.cfg.Namespace, Name: s.name},
		Client:     m.cfg.Client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: m.cfg.Identity},
	}}
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock: lock, Name: s.name, ReleaseOnCancel: true,
		LeaseDuration: m.cfg.LeaseDuration, RenewDeadline: m.cfg.RenewDeadline, RetryPeriod: m.cfg.RetryPeriod,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) { m.started(ctx, s) },
			OnStoppedLeading: func() {},
		},
	})
	if err != nil { // the timings were checked in New
		m.log.Error("dhcp shards: leader election", "shard", s.i, "err", err)
		return
	}
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	s.mu.Lock()
	s.cancel, s.done, s.noRelease = cancel, done, false
	s.mu.Unlock()
	go func() {
		defer close(done)
		le.Run(cctx)
		s.mu.Lock()
		held := s.ready
		s.ready, s.validUntil, s.adopted = false, time.Time{}, false
		if s.done == done {
			s.cancel, s.done = nil, nil
		}
		s.mu.Unlock()
		cancel()
		m.metrics.held.WithLabelValues(s.label()).Set(0)
		m.metrics.adopted.WithLabelValues(s.label()).Set(0)
		if held && cctx.Err() == nil { // lost before stepDown saw it
			m.decide(s, "lost", "the Lease was not renewed")
		}
	}()
}

// giveBack stops allocating from s, mirrors its bindings while the Lease is still held, and
// releases the Lease (client-go's ReleaseOnCancel), so that another server takes it without waiting.
func (m *Manager) giveBack(s *shard, why string) {
	s.mu.Lock()
	cancel, done := s.cancel, s.done
	held := s.ready && time.Now().Before(s.validUntil)
	s.ready = false // from here no ACK is sent from s: what the store holds now is all there is
	s.mu.Unlock()
	if cancel == nil {
		return
	}
	if held {
		ctx, c := context.WithTimeout(context.Background(), m.cfg.RenewDeadline)
		err := m.flush(ctx, s, true)
		c()
		if err != nil {
			// Not mirrored: let the Lease expire rather than release it, so that the next holder
			// adopts the shard (and waits MCLT) instead of trusting an incomplete mirror.
			m.log.Warn("dhcp shards: bindings not mirrored, the shard's Lease is left to expire", "shard", s.i, "err", err)
			s.mu.Lock()
			s.noRelease = true
			s.mu.Unlock()
			why += " (not mirrored: left to expire)"
		}
		m.decide(s, "release", why)
	}
	cancel()
	<-done
}

// errNotHolder refuses to release a Lease another server holds.
var errNotHolder = errors.New("shards: not released, another server holds the Lease")

// errNoRelease keeps client-go from releasing a Lease whose bindings are not mirrored.
var errNoRelease = errors.New("shards: not released, the bindings are not mirrored; the Lease expires instead")

// fencedLock is the shard's LeaseLock that also records when a renewal succeeded (this server may
// allocate until RenewTime + RenewDeadline) and who held the Lease before this server took it.
type fencedLock struct {
	resourcelock.Interface
	m *Manager
	s *shard
	// seen is the holder in the last record Get returned, or this server after its own write (only
	// the elector's goroutine uses it).
	seen string
	// acquired is set once this candidate took the Lease: from then on it may only renew.
	acquired bool
}

func (l *fencedLock) Get(ctx context.Context) (*resourcelock.LeaderElectionRecord, []byte, error) {
	r, raw, err := l.Interface.Get(ctx)
	if err == nil {
		l.seen = r.HolderIdentity
	}
	return r, raw, err
}

func (l *fencedLock) Create(ctx context.Context, r resourcelock.LeaderElectionRecord) error {
	if err := l.m.mayTake(l.s, ""); err != nil {
		return err
	}
	err := l.Interface.Create(ctx, r)
	if err == nil {
		l.m.renewed(l.s, r.RenewTime.Time, "")
		l.seen, l.acquired = r.HolderIdentity, true
	}
	return err
}

// errTakenMeanwhile ends a candidate whose Lease another server held (or released) since its last
// renewal.
var errTakenMeanwhile = errors.New("shards: the Lease changed hands since this server last renewed it; starting over")

func (l *fencedLock) Update(ctx context.Context, r resourcelock.LeaderElectionRecord) error {
	if r.HolderIdentity == "" && l.seen != l.m.cfg.Identity {
		// client-go's tryRelease reads the Lease, then releases it if its own last observed record
		// says it leads: after a SIGSTOP that record is stale, and it would release the Lease of the
		// server that took the shard meanwhile (TestHAStop found it). Release only our own.
		return errNotHolder
	}
	if r.HolderIdentity == "" {
		l.s.mu.Lock()
		keep := l.s.noRelease
		l.s.mu.Unlock()
		if keep {
			return errNoRelease
		}
	}
	if r.HolderIdentity == l.m.cfg.Identity && l.acquired && l.seen != l.m.cfg.Identity {
		// client-go's renew loop takes a Lease it finds free or expired as if it were a renewal:
		// after a SIGSTOP longer than the Lease, it took back a shard another server had adopted
		// and released meanwhile, and this server renewed it forever without loading the shard's
		// bindings or allocating from it (TestHAStop). End the candidate instead: a new one
		// acquires the shard, loads its mirrored bindings, and adopts it if needed.
		return errTakenMeanwhile
	}
	if r.HolderIdentity == l.m.cfg.Identity && !l.acquired {
		if err := l.m.mayTake(l.s, l.seen); err != nil {
			return err
		}
	}
	err := l.Interface.Update(ctx, r)
	if err == nil && r.HolderIdentity == l.m.cfg.Identity {
		l.acquired = true
		// RenewTime is the elector's clock before the request: the holder stops at most
		// RenewDeadline after it, before any other server counts LeaseDuration from seeing it.
		l.m.renewed(l.s, r.RenewTime.Time, l.seen)
		l.seen = r.HolderIdentity
	}
	return err
}

// renewed records a successful acquisition or renewal of s made at at; prev is the holder seen
// before it (this server's identity on a renewal).
func (m *Manager) renewed(s *shard, at time.Time, prev string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cancel == nil {
		return
	}
	if s.validUntil.IsZero() {
		s.prevHolder = prev
	}
	s.validUntil = at.Add(m.cfg.RenewDeadline)
}

// started runs once s's Lease is acquired: it loads the shard's mirrored bindings into the store,
// then lets allocation begin. A shard whose previous holder did not release it is adopted: its
// bindings are kept MCLT past their mirrored expiry, and its free-looking addresses wait MCLT.
func (m *Manager) started(ctx context.Context, s *shard) {
	s.mu.Lock()
	prev := s.prevHolder
	s.mu.Unlock()
	adopted := prev != "" && prev != m.cfg.Identity
	t := time.NewTicker(m.cfg.RetryPeriod)
	defer t.Stop()
	for {
		err := m.load(ctx, s, adopted)
		if err == nil {
			break
		}
		m.log.Warn("dhcp shards: mirrored bindings not loaded, shard not used yet", "shard", s.i, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
	s.mu.Lock()
	s.ready, s.adopted = true, adopted
	if adopted {
		s.reuseAfter = time.Now().Add(m.cfg.MCLT)
	}
	s.mu.Unlock()
	m.metrics.held.WithLabelValues(s.label()).Set(1)
	if adopted {
		m.metrics.adopted.WithLabelValues(s.label()).Set(1)
		m.decide(s, "adopt", "previous holder "+prev+" let its Lease expire")
	} else {
		m.decide(s, "acquire", "")
	}
}

func (s *shard) label() string { return itoa(s.i) }

// decide counts and logs a decision about s.
func (m *Manager) decide(s *shard, decision, why string) {
	m.metrics.decisions.WithLabelValues(decision).Inc()
	first, last := addr32(s.first), addr32(s.end-1)
	m.log.Info("dhcp shard "+decision, "shard", s.i, "first", first, "last", last, "identity", m.cfg.Identity, "why", why)
}

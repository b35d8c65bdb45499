package shards

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pxejoin/pxejoin/bootserver/leases"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// binding is one mirrored binding: the address's holder and how long it may hold it (the expiry
// the holder's server may renew it to without asking again: at least its lease's end).
type binding struct {
	MAC   hwaddr.MAC
	Until time.Time
}

// The ConfigMap's data: one key per address ("10.0.0.7"), the value "<mac> <until, Unix ms>".
func encodeBinding(b binding) string {
	return b.MAC.String() + " " + strconv.FormatInt(b.Until.UnixMilli(), 10)
}

func decodeBinding(ip, v string) (netip.Addr, binding, error) {
	a, err := netip.ParseAddr(ip)
	mac, until, ok := strings.Cut(v, " ")
	if err != nil || !ok {
		return netip.Addr{}, binding{}, fmt.Errorf("binding %q=%q is not \"<mac> <unix ms>\"", ip, v)
	}
	m, err := hwaddr.Parse(mac)
	if err != nil {
		return netip.Addr{}, binding{}, err
	}
	ms, err := strconv.ParseInt(until, 10, 64)
	if err != nil {
		return netip.Addr{}, binding{}, err
	}
	return a, binding{MAC: m, Until: time.UnixMilli(ms)}, nil
}

// mirrorLoop writes the held shards' changed bindings every MirrorInterval.
func (m *Manager) mirrorLoop(ctx context.Context) {
	t := time.NewTicker(m.cfg.MirrorInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, s := range m.shards {
			if err := m.flush(ctx, s, false); err != nil {
				m.metrics.mirrorErrors.Inc()
				m.log.Debug("dhcp shards: mirror not written", "shard", s.i, "err", err)
			}
		}
	}
}

// flush writes s's active bindings to its ConfigMap if they changed, while this server may allocate
// from s (or, with givingBack, while it still holds the Lease: giveBack has stopped allocation).
func (m *Manager) flush(ctx context.Context, s *shard, givingBack bool) error {
	now := time.Now()
	s.mu.Lock()
	if !(s.ready || givingBack) || !now.Before(s.validUntil) {
		s.mu.Unlock()
		return nil
	}
	old, rv := s.mirror, s.rv
	s.mu.Unlock()
	want := map[netip.Addr]binding{}
	for _, l := range m.cfg.Store.All() {
		if !l.Active(now) || m.Of(l.IP) != s.i {
			continue
		}
		b, ok := old[l.IP]
		if !ok || b.MAC != l.MAC || b.Until.Before(l.Expiry) {
			b = binding{MAC: l.MAC, Until: l.Expiry}
			if until := now.Add(m.cfg.LeaseTime); b.Until.Before(until) {
				b.Until = until
			}
		}
		want[l.IP] = b
	}
	if maps.Equal(old, want) && rv != "" {
		s.mu.Lock()
		s.synced = now
		s.mu.Unlock()
		m.metrics.lag.WithLabelValues(s.label()).Set(0)
		return nil
	}
	m.metrics.lag.WithLabelValues(s.label()).Set(now.Sub(s.syncedAt()).Seconds())
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: s.name, Namespace: m.cfg.Namespace, ResourceVersion: rv,
		Labels: map[string]string{mirrorLabel: m.mirrorValue()}}, Data: map[string]string{}}
	for ip, b := range want {
		cm.Data[ip.String()] = encodeBinding(b)
	}
	api := m.cfg.Client.CoreV1().ConfigMaps(m.cfg.Namespace)
	var out *corev1.ConfigMap
	var err error
	if rv == "" {
		out, err = api.Create(ctx, cm, metav1.CreateOptions{})
	} else {
		out, err = api.Update(ctx, cm, metav1.UpdateOptions{})
	}
	if apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) {
		// Someone else wrote it (a late write of a previous holder): take its bindings too, with
		// MCLT to spare, and write again next time.
		if lerr := m.load(ctx, s, true); lerr != nil {
			return lerr
		}
		return err
	}
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.mirror, s.rv, s.synced = want, out.ResourceVersion, now
	s.mu.Unlock()
	m.metrics.mirrorWrites.Inc()
	m.metrics.lag.WithLabelValues(s.label()).Set(0)
	return nil
}

func (s *shard) syncedAt() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.synced
}

// load reads s's ConfigMap and writes its bindings into the store (the API's binding wins over a
// local one of the same address). With adopted, each is kept MCLT past its mirrored expiry: its
// last holder may have renewed it that far without mirroring.
func (m *Manager) load(ctx context.Context, s *shard, adopted bool) error {
	cm, err := m.cfg.Client.CoreV1().ConfigMaps(m.cfg.Namespace).Get(ctx, s.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		s.mu.Lock()
		s.mirror, s.rv, s.synced = map[netip.Addr]binding{}, "", time.Now()
		s.mu.Unlock()
		return nil
	}
	if err != nil {
		return err
	}
	now := time.Now()
	mirror := map[netip.Addr]binding{}
	var todo []leases.Lease
	for k, v := range cm.Data {
		ip, b, err := decodeBinding(k, v)
		if err != nil || m.Of(ip) != s.i {
			m.metrics.badBindings.Inc()
			m.log.Warn("dhcp shards: a mirrored binding is not understood and is skipped; delete it from the ConfigMap", "configmap", s.name, "key", k, "err", err)
			continue
		}
		mirror[ip] = b
		until := b.Until
		if adopted {
			until = until.Add(m.cfg.MCLT)
		}
		if !until.After(now) {
			continue
		}
		if l, ok := m.cfg.Store.Get(b.MAC); ok && l.IP == ip && !l.Expiry.Before(until) {
			continue
		}
		prev, _ := m.cfg.Store.Get(b.MAC)
		todo = append(todo, leases.Lease{MAC: b.MAC, IP: ip, Expiry: until, Hostname: prev.Hostname})
	}
	// Commits in parallel share the store's transactions (a shard holds ~pool/shards bindings).
	var wg sync.WaitGroup
	errs := make(chan error, len(todo))
	sem := make(chan struct{}, 32)
	for _, l := range todo {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs <- m.cfg.Store.Commit(l)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	s.mu.Lock()
	s.mirror, s.rv, s.synced = mirror, cm.ResourceVersion, now
	s.mu.Unlock()
	m.metrics.imported.Add(float64(len(todo)))
	return nil
}

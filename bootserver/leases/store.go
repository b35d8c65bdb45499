package leases

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

var bucketName = []byte("leases-v1")

// ErrClosed is returned by writes to a closed Store.
var ErrClosed = errors.New("leases: store closed")

// maxBatch bounds how many writes go into one bbolt transaction.
const maxBatch = 4096

// Store keeps leases in a bbolt file. Reads are served from memory; a write returns only after the
// transaction that holds it is committed and synced to disk. Writes that arrive while a commit is in
// flight are gathered into the next transaction (group commit): one fsync pays for all of them, and a
// lone writer waits for no timer. The index in memory is changed only after the write is durable, so
// what Get returns has been on disk.
type Store struct {
	db *bolt.DB

	mu    sync.RWMutex
	byMAC map[string]Lease
	byIP  map[netip.Addr]string // address → key of byMAC

	reqs   chan *op
	txns   atomic.Int64 // committed transactions, for tests
	sendMu sync.RWMutex // held to send on reqs; Close takes it to stop senders
	closed bool
	quit   chan struct{}
	done   chan struct{}
}

type op struct {
	put  *Lease // nil: delete mac
	mac  string
	done chan error
}

// Open opens (or creates) the store at path and loads its leases.
func Open(path string) (*Store, error) {
	// NoFreelistSync: the freelist is rebuilt on open (a lease file is small) instead of written in
	// every transaction. Every commit still syncs twice (data pages, then the meta page), which is
	// what keeps the file consistent across a power loss.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second, FreelistType: bolt.FreelistMapType, NoFreelistSync: true})
	if err != nil {
		return nil, fmt.Errorf("leases: open %s: %w", path, err)
	}
	s := &Store{
		db:    db,
		byMAC: map[string]Lease{},
		byIP:  map[netip.Addr]string{},
		reqs:  make(chan *op, maxBatch),
		quit:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketName)
		if err != nil {
			return err
		}
		return b.ForEach(func(k, v []byte) error {
			l, err := decode(k, v)
			if err != nil {
				return fmt.Errorf("%w (key %x)", err, k)
			}
			s.index(l)
			return nil
		})
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("leases: load %s: %w", path, err)
	}
	go s.commitLoop()
	return s, nil
}

// Close waits for writes in flight, then closes the file. Later writes fail with ErrClosed.
func (s *Store) Close() error {
	s.sendMu.Lock()
	if !s.closed {
		s.closed = true
		close(s.quit)
	}
	s.sendMu.Unlock()
	<-s.done
	return s.db.Close()
}

// Get returns the lease recorded for mac, expired or not.
func (s *Store) Get(mac net.HardwareAddr) (Lease, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	l, ok := s.byMAC[string(mac)]
	return l.clone(), ok
}

// ByIP returns the lease recorded for ip, expired or not.
func (s *Store) ByIP(ip netip.Addr) (Lease, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	k, ok := s.byIP[ip]
	if !ok {
		return Lease{}, false
	}
	return s.byMAC[k].clone(), true
}

// HolderOf returns the hardware address holding an unexpired lease on ip at now.
func (s *Store) HolderOf(ip netip.Addr, now time.Time) (net.HardwareAddr, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	k, ok := s.byIP[ip]
	if !ok || !s.byMAC[k].Active(now) {
		return nil, false
	}
	return net.HardwareAddr(k), true
}

// All returns every recorded lease, ordered by address.
func (s *Store) All() []Lease {
	s.mu.RLock()
	out := make([]Lease, 0, len(s.byMAC))
	for _, l := range s.byMAC {
		out = append(out, l.clone())
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b Lease) int { return a.IP.Compare(b.IP) })
	return out
}

// Active counts the leases unexpired at now.
func (s *Store) Active(now time.Time) int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	n := 0
	for _, l := range s.byMAC {
		if l.Active(now) {
			n++
		}
	}
	return n
}

// Commit records l durably and returns once it is synced to disk. A lease another hardware address
// held on the same IP is removed in the same transaction (the caller decided the address was free).
func (s *Store) Commit(l Lease) error {
	if err := l.validate(); err != nil {
		return err
	}
	l = l.clone()
	return s.submit(&op{put: &l, mac: string(l.MAC)})
}

// Release ends mac's lease now but keeps the record, so the client is offered the same address
// again while nobody else took it. It is durable when Release returns.
func (s *Store) Release(mac net.HardwareAddr) error {
	l, ok := s.Get(mac)
	if !ok {
		return nil
	}
	if now := time.Now(); l.Expiry.After(now) {
		l.Expiry = now
	}
	return s.submit(&op{put: &l, mac: string(l.MAC)})
}

// Delete forgets mac's lease durably.
func (s *Store) Delete(mac net.HardwareAddr) error {
	return s.submit(&op{mac: string(mac)})
}

func (s *Store) submit(o *op) error {
	o.done = make(chan error, 1)
	s.sendMu.RLock()
	if s.closed {
		s.sendMu.RUnlock()
		return ErrClosed
	}
	// The commit loop drains reqs until Close, which waits for this send to finish.
	s.reqs <- o
	s.sendMu.RUnlock()
	return <-o.done
}

// commitLoop is the one writer: it takes the first waiting op, everything queued behind it, and
// commits them in one transaction.
func (s *Store) commitLoop() {
	defer close(s.done)
	batch := make([]*op, 0, maxBatch)
	for {
		batch = batch[:0]
		select {
		case o := <-s.reqs:
			batch = append(batch, o)
		case <-s.quit:
			// Finish what was queued before Close.
			for {
				select {
				case o := <-s.reqs:
					batch = append(batch, o)
					if len(batch) == maxBatch {
						s.apply(batch)
						batch = batch[:0]
					}
				default:
					if len(batch) > 0 {
						s.apply(batch)
					}
					return
				}
			}
		}
	fill:
		for len(batch) < maxBatch {
			select {
			case o := <-s.reqs:
				batch = append(batch, o)
			default:
				break fill
			}
		}
		s.apply(batch)
	}
}

func (s *Store) apply(batch []*op) {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketName)
		// Later ops in the batch see the earlier ones: track the address owners as they change.
		owner := map[netip.Addr]string{}
		s.mu.RLock()
		for _, o := range batch {
			if o.put != nil {
				if k, ok := s.byIP[o.put.IP]; ok {
					owner[o.put.IP] = k
				}
			}
		}
		s.mu.RUnlock()
		for _, o := range batch {
			if o.put == nil {
				if err := b.Delete([]byte(o.mac)); err != nil {
					return err
				}
				continue
			}
			if k, ok := owner[o.put.IP]; ok && k != o.mac {
				if err := b.Delete([]byte(k)); err != nil {
					return err
				}
			}
			owner[o.put.IP] = o.mac
			if err := b.Put([]byte(o.mac), encode(*o.put)); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		s.txns.Add(1)
		s.mu.Lock()
		for _, o := range batch {
			if o.put == nil {
				s.unindex(o.mac)
			} else {
				s.index(*o.put)
			}
		}
		s.mu.Unlock()
	}
	for _, o := range batch {
		o.done <- err
	}
}

// index records l, replacing mac's previous lease and any other holder of l.IP. Callers hold mu (or
// own s during Open).
func (s *Store) index(l Lease) {
	k := string(l.MAC)
	s.unindex(k)
	if other, ok := s.byIP[l.IP]; ok {
		delete(s.byMAC, other)
	}
	s.byMAC[k] = l
	s.byIP[l.IP] = k
}

func (s *Store) unindex(k string) {
	if old, ok := s.byMAC[k]; ok {
		if s.byIP[old.IP] == k {
			delete(s.byIP, old.IP)
		}
		delete(s.byMAC, k)
	}
}

package leases

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

var (
	macBucket = []byte("leases")    // MAC (6 bytes) → lease record
	ipBucket  = []byte("addresses") // IPv4 address (4 bytes) → MAC
)

// batchDelay is how long a write waits for others to share its transaction. bbolt's default, 10 ms,
// would be added to every ACK of a lone client; 1 ms still gathers a burst's writes (doc.go).
const batchDelay = time.Millisecond

// ErrClosed is returned by writes to a closed Store.
var ErrClosed = errors.New("leases: store closed")

// Store keeps leases in a bbolt file and, for lookups, in memory. A write returns once the bbolt
// transaction holding it is committed and synced; writes that arrive together share one transaction
// (bbolt.DB.Batch). The index in memory changes only when a transaction has committed, so what Get
// returns is on disk.
type Store struct {
	db *bolt.DB

	mu      sync.RWMutex
	byMAC   map[hwaddr.MAC]Lease
	byIP    map[netip.Addr]hwaddr.MAC // address → its holder in byMAC
	applied uint64                    // the last transaction the index holds
	failed  error                     // set once a commit failed: the store takes no more writes
	order   *sync.Cond                // on mu: applied or failed changed

	txn *txn // what the transaction being written holds; only touched under bbolt's writer lock

	closeMu  sync.Mutex
	closed   bool
	inflight sync.WaitGroup
	txns     atomic.Int64    // committed transactions, for tests
	hook     func(id uint64) // tests: called by a commit handler before it waits for its turn
}

// txn is what one bbolt transaction wrote, for its commit handler to apply to the index.
type txn struct {
	tx  *bolt.Tx
	id  uint64
	ops []op
}

// op is one write: a lease to record, or (put nil) the hardware address to forget.
type op struct {
	put *Lease
	mac hwaddr.MAC
}

// Open opens (or creates) the lease file at path and loads its leases.
func Open(path string) (*Store, error) {
	// NoFreelistSync: the freelist is rebuilt on open (a lease file is small) instead of written in
	// every transaction; each commit still syncs its pages, then its meta page.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second, FreelistType: bolt.FreelistMapType, NoFreelistSync: true})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("leases: %s is locked by another process: is another bootserver using this state directory?", path)
	}
	if err != nil {
		return nil, fmt.Errorf("leases: open %s: %w", path, err)
	}
	db.MaxBatchDelay = batchDelay
	s := &Store{db: db, byMAC: map[hwaddr.MAC]Lease{}, byIP: map[netip.Addr]hwaddr.MAC{}}
	s.order = sync.NewCond(&s.mu)
	err = db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(ipBucket); err != nil {
			return err
		}
		b, err := tx.CreateBucketIfNotExists(macBucket)
		if err != nil {
			return err
		}
		return b.ForEach(func(k, v []byte) error {
			l, err := decode(k, v)
			if err != nil {
				return fmt.Errorf("%w (key %x): move the file aside to start with no leases", err, k)
			}
			s.index(l)
			return nil
		})
	})
	if err == nil {
		err = db.View(func(tx *bolt.Tx) error { s.applied = uint64(tx.ID()); return nil })
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("leases: load %s: %w", path, err)
	}
	return s, nil
}

// Close waits for writes in flight and closes the file. Later writes fail with ErrClosed.
func (s *Store) Close() error {
	s.closeMu.Lock()
	if s.closed {
		s.closeMu.Unlock()
		return nil
	}
	s.closed = true
	s.closeMu.Unlock()
	s.inflight.Wait()
	return s.db.Close()
}

// Get returns the lease recorded for mac, expired or not.
func (s *Store) Get(mac hwaddr.MAC) (Lease, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	l, ok := s.byMAC[mac]
	return l, ok
}

// ByIP returns the lease recorded for ip, expired or not.
func (s *Store) ByIP(ip netip.Addr) (Lease, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	k, ok := s.byIP[ip]
	if !ok {
		return Lease{}, false
	}
	return s.byMAC[k], true
}

// HolderOf returns the MAC holding an unexpired lease on ip at now.
func (s *Store) HolderOf(ip netip.Addr, now time.Time) (hwaddr.MAC, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	k, ok := s.byIP[ip]
	if !ok || !s.byMAC[k].Active(now) {
		return hwaddr.MAC{}, false
	}
	return k, true
}

// All returns every recorded lease, ordered by address.
func (s *Store) All() []Lease {
	s.mu.RLock()
	out := make([]Lease, 0, len(s.byMAC))
	for _, l := range s.byMAC {
		out = append(out, l)
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
// held on the same IP is removed with it (the caller decided the address was free).
func (s *Store) Commit(l Lease) error {
	if err := l.validate(); err != nil {
		return err
	}
	return s.write(op{put: &l, mac: l.MAC})
}

// Release ends mac's lease now but keeps the record, so the client is offered the same address
// again while nobody else took it. It is durable when Release returns.
func (s *Store) Release(mac hwaddr.MAC) error {
	l, ok := s.Get(mac)
	if !ok {
		return nil
	}
	if now := time.Now(); l.Expiry.After(now) {
		l.Expiry = now
	}
	return s.write(op{put: &l, mac: l.MAC})
}

// Delete forgets mac's lease durably.
func (s *Store) Delete(mac hwaddr.MAC) error {
	return s.write(op{mac: mac})
}

// write commits o in a bbolt batch and returns once its transaction is synced and in the index.
func (s *Store) write(o op) error {
	s.closeMu.Lock()
	if s.closed {
		s.closeMu.Unlock()
		return ErrClosed
	}
	s.inflight.Add(1)
	s.closeMu.Unlock()
	defer s.inflight.Done()
	s.mu.RLock()
	err := s.failed
	s.mu.RUnlock()
	if err != nil {
		return err
	}
	err = s.db.Batch(func(tx *bolt.Tx) error {
		if err := put(tx, o); err != nil {
			return err
		}
		// Batch runs its functions one at a time under bbolt's writer lock, in transaction order.
		// A transaction that is rolled back never runs its handler; its functions run again in
		// the next one.
		if s.txn == nil || s.txn.tx != tx {
			t := &txn{tx: tx, id: uint64(tx.ID())}
			s.txn = t
			tx.OnCommit(func() { s.apply(t) })
		}
		s.txn.ops = append(s.txn.ops, o)
		return nil
	})
	if err != nil {
		// After a failed sync the kernel may have dropped the pages; refuse writes rather than
		// acknowledge one that depends on them.
		err = fmt.Errorf("leases: %w (the store takes no more writes: check the disk, then restart)", err)
		s.mu.Lock()
		if s.failed == nil {
			s.failed = err
		}
		s.order.Broadcast()
		s.mu.Unlock()
	}
	return err
}

// apply adds a committed transaction to the index after the one before it: bbolt lets the next
// transaction start before it runs the commit handlers, so handlers may run out of order.
// Committed transactions have consecutive IDs.
func (s *Store) apply(t *txn) {
	if s.hook != nil {
		s.hook(t.id)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.applied+1 != t.id && s.failed == nil {
		s.order.Wait()
	}
	for _, o := range t.ops {
		if o.put == nil {
			s.unindex(o.mac)
		} else {
			s.index(*o.put)
		}
	}
	s.applied = t.id
	s.txns.Add(1)
	s.order.Broadcast()
}

// put records o in tx: the lease under its hardware address and the address under its holder,
// removing the holder's previous address and any other holder of the new one.
func put(tx *bolt.Tx, o op) error {
	macs, ips := tx.Bucket(macBucket), tx.Bucket(ipBucket)
	key := o.mac[:]
	if v := macs.Get(key); v != nil {
		if l, err := decode(key, v); err == nil {
			old := l.IP.As4()
			if bytes.Equal(ips.Get(old[:]), key) {
				if err := ips.Delete(old[:]); err != nil {
					return err
				}
			}
		}
	}
	if o.put == nil {
		return macs.Delete(key)
	}
	a4 := o.put.IP.As4()
	if other := ips.Get(a4[:]); other != nil && !bytes.Equal(other, key) {
		if err := macs.Delete(bytes.Clone(other)); err != nil {
			return err
		}
	}
	if err := macs.Put(key, encode(*o.put)); err != nil {
		return err
	}
	return ips.Put(a4[:], key)
}

// index records l, replacing mac's previous lease and any other holder of l.IP. Callers hold mu (or
// own s during Open).
func (s *Store) index(l Lease) {
	k := l.MAC
	s.unindex(k)
	if other, ok := s.byIP[l.IP]; ok {
		delete(s.byMAC, other)
	}
	s.byMAC[k] = l
	s.byIP[l.IP] = k
}

func (s *Store) unindex(k hwaddr.MAC) {
	if old, ok := s.byMAC[k]; ok {
		if s.byIP[old.IP] == k {
			delete(s.byIP, old.IP)
		}
		delete(s.byMAC, k)
	}
}

package leases

import (
	"bytes"
	"fmt"
	"net/netip"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The bbolt.DB.Batch store, measured against the log (see doc.go): every write is one bbolt.DB.Batch
// call, so writers that arrive together share one transaction (two syncs). The in-memory index is
// changed by each transaction's commit handler, in transaction order, so what it shows is on disk.

var (
	macBucket = []byte("leases")    // hardware address → lease record
	ipBucket  = []byte("addresses") // IPv4 address (4 bytes) → hardware address
)

// batchDelay is how long a write waits for others to share its transaction (bbolt's default is 10 ms,
// which a lone client would wait for on every ACK).
const batchDelay = time.Millisecond

// OpenBatch opens the store at path with every write a bbolt.DB.Batch call and no log.
func OpenBatch(path string) (*Store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second, FreelistType: bolt.FreelistMapType, NoFreelistSync: true})
	if err != nil {
		return nil, fmt.Errorf("leases: open %s: %w", path, err)
	}
	db.MaxBatchDelay = batchDelay
	s := &Store{db: db, batch: true, byMAC: map[string]Lease{}, byIP: map[netip.Addr]string{}, dirty: map[string]struct{}{}}
	s.applyCond = sync.NewCond(&s.mu)
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
				return fmt.Errorf("%w (key %x)", err, k)
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

// txn is what one bbolt transaction wrote, for its commit handler to apply to the index.
type txn struct {
	tx  *bolt.Tx
	id  uint64
	ops []op
}

// batchSubmit writes o in a bbolt batch and returns once it is committed (synced).
func (s *Store) batchSubmit(o *op) error {
	s.qmu.Lock()
	if s.closed {
		s.qmu.Unlock()
		return ErrClosed
	}
	s.inflight.Add(1)
	s.qmu.Unlock()
	defer s.inflight.Done()
	s.mu.RLock()
	err := s.bfailed
	s.mu.RUnlock()
	if err != nil {
		return err
	}
	err = s.db.Batch(func(tx *bolt.Tx) error {
		if err := write(tx, o); err != nil {
			return err
		}
		// Batch functions run one at a time under bbolt's writer lock, so s.txn needs no lock of its own.
		if s.txn == nil || s.txn.tx != tx {
			t := &txn{tx: tx, id: uint64(tx.ID())}
			s.txn = t
			tx.OnCommit(func() { s.apply(t) })
		}
		s.txn.ops = append(s.txn.ops, *o)
		return nil
	})
	if err != nil {
		err = fmt.Errorf("leases: %w (the store takes no more writes: check the disk and restart)", err)
		s.mu.Lock()
		if s.bfailed == nil {
			s.bfailed = err
		}
		s.applyCond.Broadcast()
		s.mu.Unlock()
	}
	return err
}

// apply records a committed transaction in the index after the one before it. bbolt runs commit
// handlers after it lets the next transaction start, so they may arrive out of order.
func (s *Store) apply(t *txn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.applied+1 != t.id && s.bfailed == nil {
		s.applyCond.Wait()
	}
	for _, o := range t.ops {
		s.indexOp(o)
	}
	s.applied = t.id
	s.applyCond.Broadcast()
}

// write records o in tx: the lease under its hardware address and the address under its holder,
// removing the holder's previous address and any other holder of the new one.
func write(tx *bolt.Tx, o *op) error {
	macs, ips := tx.Bucket(macBucket), tx.Bucket(ipBucket)
	key := []byte(o.mac)
	if v := macs.Get(key); len(v) >= 5 {
		old := bytes.Clone(v[1:5])
		if bytes.Equal(ips.Get(old), key) {
			if err := ips.Delete(old); err != nil {
				return err
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

func (s *Store) batchClose() error {
	s.closeOnce.Do(func() {
		s.qmu.Lock()
		s.closed = true
		s.qmu.Unlock()
		s.inflight.Wait()
		s.failed = s.db.Close()
	})
	return s.failed
}

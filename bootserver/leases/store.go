package leases

import (
	"cmp"
	"encoding/binary"
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

var (
	bucketName = []byte("leases-v1")
	metaBucket = []byte("meta-v1")
	appliedKey = []byte("log-generation") // the last log generation whose records bbolt holds
)

// ErrClosed is returned by writes to a closed Store.
var ErrClosed = errors.New("leases: store closed")

// maxBatch bounds how many writes go into one group commit.
const maxBatch = 4096

// tuning holds the log sizes and checkpoint triggers; tests shrink them.
type tuning struct {
	logSize       int64                          // bytes preallocated per log file
	rotateRecords int                            // checkpoint a generation once it holds this many records,
	rotateBytes   int64                          // or this many bytes,
	rotateAge     time.Duration                  // or once its first record is this old
	hook          func(point string, gen uint64) // called at crash points, for tests
	buffered      bool                           // never write the log with O_DIRECT (tests cover both paths)
}

var defaultTuning = tuning{logSize: 4 << 20, rotateRecords: 16384, rotateBytes: 1 << 20, rotateAge: time.Second}

// Store keeps leases durably (a write-ahead log checkpointed into a bbolt file) and in memory. Reads
// are served from memory; a write returns only after the log records that hold it are synced to disk.
// Writes that arrive while a sync is in flight go into the next one (group commit): one durable append pays
// for all of them, and a lone writer waits for no timer. The index in memory is changed only after the
// write is durable, so what Get returns has been on disk.
type Store struct {
	db  *bolt.DB
	cfg tuning

	mu    sync.RWMutex
	byMAC map[string]Lease
	byIP  map[netip.Addr]string // address → key of byMAC
	dirty map[string]struct{}   // keys changed since the last checkpoint snapshot; under mu

	// Owned by whoever holds the commit role (committing, below) once Open returns.
	logs     [2]*logFile
	gen      uint64     // active log generation; its file is logs[gen%2]
	off      int64      // where the next record goes in the active file
	genRecs  int        // records in the active generation
	genStart time.Time  // when its first record was written
	ckpt     chan error // result of the checkpoint in flight, nil if none
	failed   error      // sticky: once the log or a checkpoint failed, writes fail
	buf      []byte

	// The write queue (commit.go). Whoever sets committing owns the log fields above until it clears it.
	qmu        sync.Mutex
	cond       *sync.Cond // on qmu: a commit ended
	queue      []*op
	spare      []*op
	committing bool
	closed     bool

	txns      atomic.Int64 // durable log appends (group commits), for tests
	ckpts     atomic.Int64 // checkpoints, for tests
	replayed  int          // log records replayed by Open, for tests
	quit      chan struct{}
	idleDone  chan struct{}
	closeOnce sync.Once

	// OpenBatch's store (batch.go).
	batch     bool
	inflight  sync.WaitGroup
	txn       *txn       // the transaction bbolt's batch is writing; under bbolt's writer lock
	applied   uint64     // the last transaction the index holds; under mu
	applyCond *sync.Cond // on mu: applied changed
	bfailed   error      // under mu
}

type op struct {
	put      *Lease // nil: delete mac
	mac      string
	err      error // set, with finished, under qmu
	finished bool
}

// Open opens (or creates) the store at path, with its log files path-wal0 and path-wal1 beside it,
// and loads its leases: those checkpointed in the bbolt file, then those of the log generations the
// file does not hold yet, which it checkpoints before returning.
func Open(path string) (*Store, error) { return open(path, defaultTuning) }

func open(path string, cfg tuning) (*Store, error) {
	// NoFreelistSync: the freelist is rebuilt on open (a lease file is small) instead of written in
	// every transaction. Syncs stay on: a checkpoint is a normal bbolt transaction (two syncs, data
	// then meta), which is what keeps the file consistent across a power loss.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second, FreelistType: bolt.FreelistMapType, NoFreelistSync: true})
	if err != nil {
		return nil, fmt.Errorf("leases: open %s: %w", path, err)
	}
	s := &Store{
		db:       db,
		cfg:      cfg,
		byMAC:    map[string]Lease{},
		byIP:     map[netip.Addr]string{},
		dirty:    map[string]struct{}{},
		quit:     make(chan struct{}),
		idleDone: make(chan struct{}),
	}
	s.cond = sync.NewCond(&s.qmu)
	if err := s.recover(path); err != nil {
		for _, lf := range s.logs {
			if lf != nil {
				lf.close()
			}
		}
		db.Close()
		return nil, fmt.Errorf("leases: load %s: %w", path, err)
	}
	go s.idle()
	return s, nil
}

// recover loads the bbolt file, replays the log generations newer than its checkpoint, checkpoints
// them, and starts a new generation.
func (s *Store) recover(path string) error {
	var applied uint64
	err := s.db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(metaBucket)
		if err != nil {
			return err
		}
		if v := meta.Get(appliedKey); len(v) == 8 {
			applied = binary.BigEndian.Uint64(v)
		}
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
		return err
	}
	s.dirty = map[string]struct{}{} // what bbolt holds is not dirty
	type pending struct {
		gen     uint64
		content []byte
	}
	var todo []pending
	last := applied
	for i, p := range logPaths(path) {
		lf, content, err := openLog(p, s.cfg.logSize, s.cfg.buffered)
		if err != nil {
			return err
		}
		s.logs[i] = lf
		if gen, ok := parseHeader(content); ok {
			last = max(last, gen)
			if gen > applied {
				todo = append(todo, pending{gen, content})
			}
		}
	}
	slices.SortFunc(todo, func(a, b pending) int { return cmp.Compare(a.gen, b.gen) })
	replayed := 0
	for i, p := range todo {
		// Generations are checkpointed in order and a file is reused only after its generation is
		// checkpointed, so the ones the bbolt file lacks are consecutive.
		if p.gen != applied+1+uint64(i) {
			return fmt.Errorf("log generation %d found after checkpoint %d: a generation is missing", p.gen, applied)
		}
		ops, _, err := parseRecords(p.content, p.gen)
		if err != nil {
			return err
		}
		for _, o := range ops {
			s.indexOp(o)
		}
		replayed += len(ops)
	}
	// The new generation skips one number: a crash while a generation was being started can leave
	// records of it behind a header that did not reach the disk (it was never synced, so none of them
	// was acknowledged). Its number is at most last+1; reusing it would bring those records back.
	// Recording last+1 as applied keeps the generations that follow consecutive.
	s.gen = last + 2
	if err := s.checkpoint(s.snapshot(), s.gen-1); err != nil {
		return err
	}
	if err := s.logs[s.gen%2].writeHeader(s.gen); err != nil {
		return err
	}
	s.off = logHeaderSize
	s.replayed = replayed
	return nil
}

// Close waits for writes in flight, checkpoints the log into the bbolt file and closes the files.
// Later writes fail with ErrClosed.
func (s *Store) Close() error {
	if s.batch {
		return s.batchClose()
	}
	s.closeOnce.Do(func() {
		s.qmu.Lock()
		s.closed = true
		close(s.quit)
		for s.committing || len(s.queue) > 0 {
			s.cond.Wait()
		}
		s.committing = true // for good: nothing writes the log after this
		s.qmu.Unlock()
		<-s.idleDone
		s.finish()
		for _, lf := range s.logs {
			if err := lf.close(); s.failed == nil && err != nil {
				s.failed = err
			}
		}
		if err := s.db.Close(); s.failed == nil && err != nil {
			s.failed = err
		}
	})
	return s.failed
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
// held on the same IP is removed with it (the caller decided the address was free).
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
	if len(mac) == 0 || len(mac) > 16 {
		return nil // never stored
	}
	return s.submit(&op{mac: string(mac)})
}

// indexOp applies o to the index. Callers hold mu (or own s during Open).
func (s *Store) indexOp(o op) {
	if o.put == nil {
		s.unindex(o.mac)
	} else {
		s.index(*o.put)
	}
}

// index records l, replacing mac's previous lease and any other holder of l.IP. Callers hold mu (or
// own s during Open).
func (s *Store) index(l Lease) {
	k := string(l.MAC)
	s.unindex(k)
	if other, ok := s.byIP[l.IP]; ok {
		delete(s.byMAC, other)
		s.dirty[other] = struct{}{}
	}
	s.dirty[k] = struct{}{}
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
	s.dirty[k] = struct{}{}
}

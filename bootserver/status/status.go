// Package status keeps each machine's boot timeline: the phases the boot server saw itself (DHCP,
// the NBP over TFTP, the iPXE script, kernel, initrds, join file) and the ones the node agent
// reports to POST /status/<mac>. Timelines live in memory and in a bbolt bucket (persist.go), so they
// survive a restart; events recorded with RecordSync are on disk before it returns.
//
// Inventory machines always keep their timeline. Any other MAC the network shows (a DISCOVER, a
// script GET, a status POST) gets one within a small budget (Options.MaxUnknown): the least recently
// seen unknown machine leaves memory and disk to make room.
package status

import (
	"bytes"
	"container/list"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"

	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/internal/bootstraptoken"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// Phases the boot server records itself (their names are the protocol's: bootstatus).
const (
	PhaseDHCP           = bootstatus.PhaseDHCP
	PhaseNBP            = bootstatus.PhaseNBP
	PhaseIPXEDHCP       = bootstatus.PhaseIPXEDHCP
	PhaseScript         = bootstatus.PhaseScript
	PhaseKernel         = bootstatus.PhaseKernel
	PhaseInitrd         = bootstatus.PhaseInitrd
	PhaseAgentDHCP      = bootstatus.PhaseAgentDHCP
	PhaseNodeRegistered = bootstatus.PhaseNodeRegistered
)

// Sources of events.
const (
	SourceDHCP    = "dhcp"
	SourceTFTP    = "tftp"
	SourceHTTP    = "http"
	SourceAgent   = "agent"
	SourceCluster = "cluster" // seen in the Kubernetes API (Nodes)
)

// Limits.
const (
	// MaxPhases is the most phases kept per boot; later new phases are dropped.
	MaxPhases = 64
	// DefaultMaxUnknown is the default of Options.MaxUnknown.
	DefaultMaxUnknown = 1024
)

// Event is one phase transition to record.
type Event struct {
	bootstatus.Event
	Source string
	// StartsBoot makes this event open a new boot when the current one already reached the
	// script phase (the machine booted again).
	StartsBoot bool
}

// Phase is one phase of a boot's timeline.
type Phase struct {
	Phase  string    `json:"phase"`
	State  string    `json:"state"`
	Source string    `json:"source"`
	Start  time.Time `json:"start,omitzero"`
	End    time.Time `json:"end,omitzero"`
	// Seconds is End-Start when both are known.
	Seconds float64 `json:"seconds,omitempty"`
	Detail  string  `json:"detail,omitempty"`
	Error   string  `json:"error,omitempty"`
	Attempt int     `json:"attempt,omitempty"`
}

// Machine is a machine's state as the status pages show it.
type Machine struct {
	MAC      hwaddr.MAC `json:"mac"`
	NodeName string     `json:"nodeName,omitempty"`
	Profile  string     `json:"profile,omitempty"`
	Known    bool       `json:"known"`
	// Boot counts the boots seen (1 for the first).
	Boot        int       `json:"boot"`
	BootStarted time.Time `json:"bootStarted,omitzero"`
	LastPhase   string    `json:"lastPhase,omitempty"`
	LastState   string    `json:"lastState,omitempty"`
	LastSeen    time.Time `json:"lastSeen,omitzero"`
	Phases      []Phase   `json:"phases"`
	// Install is what the machine's agent reported of its persistent disk (install.go).
	Install Install `json:"install,omitzero"`
}

// Options configure a Store.
type Options struct {
	// MaxUnknown bounds the timelines of machines not in the inventory; past it, the least recently
	// seen one is evicted. Default DefaultMaxUnknown.
	MaxUnknown int
	// Known says whether a MAC is in the inventory. A machine is also known once an Identity with
	// Known set was recorded for it (RecordAs, SetIdentity). Nil: only that.
	Known func(mac hwaddr.MAC) bool
	// Registerer gets the boot-phase histogram and the machines-by-last-phase gauge.
	Registerer prometheus.Registerer
	// FlushInterval is how often events recorded without RecordSync are written; default 1s.
	FlushInterval time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
	// OnChange, if set, learns of every change to a timeline (the Machine.status writer queues the
	// machine and reads its timeline later, with Get). It runs with the store's lock held: it must
	// not call the Store and must be quick.
	OnChange func(Change)
}

// Change says which machine's timeline changed.
type Change struct {
	MAC hwaddr.MAC
	// Known: the machine is in the inventory (strangers' changes are not written to the API).
	Known bool
	// Important: a new boot began, a phase failed, or the machine's node registered or became
	// ready; worth showing at once.
	Important bool
}

// Store holds the timelines.
type Store struct {
	db   *bolt.DB
	opts Options
	mu   sync.Mutex
	m    map[hwaddr.MAC]*entry
	// unknown holds the entries of machines not in the inventory, most recently seen first.
	unknown *list.List
	dirty   map[hwaddr.MAC]bool // changed since the last write
	gone    map[hwaddr.MAC]bool // evicted, to delete from disk
	phase   *prometheus.HistogramVec
	// observers caches phase's series by label values (a bounded set: PhaseLabel × done/error).
	observers map[[2]string]prometheus.Observer
	drops     prometheus.Counter
	evictions prometheus.Counter
	stop      chan struct{}
	done      chan struct{}
	// flushMu serializes the writes (flush, RecordSync), so that none overwrites a newer timeline
	// with an older one.
	flushMu sync.Mutex
}

// entry is a machine's timeline and its bookkeeping.
type entry struct {
	Machine
	lru    *list.Element // in Store.unknown, for a machine not in the inventory
	stored bool          // written to disk (an eviction must delete it there)
}

// Open loads the timelines kept in db and starts the background writer; Close stops it.
func Open(db *bolt.DB, opts Options) (*Store, error) {
	if opts.MaxUnknown <= 0 {
		opts.MaxUnknown = DefaultMaxUnknown
	}
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Store{db: db, opts: opts, m: map[hwaddr.MAC]*entry{}, unknown: list.New(), dirty: map[hwaddr.MAC]bool{},
		gone: map[hwaddr.MAC]bool{}, observers: map[[2]string]prometheus.Observer{},
		stop: make(chan struct{}), done: make(chan struct{})}
	s.phase = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "pxejoin_boot_phase_duration_seconds",
		Help:    "Duration of boot phases, from their start to their end (done or error).",
		Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300},
	}, []string{"phase", "state"})
	s.drops = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "pxejoin_status_events_dropped_total",
		Help: "Events not recorded because their boot already has the most phases kept.",
	})
	s.evictions = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "pxejoin_status_unknown_evicted_total",
		Help: "Timelines of machines not in the inventory dropped, least recently seen first, to stay within unknownMachines.maxTimelines.",
	})
	unknown := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "pxejoin_status_unknown_timelines",
		Help: "Timelines kept for machines not in the inventory.",
	}, func() float64 {
		s.mu.Lock()
		defer s.mu.Unlock()
		return float64(s.unknown.Len())
	})
	if err := s.load(); err != nil {
		return nil, fmt.Errorf("status: cannot load the timelines from the state store: %w", err)
	}
	if r := opts.Registerer; r != nil {
		for _, c := range []prometheus.Collector{s.phase, s.drops, s.evictions, unknown, machinesCollector{s}} {
			if err := r.Register(c); err != nil {
				return nil, err
			}
		}
	}
	go s.flushLoop()
	return s, nil
}

// Close writes what is pending and stops the writer. The caller closes the database.
func (s *Store) Close() error {
	close(s.stop)
	<-s.done
	return s.flush()
}

// Record adds an event to mac's timeline. It returns the machine's boot number.
func (s *Store) Record(mac hwaddr.MAC, ev Event) int {
	return s.RecordAs(mac, nil, ev)
}

// RecordSync is Record of each event and then a write to disk of mac's timeline before returning.
func (s *Store) RecordSync(mac hwaddr.MAC, evs ...Event) (int, error) {
	s.flushMu.Lock() // after a running flush, which may hold mac as it was before evs
	defer s.flushMu.Unlock()
	s.mu.Lock()
	e := s.update(mac, nil, evs)
	data, err := s.encode(e)
	delete(s.dirty, mac)
	s.mu.Unlock()
	if err != nil {
		return e.Boot, err
	}
	return e.Boot, s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put(key(mac), data) })
}

// Identity is what the inventory says of a machine.
type Identity struct {
	NodeName, Profile string
	Known             bool
}

// SetIdentity records what the inventory says of mac (node name, profile, known).
func (s *Store) SetIdentity(mac hwaddr.MAC, node, profile string, known bool) {
	s.RecordAs(mac, &Identity{NodeName: node, Profile: profile, Known: known})
}

// RecordAs records evs in order and then, unless id is nil, mac's identity (as SetIdentity), all
// under one lock: the events of one request. It returns the machine's boot number.
func (s *Store) RecordAs(mac hwaddr.MAC, id *Identity, evs ...Event) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.update(mac, id, evs).Boot
}

// update applies evs and id to mac's entry, creating it if need be, and makes room for it among the
// unknown machines if it is one. Called with s.mu held.
func (s *Store) update(mac hwaddr.MAC, id *Identity, evs []Event) *entry {
	e := s.m[mac]
	if e == nil {
		e = &entry{Machine: Machine{MAC: mac}}
		if s.gone[mac] { // evicted but not yet deleted from disk: this write replaces it
			delete(s.gone, mac)
			e.stored = true
		}
		s.m[mac] = e
		s.dirty[mac] = true
	}
	changed, important, boot := false, false, e.Boot
	for i := range evs {
		if s.recordIn(&e.Machine, evs[i]) {
			applyInstall(&e.Machine, evs[i], e.LastSeen)
			s.dirty[mac] = true
			changed = true
			important = important || isImportant(evs[i].Event)
		}
	}
	if id != nil && (e.NodeName != id.NodeName || e.Profile != id.Profile || e.Known != id.Known) {
		e.NodeName, e.Profile, e.Known = id.NodeName, id.Profile, id.Known
		s.dirty[mac] = true
		changed = true
	}
	s.place(e)
	if changed && s.opts.OnChange != nil {
		s.opts.OnChange(Change{MAC: mac, Known: e.lru == nil, Important: important || e.Boot != boot})
	}
	return e
}

// isImportant says whether an event is worth showing at once (Change.Important).
func isImportant(ev bootstatus.Event) bool {
	return ev.State == bootstatus.StateError || ev.Phase == PhaseNodeRegistered || ev.Phase == bootstatus.PhaseNodeReady
}

// place puts e among the unknown machines (first: the most recently seen), evicting the least
// recently seen past the budget, or takes it out if it is known. Called with s.mu held.
func (s *Store) place(e *entry) {
	if e.Known || (s.opts.Known != nil && s.opts.Known(e.MAC)) {
		if e.lru != nil {
			s.unknown.Remove(e.lru)
			e.lru = nil
		}
		return
	}
	if e.lru != nil {
		s.unknown.MoveToFront(e.lru)
		return
	}
	e.lru = s.unknown.PushFront(e)
	for s.unknown.Len() > s.opts.MaxUnknown {
		old := s.unknown.Remove(s.unknown.Back()).(*entry)
		delete(s.m, old.MAC)
		delete(s.dirty, old.MAC)
		if old.stored {
			s.gone[old.MAC] = true
		}
		s.evictions.Inc()
	}
}

// Boot returns mac's current boot number (0 if never seen).
func (s *Store) Boot(mac hwaddr.MAC) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.m[mac]; e != nil {
		return e.Boot
	}
	return 0
}

// Get returns a copy of mac's state.
func (s *Store) Get(mac hwaddr.MAC) (Machine, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.m[mac]
	if e == nil {
		return Machine{}, false
	}
	return copyMachine(&e.Machine), true
}

// All returns copies of every machine, sorted by MAC.
func (s *Store) All() []Machine {
	s.mu.Lock()
	out := make([]Machine, 0, len(s.m))
	for _, e := range s.m {
		out = append(out, copyMachine(&e.Machine))
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return bytes.Compare(out[i].MAC[:], out[j].MAC[:]) < 0 })
	return out
}

func copyMachine(m *Machine) Machine {
	c := *m
	c.Phases = append([]Phase(nil), m.Phases...)
	return c
}

// observer is the phase histogram's series for a phase label and state, resolved once (s.mu held).
func (s *Store) observer(phase, state string) prometheus.Observer {
	k := [2]string{phase, state}
	o := s.observers[k]
	if o == nil {
		o = s.phase.WithLabelValues(phase, state)
		s.observers[k] = o
	}
	return o
}

// recordIn adds ev to m's timeline; false if it was dropped (phase limit).
func (s *Store) recordIn(m *Machine, ev Event) bool {
	t := ev.Time
	if t.IsZero() {
		t = s.opts.Now()
	}
	if m.Boot == 0 || (ev.StartsBoot && m.has(PhaseScript)) {
		m.Boot++
		m.BootStarted = t
		m.Phases = m.Phases[:0] // never shared: Get and All copy it
	}
	i := m.index(ev.Phase)
	if i < 0 {
		if len(m.Phases) >= MaxPhases {
			s.drops.Inc()
			return false
		}
		m.Phases = append(m.Phases, Phase{Phase: ev.Phase})
		i = len(m.Phases) - 1
	}
	p := &m.Phases[i]
	p.Source, p.State = ev.Source, ev.State
	p.Detail, p.Error, p.Attempt = bootstraptoken.Scrub(ev.Detail), bootstraptoken.Scrub(ev.Error), ev.Attempt
	switch ev.State {
	case bootstatus.StateStart:
		p.Start, p.End, p.Seconds = t, time.Time{}, 0
	default:
		p.End = t
		if !p.Start.IsZero() && !t.Before(p.Start) {
			p.Seconds = t.Sub(p.Start).Seconds()
			if ev.State == bootstatus.StateDone || ev.State == bootstatus.StateError {
				s.observer(PhaseLabel(ev.Phase), ev.State).Observe(p.Seconds)
			}
		}
	}
	m.LastPhase, m.LastState, m.LastSeen = ev.Phase, ev.State, t
	return true
}

func (m *Machine) index(phase string) int {
	for i := range m.Phases {
		if m.Phases[i].Phase == phase {
			return i
		}
	}
	return -1
}

func (m *Machine) has(phase string) bool { return m.index(phase) >= 0 }

func (s *Store) flushLoop() {
	defer close(s.done)
	t := time.NewTicker(s.opts.FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			_ = s.flush()
		}
	}
}

// Flush writes the timelines changed since the last write now (the background writer does it every
// FlushInterval).
func (s *Store) Flush() error { return s.flush() }

// flushChunk is how many timelines flush encodes per hold of the lock, so that requests recording
// events wait for one chunk, not for the whole batch.
const flushChunk = 256

// flush writes every changed timeline and deletes every evicted one in one transaction.
func (s *Store) flush() error {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	s.mu.Lock()
	if len(s.dirty) == 0 && len(s.gone) == 0 {
		s.mu.Unlock()
		return nil
	}
	macs := slices.SortedFunc(maps.Keys(s.dirty), compareMACs) // in key order: bbolt's cheapest inserts
	gone := slices.SortedFunc(maps.Keys(s.gone), compareMACs)
	clear(s.dirty)
	clear(s.gone)
	s.mu.Unlock()
	// A machine changed after the clear is encoded as it is now and written again next time.
	recs := make([][]byte, len(macs))
	for i := 0; i < len(macs); i += flushChunk {
		s.mu.Lock()
		for j := i; j < min(i+flushChunk, len(macs)); j++ {
			if e := s.m[macs[j]]; e != nil {
				recs[j], _ = s.encode(e) // a timeline that does not encode is left out
			}
		}
		s.mu.Unlock()
	}
	err := s.db.Update(func(tx *bolt.Tx) error { return write(tx, macs, recs, gone) })
	if err != nil { // try again next time
		s.mu.Lock()
		for _, mac := range macs {
			if s.m[mac] != nil {
				s.dirty[mac] = true
			}
		}
		for _, mac := range gone {
			if s.m[mac] == nil {
				s.gone[mac] = true
			}
		}
		s.mu.Unlock()
	}
	return err
}

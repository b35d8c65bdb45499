// Package status keeps each machine's boot timeline: the phases the boot server saw itself (DHCP,
// the NBP over TFTP, the iPXE script, kernel, initrds, join file) and the ones the node agent
// reports to POST /status/<mac>. Timelines live in memory and in a bbolt bucket, so they survive a
// restart; an event recorded with Sync is on disk before Sync returns.
package status

import (
	"fmt"
	"regexp"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"

	"github.com/pxejoin/pxejoin/internal/bootstatus"
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
	// DefaultMaxMachines bounds the timelines kept (unknown MACs could otherwise fill memory).
	DefaultMaxMachines = 65536
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
	MAC      string `json:"mac"`
	NodeName string `json:"nodeName,omitempty"`
	Profile  string `json:"profile,omitempty"`
	Known    bool   `json:"known"`
	// Boot counts the boots seen (1 for the first).
	Boot        int       `json:"boot"`
	BootStarted time.Time `json:"bootStarted,omitzero"`
	LastPhase   string    `json:"lastPhase,omitempty"`
	LastState   string    `json:"lastState,omitempty"`
	LastSeen    time.Time `json:"lastSeen,omitzero"`
	Phases      []Phase   `json:"phases"`
}

// Options configure a Store.
type Options struct {
	// MaxMachines bounds the timelines kept; default DefaultMaxMachines.
	MaxMachines int
	// Registerer gets the boot-phase histogram and the machines-by-last-phase gauge.
	Registerer prometheus.Registerer
	// FlushInterval is how often events recorded without Sync are written; default 1s.
	FlushInterval time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Store holds the timelines.
type Store struct {
	db    *bolt.DB
	opts  Options
	mu    sync.Mutex
	m     map[string]*Machine
	dirty map[string]bool
	phase *prometheus.HistogramVec
	// observers caches phase's series by label values (a bounded set: PhaseLabel × done/error).
	observers map[[2]string]prometheus.Observer
	drops     prometheus.Counter
	stop      chan struct{}
	done      chan struct{}
	// flushMu serializes the writes (flush, RecordSync); flushBuf is flush's encoding buffer.
	flushMu  sync.Mutex
	flushBuf []byte
	log      logState // under flushMu (persist.go)
}

// Open loads the timelines kept in db and starts the background writer; Close stops it.
func Open(db *bolt.DB, opts Options) (*Store, error) {
	if opts.MaxMachines <= 0 {
		opts.MaxMachines = DefaultMaxMachines
	}
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Store{db: db, opts: opts, m: map[string]*Machine{}, dirty: map[string]bool{},
		observers: map[[2]string]prometheus.Observer{}, stop: make(chan struct{}), done: make(chan struct{})}
	err := db.Update(s.load)
	if err != nil {
		return nil, fmt.Errorf("status: cannot load the timelines: %w", err)
	}
	s.phase = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "pxejoin_boot_phase_duration_seconds",
		Help:    "Duration of boot phases, from their start to their end (done or error).",
		Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300},
	}, []string{"phase", "state"})
	s.drops = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "pxejoin_status_events_dropped_total",
		Help: "Events not recorded because the machine or phase limit was reached.",
	})
	if r := opts.Registerer; r != nil {
		for _, c := range []prometheus.Collector{s.phase, s.drops, machinesCollector{s}} {
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

// Record adds an event to mac's timeline (mac canonical). It returns the machine's boot number.
func (s *Store) Record(mac string, ev Event) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.record(mac, ev)
}

// RecordSync is Record and then a write to disk of mac's timeline before returning.
func (s *Store) RecordSync(mac string, evs ...Event) (int, error) {
	s.flushMu.Lock() // after a running flush, which may hold mac as it was before evs
	defer s.flushMu.Unlock()
	s.mu.Lock()
	boot := 0
	for _, ev := range evs {
		boot = s.record(mac, ev)
	}
	m := s.m[mac]
	var data []byte
	var err error
	if m != nil {
		data, err = appendRecord(nil, mac, m)
		delete(s.dirty, mac)
	}
	s.mu.Unlock()
	if m == nil || err != nil {
		return boot, err
	}
	return boot, s.commitLog(data, false)
}

// Identity is what the inventory says of a machine.
type Identity struct {
	NodeName, Profile string
	Known             bool
}

// SetIdentity records what the inventory says of mac (node name, profile, known).
func (s *Store) SetIdentity(mac, node, profile string, known bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.setIdentity(mac, Identity{NodeName: node, Profile: profile, Known: known})
}

// RecordAs records evs in order and then, unless id is nil, mac's identity (as SetIdentity), all
// under one lock: the events of one request. It returns the machine's boot number.
func (s *Store) RecordAs(mac string, id *Identity, evs ...Event) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.machine(mac) // one lookup for all: the map is as large as the fleet
	if m == nil {
		return 0
	}
	for i := range evs {
		s.recordIn(m, evs[i])
	}
	if id != nil {
		m.NodeName, m.Profile, m.Known = id.NodeName, id.Profile, id.Known
	}
	s.dirty[mac] = true
	return m.Boot
}

func (s *Store) setIdentity(mac string, id Identity) {
	m := s.machine(mac)
	if m == nil || (m.NodeName == id.NodeName && m.Profile == id.Profile && m.Known == id.Known) {
		return
	}
	m.NodeName, m.Profile, m.Known = id.NodeName, id.Profile, id.Known
	s.dirty[mac] = true
}

// Boot returns mac's current boot number (0 if never seen).
func (s *Store) Boot(mac string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m := s.m[mac]; m != nil {
		return m.Boot
	}
	return 0
}

// Get returns a copy of mac's state.
func (s *Store) Get(mac string) (Machine, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.m[mac]
	if m == nil {
		return Machine{}, false
	}
	return copyMachine(m), true
}

// All returns copies of every machine, sorted by MAC.
func (s *Store) All() []Machine {
	s.mu.Lock()
	out := make([]Machine, 0, len(s.m))
	for _, m := range s.m {
		out = append(out, copyMachine(m))
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].MAC < out[j].MAC })
	return out
}

func copyMachine(m *Machine) Machine {
	c := *m
	c.Phases = append([]Phase(nil), m.Phases...)
	return c
}

// machine returns mac's record, creating it unless the limit is reached (then nil).
func (s *Store) machine(mac string) *Machine {
	m := s.m[mac]
	if m == nil {
		if len(s.m) >= s.opts.MaxMachines {
			s.drops.Inc()
			return nil
		}
		m = &Machine{MAC: mac}
		s.m[mac] = m
	}
	return m
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

func (s *Store) record(mac string, ev Event) int {
	m := s.machine(mac)
	if m == nil {
		return 0
	}
	if s.recordIn(m, ev) {
		s.dirty[mac] = true
	}
	return m.Boot
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
	p.Detail, p.Error, p.Attempt = Scrub(ev.Detail), Scrub(ev.Error), ev.Attempt
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
// events wait for one chunk (well under a millisecond), not for the whole batch.
const flushChunk = 256

// flush writes every dirty timeline (every timeline when the log is due for compaction) in one
// transaction. Flushes and RecordSync's writes run one at a time, so that none overwrites a newer
// timeline with an older one; flushes share one buffer.
func (s *Store) flush() error {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	compact := s.log.due()
	s.mu.Lock()
	if len(s.dirty) == 0 && !compact {
		s.mu.Unlock()
		return nil
	}
	var macs []string
	if compact {
		macs = make([]string, 0, len(s.m))
		for mac := range s.m {
			macs = append(macs, mac)
		}
	} else {
		macs = make([]string, 0, len(s.dirty))
		for mac := range s.dirty {
			macs = append(macs, mac)
		}
	}
	clear(s.dirty) // keeps its room for the next batch
	s.mu.Unlock()
	// A machine changed after the clear is encoded as it is now and written again next time.
	buf := s.flushBuf[:0]
	defer func() {
		if cap(buf) <= 64<<20 { // keep the room of a usual batch, not that of a huge one
			s.flushBuf = buf[:0]
		}
	}()
	for i := 0; i < len(macs); i += flushChunk {
		s.mu.Lock()
		for _, mac := range macs[i:min(i+flushChunk, len(macs))] {
			if m := s.m[mac]; m != nil {
				buf, _ = appendRecord(buf, mac, m) // a timeline that does not encode is left out
			}
		}
		s.mu.Unlock()
	}
	return s.commitLog(buf, compact)
}

// commitLog writes recs to the log in a transaction of its own. Called with flushMu held.
func (s *Store) commitLog(recs []byte, compact bool) error {
	var st logState
	err := s.db.Update(func(tx *bolt.Tx) (err error) {
		st, err = s.writeLog(tx, recs, compact)
		return err
	})
	if err == nil {
		s.log = st
	}
	return err
}

var tokenRE = regexp.MustCompile(`[a-z0-9]{6}\.[a-z0-9]{16}`)

// Scrub hides anything shaped like a bootstrap token (id.secret) in a text from the network, so a
// careless error message cannot put a secret on a status page.
func Scrub(s string) string {
	if len(s) < 23 {
		return s
	}
	return tokenRE.ReplaceAllStringFunc(s, func(t string) string { return t[:6] + ".<redacted>" })
}

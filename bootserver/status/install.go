package status

import (
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/internal/bootstraptoken"
	"github.com/pxejoin/pxejoin/internal/diskspec"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// Install is what the boot server knows of a persistent machine's disk, learnt from its agent's
// reports (phases disk and resume) and kept with its timeline, on disk. It outlives the boots.
type Install struct {
	// Installed: the agent reported its disk installed or mounted (disk done). Such a machine's
	// later boots resume from the disk: no token is minted for it ahead of its join file.
	Installed bool `json:"installed,omitempty"`
	// InstalledBoot is the boot in which the disk was first reported; a join in a later boot is a
	// re-join.
	InstalledBoot int `json:"installedBoot,omitempty"`
	// InstalledAt is when the disk was last partitioned and formatted (disk done "installed …").
	InstalledAt time.Time `json:"installedAt,omitzero"`
	// Disk is the detail of the last disk done ("mounted /dev/…").
	Disk string `json:"disk,omitempty"`
	// LastResume is the last resume done: a boot that came back without a join.
	LastResume time.Time `json:"lastResume,omitzero"`
	// Rejoins counts the join files served to the machine after its install; LastRejoin and
	// RejoinReason (the agent's words, e.g. the resume's "client certificate expired") are the
	// latest one's.
	Rejoins      int       `json:"rejoins,omitempty"`
	LastRejoin   time.Time `json:"lastRejoin,omitzero"`
	RejoinReason string    `json:"rejoinReason,omitempty"`
	// RejoinBoot is the boot whose re-join was counted (a join file fetched again in the same
	// boot is not another re-join).
	RejoinBoot int `json:"rejoinBoot,omitempty"`
	// Reimage is the re-image request made on this server (`bootserver reimage`), until a wipe
	// carries it out; its value is the request's time (RFC 3339).
	Reimage string `json:"reimage,omitempty"`
	// ReimageBoot is the request (this server's or the inventory's) whose pxejoin.reimage=1 the
	// current boot's script carried.
	ReimageBoot string `json:"reimageBoot,omitempty"`
	// Reimaged is the request the last wipe carried out: a request of that value is done.
	Reimaged string `json:"reimaged,omitempty"`
}

// Reasons of a re-join (label of pxejoin_rejoins_total).
const (
	RejoinReimage      = "reimage"       // the disk was wiped on request
	RejoinExpired      = "expired"       // the credentials on the disk expired
	RejoinCAChanged    = "ca-changed"    // the credentials are for another cluster CA
	RejoinDiskReplaced = "disk-replaced" // no credentials on the disk: a new or blanked disk
	RejoinNotResumed   = "not-resumed"   // the agent did not report why (no resume phase)
	RejoinOther        = "other"         // any other reason the agent gave
)

// Bounds of what is kept. (What the agent's details say is read with diskspec.DiskAction and
// diskspec.ResumeClass, the words the agent writes them with.)
const (
	maxInstallDetail    = 256 // bytes kept of an agent's detail
	reimageRequestBytes = 64  // bound of a request's value
)

// RejoinReasons are the values RejoinReason classifies into.
var RejoinReasons = []string{RejoinReimage, RejoinExpired, RejoinCAChanged, RejoinDiskReplaced, RejoinNotResumed, RejoinOther}

// applyInstall learns from an agent's event what it says of the machine's disk. Called with s.mu
// held, after the event was added to m's timeline.
func applyInstall(m *Machine, ev Event, t time.Time) {
	if ev.Source != SourceAgent || ev.State != bootstatus.StateDone {
		return
	}
	in := &m.Install
	switch ev.Phase {
	case bootstatus.PhaseDisk:
		detail := bootstatus.Truncate(bootstraptoken.Scrub(ev.Detail), maxInstallDetail)
		if !in.Installed {
			in.InstalledBoot = m.Boot
		}
		in.Installed, in.Disk = true, detail
		action := diskspec.DiskAction(detail)
		if action == diskspec.DiskInstalled || action == diskspec.DiskWiped {
			in.InstalledAt = t
		}
		if action == diskspec.DiskWiped && in.ReimageBoot != "" {
			// The request this boot carried is done; a newer one (made after the script) stays.
			in.Reimaged = in.ReimageBoot
			if in.Reimage == in.ReimageBoot {
				in.Reimage = ""
			}
			in.ReimageBoot = ""
		}
	case bootstatus.PhaseResume:
		in.LastResume = t
	}
}

// pendingReimage is the re-image request m's next script must carry: this server's, else the
// inventory's (inventoryReq), unless a wipe carried it out already; "" if none.
func pendingReimage(m *Machine, inventoryReq string) string {
	for _, req := range []string{m.Install.Reimage, inventoryReq} {
		if req != "" && req != m.Install.Reimaged {
			return req
		}
	}
	return ""
}

// Resumes reports whether mac is an installed machine expected to resume from its disk: it
// reported its disk and has no re-image pending (inventoryReq is the inventory's request). Its
// token is then minted only when its agent asks for a join file.
func (s *Store) Resumes(mac hwaddr.MAC, inventoryReq string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.m[mac]
	return e != nil && e.Install.Installed && pendingReimage(&e.Machine, inventoryReq) == ""
}

// ReimageForScript returns the re-image request mac's script must carry now (pxejoin.reimage=1),
// or "" if none, and notes it as the current boot's, on disk before it returns: the agent's wipe
// report then completes it, even across a restart. inventoryReq is the inventory's request.
func (s *Store) ReimageForScript(mac hwaddr.MAC, inventoryReq string) (string, error) {
	var req string
	err := s.syncUpdate(mac, func(m *Machine) bool {
		req = pendingReimage(m, inventoryReq)
		if m.Install.ReimageBoot == req {
			return false
		}
		m.Install.ReimageBoot = req
		return true
	})
	return req, err
}

// RequestReimage marks mac (identified as id) for a re-image: its next boots carry
// pxejoin.reimage=1 until its agent reports a wipe. req names the request (its time); the mark is
// on disk before RequestReimage returns.
func (s *Store) RequestReimage(mac hwaddr.MAC, id Identity, req string) error {
	req = bootstatus.Truncate(req, reimageRequestBytes)
	s.RecordAs(mac, &id)
	return s.syncUpdate(mac, func(m *Machine) bool {
		m.Install.Reimage = req
		return true
	})
}

// Rejoin decides whether mac's join file request (in its current boot) is a re-join: the machine
// was installed in an earlier boot, or its disk was wiped on request in this one. If so, and the
// boot's re-join was not recorded yet, it records it (count, time, the agent's reason) and
// returns the reason's class (RejoinReasons).
func (s *Store) Rejoin(mac hwaddr.MAC) (reason string, rejoin bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.m[mac]
	if e == nil || !e.Install.Installed || e.Install.RejoinBoot == e.Boot {
		return "", false
	}
	m := &e.Machine
	text := ""
	switch disk, resume := m.phase(bootstatus.PhaseDisk), m.phase(bootstatus.PhaseResume); {
	case disk != nil && disk.State == bootstatus.StateDone && diskspec.DiskAction(disk.Detail) == diskspec.DiskWiped:
		reason, text = RejoinReimage, disk.Detail
	case m.Install.InstalledBoot >= m.Boot:
		return "", false // the first install's join
	case resume != nil && resume.State == bootstatus.StateSkipped:
		reason, text = classifyResume(resume.Detail), resume.Detail
	default:
		reason, text = RejoinNotResumed, "the agent did not report a resume check"
	}
	m.Install.Rejoins++
	m.Install.RejoinBoot = m.Boot
	m.Install.LastRejoin = s.opts.Now()
	m.Install.RejoinReason = bootstatus.Truncate(text, maxInstallDetail)
	s.dirty[mac] = true
	if s.opts.OnChange != nil {
		s.opts.OnChange(Change{MAC: mac, Known: e.lru == nil})
	}
	return reason, true
}

// classifyResume maps the agent's reason for not resuming (resume skipped) to a RejoinReasons
// value.
func classifyResume(detail string) string {
	switch diskspec.ResumeClass(detail) {
	case diskspec.ResumeExpired:
		return RejoinExpired
	case diskspec.ResumeOtherCluster:
		return RejoinCAChanged
	case diskspec.ResumeNoCredentials:
		return RejoinDiskReplaced
	case diskspec.ResumeReimage:
		return RejoinReimage
	}
	return RejoinOther
}

// phase is m's phase named name in the current boot, or nil.
func (m *Machine) phase(name string) *Phase {
	if i := m.index(name); i >= 0 {
		return &m.Phases[i]
	}
	return nil
}

// syncUpdate changes mac's entry with f (creating it if need be) and, if f reports a change,
// writes the timeline to disk before returning.
func (s *Store) syncUpdate(mac hwaddr.MAC, f func(m *Machine) bool) error {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	s.mu.Lock()
	e := s.update(mac, nil, nil)
	if !f(&e.Machine) {
		s.mu.Unlock()
		return nil
	}
	if s.opts.OnChange != nil {
		s.opts.OnChange(Change{MAC: mac, Known: e.lru == nil})
	}
	data, err := s.encode(e)
	delete(s.dirty, mac)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put(key(mac), data) })
}

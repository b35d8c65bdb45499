package status

import (
	"bytes"
	"slices"
	"time"

	"github.com/pxejoin/pxejoin/internal/bootstatus"
)

// MaxAttempts is the most earlier attempts kept per boot, over all its phases (a Phase's own fields
// are its latest attempt). Past it, the second-oldest attempt of the phase with the most is dropped
// (pxejoin_status_attempts_dropped_total), so each phase keeps its first and its latest attempts.
const MaxAttempts = 32

// Attempt is an earlier attempt of a phase in the same boot: the agent retries a failed join with
// backoff, a firmware retries a failed download.
type Attempt struct {
	Attempt int       `json:"attempt,omitempty"`
	State   string    `json:"state"`
	Start   time.Time `json:"start,omitzero"`
	End     time.Time `json:"end,omitzero"`
	Seconds float64   `json:"seconds,omitempty"`
	Error   string    `json:"error,omitempty"`
}

// newAttempt says whether ev begins another attempt of p rather than continuing p's latest: the
// agent numbers its attempts, and a phase that failed starts again when it is retried.
func newAttempt(p *Phase, ev *Event) bool {
	if p.State == "" {
		return false
	}
	return (p.Attempt > 0 && ev.Attempt > p.Attempt) ||
		(ev.State == bootstatus.StateStart && p.State == bootstatus.StateError)
}

// keepAttempt moves the latest attempt of m.Phases[i] to its earlier attempts, within MaxAttempts.
func (s *Store) keepAttempt(m *Machine, i int) {
	p := &m.Phases[i]
	prev := Attempt{Attempt: p.Attempt, State: p.State, Start: p.Start, End: p.End, Seconds: p.Seconds, Error: p.Error}
	total, most := 0, i
	for j := range m.Phases {
		total += len(m.Phases[j].Attempts)
		if len(m.Phases[j].Attempts) > len(m.Phases[most].Attempts) {
			most = j
		}
	}
	if total >= MaxAttempts {
		s.attemptDrops.Inc()
		q := &m.Phases[most]
		if len(q.Attempts) < 2 { // every retried phase holds only its first: prev is not kept
			return
		}
		q.Attempts = slices.Delete(q.Attempts, 1, 2)
	}
	p.Attempts = append(p.Attempts, prev)
}

// Failing reports whether the latest attempt of a phase of the current boot failed.
func (m *Machine) Failing() bool {
	for i := range m.Phases {
		if m.Phases[i].State == bootstatus.StateError {
			return true
		}
	}
	return false
}

// Failures counts the failed attempts of the current boot, earlier attempts included.
func (m *Machine) Failures() int {
	n := 0
	for i := range m.Phases {
		p := &m.Phases[i]
		if p.State == bootstatus.StateError {
			n++
		}
		for _, a := range p.Attempts {
			if a.State == bootstatus.StateError {
				n++
			}
		}
	}
	return n
}

// Reason is the latest failure of the current boot, "<phase>: <error>" ("" if none failed): what an
// operator reads first. Errors are scrubbed of secrets when recorded.
func (m *Machine) Reason() string {
	var when time.Time
	reason := ""
	note := func(phase, state, text string, end time.Time) {
		if state == bootstatus.StateError && (reason == "" || !end.Before(when)) {
			when, reason = end, phase+": "+text
		}
	}
	for i := range m.Phases {
		p := &m.Phases[i]
		for _, a := range p.Attempts {
			note(p.Phase, a.State, a.Error, a.End)
		}
		note(p.Phase, p.State, p.Error, p.End)
	}
	return reason
}

// SortFailuresFirst orders machines as an operator reads them: those failing now, then those whose
// boot failed and recovered, then the rest; by MAC within each.
func SortFailuresFirst(ms []Machine) {
	rank := func(m *Machine) int {
		switch {
		case m.Failing():
			return 0
		case m.Failures() > 0:
			return 1
		}
		return 2
	}
	type ranked struct {
		rank int
		m    Machine
	}
	rs := make([]ranked, len(ms))
	for i := range ms {
		rs[i] = ranked{rank(&ms[i]), ms[i]}
	}
	slices.SortFunc(rs, func(a, b ranked) int {
		if a.rank != b.rank {
			return a.rank - b.rank
		}
		return bytes.Compare(a.m.MAC[:], b.m.MAC[:])
	})
	for i := range rs {
		ms[i] = rs[i].m
	}
}

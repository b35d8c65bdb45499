package statussync

import (
	"net/netip"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pxejoin/pxejoin/bootserver/machineapi"
	"github.com/pxejoin/pxejoin/bootserver/status"
	"github.com/pxejoin/pxejoin/internal/bootstatus"
)

// PhaseFailed is the summary phase of a boot whose last step failed.
const PhaseFailed = "Failed"

// Field limits of the CRD's status schema (deploy/crd/machines.pxejoin.io.yaml).
const (
	maxName      = 64
	maxState     = 16
	maxSource    = 32
	maxDetail    = 256
	maxError     = 1024
	maxLastEvent = 256
	maxAddresses = 8
)

// machineStatus maps a timeline to Machine.status: the current boot (at most MaxPhases phases, each
// field cut to the CRD's limits), its summary phase and last event, and this server's name. boot is
// the cluster-wide boot count (see Writer). History and conditions are not set here.
func machineStatus(m *status.Machine, boot int, servedBy string) machineapi.MachineStatus {
	st := machineapi.MachineStatus{
		Phase:       summary(m),
		Boot:        boot,
		BootStarted: timePtr(m.BootStarted),
		LastEvent:   lastEvent(m),
		ServedBy:    servedBy,
	}
	kept := 0 // earlier attempts written, at most machineapi.MaxAttempts
	for i := range m.Phases[:min(len(m.Phases), machineapi.MaxPhases)] {
		p := &m.Phases[i]
		st.Phases = append(st.Phases, machineapi.PhaseStatus{
			Name: cut(p.Phase, maxName), State: cut(p.State, maxState), Source: cut(p.Source, maxSource),
			Start: timePtr(p.Start), End: timePtr(p.End), Attempt: p.Attempt,
			Detail: cut(p.Detail, maxDetail), Error: cut(p.Error, maxError), Attempts: attempts(p.Attempts, &kept),
		})
		// The DHCP ACKs' details start with the address given ("10.0.0.5 file=…").
		if p.Source == status.SourceDHCP && p.State == bootstatus.StateDone && len(st.Addresses) < maxAddresses {
			if a, err := netip.ParseAddr(strings.Fields(p.Detail + " ")[0]); err == nil && !slices.Contains(st.Addresses, a.String()) {
				st.Addresses = append(st.Addresses, a.String())
			}
		}
		if p.Phase == status.PhaseNodeRegistered && p.State == bootstatus.StateDone && m.NodeName != "" {
			st.NodeRef = &corev1.LocalObjectReference{Name: m.NodeName}
		}
	}
	if in := m.Install; in.Installed || in.Reimaged != "" {
		st.Install = &machineapi.InstallStatus{
			Installed: in.Installed, InstalledAt: timePtr(in.InstalledAt), Disk: cut(in.Disk, maxDetail),
			LastResume: timePtr(in.LastResume), Rejoins: in.Rejoins, LastRejoin: timePtr(in.LastRejoin),
			RejoinReason: cut(in.RejoinReason, maxDetail), Reimaged: cut(in.Reimaged, maxDetail),
		}
	}
	return st
}

// attempts maps a phase's earlier attempts, while *kept (the boot's so far) is under
// machineapi.MaxAttempts.
func attempts(as []status.Attempt, kept *int) []machineapi.AttemptStatus {
	var out []machineapi.AttemptStatus
	for _, a := range as {
		if *kept >= machineapi.MaxAttempts {
			break
		}
		*kept++
		out = append(out, machineapi.AttemptStatus{Attempt: a.Attempt, State: cut(a.State, maxState),
			Start: timePtr(a.Start), End: timePtr(a.End), Error: cut(a.Error, maxError)})
	}
	return out
}

// summary is the boot's summary phase: its last phase, or Failed if that failed.
func summary(m *status.Machine) string {
	if m.LastState == bootstatus.StateError {
		return PhaseFailed
	}
	return cut(m.LastPhase, maxName)
}

// lastEvent is the latest transition in one line: "join-file error: <error>", "script done: <detail>".
func lastEvent(m *status.Machine) string {
	if m.LastPhase == "" {
		return ""
	}
	s := m.LastPhase + " " + m.LastState
	for i := range m.Phases {
		if p := &m.Phases[i]; p.Phase == m.LastPhase {
			if text := p.Error; text != "" || p.Detail != "" {
				if text == "" {
					text = p.Detail
				}
				s += ": " + text
			}
		}
	}
	return cut(strings.Join(strings.Fields(s), " "), maxLastEvent)
}

// cut shortens s to at most n bytes, on a rune boundary, marking the cut with "…".
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n-len("…")], "") + "…" // a rune cut in two is dropped
}

func timePtr(t time.Time) *metav1.Time {
	if t.IsZero() {
		return nil
	}
	mt := metav1.NewTime(t)
	return &mt
}

// result is how a boot that a newer one superseded ended, for Machine.status.history.
func result(st *machineapi.MachineStatus) machineapi.BootResult {
	r := machineapi.BootResult{Boot: st.Boot, Start: st.BootStarted, Phase: st.Phase, Result: "superseded", Message: st.LastEvent}
	switch st.Phase {
	case PhaseFailed:
		r.Result = "failed"
	case bootstatus.PhaseNodeReady:
		r.Result = "ready"
	}
	if n := len(st.Phases); n > 0 {
		r.End = st.Phases[n-1].End
	}
	if r.Phase == "" {
		r.Phase = "unknown"
	}
	return r
}

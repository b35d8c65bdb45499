// Package bootstatus is the boot-status protocol between nodeagent and bootserver, whole: the agent
// POSTs Events to /status/<mac> as a JSON array of at most MaxEvents events and MaxBody bytes, and the
// boot server records them in each machine's timeline beside the phases it sees itself. Both binaries
// use this one definition: the event, its limits, every phase name and the client (client.go).
package bootstatus

import (
	"fmt"
	"time"
)

// Limits of one POST /status/<mac>. The server refuses a body past them with a 4xx; Client chunks to
// them, so an agent's backlog always gets through.
const (
	// MaxEvents is the most events in one POST.
	MaxEvents = 256
	// MaxBody is the most bytes in one POST's body.
	MaxBody = 64 << 10
	// MaxPhase, MaxDetail and MaxError bound an event's fields (bytes). With JSON's escaping, one
	// event at these bounds still fits in MaxBody.
	MaxPhase  = 64
	MaxDetail = 1024
	MaxError  = 4096
)

// States of a phase.
const (
	StateStart   = "start"
	StateDone    = "done"
	StateError   = "error"
	StateSkipped = "skipped"
)

// Phases the node agent reports around the join.
const (
	PhaseAgentStart = "agent-start"
	PhaseNetwork    = "network"
	PhaseJoinFile   = "join-file"
	// PhaseJoin wraps the join's own phases (JoinPhases), which the join reports itself.
	PhaseJoin       = "join"
	PhaseRootImage  = "root-image"
	PhaseSwitchRoot = "switch-root"
	PhaseNodeReady  = "node-ready"
	// PhaseDisk is the persistent disk: found, partitioned and formatted on an install, mounted on
	// every boot. Detail names the disk and what was done ("wiped /dev/…: reimage", see diskspec.DiskDetail;
	// "mounted /dev/…"); an error says why nothing was written.
	PhaseDisk = "disk"
	// PhaseResume is a persistent machine's check of the credentials on its disk: done means they
	// are valid for this cluster and the join is skipped (no token, no CSR); skipped carries the
	// reason a join follows ("no credentials", "client certificate expired", "CA differs", …).
	PhaseResume = "resume"
	// PhaseTakeover is a diskless machine taking back its Node name after a reboot: done when the
	// old holder was proven gone, error when a live node holds the name.
	PhaseTakeover = "takeover"
	// PhaseStatusDropped says how many events the boot server refused (Client reports it, as an
	// error, in the POST after the refusal).
	PhaseStatusDropped = "status-dropped"
)

// JoinPhases are the join's phases and sub-phases as nodeagent/join reports them (kubeadm's names,
// plus discovery).
var JoinPhases = []string{
	"discovery",
	"preflight",
	"control-plane-prepare",
	"control-plane-prepare/download-certs",
	"control-plane-prepare/certs",
	"control-plane-prepare/kubeconfig",
	"control-plane-prepare/control-plane",
	"kubelet-start",
	"kubelet-start/config",
	"kubelet-start/tls-bootstrap",
	"kubelet-start/start",
	"etcd-join",
	"kubelet-wait-bootstrap",
	"control-plane-join",
	"control-plane-join/mark-control-plane",
	"wait-control-plane",
}

// Phases the boot server records itself, from what it serves.
const (
	PhaseDHCP      = "dhcp"       // firmware's DHCP (discover → ack)
	PhaseNBP       = "nbp"        // the iPXE binary over TFTP
	PhaseIPXEDHCP  = "ipxe-dhcp"  // iPXE's own DHCP, answered with the script URL
	PhaseScript    = "script"     // GET /boot/<mac>.ipxe
	PhaseKernel    = "kernel"     // the profile's kernel
	PhaseInitrd    = "initrd"     // the profile's initrds
	PhaseAgentDHCP = "agent-dhcp" // the agent's DHCP (not PXE)
	// PhaseNodeRegistered is the machine's Node appearing (or heartbeating) in the cluster after this
	// boot began; PhaseNodeReady follows when its Ready condition turns true.
	PhaseNodeRegistered = "node-registered"
)

var known = func() map[string]bool {
	m := map[string]bool{}
	for _, p := range append([]string{
		PhaseAgentStart, PhaseNetwork, PhaseJoinFile, PhaseJoin, PhaseRootImage, PhaseSwitchRoot,
		PhaseNodeReady, PhaseStatusDropped, PhaseDisk, PhaseResume, PhaseTakeover,
		PhaseDHCP, PhaseNBP, PhaseIPXEDHCP, PhaseScript, PhaseKernel, PhaseInitrd, PhaseAgentDHCP,
		PhaseNodeRegistered,
	}, JoinPhases...) {
		m[p] = true
	}
	return m
}()

// Known reports whether phase is one of the names above (any other is still a valid event: the
// server counts it under one "other" metric label).
func Known(phase string) bool { return known[phase] }

// Event is one phase transition. Error must never hold a token, key or certificate.
type Event struct {
	Phase  string    `json:"phase"`
	State  string    `json:"state"`
	Time   time.Time `json:"time"`
	Detail string    `json:"detail,omitempty"`
	Error  string    `json:"error,omitempty"`
	// Attempt counts the agent's retries of the whole join (1 for the first).
	Attempt int `json:"attempt,omitempty"`
}

// Validate checks an event received from the network.
func (e *Event) Validate() error {
	switch {
	case e.Phase == "" || len(e.Phase) > MaxPhase:
		return fmt.Errorf("phase must be 1 to %d bytes", MaxPhase)
	case e.State != StateStart && e.State != StateDone && e.State != StateError && e.State != StateSkipped:
		return fmt.Errorf("state must be one of %s, %s, %s, %s", StateStart, StateDone, StateError, StateSkipped)
	case len(e.Detail) > MaxDetail:
		return fmt.Errorf("detail must be at most %d bytes", MaxDetail)
	case len(e.Error) > MaxError:
		return fmt.Errorf("error must be at most %d bytes", MaxError)
	}
	return nil
}

// Truncate cuts s to at most n bytes, ending in "..." when it cut (on a UTF-8 boundary).
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := n - 3
	for i > 0 && s[i]&0xc0 == 0x80 { // not inside a multi-byte character
		i--
	}
	return s[:i] + "..."
}

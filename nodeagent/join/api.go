// Package join is the agent's kubeadm-compatible worker join: phases as data (kubeadm's names),
// discovery, TLS bootstrap, kubelet files and kubelet start. `nodeagent join` and the initramfs's
// /init both call Run.
package join

import (
	"io"
	"time"
)

// Options are the parts of a join that are not in the JoinConfiguration.
type Options struct {
	// Rootfs is the root of the node's filesystem the files are written under ("/" by default).
	Rootfs string
	// SkipPhases adds to cfg.SkipPhases.
	SkipPhases []string
	// DryRun writes nothing, creates no CSR and prints what it would do.
	DryRun bool
	// IgnorePreflightErrors adds to cfg.NodeRegistration.IgnorePreflightErrors ("all" ignores every check).
	IgnorePreflightErrors []string
	// PatchesDir overrides cfg.Patches.Directory (kubeadm's --patches); only "kubeletconfiguration"
	// patches apply to a worker.
	PatchesDir string
	// RegisterNode creates the Node with the node's credentials right after TLS bootstrap, as the
	// kubelet's registration would, for a kubelet that starts long after the join (the initramfs).
	RegisterNode bool
	// Out receives kubeadm-style progress lines; nil discards them.
	Out io.Writer
	// Observer, if set, is told about every phase transition (for boot-status reports). It must be quick.
	Observer func(Event)
}

// Event is one phase transition of a join.
type Event struct {
	Phase string // e.g. "preflight", "kubelet-start/tls-bootstrap"
	State string // bootstatus.StateStart, StateDone, StateError, StateSkipped
	Time  time.Time
	Err   error
	// Detail is a short, secret-free note (e.g. the CSR name or the API endpoint).
	Detail string
}

package initmode

// A control-plane join is split at switch_root (README, "Control-plane joins"): the initramfs runs the
// phases that only need the bootstrap token and write files; the node's systemd runs the rest as
// pxejoin-control-plane.service (images/rootfs), after the kubelet that runs the static Pods.

// ControlPlaneJoinFile is where the initramfs leaves a control-plane join file (0600, with its
// bootstrap token and certificate key) in the node's root for pxejoin-control-plane.service, which
// removes it once the join finished.
const ControlPlaneJoinFile = "/etc/pxejoin/join.yaml"

// ControlPlaneInitramfsPhases are the control-plane join's phases run before switch_root (top-level
// names; kubelet-start/start is in SkipPhases: systemd starts the kubelet). The unit skips them.
var ControlPlaneInitramfsPhases = []string{"preflight", "control-plane-prepare", "kubelet-start"}

// ControlPlaneUnitPhases are the phases left to pxejoin-control-plane.service: etcd-join announces
// the new member only when the kubelet that starts its etcd runs (a learner that never starts blocks
// the next join), and the others need the node's kubelet, static Pods and API server.
var ControlPlaneUnitPhases = []string{"etcd-join", "kubelet-wait-bootstrap", "control-plane-join", "wait-control-plane"}

// controlPlaneUnit is the node image's systemd unit that finishes a control-plane join.
const controlPlaneUnit = "pxejoin-control-plane.service"

// controlPlaneSkip is what the initramfs skips on a control-plane join.
func controlPlaneSkip() []string {
	return append(append([]string{}, SkipPhases...), ControlPlaneUnitPhases...)
}

// Package machineapi is the Machine custom resource (group pxejoin.io, version v1alpha1, kind
// Machine, cluster-scoped, short name pxm): a machine's inventory entry (spec) and its boot
// timeline (status) where several boot servers can share them, the Kubernetes API.
//
// The types are plain structs with JSON tags: the boot server reads Machines through a dynamic
// informer and converts them with runtime.DefaultUnstructuredConverter, and writes status by
// server-side apply of an unstructured patch, so no generated clientset or deepcopy is needed.
// The CRD itself is deploy/crd/machines.pxejoin.io.yaml; its schema and these types must agree
// (TestCRDMatchesTypes).
package machineapi

import (
	corev1 "k8s.io/api/core/v1"

	"github.com/pxejoin/pxejoin/internal/diskspec"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// Group, Version, Kind and Resource name the Machine API.
const (
	Group    = "pxejoin.io"
	Version  = "v1alpha1"
	Kind     = "Machine"
	Resource = "machines"
	// ShortName is kubectl's short name (machines clashes with Cluster API's).
	ShortName = "pxm"
)

// GVR is the Machine resource for dynamic clients and informers.
var GVR = schema.GroupVersionResource{Group: Group, Version: Version, Resource: Resource}

// GVK is the Machine kind.
var GVK = schema.GroupVersionKind{Group: Group, Version: Version, Kind: Kind}

// Bounds kept by the status writer (the CRD's schema enforces the same maxItems).
const (
	// MaxPhases is the most phases of the current boot kept in status.
	MaxPhases = 64
	// MaxHistory is how many earlier boots' results status keeps.
	MaxHistory = 8
)

// Machine is one bare-metal machine, named by its node name.
type Machine struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              MachineSpec   `json:"spec"`
	Status            MachineStatus `json:"status,omitempty"`
}

// MachineSpec is the inventory entry: how to recognise the machine and what it boots.
type MachineSpec struct {
	// MACs are the machine's boot NICs, lower-case colon form (52:54:00:aa:bb:cc).
	MACs []string `json:"macs,omitempty"`
	// UUID is the SMBIOS system UUID, lower-case, as dmidecode prints it.
	UUID string `json:"uuid,omitempty"`
	// Profile names the boot profile (the boot server's configuration defines profiles).
	Profile string `json:"profile"`
	// Segment names the L2 segment (boot server) that answers this machine; empty: any server.
	Segment string `json:"segment,omitempty"`
	// IPv4 is a reserved address for the machine (full DHCP mode).
	IPv4 string `json:"ipv4,omitempty"`
	// Labels are node labels the join sets.
	Labels map[string]string `json:"labels,omitempty"`
	// Taints are node taints the join registers the Node with.
	Taints []corev1.Taint `json:"taints,omitempty"`
	// Disabled stops the boot server answering the machine (it gets no DHCP offer).
	Disabled bool `json:"disabled,omitempty"`
	// Disk overrides the profile's persistent disk for this machine (the profile must have one).
	Disk *diskspec.Spec `json:"disk,omitempty"`
}

// AnnotationReimage on a Machine asks for a re-image: the machine's next boots wipe its disk
// and join fresh (pxejoin.reimage=1 on the kernel command line) until its agent reports the disk
// installed with a wipe; the boot server that gets that report removes the annotation (only if
// its value is still the one that boot carried, so a newer request is not lost). Its value
// names the request: `bootserver reimage` writes the time (RFC 3339); any other non-empty value
// works too (kubectl annotate pxm NAME pxejoin.io/reimage=now).
const AnnotationReimage = "pxejoin.io/reimage"

// MachineStatus is the boot timeline as the boot servers saw it.
type MachineStatus struct {
	// Phase is the summary: the current boot's last phase (dhcp, script, kernel, ..., ready) or
	// "Failed" when it ended in an error.
	Phase string `json:"phase,omitempty"`
	// Boot counts the machine's boots (1 for the first).
	Boot int `json:"boot,omitempty"`
	// BootStarted is when the current boot began.
	BootStarted *metav1.Time `json:"bootStarted,omitempty"`
	// LastEvent is a one-line summary of the latest transition, for kubectl get.
	LastEvent string `json:"lastEvent,omitempty"`
	// Phases is the current boot's timeline (at most MaxPhases).
	Phases []PhaseStatus `json:"phases,omitempty"`
	// History holds the results of the last MaxHistory boots, newest first (as metal3's
	// operationHistory).
	History []BootResult `json:"history,omitempty"`
	// ServedBy names the boot server that answered the current boot.
	ServedBy string `json:"servedBy,omitempty"`
	// Addresses the machine was given.
	Addresses []string `json:"addresses,omitempty"`
	// ClaimedIPv4 is the address a boot server claimed for the machine on its first boot (it has
	// no spec.ipv4): every server answers the machine with it (bootserver/addrclaim). Written by
	// server-side apply, field manager addrclaim's, not forced: the first claim recorded wins.
	ClaimedIPv4 string `json:"claimedIPv4,omitempty"`
	// NodeRef names the Node this machine became.
	NodeRef *corev1.LocalObjectReference `json:"nodeRef,omitempty"`
	// Conditions: Conflict (a MAC or UUID is claimed by two Machines: neither is answered),
	// Ready.
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// Install is what the boot servers know of a persistent machine's disk (nil: diskless, or
	// not reported yet).
	Install *InstallStatus `json:"install,omitempty"`
}

// InstallStatus is a persistent machine's install as its agent reported it.
type InstallStatus struct {
	// Installed: the agent reported its disk installed or mounted; its later boots resume
	// without a join (no token is minted ahead for it).
	Installed bool `json:"installed,omitempty"`
	// InstalledAt is when the disk was last partitioned and formatted.
	InstalledAt *metav1.Time `json:"installedAt,omitempty"`
	// Disk is the agent's last word on the disk ("mounted /dev/…").
	Disk string `json:"disk,omitempty"`
	// LastResume is the last boot that resumed from the disk (no token, no CSR).
	LastResume *metav1.Time `json:"lastResume,omitempty"`
	// Rejoins counts the installed machine's joins after its install (the server that served
	// them counted them); LastRejoin and RejoinReason are the latest one's.
	Rejoins      int          `json:"rejoins,omitempty"`
	LastRejoin   *metav1.Time `json:"lastRejoin,omitempty"`
	RejoinReason string       `json:"rejoinReason,omitempty"`
	// Reimaged is the re-image request (the annotation's value) the last wipe carried out.
	Reimaged string `json:"reimaged,omitempty"`
}

// PhaseStatus is one phase of a boot.
type PhaseStatus struct {
	Name    string       `json:"name"`
	State   string       `json:"state"` // started, done, error
	Source  string       `json:"source,omitempty"`
	Start   *metav1.Time `json:"start,omitempty"`
	End     *metav1.Time `json:"end,omitempty"`
	Attempt int          `json:"attempt,omitempty"`
	Detail  string       `json:"detail,omitempty"`
	Error   string       `json:"error,omitempty"`
	// Attempts are the phase's earlier attempts in this boot, oldest first (a failed join the agent
	// retried, with its error); the fields above are the latest attempt. At most MaxAttempts over
	// all phases of a boot.
	Attempts []AttemptStatus `json:"attempts,omitempty"`
}

// MaxAttempts is the most earlier attempts Machine.status holds per boot (the boot server's
// status store keeps as many: status.MaxAttempts).
const MaxAttempts = 32

// AttemptStatus is one earlier attempt of a phase.
type AttemptStatus struct {
	Attempt int          `json:"attempt,omitempty"`
	State   string       `json:"state"`
	Start   *metav1.Time `json:"start,omitempty"`
	End     *metav1.Time `json:"end,omitempty"`
	Error   string       `json:"error,omitempty"`
}

// BootResult is how one earlier boot ended.
type BootResult struct {
	Boot    int          `json:"boot"`
	Start   *metav1.Time `json:"start,omitempty"`
	End     *metav1.Time `json:"end,omitempty"`
	Phase   string       `json:"phase"`
	Result  string       `json:"result"` // ready, failed, superseded
	Message string       `json:"message,omitempty"`
}

// ConditionConflict is the condition type set when a MAC or UUID of this Machine is claimed by
// another Machine too.
const ConditionConflict = "Conflict"

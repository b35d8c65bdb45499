package config

import (
	"k8s.io/apimachinery/pkg/util/validation"
)

// Approval modes.
const (
	// ApprovalPxejoin: machine tokens carry bootstrap token group system:bootstrappers:pxejoin and
	// the boot server approves each machine's CSRs itself, only for that machine's node name and
	// addresses (bootserver/approver).
	ApprovalPxejoin = "pxejoin"
	// ApprovalKubeadm: machine tokens carry kubeadm's group and kubeadm's RBAC decides (the
	// controller manager approves any node name for any token): the stock kubeadm behaviour.
	ApprovalKubeadm = "kubeadm"
)

// Self-check settings: what the boot server does when it finds at start that someone else would
// approve its machines' CSRs, or that it may not approve them itself.
const (
	SelfCheckStrict = "strict" // refuse to start, naming the binding to remove or the role to grant
	SelfCheckWarn   = "warn"   // start, log an error, export pxejoin_approval_selfcheck_failed 1
)

// Approval says who approves the machines' certificate signing requests.
type Approval struct {
	// Mode is pxejoin (default) or kubeadm.
	Mode string `yaml:"mode"`
	// SelfCheck is strict (default) or warn.
	SelfCheck string `yaml:"selfCheck"`
	// Domain, if set, lets a kubelet serving certificate name <node>.<domain> besides <node>.
	Domain string `yaml:"domain"`
}

func (c *Config) validateApproval(ck *checker) {
	a := &c.Approval
	if a.Mode == "" {
		a.Mode = ApprovalPxejoin
	}
	if a.SelfCheck == "" {
		a.SelfCheck = SelfCheckStrict
	}
	if a.Mode != ApprovalPxejoin && a.Mode != ApprovalKubeadm {
		ck.fail([]any{"approval", "mode"}, "%q is not pxejoin or kubeadm (pxejoin: the boot server approves each machine's own node name only; "+
			"kubeadm: kubeadm's RBAC lets the controller manager approve any node name for any token)", a.Mode)
	}
	if a.SelfCheck != SelfCheckStrict && a.SelfCheck != SelfCheckWarn {
		ck.fail([]any{"approval", "selfCheck"}, "%q is not strict or warn", a.SelfCheck)
	}
	if a.Domain != "" {
		if errs := validation.IsDNS1123Subdomain(a.Domain); len(errs) > 0 {
			ck.fail([]any{"approval", "domain"}, "%q is not a DNS domain: %s", a.Domain, errs[0])
		}
	}
}

package server

import (
	"context"
	"net/netip"
	"time"

	"github.com/pxejoin/pxejoin/bootserver/approver"
	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/internal/bootstraptoken"
)

// tokenGroups are the machine tokens' extra groups: pxejoin's own unless approval.mode is kubeadm.
func tokenGroups(c *config.Config) []string {
	if c.Approval.Mode == config.ApprovalKubeadm {
		return []string{bootstraptoken.DefaultGroup}
	}
	return []string{bootstraptoken.PxejoinGroup}
}

// newApprover builds the approver on the token manager's informers (approval.mode: pxejoin).
func (s *Server) newApprover() (err error) {
	c := s.cfg
	if c.Approval.Mode != config.ApprovalPxejoin {
		s.log.Warn("approval.mode is kubeadm: machine tokens carry kubeadm's group, and kubeadm's auto-approval " +
			"gives any token a client certificate for any node name")
		return nil
	}
	s.approver, err = approver.New(approver.Options{
		Client: s.cluster.Client, Informers: s.informers, Tokens: s.tokens, Addresses: s.addressesOf,
		Policy: approver.Policy{Group: bootstraptoken.PxejoinGroup, Domain: c.Approval.Domain},
		Warn:   c.Approval.SelfCheck == config.SelfCheckWarn, Logger: s.log, Registerer: s.reg,
	})
	return err
}

// startApproval puts the tokens' RBAC in place and runs the self-check: with approval.selfCheck
// strict, a cluster where someone else would approve pxejoin tokens' CSRs stops the start.
func (s *Server) startApproval(ctx context.Context) error {
	if s.approver == nil {
		return nil
	}
	if err := EnsureBootstrapRBAC(ctx, s.cluster.Client, bootstraptoken.PxejoinGroup); err != nil {
		return err
	}
	return s.approver.SelfCheck(ctx)
}

// addressesOf gives the approver the addresses the boot server gave the machine named node: its
// DHCP lease in full mode. known is false for a node no machine booted from this server has.
func (s *Server) addressesOf(node string) (addrs []netip.Addr, known bool) {
	for _, m := range s.status.All() {
		if m.NodeName != node {
			continue
		}
		known = true
		if s.leases != nil {
			if l, ok := s.leases.Get(m.MAC); ok && l.Active(time.Now()) {
				addrs = append(addrs, l.IP)
			}
		}
	}
	return addrs, known
}

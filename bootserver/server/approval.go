package server

import (
	"context"
	"errors"
	"net/netip"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/pxejoin/pxejoin/bootserver/approver"
	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/internal/bootstraptoken"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
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

// prepareApproval puts the tokens' RBAC in place and runs the self-check: with approval.selfCheck
// strict, a cluster where someone else would approve pxejoin tokens' CSRs fails it.
func (s *Server) prepareApproval(ctx context.Context) error {
	if err := approver.EnsureBootstrapRBAC(ctx, s.cluster.Client, bootstraptoken.PxejoinGroup, s.cfg.HasControlPlaneProfile()); err != nil {
		return err
	}
	return s.approver.SelfCheck(ctx)
}

// startApproval runs prepareApproval before Serve listens: a definite failure (the self-check's
// finding, a refusal by the API) stops the start. A cluster that cannot be reached does not: the
// machines boot, and runApproval retries before it approves anything.
func (s *Server) startApproval(ctx context.Context) (pending bool, err error) {
	if s.approver == nil {
		return false, nil
	}
	err = s.prepareApproval(ctx)
	if err == nil || definite(err) {
		return false, err
	}
	s.log.Warn("cannot prepare CSR approval now (the cluster is unreachable?): retrying; machines' CSRs wait until then", "err", err)
	return true, nil
}

// runApproval retries prepareApproval while pending, then runs the approver until ctx ends.
func (s *Server) runApproval(ctx context.Context, pending bool) error {
	for wait := time.Second; pending; wait = min(2*wait, 30*time.Second) {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		err := s.prepareApproval(ctx)
		if err != nil && (definite(err) || ctx.Err() != nil) {
			return err
		}
		pending = err != nil
	}
	return s.approver.Run(ctx)
}

// definite reports whether err is an answer rather than a failure to get one: the self-check's
// finding, or the API refusing (4xx).
func definite(err error) bool {
	var sc *approver.SelfCheckError
	var st apierrors.APIStatus
	return errors.As(err, &sc) || (errors.As(err, &st) && st.Status().Code >= 400 && st.Status().Code < 500 && !apierrors.IsTooManyRequests(err))
}

// addressesOf gives the approver the addresses the boot server gave the machine named node: its
// DHCP lease in full mode; in proxy and off modes, where another server hands out addresses, the
// address its join file went to. known is false for a node no machine booted from this server has.
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
		} else if a, ok := s.http.JoinAddr(m.MAC); ok {
			addrs = append(addrs, a)
		}
	}
	return addrs, known
}

// leaseHolder is httpd's LeaseHolder in full DHCP mode (a join file goes only to the address
// holding the machine's lease; relayed machines reach the server from their leased address too),
// nil in proxy and off modes (no lease to check: the join file goes once per boot to whoever asks
// first) and with approval.mode kubeadm.
func (s *Server) leaseHolder() func(netip.Addr) (hwaddr.MAC, bool) {
	if s.cfg.DHCP.Mode != config.DHCPFull || s.cfg.Approval.Mode != config.ApprovalPxejoin {
		return nil
	}
	return func(ip netip.Addr) (hwaddr.MAC, bool) {
		if s.leases == nil { // opened after the handler
			return hwaddr.MAC{}, false
		}
		if mac, ok := s.leases.HolderOf(ip, time.Now()); ok || s.cfg.DHCP.HA == nil {
			return mac, ok
		}
		return s.reservedHolder(ip)
	}
}

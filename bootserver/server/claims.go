package server

import (
	"context"
	"fmt"
	"net/netip"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/flowcontrol"

	"github.com/pxejoin/pxejoin/bootserver/addrclaim"
	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/bootserver/inventory"
	"github.com/pxejoin/pxejoin/bootserver/peers"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// newClaimer makes the address claimer when dhcp.ha.claims is set (validation made sure the
// inventory is the Machines).
func (s *Server) newClaimer(cl *Cluster, read kubernetes.Interface) error {
	h := s.cfg.DHCP.HA
	if h == nil || h.Claims == nil || s.kube == nil {
		return nil
	}
	dyn, ipc := cl.Dynamic, read
	if cl.Config != nil {
		// One budget of their own (api.claims) for both: a claim's requests never wait behind the
		// informers' lists, and a burst of claims never delays anything else.
		rc := budgeted(cl.Config, s.cfg.API.Claims)
		rc.RateLimiter = flowcontrol.NewTokenBucketRateLimiter(rc.QPS, rc.Burst)
		var err error
		if dyn, err = dynamic.NewForConfig(rc); err != nil {
			return fmt.Errorf("kubernetes client: %w", err)
		}
		if ipc, err = kubernetes.NewForConfig(rc); err != nil {
			return fmt.Errorf("kubernetes client: %w", err)
		}
	}
	start, end := h.Claims.Range()
	c, err := addrclaim.New(addrclaim.Options{Client: ipc, Machines: dyn, Start: start, End: end, ServerName: h.Identity,
		Logger: s.log, Registerer: s.reg})
	if err != nil {
		return err
	}
	s.claims = c
	return nil
}

// checkClaims makes sure the claims range lies in the pool's subnet.
func (s *Server) checkClaims(subnet netip.Prefix) error {
	start, end := s.cfg.DHCP.HA.Claims.Range()
	if !subnet.Contains(start) || !subnet.Contains(end) {
		return fmt.Errorf("dhcp.ha.claims %s-%s is not inside the subnet %s: move the range into it", start, end, subnet)
	}
	return nil
}

// address is DHCP's Config.Address: an inventory machine's spec.ipv4, else the address recorded
// in its Machine's status (both from the inventory snapshot, no API call), else a new claim.
func (s *Server) address(mac hwaddr.MAC, uuid []byte) (netip.Addr, string, error) {
	a, ok := s.inv.Current().Lookup(mac, inventory.SMBIOSUUID(uuid))
	switch {
	case !ok || !a.Known:
		return netip.Addr{}, "", nil
	case a.IPv4.IsValid() && !a.Claimed:
		s.claims.Count(addrclaim.DecisionReserved)
	case a.IPv4.IsValid():
		s.claims.Count(addrclaim.DecisionStatus)
	default:
		ip, err := s.claims.Claim(context.Background(), a.NodeName)
		return ip, a.NodeName, err
	}
	return a.IPv4, a.NodeName, nil
}

// newPeers makes this server's presence among the segment's servers when dhcp.ha is set, and the
// client that the presence and the shards' Leases share (s.haClient).
func (s *Server) newPeers(cl *Cluster) error {
	h := s.cfg.DHCP.HA
	if h == nil {
		return nil
	}
	s.haClient = cl.Client
	if cl.Config != nil {
		// A budget of its own: the presence and every shard are renewed or tried each retry
		// period, and Lease renewals must never wait behind token or status writes.
		qps := float32(h.Shards)/float32(h.RetryPeriod.Seconds())*2 + float32(h.Shards)/float32(h.MirrorInterval.Seconds()) + 10
		var err error
		if s.haClient, err = kubernetes.NewForConfig(budgeted(cl.Config, config.Budget{QPS: qps, Burst: int(qps) * 2})); err != nil {
			return fmt.Errorf("kubernetes client: %w", err)
		}
	}
	p, err := peers.New(peers.Options{Client: s.haClient, Namespace: h.Namespace, Prefix: h.NamePrefix, Identity: h.Identity, URL: s.url,
		LeaseDuration: h.LeaseDuration, RetryPeriod: h.RetryPeriod, Logger: s.log, Registerer: s.reg})
	if err != nil {
		return err
	}
	s.peers = p
	return nil
}

// peerURLs is httpd's Config.Peers: nil without dhcp.ha.
func (s *Server) peerURLs() func() []string {
	if s.peers == nil {
		return nil
	}
	return s.peers.Others
}

// reservedHolder is the inventory machine whose address (spec.ipv4 or claimed) ip is. With several
// servers it holds ip on all of them, whichever one its DHCP went to: a join file may come from
// any server.
func (s *Server) reservedHolder(ip netip.Addr) (hwaddr.MAC, bool) {
	for mac, a := range s.inv.Current().Reservations() {
		if a == ip {
			return mac, true
		}
	}
	return hwaddr.MAC{}, false
}

package server

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/pxejoin/pxejoin/bootserver/dhcpd"
	"github.com/pxejoin/pxejoin/bootserver/shards"
)

// probeTimeout is how long an address that another client held is given to answer an echo request
// before it is offered again (dhcp.ha).
const probeTimeout = 200 * time.Millisecond

// newShards sets dc up for several servers on one segment (dhcp.ha): the pool's shards owned
// through Leases and divided among the live servers (s.peers), and a probe before an address is
// offered again. It needs the lease store.
func (s *Server) newShards(dc *dhcpd.Config, p dhcpd.Pool) error {
	h := s.cfg.DHCP.HA
	if h == nil {
		return nil
	}
	if s.peers == nil {
		return fmt.Errorf("dhcp.ha needs the cluster: set cluster.kubeconfig (--kubeconfig)")
	}
	m, err := shards.New(shards.Config{Start: p.Start, End: p.End, Shards: h.Shards, MCLT: h.MCLT,
		LeaseDuration: h.LeaseDuration, RenewDeadline: h.RenewDeadline, RetryPeriod: h.RetryPeriod,
		MirrorInterval: h.MirrorInterval, LeaseTime: p.LeaseTime, Namespace: h.Namespace, NamePrefix: h.NamePrefix,
		Identity: h.Identity, Live: s.peers.Live, Client: s.haClient, Store: s.leases, Logger: s.log, Registerer: s.reg})
	if err != nil {
		return err
	}
	s.shards, dc.Shards, dc.TakeoverAfter = m, m, h.TakeoverAfter
	err = s.opts.InNetns(func() (err error) { s.prober, err = dhcpd.NewICMPProber(probeTimeout); return err })
	if err != nil {
		s.log.Warn("dhcp.ha: addresses are not probed before they are offered again: give the boot server CAP_NET_RAW", "err", err)
	} else {
		dc.Probe = func(ip netip.Addr) bool { return s.prober.InUse(ip) }
	}
	return nil
}

// serveShards runs the shards' Leases and mirror until ctx ends (dhcp.ha).
func (s *Server) serveShards(ctx context.Context) error {
	if s.shards == nil {
		return nil
	}
	return s.shards.Serve(ctx)
}

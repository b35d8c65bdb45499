package dhcpd

import (
	"net"
	"net/netip"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/pxejoin/pxejoin/bootserver/leases"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

const (
	serverPort = 67
	clientPort = 68
	maxHops    = 16
)

// Spec deviations, with their reasons:
//   - A reply to a client with no address (ciaddr 0, no giaddr) is broadcast even when the client
//     did not set the broadcast flag. RFC 2131 4.1 asks for a unicast to yiaddr, which needs an ARP
//     entry the client has not answered for yet (a raw socket or ioctl(SIOCSARP) per reply); every
//     client we boot (PXE ROMs, iPXE, OVMF, dhclient, udhcpc, u-root) takes the broadcast.
//   - A REQUEST in INIT-REBOOT state (no option 54) for an address we hold no record of is ACKed if
//     the address is free and in the client's pool (RFC 2131 4.3.2 says to stay silent). The store
//     is durable, so the case arises for clients that moved here; answering lets them keep their
//     address rather than wait for a timeout (dnsmasq's --dhcp-authoritative does the same).
//   - A malformed option 97 (client UUID) is not echoed and does not drop the request.

// handle decides the reply to one parsed request and where it goes; nil means no reply.
func (s *Server) handle(req *dhcpv4.DHCPv4, peer *net.UDPAddr, pxePort bool) (*dhcpv4.DHCPv4, *net.UDPAddr) {
	mt := req.MessageType()
	s.metrics.packetsByType[mt].Inc()
	mac, ok := hwaddr.FromHardwareAddr(req.ClientHWAddr)
	switch {
	case req.OpCode != dhcpv4.OpcodeBootRequest:
		s.drop(dropNotRequest, mac, "")
		return nil, nil
	case !ok:
		s.drop(dropBadHlen, mac, req.ClientHWAddr.String())
		return nil, nil
	case req.HopCount > maxHops:
		s.drop(dropRelayedLoop, mac, "")
		return nil, nil
	case mt == dhcpv4.MessageTypeNone:
		s.drop(dropNoType, mac, "BOOTP is not served")
		return nil, nil
	}
	now := time.Now()
	facts := factsOf(req, mac, s.cfg.Mode == ModeProxy)
	if s.cfg.Silent != nil && s.cfg.Silent(mac, facts.UUID) {
		s.drop(dropSilenced, mac, "")
		return nil, nil
	}
	if s.cfg.Mode == ModeProxy {
		return s.handleProxy(req, mt, facts, peer, pxePort)
	}
	if pxePort {
		s.drop(dropNotForUs, mac, "port 4011 is served in proxy mode only")
		return nil, nil
	}
	switch mt {
	case dhcpv4.MessageTypeDiscover:
		return s.discover(req, facts, now)
	case dhcpv4.MessageTypeRequest:
		return s.request(req, facts, now)
	case dhcpv4.MessageTypeRelease:
		s.release(req, mac, now)
	case dhcpv4.MessageTypeDecline:
		s.decline(req, mac, now)
	case dhcpv4.MessageTypeInform:
		return s.inform(req, facts)
	default:
		s.drop(dropBadType, mac, mt.String())
	}
	return nil, nil
}

// poolOf chooses the pool: by giaddr when relayed, else the pool of the server's own subnet.
func (s *Server) poolOf(req *dhcpv4.DHCPv4) *Pool {
	if !isZero(req.GatewayIPAddr) {
		return s.cfg.poolFor(addrOf(req.GatewayIPAddr))
	}
	return s.cfg.poolFor(s.serverIP)
}

func (s *Server) discover(req *dhcpv4.DHCPv4, f ClientFacts, now time.Time) (*dhcpv4.DHCPv4, *net.UDPAddr) {
	mac := f.MAC
	if !s.balance.answers(mac, now) {
		s.drop(dropPeerShare, mac, "")
		return nil, nil
	}
	s.event(Event{Kind: EventDiscover, MAC: mac, VendorClass: f.VendorClass})
	p := s.poolOf(req)
	if p == nil {
		s.drop(dropNoPool, mac, req.GatewayIPAddr.String())
		return nil, nil
	}
	known := s.known(f)
	if !s.pinAddress(p, f, known) {
		return nil, nil
	}
	ip, err := s.offer(p, mac, known, addrOf(req.RequestedIPAddress()), now)
	switch err {
	case errNoShard:
		s.drop(dropNoShard, mac, p.Subnet.String())
		return nil, nil
	case errExhausted:
		s.warn.Warn("dhcp pool exhausted: widen the pool or shorten the lease time", "pool", p.Subnet, "mac", mac.String())
		s.drop(dropExhausted, mac, p.Subnet.String())
		return nil, nil
	case errStrangerCap:
		s.warn.Warn("dhcp: unknown machines hold as many addresses as they may: add the machine to the inventory or raise dhcp.maxUnknownLeases",
			"pool", p.Subnet, "mac", mac.String())
		s.drop(dropUnknownCap, mac, p.Subnet.String())
		return nil, nil
	}
	return s.grant(req, s.reply(req, dhcpv4.MessageTypeOffer), p, f, ip, s.alloc.leaseEnd(p, mac, ip, now).Sub(now))
}

// maxProbes bounds the addresses one DISCOVER may find in use before it gets no offer.
const maxProbes = 3

// offer is allocator.offer, with Config.Probe asked about an address another client held before:
// one that answers on the link is kept out of use (as if declined) and the next is tried.
func (s *Server) offer(p *Pool, mac hwaddr.MAC, known bool, requested netip.Addr, now time.Time) (netip.Addr, error) {
	for range maxProbes {
		ip, err := s.alloc.offer(p, mac, known, requested, now)
		if err != nil || s.cfg.Probe == nil {
			return ip, err
		}
		if l, ok := s.cfg.Leases.ByIP(ip); !ok || l.MAC == mac || !s.cfg.Probe(ip) {
			return ip, nil
		}
		s.warn.Warn("dhcp: a free address answers on the link, kept out of use: find the host that took it", "ip", ip)
		s.drop(dropInUse, mac, ip.String())
		s.alloc.decline(ip, now)
		s.alloc.unhold(mac)
		requested = netip.Addr{}
	}
	return netip.Addr{}, errExhausted
}

func (s *Server) request(req *dhcpv4.DHCPv4, f ClientFacts, now time.Time) (*dhcpv4.DHCPv4, *net.UDPAddr) {
	mac := f.MAC
	s.balance.done(mac)
	if sid := req.ServerIdentifier(); sid != nil && addrOf(sid) != s.serverIP {
		// The client took another server's offer: free ours.
		s.alloc.unhold(mac)
		s.alloc.forget(mac)
		s.drop(dropNotForUs, mac, "server identifier "+sid.String())
		return nil, nil
	}
	want := addrOf(req.RequestedIPAddress())
	if !want.Is4() {
		want = addrOf(req.ClientIPAddr)
	}
	if !want.Is4() || want.IsUnspecified() {
		s.drop(dropNoAddress, mac, "")
		return nil, nil
	}
	p := s.poolOf(req)
	if p == nil {
		s.drop(dropNoPool, mac, req.GatewayIPAddr.String())
		return nil, nil
	}
	if s.alloc.notServed(p, want, now) {
		// Another server holds the address's shard: it answers (a NAK from here would take the
		// address away from a client that holds it).
		s.alloc.unhold(mac)
		s.drop(dropNotHeld, mac, want.String())
		return nil, nil
	}
	known := s.known(f)
	if !s.pinAddress(p, f, known) {
		return nil, nil
	}
	if !s.alloc.claim(p, mac, known, want, now) {
		s.metrics.Naked.Inc()
		s.cfg.Logger.Debug("dhcp nak", "mac", mac, "ip", want)
		r := s.reply(req, dhcpv4.MessageTypeNak)
		r.UpdateOption(dhcpv4.OptMessage("address not available"))
		return r, s.dest(req, r, nil, false)
	}
	hostname := cleanHostname(req.HostName())
	if r, ok := s.alloc.reservation(p, mac); ok && r.IP == want && r.Hostname != "" {
		hostname = r.Hostname
	}
	l := leases.Lease{MAC: mac, IP: want, Expiry: s.alloc.leaseEnd(p, mac, want, now), Hostname: hostname}
	err := s.cfg.Leases.Commit(l)
	s.alloc.unhold(mac)
	if !known && err == nil {
		s.alloc.leased(p, mac, l.Expiry)
	} else if !known {
		s.alloc.forget(mac)
	}
	if err != nil {
		s.warn.Warn("dhcp lease not stored, no ACK sent: check the state directory's disk", "mac", mac.String(), "ip", want, "err", err)
		s.drop(dropStore, mac, err.Error())
		return nil, nil
	}
	if s.alloc.notServed(p, want, time.Now()) {
		// The shard's renew deadline passed while the lease was written: another server may
		// take the shard from now on, so no ACK leaves (the client asks again).
		s.drop(dropShardLost, mac, want.String())
		return nil, nil
	}
	r := s.reply(req, dhcpv4.MessageTypeAck)
	r.ClientIPAddr = req.ClientIPAddr
	return s.grant(req, r, p, f, want, l.Expiry.Sub(now))
}

// grant completes an OFFER or ACK of ip from p with the lease and boot options, counts it,
// logs it and reports it as an event.
func (s *Server) grant(req, r *dhcpv4.DHCPv4, p *Pool, f ClientFacts, ip netip.Addr, lease time.Duration) (*dhcpv4.DHCPv4, *net.UDPAddr) {
	r.YourIPAddr = ipOf(ip)
	s.leaseOptions(r, p, f.MAC, lease)
	boot := s.boot(f)
	applyBoot(r, boot, f)
	s.cfg.Logger.Debug(s.sent(r, f, ip, boot), "mac", f.MAC, "ip", ip, "file", boot.File, "relay", req.GatewayIPAddr)
	return r, s.dest(req, r, nil, false)
}

// sent counts an OFFER or ACK and reports it as an event; it returns the log message.
func (s *Server) sent(r *dhcpv4.DHCPv4, f ClientFacts, ip netip.Addr, boot Boot) string {
	kind, n, msg := EventOffer, s.metrics.Offered, "dhcp offer"
	if r.MessageType() == dhcpv4.MessageTypeAck {
		kind, n, msg = EventAck, s.metrics.Acked, "dhcp ack"
	}
	n.Inc()
	s.event(Event{Kind: kind, MAC: f.MAC, VendorClass: f.VendorClass, IP: ip, File: boot.File})
	return msg
}

func (s *Server) release(req *dhcpv4.DHCPv4, mac hwaddr.MAC, now time.Time) {
	if sid := req.ServerIdentifier(); sid != nil && addrOf(sid) != s.serverIP {
		s.drop(dropNotForUs, mac, "")
		return
	}
	l, ok := s.cfg.Leases.Get(mac)
	if !ok || l.IP != addrOf(req.ClientIPAddr) || !l.Active(now) {
		return
	}
	if err := s.cfg.Leases.Release(mac); err != nil {
		s.warn.Warn("dhcp release not stored: check the state directory's disk", "mac", mac.String(), "err", err)
		return
	}
	s.alloc.forget(mac)
	s.cfg.Logger.Debug("dhcp release", "mac", mac, "ip", l.IP)
}

func (s *Server) decline(req *dhcpv4.DHCPv4, mac hwaddr.MAC, now time.Time) {
	ip := addrOf(req.RequestedIPAddress())
	if sid := req.ServerIdentifier(); (sid != nil && addrOf(sid) != s.serverIP) || !ip.Is4() {
		s.drop(dropNotForUs, mac, "")
		return
	}
	l, ok := s.cfg.Leases.Get(mac)
	if !ok || l.IP != ip {
		return
	}
	s.alloc.decline(ip, now)
	s.alloc.forget(mac)
	if err := s.cfg.Leases.Delete(mac); err != nil {
		s.warn.Warn("dhcp decline not stored: check the state directory's disk", "mac", mac.String(), "err", err)
	}
	s.warn.Warn("dhcp address declined: in use on the link; find the host that holds it", "mac", mac.String(), "ip", ip)
}

func (s *Server) inform(req *dhcpv4.DHCPv4, f ClientFacts) (*dhcpv4.DHCPv4, *net.UDPAddr) {
	ci := addrOf(req.ClientIPAddr)
	p := s.cfg.poolFor(ci)
	if p == nil || !ci.Is4() {
		s.drop(dropNoPool, f.MAC, ci.String())
		return nil, nil
	}
	r := s.reply(req, dhcpv4.MessageTypeAck)
	r.ClientIPAddr = req.ClientIPAddr
	s.netOptions(r, p)
	applyBoot(r, s.boot(f), f)
	return r, s.dest(req, r, nil, false)
}

// handleProxy answers PXE, HTTP-boot and iPXE clients with boot information only: DISCOVER on
// port 67 gets a ProxyDHCP OFFER, REQUEST (or INFORM) on port 4011 an ACK.
func (s *Server) handleProxy(req *dhcpv4.DHCPv4, mt dhcpv4.MessageType, f ClientFacts, peer *net.UDPAddr, pxePort bool) (*dhcpv4.DHCPv4, *net.UDPAddr) {
	mac := f.MAC
	if !f.IsPXE() && !f.IsHTTP() && !f.IsIPXE() {
		s.drop(dropNotForUs, mac, "not a network boot client")
		return nil, nil
	}
	var rt dhcpv4.MessageType
	switch {
	case !pxePort && mt == dhcpv4.MessageTypeDiscover:
		rt = dhcpv4.MessageTypeOffer
		s.event(Event{Kind: EventDiscover, MAC: mac, VendorClass: f.VendorClass})
	case pxePort && (mt == dhcpv4.MessageTypeRequest || mt == dhcpv4.MessageTypeInform):
		rt = dhcpv4.MessageTypeAck
	default:
		s.drop(dropNotForUs, mac, mt.String())
		return nil, nil
	}
	boot := s.boot(f)
	if boot.Empty() {
		s.drop(dropNoBoot, mac, "")
		return nil, nil
	}
	r := s.reply(req, rt)
	r.YourIPAddr = net.IPv4zero
	if pxePort {
		r.ClientIPAddr = req.ClientIPAddr
	}
	applyBoot(r, boot, f)
	s.cfg.Logger.Debug(s.sent(r, f, netip.Addr{}, boot), "proxy", true, "mac", mac, "file", boot.File, "pxe_port", pxePort)
	return r, s.dest(req, r, peer, pxePort)
}

// reply starts a reply to req: header fields copied, option 53 and 54 set, siaddr the server.
func (s *Server) reply(req *dhcpv4.DHCPv4, t dhcpv4.MessageType) *dhcpv4.DHCPv4 {
	sid := ipOf(s.serverIP)
	r := &dhcpv4.DHCPv4{
		OpCode:        dhcpv4.OpcodeBootReply,
		HWType:        req.HWType,
		TransactionID: req.TransactionID,
		Flags:         req.Flags,
		ClientHWAddr:  req.ClientHWAddr,
		GatewayIPAddr: req.GatewayIPAddr,
		ClientIPAddr:  net.IPv4zero,
		YourIPAddr:    net.IPv4zero,
		ServerIPAddr:  sid,
		Options:       dhcpv4.Options{},
	}
	r.UpdateOption(dhcpv4.OptMessageType(t))
	r.UpdateOption(dhcpv4.OptServerIdentifier(sid))
	// RFC 6842: echo the client identifier; RFC 3046: echo the relay agent information.
	for _, c := range []dhcpv4.OptionCode{dhcpv4.OptionClientIdentifier, dhcpv4.OptionRelayAgentInformation} {
		if v := req.Options.Get(c); v != nil {
			r.UpdateOption(dhcpv4.OptGeneric(c, v))
		}
	}
	if t == dhcpv4.MessageTypeNak {
		r.ServerIPAddr = net.IPv4zero
	}
	return r
}

func (s *Server) netOptions(r *dhcpv4.DHCPv4, p *Pool) {
	r.UpdateOption(dhcpv4.OptSubnetMask(net.CIDRMask(p.Subnet.Bits(), 32)))
	if p.Router.Is4() {
		r.UpdateOption(dhcpv4.OptRouter(ipOf(p.Router)))
	}
	if len(p.DNS) > 0 {
		dns := make([]net.IP, len(p.DNS))
		for i, a := range p.DNS {
			dns[i] = ipOf(a)
		}
		r.UpdateOption(dhcpv4.OptDNS(dns...))
	}
}

// leaseOptions sets the network options and the lease's time (option 51, T1 and T2 at half and
// 7/8 of it), rounded down to whole seconds so the client never counts past the stored expiry.
func (s *Server) leaseOptions(r *dhcpv4.DHCPv4, p *Pool, mac hwaddr.MAC, lease time.Duration) {
	s.netOptions(r, p)
	lease = lease.Truncate(time.Second)
	r.UpdateOption(dhcpv4.OptIPAddressLeaseTime(lease))
	r.UpdateOption(dhcpv4.OptRenewTimeValue(lease / 2))
	r.UpdateOption(dhcpv4.OptRebindingTimeValue(lease * 7 / 8))
	if res, ok := s.alloc.reservation(p, mac); ok && res.Hostname != "" && addrOf(r.YourIPAddr) == res.IP {
		r.UpdateOption(dhcpv4.OptHostName(res.Hostname))
	}
}

// dest is where a reply goes (RFC 2131 4.1, with the deviation noted above).
func (s *Server) dest(req, r *dhcpv4.DHCPv4, peer *net.UDPAddr, pxePort bool) *net.UDPAddr {
	switch {
	case pxePort && peer != nil:
		return peer
	case !isZero(req.GatewayIPAddr):
		return &net.UDPAddr{IP: req.GatewayIPAddr.To4(), Port: serverPort}
	case r.MessageType() == dhcpv4.MessageTypeNak:
		return &net.UDPAddr{IP: net.IPv4bcast, Port: clientPort}
	case !isZero(req.ClientIPAddr):
		return &net.UDPAddr{IP: req.ClientIPAddr.To4(), Port: clientPort}
	}
	return &net.UDPAddr{IP: net.IPv4bcast, Port: clientPort}
}

func (s *Server) boot(f ClientFacts) Boot {
	if s.cfg.BootPolicy == nil {
		return Boot{}
	}
	return s.cfg.BootPolicy.Boot(f)
}

func (s *Server) drop(reason string, mac hwaddr.MAC, detail string) {
	s.metrics.Dropped.WithLabelValues(reason).Inc()
	s.cfg.Logger.Debug("dhcp drop", "reason", reason, "mac", mac, "detail", detail)
}

// known reports whether the client is an inventory machine (Config.Known; all are without it).
func (s *Server) known(f ClientFacts) bool {
	return s.cfg.Known == nil || s.cfg.Known(f.MAC, f.UUID)
}

package dhcpd

import (
	"net"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// FuzzHandle feeds arbitrary datagrams through the whole packet path (checks, parse, handle,
// encode) of a full and a proxy server; nothing may panic, and any reply must parse. The seeds run in
// every go test; go test -fuzz FuzzHandle ./bootserver/dhcpd explores further.
func FuzzHandle(f *testing.F) {
	seeds := []*dhcpv4.DHCPv4{
		pkt(f, dhcpv4.MessageTypeDiscover, testMAC, pxeMods(0)...),
		pkt(f, dhcpv4.MessageTypeDiscover, testMAC, ipxeMods()...),
		pkt(f, dhcpv4.MessageTypeDiscover, testMAC, dhcpv4.WithRelay(relayIP.AsSlice())),
		pkt(f, dhcpv4.MessageTypeRequest, testMAC, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP("10.78.0.100")))),
		pkt(f, dhcpv4.MessageTypeRequest, testMAC, dhcpv4.WithClientIP(net.ParseIP("10.78.0.100"))),
		pkt(f, dhcpv4.MessageTypeRequest, testMAC, append(pxeMods(7), dhcpv4.WithClientIP(net.ParseIP("10.78.0.77")))...),
		pkt(f, dhcpv4.MessageTypeRelease, testMAC, dhcpv4.WithClientIP(net.ParseIP("10.78.0.100"))),
		pkt(f, dhcpv4.MessageTypeDecline, testMAC, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP("10.78.0.100")))),
		pkt(f, dhcpv4.MessageTypeInform, testMAC, dhcpv4.WithClientIP(net.ParseIP("10.78.0.20"))),
		pkt(f, dhcpv4.MessageTypeDiscover, testMAC,
			dhcpv4.WithOption(dhcpv4.OptClassIdentifier("HTTPClient:Arch:00016")),
			dhcpv4.WithGeneric(dhcpv4.OptionClientSystemArchitectureType, []byte{0, 16, 0})),
	}
	for _, p := range seeds {
		b := p.ToBytes()
		f.Add(b, false)
		f.Add(b, true)
		f.Add(b[:len(b)/2], false)
	}
	f.Add([]byte{}, false)
	f.Add(make([]byte, 240), false)
	full := newTestServer(f, ModeFull, nil)
	proxy := newTestServer(f, ModeProxy, nil)
	peer := &net.UDPAddr{IP: net.ParseIP("10.78.0.77"), Port: 68}
	f.Fuzz(func(t *testing.T, b []byte, pxePort bool) {
		for _, s := range []*Server{full, proxy} {
			out, dst := s.handlePacket(b, peer, pxePort)
			if out == nil {
				continue
			}
			if dst == nil {
				t.Fatal("reply without destination")
			}
			if _, err := dhcpv4.FromBytes(out); err != nil {
				t.Fatalf("reply does not parse: %v", err)
			}
		}
	})
}

// handlePacket is the whole path of one datagram without the socket (checks, parse, handle,
// encode), as the fuzz target and the tests of raw datagrams drive it.
func (s *Server) handlePacket(b []byte, peer *net.UDPAddr, pxePort bool) ([]byte, *net.UDPAddr) {
	if reason := precheck(b); reason != "" {
		s.drop(reason, hwaddr.MAC{}, "")
		return nil, nil
	}
	req, err := dhcpv4.FromBytes(b)
	if err != nil {
		s.drop(dropParse, hwaddr.MAC{}, err.Error())
		return nil, nil
	}
	reply, dst := s.handle(req, peer, pxePort)
	if reply == nil {
		return nil, nil
	}
	return reply.ToBytes(), dst
}

package tftpd

import (
	"net"
	"net/netip"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// datagramConn reads the server port with the packets' destination address and interface, so
// that answers leave from the address the client asked and blksize fits the interface's MTU.
type datagramConn struct {
	c  *net.UDPConn
	p4 *ipv4.PacketConn
	p6 *ipv6.PacketConn
}

func newDatagramConn(c *net.UDPConn) *datagramConn {
	d := &datagramConn{c: c}
	if la, ok := c.LocalAddr().(*net.UDPAddr); ok && la.IP.To4() != nil {
		p := ipv4.NewPacketConn(c)
		if p.SetControlMessage(ipv4.FlagDst|ipv4.FlagInterface, true) == nil {
			d.p4 = p
		}
	} else {
		p := ipv6.NewPacketConn(c)
		if p.SetControlMessage(ipv6.FlagDst|ipv6.FlagInterface, true) == nil {
			d.p6 = p
		}
	}
	return d
}

// read returns a datagram, its source, and (if the OS tells) its destination address and the
// index of the interface it came in on (0 if unknown).
func (d *datagramConn) read(b []byte) (n int, src netip.AddrPort, dst netip.Addr, ifIndex int, err error) {
	var from net.Addr
	switch {
	case d.p4 != nil:
		var cm *ipv4.ControlMessage
		n, cm, from, err = d.p4.ReadFrom(b)
		if cm != nil {
			dst, _ = netip.AddrFromSlice(cm.Dst)
			ifIndex = cm.IfIndex
		}
	case d.p6 != nil:
		var cm *ipv6.ControlMessage
		n, cm, from, err = d.p6.ReadFrom(b)
		if cm != nil {
			dst, _ = netip.AddrFromSlice(cm.Dst)
			ifIndex = cm.IfIndex
		}
	default:
		var ap netip.AddrPort
		n, ap, err = d.c.ReadFromUDPAddrPort(b)
		return n, ap, netip.Addr{}, 0, err
	}
	if ua, ok := from.(*net.UDPAddr); ok {
		src = ua.AddrPort()
	}
	return n, src, dst, ifIndex, err
}

// write answers from the server port, from address from when it is a usable source.
func (d *datagramConn) write(b []byte, to netip.AddrPort, from netip.Addr) {
	ua := net.UDPAddrFromAddrPort(to)
	switch {
	case d.p4 != nil && usableSource(from):
		_, _ = d.p4.WriteTo(b, &ipv4.ControlMessage{Src: from.Unmap().AsSlice()}, ua)
	case d.p6 != nil && usableSource(from) && !from.Is4In6():
		_, _ = d.p6.WriteTo(b, &ipv6.ControlMessage{Src: from.AsSlice()}, ua)
	default:
		_, _ = d.c.WriteToUDPAddrPort(b, to)
	}
}

// usableSource reports whether a request's destination can be the source of the answer: not a
// broadcast, multicast or unspecified address. (A subnet-directed broadcast is not recognised;
// PXE clients ask the server's own address.)
func usableSource(a netip.Addr) bool {
	a = a.Unmap()
	return a.IsValid() && !a.IsUnspecified() && !a.IsMulticast() && a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// listenTransfer opens the socket of one transfer (its transfer ID) on the address the request
// came to, on a free port.
func listenTransfer(dst netip.Addr) (*net.UDPConn, error) {
	if !usableSource(dst) {
		return net.ListenUDP("udp", nil)
	}
	dst = dst.Unmap()
	network := "udp6"
	if dst.Is4() {
		network = "udp4"
	}
	return net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, 0)))
}

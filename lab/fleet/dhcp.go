package fleet

import (
	"crypto/rand"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"

	"github.com/pxejoin/pxejoin/lab/netlab"
)

// dhcpClient is every simulated machine's DHCP client at once: one UDP socket on port 68 of the
// machines' link, requests broadcast, replies handed to their machine by transaction ID.
type dhcpClient struct {
	conn    *net.UDPConn
	mu      sync.Mutex
	waiters map[dhcpv4.TransactionID]chan *dhcpv4.DHCPv4
	done    chan struct{}
	// onReply, if set before the first request, sees every reply on the link (ha.go collects
	// the ACKs of every server).
	onReply func(*dhcpv4.DHCPv4)
	// retransmitted counts the exchanges that sent their request more than once (no reply in
	// time): a DHCP rate measured with retransmits measures the client's timeouts.
	retransmitted atomic.Int64
}

// clientReadBuffer is the client socket's receive buffer (net.core.rmem_max caps it; 4 MiB
// here): room for a few thousand replies.
const clientReadBuffer = 4 << 20

func newDHCPClient(ns *netlab.NS, ifname string) (*dhcpClient, error) {
	var conn *net.UDPConn
	err := ns.Do(func() (err error) {
		conn, err = server4.NewIPv4UDPConn(ifname, &net.UDPAddr{Port: dhcpv4.ClientPort})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("DHCP client socket: %w", err)
	}
	// Every machine's replies arrive here, two OFFERs per DISCOVER with two servers: the
	// default buffer (about 90 packets) overflows in a burst, and a drop looks like a slow server.
	if err := conn.SetReadBuffer(clientReadBuffer); err != nil {
		conn.Close()
		return nil, fmt.Errorf("DHCP client socket: %w", err)
	}
	c := &dhcpClient{conn: conn, waiters: map[dhcpv4.TransactionID]chan *dhcpv4.DHCPv4{}, done: make(chan struct{})}
	go c.readLoop()
	return c, nil
}

func (c *dhcpClient) Close() {
	c.conn.Close()
	<-c.done
}

func (c *dhcpClient) readLoop() {
	defer close(c.done)
	buf := make([]byte, 1500)
	for {
		n, _, err := c.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		m, err := dhcpv4.FromBytes(buf[:n])
		if err != nil || m.OpCode != dhcpv4.OpcodeBootReply {
			continue
		}
		if c.onReply != nil {
			c.onReply(m)
		}
		c.mu.Lock()
		ch := c.waiters[m.TransactionID]
		c.mu.Unlock()
		if ch != nil {
			select {
			case ch <- m:
			default:
			}
		}
	}
}

// exchange broadcasts p and waits for the first reply of type want, retransmitting with PXE
// firmware's doubling timeouts (1, 2, 4, 8 s).
func (c *dhcpClient) exchange(p *dhcpv4.DHCPv4, want dhcpv4.MessageType) (*dhcpv4.DHCPv4, error) {
	ch := make(chan *dhcpv4.DHCPv4, 4)
	c.mu.Lock()
	c.waiters[p.TransactionID] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.waiters, p.TransactionID)
		c.mu.Unlock()
	}()
	dst := &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpv4.ServerPort}
	for wait := time.Second; wait <= 8*time.Second; wait *= 2 {
		if wait == 2*time.Second {
			c.retransmitted.Add(1)
		}
		if _, err := c.conn.WriteTo(p.ToBytes(), dst); err != nil {
			return nil, err
		}
		timer := time.NewTimer(wait)
	recv:
		for {
			select {
			case m := <-ch:
				if m.MessageType() == want {
					timer.Stop()
					return m, nil
				}
				if m.MessageType() == dhcpv4.MessageTypeNak {
					timer.Stop()
					return nil, fmt.Errorf("%s answered with NAK: %s", p.MessageType(), m.Message())
				}
			case <-timer.C:
				break recv
			}
		}
	}
	return nil, fmt.Errorf("no %s for %s's %s after 15 s", want, p.ClientHWAddr, p.MessageType())
}

// dora is an iPXE client's DHCP (what iPXE sends after the firmware chainloaded it): the ACK carries
// its address and the script URL as the boot file.
func (c *dhcpClient) dora(mac net.HardwareAddr) (*dhcpv4.DHCPv4, error) {
	mods := []dhcpv4.Modifier{
		dhcpv4.WithHwAddr(mac), dhcpv4.WithBroadcast(true),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
		dhcpv4.WithGeneric(dhcpv4.OptionClientSystemArchitectureType, []byte{0, 0}),
		dhcpv4.WithUserClass("iPXE", false),
	}
	msg := func(mt dhcpv4.MessageType, more ...dhcpv4.Modifier) (*dhcpv4.DHCPv4, error) {
		var xid dhcpv4.TransactionID
		if _, err := rand.Read(xid[:]); err != nil {
			return nil, err
		}
		return dhcpv4.New(append(append([]dhcpv4.Modifier{dhcpv4.WithTransactionID(xid), dhcpv4.WithMessageType(mt)}, mods...), more...)...)
	}
	var err error
	for attempt := 0; attempt < 3; attempt++ { // firmware starts over after a failed exchange
		var disc, offer, req, ack *dhcpv4.DHCPv4
		if disc, err = msg(dhcpv4.MessageTypeDiscover); err != nil {
			return nil, err
		}
		if offer, err = c.exchange(disc, dhcpv4.MessageTypeOffer); err != nil {
			continue
		}
		if req, err = msg(dhcpv4.MessageTypeRequest, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(offer.YourIPAddr)),
			dhcpv4.WithOption(dhcpv4.OptServerIdentifier(offer.ServerIdentifier()))); err != nil {
			return nil, err
		}
		if ack, err = c.exchange(req, dhcpv4.MessageTypeAck); err != nil {
			continue
		}
		return ack, nil
	}
	return nil, err
}

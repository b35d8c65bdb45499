package dhcpd

// Helpers for the tests on real links: namespaces joined by veth (netlab), the server started inside
// one, and a plain UDP DHCP client (the load generator) inside another.

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"

	"github.com/pxejoin/pxejoin/lab/eventually"
	"github.com/pxejoin/pxejoin/lab/netlab"
	"github.com/pxejoin/pxejoin/lab/testenv"
)

func needNetns(t testing.TB) {
	t.Helper()
	testenv.RequireRoot(t)
}

// link is a server namespace and a client namespace joined by one veth pair.
type link struct {
	srv, cli *netlab.NS
	srvIf    string
	cliIf    string
}

// newLink makes srv (interface s0 with srvCIDR) and cli (interface c0, unnumbered).
func newLink(t testing.TB, srvCIDR string) *link {
	t.Helper()
	l := &link{srv: netlab.New(t, "dhs"), cli: netlab.New(t, "dhc"), srvIf: "s0", cliIf: "c0"}
	netlab.Veth(t, l.srv, "s0", srvCIDR, l.cli, "c0", "")
	return l
}

// startServer runs s.Serve inside ns until the test ends.
func startServer(t testing.TB, ns *netlab.NS, s *Server) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- ns.Do(func() error { return s.Serve(ctx) }) }()
	select {
	case <-s.Ready():
	case err := <-errc:
		cancel()
		t.Fatalf("Serve: %v", err)
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatal("server not ready after 10 s")
	}
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
}

// udpClient is a DHCP client on a UDP socket bound to port 68 on one interface of a namespace:
// requests go out as broadcasts, replies are handed to their waiter by transaction ID. Many
// transactions share it, which makes it the load generator too.
type udpClient struct {
	conn    *net.UDPConn
	mu      sync.Mutex
	waiters map[dhcpv4.TransactionID]chan *dhcpv4.DHCPv4
	stray   int
	done    chan struct{}
}

func newUDPClient(t testing.TB, ns *netlab.NS, ifname string) *udpClient {
	t.Helper()
	var conn *net.UDPConn
	err := ns.Do(func() (err error) {
		conn, err = server4.NewIPv4UDPConn(ifname, &net.UDPAddr{Port: clientPort})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	c := &udpClient{conn: conn, waiters: map[dhcpv4.TransactionID]chan *dhcpv4.DHCPv4{}, done: make(chan struct{})}
	go c.readLoop()
	t.Cleanup(func() { conn.Close(); <-c.done })
	return c
}

func (c *udpClient) readLoop() {
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
		c.mu.Lock()
		ch, ok := c.waiters[m.TransactionID]
		if !ok {
			c.stray++
		}
		c.mu.Unlock()
		if ok {
			select {
			case ch <- m:
			default:
			}
		}
	}
}

// transact sends p to dst (broadcast port 67 if nil) and returns the replies that arrive within
// wait; with first set it returns on the first one.
func (c *udpClient) transact(p *dhcpv4.DHCPv4, dst *net.UDPAddr, wait time.Duration, first bool) ([]*dhcpv4.DHCPv4, error) {
	if dst == nil {
		dst = &net.UDPAddr{IP: net.IPv4bcast, Port: serverPort}
	}
	ch := make(chan *dhcpv4.DHCPv4, 8)
	c.mu.Lock()
	c.waiters[p.TransactionID] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.waiters, p.TransactionID)
		c.mu.Unlock()
	}()
	if _, err := c.conn.WriteTo(p.ToBytes(), dst); err != nil {
		return nil, err
	}
	var out []*dhcpv4.DHCPv4
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case m := <-ch:
			out = append(out, m)
			if first {
				return out, nil
			}
		case <-timer.C:
			return out, nil
		}
	}
}

// one sends p, retrying on silence, and returns the first reply.
func (c *udpClient) one(p *dhcpv4.DHCPv4, dst *net.UDPAddr, wait time.Duration, tries int) (*dhcpv4.DHCPv4, error) {
	for i := 0; i < tries; i++ {
		r, err := c.transact(p, dst, wait, true)
		if err != nil {
			return nil, err
		}
		if len(r) > 0 {
			return r[0], nil
		}
	}
	return nil, fmt.Errorf("no reply to %s from %s after %d tries", p.MessageType(), p.ClientHWAddr, tries)
}

// dora runs DISCOVER/OFFER/REQUEST/ACK for mac and returns the ACK.
func (c *udpClient) dora(mac net.HardwareAddr, mods ...dhcpv4.Modifier) (*dhcpv4.DHCPv4, error) {
	disc, err := newMsg(dhcpv4.MessageTypeDiscover, mac, mods...)
	if err != nil {
		return nil, err
	}
	offer, err := c.one(disc, nil, time.Second, 3)
	if err != nil {
		return nil, err
	}
	if offer.MessageType() != dhcpv4.MessageTypeOffer {
		return nil, fmt.Errorf("DISCOVER answered with %s", offer.MessageType())
	}
	req, err := newMsg(dhcpv4.MessageTypeRequest, mac, append(mods,
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(offer.YourIPAddr)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(offer.ServerIdentifier())))...)
	if err != nil {
		return nil, err
	}
	ack, err := c.one(req, nil, time.Second, 3)
	if err != nil {
		return nil, err
	}
	if ack.MessageType() != dhcpv4.MessageTypeAck {
		return nil, fmt.Errorf("REQUEST for %v answered with %s", offer.YourIPAddr, ack.MessageType())
	}
	return ack, nil
}

func newMsg(mt dhcpv4.MessageType, mac net.HardwareAddr, mods ...dhcpv4.Modifier) (*dhcpv4.DHCPv4, error) {
	var xid dhcpv4.TransactionID
	if _, err := rand.Read(xid[:]); err != nil {
		return nil, err
	}
	base := []dhcpv4.Modifier{dhcpv4.WithTransactionID(xid), dhcpv4.WithHwAddr(mac),
		dhcpv4.WithMessageType(mt), dhcpv4.WithBroadcast(true)}
	return dhcpv4.New(append(base, mods...)...)
}

// ifaceMAC reads an interface's MAC inside a namespace.
func ifaceMAC(t testing.TB, ns *netlab.NS, ifname string) net.HardwareAddr {
	t.Helper()
	out := ns.MustExec(t, "cat", "/sys/class/net/"+ifname+"/address")
	mac, err := net.ParseMAC(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatal(err)
	}
	return mac
}

// eventLog collects boot events.
type eventLog struct {
	mu sync.Mutex
	ev map[string][]string
}

func (e *eventLog) add(ev Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ev == nil {
		e.ev = map[string][]string{}
	}
	e.ev[ev.MAC.String()] = append(e.ev[ev.MAC.String()], ev.String())
}

// waitFor waits until mac has an event starting with prefix.
func (e *eventLog) waitFor(mac net.HardwareAddr, prefix string) error {
	found := eventually.Within(eventually.Patience, func() bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		for _, ev := range e.ev[mac.String()] {
			if strings.HasPrefix(ev, prefix) {
				return true
			}
		}
		return false
	})
	if found {
		return nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return fmt.Errorf("no %q event for %v; events: %q", prefix, mac, e.ev[mac.String()])
}

func inPrefix(ip net.IP, p string) bool { return netip.MustParsePrefix(p).Contains(addrOf(ip)) }

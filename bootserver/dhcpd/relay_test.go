package dhcpd

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"golang.org/x/net/ipv4"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
	"github.com/pxejoin/pxejoin/lab/netlab"
)

// relay is a minimal DHCP relay agent (RFC 1542): requests heard on the client side get giaddr set
// and go to the server; replies the server sends to giaddr:67 are broadcast on the client side. It
// records the destination of every reply it receives.
type relay struct {
	mu      sync.Mutex
	replies []string // "dst-ip yiaddr"
}

func startRelay(t *testing.T, ns *netlab.NS, clientIf, serverIf string, giaddr, server netip.Addr) *relay {
	t.Helper()
	var cliConn, srvConn *net.UDPConn
	err := ns.Do(func() (err error) {
		if cliConn, err = server4.NewIPv4UDPConn(clientIf, &net.UDPAddr{Port: serverPort}); err != nil {
			return err
		}
		srvConn, err = server4.NewIPv4UDPConn(serverIf, &net.UDPAddr{Port: serverPort})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	srvPC := ipv4.NewPacketConn(srvConn)
	if err := srvPC.SetControlMessage(ipv4.FlagDst, true); err != nil {
		t.Fatal(err)
	}
	r := &relay{}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // client side → server
		defer wg.Done()
		buf := make([]byte, 1500)
		for {
			n, _, err := cliConn.ReadFrom(buf)
			if err != nil {
				return
			}
			m, err := dhcpv4.FromBytes(buf[:n])
			if err != nil || m.OpCode != dhcpv4.OpcodeBootRequest {
				continue
			}
			if isZero(m.GatewayIPAddr) {
				m.GatewayIPAddr = giaddr.AsSlice()
			}
			m.HopCount++
			_, _ = srvConn.WriteTo(m.ToBytes(), &net.UDPAddr{IP: server.AsSlice(), Port: serverPort})
		}
	}()
	go func() { // server → client side
		defer wg.Done()
		buf := make([]byte, 1500)
		for {
			n, cm, _, err := srvPC.ReadFrom(buf)
			if err != nil {
				return
			}
			m, err := dhcpv4.FromBytes(buf[:n])
			if err != nil || m.OpCode != dhcpv4.OpcodeBootReply {
				continue
			}
			dst := "?"
			if cm != nil {
				dst = cm.Dst.String()
			}
			r.mu.Lock()
			r.replies = append(r.replies, dst+" "+m.YourIPAddr.String())
			r.mu.Unlock()
			_, _ = cliConn.WriteTo(m.ToBytes(), &net.UDPAddr{IP: net.IPv4bcast, Port: clientPort})
		}
	}()
	t.Cleanup(func() { cliConn.Close(); srvConn.Close(); wg.Wait() })
	return r
}

// TestRelay: server ← 10.78.13.0/24 → relay ← 10.78.14.0/24 → client. The relayed client gets an
// address from the pool of its giaddr, and the server's replies reach the relay unicast at
// giaddr:67.
func TestRelay(t *testing.T) {
	needNetns(t)
	srv, mid, cli := netlab.New(t, "dhs"), netlab.New(t, "dhr"), netlab.New(t, "dhc")
	netlab.Veth(t, srv, "s0", "10.78.13.1/24", mid, "r0", "10.78.13.2/24")
	netlab.Veth(t, mid, "r1", "10.78.14.1/24", cli, "c0", "")
	srv.MustExec(t, "ip", "route", "add", "10.78.14.0/24", "via", "10.78.13.2")
	sip, giaddr := netip.MustParseAddr("10.78.13.1"), netip.MustParseAddr("10.78.14.1")
	s := fullServer(t, 13, func(c *Config) {
		c.Pools = append(c.Pools, Pool{Subnet: netip.MustParsePrefix("10.78.14.0/24"),
			Start: netip.MustParseAddr("10.78.14.50"), End: netip.MustParseAddr("10.78.14.60"), Router: giaddr})
	})
	startServer(t, srv, s)
	r := startRelay(t, mid, "r1", "r0", giaddr, sip)

	mac := macN(0x300)
	var lease *nclient4.Lease
	err := cli.Do(func() error {
		c, err := nclient4.New("c0", nclient4.WithHWAddr(mac), nclient4.WithTimeout(2*time.Second), nclient4.WithRetry(3))
		if err != nil {
			return err
		}
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		lease, err = c.Request(ctx, pxeMods(0)...)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	ack := lease.ACK
	if !inPrefix(ack.YourIPAddr, "10.78.14.0/24") || !ack.Router()[0].Equal(giaddr.AsSlice()) || ack.BootFileName != "undionly.kpxe" {
		t.Errorf("relayed ACK: yiaddr %v router %v file %q", ack.YourIPAddr, ack.Router(), ack.BootFileName)
	}
	if !ack.GatewayIPAddr.Equal(giaddr.AsSlice()) {
		t.Errorf("ACK giaddr %v", ack.GatewayIPAddr)
	}
	if l, ok := s.cfg.Leases.Get(hwaddr.MAC(mac)); !ok || l.IP != addrOf(ack.YourIPAddr) {
		t.Errorf("stored %v %v", l, ok)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.replies) < 2 {
		t.Fatalf("relay saw %d replies, want OFFER and ACK", len(r.replies))
	}
	for _, rep := range r.replies {
		if rep != "10.78.14.1 "+ack.YourIPAddr.String() {
			t.Errorf("relay got a reply %q, want unicast to giaddr 10.78.14.1 for %v", rep, ack.YourIPAddr)
		}
	}
}

package routeradv

import (
	"context"
	"encoding/binary"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv6"

	"github.com/pxejoin/pxejoin/lab/eventually"
	"github.com/pxejoin/pxejoin/lab/netlab"
	"github.com/pxejoin/pxejoin/lab/testenv"
)

func TestMessage(t *testing.T) {
	mac := net.HardwareAddr{0x52, 0x54, 0, 0, 0, 1}
	b := Message(mac)
	want := []byte{134, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0x52, 0x54, 0, 0, 0, 1}
	if string(b) != string(want) {
		t.Fatalf("got % x\nwant % x", b, want)
	}
}

// waitLinkLocal waits until the interface's link-local address has passed duplicate address detection.
func waitLinkLocal(t *testing.T, ns *netlab.NS, dev string) {
	t.Helper()
	for i := 0; i < 100; i++ {
		out, _ := ns.Exec("ip", "-6", "addr", "show", "dev", dev, "scope", "link")
		if strings.Contains(string(out), "fe80") && !strings.Contains(string(out), "tentative") {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no link-local address on %s", dev)
}

// serveOnVeth serves advertisements on eth0 of a server namespace joined by a veth on subnet/24
// (".1" the server, ".2" the client) to a client namespace, which it returns, until the test ends.
func serveOnVeth(t *testing.T, subnet string) (*Server, *netlab.NS) {
	testenv.RequireRoot(t)
	srv, cli := netlab.New(t, "rasrv"), netlab.New(t, "racli")
	netlab.Veth(t, srv, "eth0", subnet+".1/24", cli, "eth0", subnet+".2/24")
	waitLinkLocal(t, srv, "eth0")
	waitLinkLocal(t, cli, "eth0")
	s, err := New(Config{Interface: "eth0", Interval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Do(func() error { return s.Serve(ctx) }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s, cli
}

// TestSolicitedAdvertisement: a client on a veth sends a Router Solicitation and gets our
// advertisement: hop limit 255, router lifetime 0, no M/O flags.
func TestSolicitedAdvertisement(t *testing.T) {
	_, cli := serveOnVeth(t, "10.81.0")

	var got []byte
	var hop int
	err := cli.Do(func() error {
		c, err := icmp.ListenPacket("ip6:ipv6-icmp", "::")
		if err != nil {
			return err
		}
		defer c.Close()
		p := c.IPv6PacketConn()
		p.SetControlMessage(ipv6.FlagHopLimit, true)
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		p.SetMulticastInterface(ifi)
		p.SetMulticastHopLimit(255)
		rs, _ := (&icmp.Message{Type: ipv6.ICMPTypeRouterSolicitation, Body: &icmp.RawBody{Data: make([]byte, 4)}}).Marshal(nil)
		deadline := time.Now().Add(10 * time.Second)
		buf := make([]byte, 1500)
		for time.Now().Before(deadline) {
			p.WriteTo(rs, nil, &net.IPAddr{IP: net.ParseIP("ff02::2"), Zone: "eth0"})
			c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			for {
				n, cm, _, err := p.ReadFrom(buf)
				if err != nil {
					break
				}
				if n > 0 && ipv6.ICMPType(buf[0]) == ipv6.ICMPTypeRouterAdvertisement {
					got = append([]byte{}, buf[:n]...)
					if cm != nil {
						hop = cm.HopLimit
					}
					return nil
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got == nil {
		t.Fatal("no router advertisement received")
	}
	if hop != 255 {
		t.Errorf("hop limit %d, want 255", hop)
	}
	if got[5] != 0 || binary.BigEndian.Uint16(got[6:8]) != 0 {
		t.Errorf("flags %#x lifetime %d, want 0 and 0", got[5], binary.BigEndian.Uint16(got[6:8]))
	}
}

// TestAdvertiseRateLimit: 10,000 solicitations over 10 s get one advertisement per
// MIN_DELAY_BETWEEN_RAS (RFC 4861 §6.2.6), the last one answered after the flood. Fake time.
func TestAdvertiseRateLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, err := New(Config{Interface: "eth0", Interval: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		var solicited []time.Duration
		send := func(why string) bool {
			if why == "solicited" {
				solicited = append(solicited, time.Since(start))
			}
			return true
		}
		ctx, cancel := context.WithCancel(t.Context())
		rs := make(chan struct{}) // unbuffered: each solicitation is taken in before the next
		done := make(chan struct{})
		go func() { s.advertise(ctx, send, rs); close(done) }()
		const n = 10000
		for range n {
			rs <- struct{}{}
			time.Sleep(time.Millisecond)
		}
		time.Sleep(DefaultMinDelay) // the last solicitation's advertisement is due by then
		cancel()
		<-done
		want := []time.Duration{3 * time.Second, 6 * time.Second, 9 * time.Second, 12 * time.Second}
		if !slices.Equal(solicited, want) {
			t.Errorf("solicited advertisements at %v, want %v", solicited, want)
		}
		if c := testutil.ToFloat64(s.m.coalesced); c != n-float64(len(want)) {
			t.Errorf("coalesced = %v, want %d", c, n-len(want))
		}
	})
}

// TestSolicitationFlood: over a veth, a flood of Router Solicitations is counted and answered by a
// few advertisements, and a host that solicits after the flood still gets one.
func TestSolicitationFlood(t *testing.T) {
	s, cli := serveOnVeth(t, "10.81.1")
	eventually.True(t, "the start advertisement goes out", func() bool {
		return testutil.ToFloat64(s.m.sent.WithLabelValues("start")) == 1
	})

	var c *icmp.PacketConn
	var p *ipv6.PacketConn
	var ifIndex int // the client's eth0, named by index: names resolve in the calling thread's namespace
	if err := cli.Do(func() (err error) {
		if c, err = icmp.ListenPacket("ip6:ipv6-icmp", "::"); err != nil {
			return err
		}
		p = c.IPv6PacketConn()
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		ifIndex = ifi.Index
		if err := p.SetMulticastInterface(ifi); err != nil {
			return err
		}
		return p.SetMulticastHopLimit(255)
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var received atomic.Int64
	go func() {
		buf := make([]byte, 1500)
		for {
			n, _, _, err := p.ReadFrom(buf)
			if err != nil {
				return
			}
			if n > 0 && ipv6.ICMPType(buf[0]) == ipv6.ICMPTypeRouterAdvertisement {
				received.Add(1)
			}
		}
	}()
	rs, _ := (&icmp.Message{Type: ipv6.ICMPTypeRouterSolicitation, Body: &icmp.RawBody{Data: make([]byte, 4)}}).Marshal(nil)
	allRouters := &net.IPAddr{IP: net.ParseIP("ff02::2"), Zone: strconv.Itoa(ifIndex)}
	solicitations := func() float64 { return testutil.ToFloat64(s.m.solicitations) }
	const n = 2000
	for i := range n {
		if _, err := p.WriteTo(rs, nil, allRouters); err != nil {
			t.Fatal(err)
		}
		if (i+1)%100 == 0 { // in batches the socket buffers hold
			eventually.True(t, "the server takes in the flood", func() bool { return solicitations() >= float64(i+1) })
		}
	}
	answered := func() float64 {
		return testutil.ToFloat64(s.m.sent.WithLabelValues("solicited")) + testutil.ToFloat64(s.m.coalesced)
	}
	// Every solicitation is answered by an advertisement of its own or by one it shares.
	eventually.True(t, "every solicitation of the flood is answered", func() bool { return answered() == n })
	sent := testutil.ToFloat64(s.m.sent.WithLabelValues("solicited"))
	if sent > n/100 {
		t.Errorf("%v advertisements for %d solicitations", sent, n)
	}
	t.Logf("%d solicitations, %v solicited advertisements", n, sent)
	// A host that solicits now still gets an advertisement.
	before := received.Load()
	if _, err := p.WriteTo(rs, nil, allRouters); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, "a solicitation after the flood gets an advertisement", func() bool { return received.Load() > before })
}

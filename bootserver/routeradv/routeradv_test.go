package routeradv

import (
	"context"
	"encoding/binary"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv6"

	"github.com/pxejoin/pxejoin/lab/netlab"
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

// TestSolicitedAdvertisement: a client on a veth sends a Router Solicitation and gets our
// advertisement: hop limit 255, router lifetime 0, no M/O flags.
func TestSolicitedAdvertisement(t *testing.T) {
	if testing.Short() {
		t.Skip("needs network namespaces; run make test")
	}
	srv, cli := netlab.New(t, "rasrv"), netlab.New(t, "racli")
	netlab.Veth(t, srv, "eth0", "10.81.0.1/24", cli, "eth0", "10.81.0.2/24")
	waitLinkLocal(t, srv, "eth0")
	waitLinkLocal(t, cli, "eth0")
	s, err := New(Config{Interface: "eth0", Interval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Do(func() error { return s.Serve(ctx) }) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	var got []byte
	var hop int
	err = cli.Do(func() error {
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

package dhcpd

import (
	"crypto/rand"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
	"github.com/pxejoin/pxejoin/lab/eventually"
	"github.com/pxejoin/pxejoin/lab/logbuf"
)

// randomMAC is a locally administered unicast address.
func randomMAC(t testing.TB) net.HardwareAddr {
	mac := make(net.HardwareAddr, 6)
	if _, err := rand.Read(mac); err != nil {
		t.Fatal(err)
	}
	mac[0] = mac[0]&^1 | 2
	return mac
}

// handled is how many requests the server has taken in (handled, or dropped as busy).
func handled(s *Server) float64 {
	n := testutil.ToFloat64(s.Metrics().Dropped.WithLabelValues(dropBusy))
	for _, mt := range []dhcpv4.MessageType{dhcpv4.MessageTypeDiscover, dhcpv4.MessageTypeRequest} {
		n += testutil.ToFloat64(s.Metrics().packetsByType[mt])
	}
	return n
}

// flood broadcasts msgs without waiting for replies, in batches the link's socket buffers hold,
// and returns once the server has taken every one in.
func flood(t *testing.T, c *udpClient, s *Server, msgs []*dhcpv4.DHCPv4) {
	t.Helper()
	bcast := &net.UDPAddr{IP: net.IPv4bcast, Port: serverPort}
	base := handled(s)
	for i, m := range msgs {
		if _, err := c.conn.WriteTo(m.ToBytes(), bcast); err != nil {
			t.Fatal(err)
		}
		if (i+1)%50 == 0 || i == len(msgs)-1 {
			want := base + float64(i+1)
			eventually.True(t, "the server takes in the flood", func() bool { return handled(s) >= want })
		}
	}
}

// TestInFlightBound: handlers that block (as one waiting for a durable lease commit does) hold
// at most MaxInFlight slots; the requests past it are dropped and counted, and once the handlers
// are done a machine gets its lease.
func TestInFlightBound(t *testing.T) {
	needNetns(t)
	l := newLink(t, "10.78.20.1/24")
	release := make(chan struct{})
	var mu sync.Mutex
	var inside, most int
	s := fullServer(t, 20, func(c *Config) {
		c.MaxInFlight = 4
		policy := c.BootPolicy
		c.BootPolicy = BootPolicyFunc(func(f ClientFacts) Boot {
			if f.VendorClass == "slow" {
				mu.Lock()
				inside++
				most = max(most, inside)
				mu.Unlock()
				<-release
				mu.Lock()
				inside--
				mu.Unlock()
			}
			return policy.Boot(f)
		})
	})
	startServer(t, l.srv, s)
	c := newUDPClient(t, l.cli, l.cliIf)
	const n = 200
	var msgs []*dhcpv4.DHCPv4
	for range n {
		m, err := newMsg(dhcpv4.MessageTypeDiscover, randomMAC(t), dhcpv4.WithOption(dhcpv4.OptClassIdentifier("slow")))
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, m)
	}
	flood(t, c, s, msgs)
	busy := testutil.ToFloat64(s.Metrics().Dropped.WithLabelValues(dropBusy))
	mu.Lock()
	got := most
	mu.Unlock()
	close(release)
	if got != 4 || busy != n-4 {
		t.Fatalf("%d handlers ran at once and %v requests were dropped as busy; want 4 and %d", got, busy, n-4)
	}
	if _, err := c.dora(randomMAC(t), pxeMods(7)...); err != nil {
		t.Fatalf("a machine after the flood: %v", err)
	}
}

// TestStrangersCannotExhaustPool: a flood of REQUESTs (INIT-REBOOT, for every address of the pool)
// and of DISCOVERs from random MACs gets strangers no more than MaxUnknown addresses; the refusals
// are counted, logged once, and inventory machines still get leases.
func TestStrangersCannotExhaustPool(t *testing.T) {
	needNetns(t)
	l := newLink(t, "10.78.21.1/24")
	inventory := []net.HardwareAddr{macN(0x2101), macN(0x2102), macN(0x2103)}
	var logs logbuf.Buffer
	const maxUnknown = 20
	s := fullServer(t, 21, func(c *Config) {
		c.Known = func(mac hwaddr.MAC, _ []byte) bool {
			for _, m := range inventory {
				if hwaddr.MAC(m) == mac {
					return true
				}
			}
			return false
		}
		c.Inventory = len(inventory)
		c.MaxUnknown = maxUnknown
		c.UnknownOfferHold = time.Hour // no offer lapses during the test: the counts are exact
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	startServer(t, l.srv, s)
	c := newUDPClient(t, l.cli, l.cliIf)
	var msgs []*dhcpv4.DHCPv4
	const requests, discovers = 100, 300
	for i := range requests {
		want := dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 78, 21, byte(100+i))))
		m, err := newMsg(dhcpv4.MessageTypeRequest, randomMAC(t), want)
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, m)
	}
	for range discovers {
		m, err := newMsg(dhcpv4.MessageTypeDiscover, randomMAC(t), pxeMods(7)...)
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, m)
	}
	flood(t, c, s, msgs)

	m := s.Metrics()
	leased := s.cfg.Leases.Active(time.Now())
	naked := testutil.ToFloat64(m.Naked)
	capped := testutil.ToFloat64(m.Dropped.WithLabelValues(dropUnknownCap))
	t.Logf("%d REQUESTs and %d DISCOVERs from strangers: %d leased, %v NAKed, %v DISCOVERs dropped", requests, discovers, leased, naked, capped)
	if leased != maxUnknown || naked != requests-maxUnknown || capped != discovers {
		t.Errorf("want %d leased, %d NAKed, %d DISCOVERs dropped as unknown_cap", maxUnknown, requests-maxUnknown, discovers)
	}
	for _, mac := range inventory {
		if _, err := c.dora(mac, pxeMods(7)...); err != nil {
			t.Fatalf("inventory machine %v after the flood: %v", mac, err)
		}
	}
	if n := strings.Count(logs.String(), "unknown machines hold as many addresses"); n != 1 {
		t.Errorf("%d warnings about the cap, want 1 (rate-limited):\n%s", n, logs.String())
	}
}

// TestStrangerCap: strangers' offers are held briefly; what they may hold stops short of the
// addresses kept for the inventory; a stranger that holds an address keeps it.
func TestStrangerCap(t *testing.T) {
	p := &Pool{Subnet: netip.MustParsePrefix("10.78.0.0/24"), Start: netip.MustParseAddr("10.78.0.100"), End: netip.MustParseAddr("10.78.0.109")}
	for _, tt := range []struct {
		name                  string
		maxUnknown, inventory int
		want                  int
	}{
		{"MaxUnknown", 3, 2, 3},
		{"inventory room", 64, 8, 2},
		{"inventory fills the pool", 64, 12, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := newTestServer(t, ModeFull, func(c *Config) {
				c.Pools = []Pool{*p}
				c.Reservations = nil
				c.MaxUnknown, c.Inventory = tt.maxUnknown, tt.inventory
				c.Known = func(hwaddr.MAC, []byte) bool { return false }
			})
			a, now := s.alloc, time.Now()
			got := 0
			for i := range 10 {
				if _, err := a.offer(p, hwaddr.MAC(macN(i)), false, netip.Addr{}, now); err == nil {
					got++
				} else if err != errStrangerCap {
					t.Fatalf("offer %d: %v", i, err)
				}
			}
			if got != tt.want {
				t.Fatalf("%d strangers got an offer, want %d", got, tt.want)
			}
			// Known machines are not capped: they get every address the strangers do not hold.
			for i := range 10 - tt.want {
				if _, err := a.offer(p, hwaddr.MAC(macN(200+i)), true, netip.Addr{}, now); err != nil {
					t.Errorf("known machine %d: %v", i, err)
				}
			}
			if tt.want == 0 {
				return
			}
			if _, err := a.offer(p, hwaddr.MAC(macN(0)), false, netip.Addr{}, now.Add(time.Second)); err != nil {
				t.Errorf("a stranger holding an offer was refused another: %v", err)
			}
			// Once the strangers' offers lapse (the known machines' have not), others get theirs.
			later := now.Add(DefaultUnknownOfferHold + time.Second)
			if _, err := a.offer(p, hwaddr.MAC(macN(100)), false, netip.Addr{}, later); err != nil {
				t.Errorf("after the offers lapsed: %v", err)
			}
		})
	}
}

// TestExhaustedPoolLogsOnce: DISCOVERs on an exhausted pool are each counted, but logged once per
// interval (a flood used to log a WARN line per packet).
func TestExhaustedPoolLogsOnce(t *testing.T) {
	var logs logbuf.Buffer
	s := newTestServer(t, ModeFull, func(c *Config) { c.Logger = slog.New(slog.NewTextHandler(&logs, nil)) })
	relay := dhcpv4.WithRelay(relayIP.AsSlice())
	for i := range 2 { // the relayed pool has two addresses
		dora(t, s, macN(0x300+i), relay)
	}
	const n = 100
	for i := range n {
		if o, _, _ := exchange(t, s, pkt(t, dhcpv4.MessageTypeDiscover, macN(0x400+i), relay), false); o != nil {
			t.Fatalf("exhausted pool offered %v", o.YourIPAddr)
		}
	}
	if got := testutil.ToFloat64(s.Metrics().Dropped.WithLabelValues(dropExhausted)); got != n {
		t.Errorf("pool_exhausted drops = %v, want %d", got, n)
	}
	if lines := strings.Count(logs.String(), "dhcp pool exhausted"); lines != 1 {
		t.Errorf("%d log lines for %d DISCOVERs on an exhausted pool, want 1:\n%s", lines, n, logs.String())
	}
}

package dhcpd

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pxejoin/pxejoin/bootserver/leases"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// fakeShards serves 10.78.0.100-149 of the test pool (10.78.0.100-199); pure logic, so a fake.
type fakeShards struct {
	mu       sync.Mutex
	mclt     time.Duration
	reusable bool
	mirrored map[hwaddr.MAC]bool
	// budget, if positive, is how many more Serves calls answer true (then it stops serving).
	budget int
	// index and of are Share's answer (zero: answer every DISCOVER).
	index, of int
}

func (f *fakeShards) Share() (int, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.index, f.of
}

var servedEnd = netip.MustParseAddr("10.78.0.149")

func (f *fakeShards) Serves(ip netip.Addr, now time.Time) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.budget > 0 {
		f.budget--
		if f.budget == 0 {
			f.budget = -1
		}
	} else if f.budget < 0 {
		return false
	}
	return !servedEnd.Less(ip)
}

func (f *fakeShards) Reusable(netip.Addr, time.Time) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reusable
}

func (f *fakeShards) Expiry(mac hwaddr.MAC, ip netip.Addr, now, want time.Time) time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.mirrored[mac] || want.Before(now.Add(f.mclt)) {
		return want
	}
	return now.Add(f.mclt)
}

func shardedServer(t *testing.T, f *fakeShards, mod func(*Config)) *Server {
	return newTestServer(t, ModeFull, func(c *Config) {
		c.Shards = f
		c.MaxUnknown = 1000
		if mod != nil {
			mod(c)
		}
	})
}

func newFake() *fakeShards {
	return &fakeShards{mclt: 20 * time.Second, reusable: true, mirrored: map[hwaddr.MAC]bool{}}
}

func dropped(s *Server, reason string) float64 {
	return testutil.ToFloat64(s.Metrics().Dropped.WithLabelValues(reason))
}

// TestShardedAllocation: addresses come from held shards only, and unmirrored bindings get MCLT.
func TestShardedAllocation(t *testing.T) {
	f := newFake()
	s := shardedServer(t, f, nil)
	for i := range 50 {
		ack := dora(t, s, macN(i))
		if ip := addrOf(ack.YourIPAddr); servedEnd.Less(ip) {
			t.Fatalf("%v got %v, outside the held shards", macN(i), ip)
		}
		if got := ack.IPAddressLeaseTime(0); got != f.mclt {
			t.Fatalf("an unmirrored binding got a %v lease, want MCLT %v", got, f.mclt)
		}
	}
	if offer, _, _ := exchange(t, s, pkt(t, dhcpv4.MessageTypeDiscover, macN(50)), false); offer != nil {
		t.Errorf("an offer of %v past the held shards", offer.YourIPAddr)
	}
	// Mirrored: the full lease.
	f.mirrored[hwaddr.MAC(macN(3))] = true
	if ack := dora(t, s, macN(3)); ack.IPAddressLeaseTime(0) != time.Hour {
		t.Errorf("a mirrored binding got %v, want the pool's hour", ack.IPAddressLeaseTime(0))
	}
	// A reservation is every server's: not limited to shards.
	if ack := dora(t, s, net.HardwareAddr{0x52, 0x54, 0x00, 0xcc, 0xcc, 0xcc}); addrOf(ack.YourIPAddr) != netip.MustParseAddr("10.78.0.50") {
		t.Errorf("the reserved machine got %v", ack.YourIPAddr)
	}
}

func TestShardedRequests(t *testing.T) {
	initReboot := func(mac net.HardwareAddr, ip string) *dhcpv4.DHCPv4 {
		return pkt(t, dhcpv4.MessageTypeRequest, mac, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP(ip))))
	}
	tests := []struct {
		name   string
		fake   func(*fakeShards)
		req    *dhcpv4.DHCPv4
		want   dhcpv4.MessageType // MessageTypeNone: no reply
		reason string             // the drop counted
	}{
		{"INIT-REBOOT in a held shard: the shortcut ACKs", nil, initReboot(macN(1), "10.78.0.120"), dhcpv4.MessageTypeAck, ""},
		{"INIT-REBOOT in another's shard: silence, not NAK", nil, initReboot(macN(1), "10.78.0.160"), dhcpv4.MessageTypeNone, dropNotHeld},
		{"renewal in another's shard: silence", nil, pkt(t, dhcpv4.MessageTypeRequest, macN(1), dhcpv4.WithClientIP(net.ParseIP("10.78.0.170"))), dhcpv4.MessageTypeNone, dropNotHeld},
		{"outside the range: NAK as before", nil, initReboot(macN(1), "10.78.0.20"), dhcpv4.MessageTypeNak, ""},
		{"adopted shard waiting MCLT: a free address is not taken", func(f *fakeShards) { f.reusable = false }, initReboot(macN(1), "10.78.0.120"), dhcpv4.MessageTypeNak, ""},
		{"shard lost while the lease was written: no ACK", func(f *fakeShards) { f.budget = 2 }, initReboot(macN(1), "10.78.0.120"), dhcpv4.MessageTypeNone, dropShardLost},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake()
			if tt.fake != nil {
				tt.fake(f)
			}
			s := shardedServer(t, f, nil)
			r, _, _ := exchange(t, s, tt.req, false)
			got := dhcpv4.MessageTypeNone
			if r != nil {
				got = r.MessageType()
			}
			if got != tt.want {
				t.Errorf("reply %v, want %v", got, tt.want)
			}
			if tt.reason != "" && dropped(s, tt.reason) != 1 {
				t.Errorf("drop %q not counted", tt.reason)
			}
		})
	}
}

// TestAdoptedOwnBinding: while an adopted shard waits MCLT, a client keeps its own binding.
func TestAdoptedOwnBinding(t *testing.T) {
	f := newFake()
	f.reusable = false
	s := shardedServer(t, f, nil)
	mac := macN(7)
	if err := s.cfg.Leases.Commit(leases.Lease{MAC: hwaddr.MAC(mac), IP: netip.MustParseAddr("10.78.0.130"), Expiry: time.Now().Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if ack := dora(t, s, mac); addrOf(ack.YourIPAddr) != netip.MustParseAddr("10.78.0.130") {
		t.Errorf("got %v, want its own 10.78.0.130", ack.YourIPAddr)
	}
	if offer, _, _ := exchange(t, s, pkt(t, dhcpv4.MessageTypeDiscover, macN(8)), false); offer != nil {
		t.Errorf("a new client got %v from a shard waiting MCLT", offer.YourIPAddr)
	}
}

// TestProbeBeforeReuse: an address another client held is probed before it is offered again; one
// that answers is skipped and kept out of use.
func TestProbeBeforeReuse(t *testing.T) {
	inUse := netip.MustParseAddr("10.78.0.100")
	var probed []netip.Addr
	s := newTestServer(t, ModeFull, func(c *Config) {
		c.Probe = func(ip netip.Addr) bool { probed = append(probed, ip); return ip == inUse }
	})
	old := hwaddr.MAC(macN(1))
	if err := s.cfg.Leases.Commit(leases.Lease{MAC: old, IP: inUse, Expiry: time.Now().Add(-time.Minute)}); err != nil {
		t.Fatal(err)
	}
	offer, _, _ := exchange(t, s, pkt(t, dhcpv4.MessageTypeDiscover, macN(2), dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP(inUse.String())))), false)
	if offer == nil || addrOf(offer.YourIPAddr) == inUse {
		t.Fatalf("offer %v, want another address than %v, which answers", offer, inUse)
	}
	if len(probed) != 1 || probed[0] != inUse || dropped(s, dropInUse) != 1 {
		t.Errorf("probed %v, counted %v", probed, dropped(s, dropInUse))
	}
	// The old holder itself is not probed (it may answer: it is the one asking).
	probed = nil
	dora(t, s, macN(1))
	if len(probed) != 0 {
		t.Errorf("probed %v for its own previous holder", probed)
	}
}

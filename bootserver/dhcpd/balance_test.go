package dhcpd

import (
	"net"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// TestBucket: RFC 3074's table is a permutation, and the hash gives the values an independent
// implementation of the RFC's algorithm (Python, over the same table) gave.
func TestBucket(t *testing.T) {
	seen := map[byte]bool{}
	for _, v := range mixTable {
		seen[v] = true
	}
	if len(seen) != 256 {
		t.Fatalf("the mixing table has %d distinct values, want 256", len(seen))
	}
	for _, tt := range []struct {
		key  []byte
		want byte
	}{
		{[]byte{0}, 175},
		{[]byte{0x52, 0x54, 0, 0x12, 0x34, 0x56}, 156},
		{[]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 79},
		{[]byte{0x52, 0x54, 0x03, 0x0b, 0, 0}, 215},
	} {
		if got := bucket(tt.key); got != tt.want {
			t.Errorf("bucket(% x) = %d, want %d", tt.key, got, tt.want)
		}
	}
	// Sequential MACs, as a rack's often are, split evenly enough between two and three servers.
	for _, of := range []int{2, 3} {
		n := make([]int, of)
		for i := range 1000 {
			n[int(bucket(macN(i)))%of]++
		}
		for i, c := range n {
			if c < 1000/of*8/10 || c > 1000/of*12/10 {
				t.Errorf("%d servers: server %d gets %d of 1000 machines (%v)", of, i, c, n)
			}
		}
	}
}

// macOf returns a MAC whose DISCOVERs are server want's of of.
func macOf(t *testing.T, want, of int) net.HardwareAddr {
	for i := range 1000 {
		if int(bucket(macN(i)))%of == want {
			return macN(i)
		}
	}
	t.Fatal("no such MAC")
	return nil
}

// TestBalance: a server answers its share of the DISCOVERs at once, the others only once the machine
// kept DISCOVERing TakeoverAfter; a REQUEST seen starts the wait over.
func TestBalance(t *testing.T) {
	f := newFake()
	f.index, f.of = 0, 2
	s := shardedServer(t, f, func(c *Config) { c.TakeoverAfter = time.Nanosecond })
	discover := func(mac net.HardwareAddr) bool {
		r, _, _ := exchange(t, s, pkt(t, dhcpv4.MessageTypeDiscover, mac), false)
		return r != nil
	}
	mine, theirs := macOf(t, 0, 2), macOf(t, 1, 2)
	if !discover(mine) {
		t.Fatal("no offer to a machine of this server's share")
	}
	if discover(theirs) {
		t.Fatal("an offer at once to a machine of the other server's share")
	}
	if dropped(s, dropPeerShare) != 1 {
		t.Errorf("peer_share drops: %v, want 1", dropped(s, dropPeerShare))
	}
	if !discover(theirs) {
		t.Fatal("no offer to a machine still DISCOVERing after TakeoverAfter")
	}
	if got := testutil.ToFloat64(s.Metrics().Takeovers); got != 1 {
		t.Errorf("takeovers: %v, want 1", got)
	}
	// The machine REQUESTs from the other server: its next DISCOVER (iPXE's, after the
	// firmware's) is a new exchange, left to its server again.
	req := pkt(t, dhcpv4.MessageTypeRequest, theirs, dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 78, 0, 2))),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 78, 0, 160))))
	if r, _, _ := exchange(t, s, req, false); r != nil {
		t.Fatalf("answered a REQUEST to another server: %v", r.MessageType())
	}
	if discover(theirs) {
		t.Error("an offer at once to a machine whose last exchange went to the other server")
	}
	// Alone, or not among the live servers yet: every DISCOVER is answered.
	for _, share := range [][2]int{{0, 1}, {-1, 2}} {
		f.index, f.of = share[0], share[1]
		if !discover(macOf(t, 1, 2)) {
			t.Errorf("share %v: no offer", share)
		}
	}
}

// TestBalanceBounds: the machines remembered are bounded (past it, answered here and counted), and
// forgotten after forgetAfter (pure logic, times given).
func TestBalanceBounds(t *testing.T) {
	f := newFake()
	f.index, f.of = 0, 2
	m, err := newMetrics(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	b := newBalancer(f, 2*time.Second, m)
	t0 := time.Now()
	var theirs []hwaddr.MAC
	for i := 0; len(theirs) < maxWaiting+1; i++ {
		mac := hwaddr.MAC{0x52, 0x54, 0, byte(i >> 16), byte(i >> 8), byte(i)}
		if bucket(mac[:])%2 == 1 {
			theirs = append(theirs, mac)
		}
	}
	for _, mac := range theirs[:maxWaiting] {
		if b.answers(mac, t0) {
			t.Fatalf("%v answered at once", mac)
		}
	}
	if !b.answers(theirs[maxWaiting], t0) || testutil.ToFloat64(m.BalanceFull) != 1 {
		t.Errorf("past %d machines: answered %v, counted %v", maxWaiting, b.answers(theirs[maxWaiting], t0), testutil.ToFloat64(m.BalanceFull))
	}
	if !b.answers(theirs[0], t0.Add(2*time.Second)) {
		t.Error("not answered TakeoverAfter later")
	}
	// A minute later the waits are forgotten: a DISCOVER then starts a new one.
	later := t0.Add(forgetAfter)
	if b.answers(theirs[1], later) {
		t.Error("a machine DISCOVERing again after forgetAfter answered at once")
	}
	if len(b.waiting) != 1 {
		t.Errorf("%d machines remembered after forgetAfter, want 1", len(b.waiting))
	}
}

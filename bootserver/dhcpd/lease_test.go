package dhcpd

import (
	"bytes"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

func macN(i int) net.HardwareAddr {
	return net.HardwareAddr{0x52, 0x54, 0x00, 0x01, byte(i >> 8), byte(i)}
}

func dora(t *testing.T, s *Server, mac net.HardwareAddr, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	offer, _, _ := exchange(t, s, pkt(t, dhcpv4.MessageTypeDiscover, mac, mods...), false)
	if offer == nil {
		t.Fatalf("%v: no offer", mac)
	}
	req := pkt(t, dhcpv4.MessageTypeRequest, mac, append(mods,
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(offer.YourIPAddr)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(offer.ServerIdentifier())))...)
	ack, _, _ := exchange(t, s, req, false)
	if ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck {
		t.Fatalf("%v: REQUEST got %v", mac, ack)
	}
	if !ack.YourIPAddr.Equal(offer.YourIPAddr) {
		t.Fatalf("%v: offered %v, acked %v", mac, offer.YourIPAddr, ack.YourIPAddr)
	}
	return ack
}

func TestLeaseLifecycle(t *testing.T) {
	reg := prometheus.NewRegistry()
	var mu sync.Mutex
	var events []string
	var logs bytes.Buffer
	s := newTestServer(t, ModeFull, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		c.Registerer = reg
		c.OnEvent = func(e Event) {
			mu.Lock()
			events = append(events, e.String())
			mu.Unlock()
		}
	})
	st := s.cfg.Leases
	m := s.Metrics()

	ack := dora(t, s, testMAC, ipxeMods()...)
	l, ok := st.Get(hwaddr.MAC(testMAC))
	if !ok || l.IP != netip.MustParseAddr("10.78.0.100") || time.Until(l.Expiry) < 59*time.Minute {
		t.Fatalf("stored lease %v %v", l, ok)
	}
	if got := testutil.ToFloat64(m.LeasesActive); got != 1 {
		t.Errorf("active leases = %v, want 1", got)
	}
	if ack.IPAddressLeaseTime(0) != time.Hour || ack.BootFileName == "" {
		t.Errorf("ACK lease time %v file %q", ack.IPAddressLeaseTime(0), ack.BootFileName)
	}
	// The same client again gets the same address.
	if again := dora(t, s, testMAC); !again.YourIPAddr.Equal(ack.YourIPAddr) {
		t.Errorf("second DORA gave %v, first %v", again.YourIPAddr, ack.YourIPAddr)
	}
	// Another client asking for that address is refused.
	other := macN(2)
	nak, _, dst := exchange(t, s, pkt(t, dhcpv4.MessageTypeRequest, other,
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ack.YourIPAddr))), false)
	if nak == nil || nak.MessageType() != dhcpv4.MessageTypeNak || dst.String() != bcast68.String() {
		t.Fatalf("REQUEST for a taken address: %v to %v", nak, dst)
	}
	// An address outside the pool's subnet is refused too (client moved networks).
	nak, _, _ = exchange(t, s, pkt(t, dhcpv4.MessageTypeRequest, other,
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP("192.168.9.9")))), false)
	if nak == nil || nak.MessageType() != dhcpv4.MessageTypeNak {
		t.Fatalf("REQUEST for a foreign address: %v", nak)
	}
	// A client that took another server's offer gets nothing and frees its held offer.
	offer, _, _ := exchange(t, s, pkt(t, dhcpv4.MessageTypeDiscover, other), false)
	if r, _, _ := exchange(t, s, pkt(t, dhcpv4.MessageTypeRequest, other,
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(offer.YourIPAddr)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.ParseIP("10.78.0.254")))), false); r != nil {
		t.Errorf("REQUEST for another server answered: %v", r.MessageType())
	}
	if _, held := s.alloc.heldBy[hwaddr.MAC(other)]; held {
		t.Error("offer still held after the client chose another server")
	}

	// RENEW: unicast from ciaddr, reply unicast back.
	renew := pkt(t, dhcpv4.MessageTypeRequest, testMAC, dhcpv4.WithClientIP(ack.YourIPAddr), dhcpv4.WithBroadcast(false))
	r, _, dst := exchange(t, s, renew, false)
	if r == nil || r.MessageType() != dhcpv4.MessageTypeAck || dst.String() != "10.78.0.100:68" {
		t.Fatalf("RENEW: %v to %v", r, dst)
	}

	// INFORM: configuration without a lease, to ciaddr.
	inf, _, dst := exchange(t, s, pkt(t, dhcpv4.MessageTypeInform, macN(4), dhcpv4.WithClientIP(net.ParseIP("10.78.0.20"))), false)
	if inf == nil || inf.MessageType() != dhcpv4.MessageTypeAck || !inf.YourIPAddr.Equal(net.IPv4zero) ||
		inf.Options.Has(dhcpv4.OptionIPAddressLeaseTime) || dst.String() != "10.78.0.20:68" {
		t.Fatalf("INFORM: %v to %v", inf, dst)
	}

	// RELEASE ends the lease but the address stays the client's preference.
	exchange(t, s, pkt(t, dhcpv4.MessageTypeRelease, testMAC, dhcpv4.WithClientIP(ack.YourIPAddr),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(srvIP.AsSlice()))), false)
	if l, _ := st.Get(hwaddr.MAC(testMAC)); l.Active(time.Now().Add(time.Millisecond)) {
		t.Errorf("lease still active after RELEASE: %v", l)
	}

	// DECLINE: the address is in use on the link; it is not offered again.
	d := dora(t, s, macN(5))
	exchange(t, s, pkt(t, dhcpv4.MessageTypeDecline, macN(5), dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(d.YourIPAddr)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(srvIP.AsSlice()))), false)
	if _, ok := st.Get(hwaddr.MAC(macN(5))); ok {
		t.Error("declined lease kept")
	}
	if o, _, _ := exchange(t, s, pkt(t, dhcpv4.MessageTypeDiscover, macN(5)), false); o == nil || o.YourIPAddr.Equal(d.YourIPAddr) {
		t.Errorf("declined address %v offered again: %v", d.YourIPAddr, o)
	}

	if got := testutil.ToFloat64(m.Naked); got != 2 {
		t.Errorf("naked = %v, want 2", got)
	}
	if got := testutil.ToFloat64(m.Packets.WithLabelValues("discover")); got < 4 {
		t.Errorf("discover packets = %v", got)
	}
	if got := testutil.ToFloat64(m.LeasesActive); got != 0 {
		t.Errorf("active leases = %v, want 0 (released, declined)", got)
	}
	if n, err := testutil.GatherAndCount(reg); err != nil || n == 0 {
		t.Errorf("gather: %d %v", n, err)
	}
	for _, want := range []string{`msg="dhcp offer" mac=52:54:00:aa:bb:01 ip=10.78.0.100 file=http://`, `msg="dhcp ack"`, `msg="dhcp nak"`,
		`msg="dhcp release"`, `level=WARN msg="dhcp address declined: in use on the link;`} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("no log line with %s in:\n%s", want, logs.String())
		}
	}
	// Events are delivered by Serve's dispatcher; without Serve they queue.
	if len(s.events) == 0 {
		t.Error("no boot events queued")
	}
}

func TestReservationAndExhaustion(t *testing.T) {
	s := newTestServer(t, ModeFull, nil)
	res := net.HardwareAddr{0x52, 0x54, 0x00, 0xcc, 0xcc, 0xcc}
	ack := dora(t, s, res)
	if ack.YourIPAddr.String() != "10.78.0.50" || ack.HostName() != "worker-1" {
		t.Errorf("reserved client got %v %q", ack.YourIPAddr, ack.HostName())
	}
	if l, _ := s.cfg.Leases.Get(hwaddr.MAC(res)); l.Hostname != "worker-1" {
		t.Errorf("stored hostname %q", l.Hostname)
	}
	// Nobody else gets the reserved address, even asking for it.
	if o, _, _ := exchange(t, s, pkt(t, dhcpv4.MessageTypeDiscover, macN(1), dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP("10.78.0.50")))), false); o.YourIPAddr.String() == "10.78.0.50" {
		t.Error("reserved address offered to another client")
	}
	// The relayed pool has two addresses: a third client is dropped and counted.
	relay := dhcpv4.WithRelay(relayIP.AsSlice())
	for i := 10; i < 12; i++ {
		if a := dora(t, s, macN(i), relay); !netip.MustParsePrefix("10.78.1.0/24").Contains(addrOf(a.YourIPAddr)) {
			t.Errorf("relayed client got %v", a.YourIPAddr)
		}
	}
	if o, _, _ := exchange(t, s, pkt(t, dhcpv4.MessageTypeDiscover, macN(12), relay), false); o != nil {
		t.Errorf("exhausted pool offered %v", o.YourIPAddr)
	}
	if got := testutil.ToFloat64(s.Metrics().Dropped.WithLabelValues(dropExhausted)); got != 1 {
		t.Errorf("pool_exhausted drops = %v", got)
	}
	// A relay we have no pool for.
	if o, _, _ := exchange(t, s, pkt(t, dhcpv4.MessageTypeDiscover, macN(13), dhcpv4.WithRelay(net.ParseIP("172.16.0.1"))), false); o != nil {
		t.Error("request from an unknown relay answered")
	}
}

func TestMalformedDropped(t *testing.T) {
	s := newTestServer(t, ModeFull, nil)
	good := pkt(t, dhcpv4.MessageTypeDiscover, testMAC).ToBytes()
	mut := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	tests := []struct {
		name   string
		b      []byte
		reason string
	}{
		{"empty", nil, dropShort},
		{"short", good[:100], dropShort},
		{"reply op", mut(func(b []byte) []byte { b[0] = 2; return b }), dropNotRequest},
		{"hlen 0", mut(func(b []byte) []byte { b[2] = 0; return b }), dropBadHlen},
		{"hlen 200", mut(func(b []byte) []byte { b[2] = 200; return b }), dropBadHlen},
		{"hlen 16 (not a 48-bit MAC)", mut(func(b []byte) []byte { b[2] = 16; return b }), dropBadHlen},
		{"cookie", mut(func(b []byte) []byte { b[236] = 0; return b }), dropBadCookie},
		{"option overruns", mut(func(b []byte) []byte { return append(b[:240], 53, 200, 1) }), dropParse},
		{"no end option", mut(func(b []byte) []byte { return append(b[:240], 53, 1, 1) }), dropParse},
		{"BOOTP", mut(func(b []byte) []byte { return append(b[:240], 255) }), dropNoType},
		{"hops", mut(func(b []byte) []byte { b[3] = 17; return b }), dropRelayedLoop},
		{"OFFER as request", pkt(t, dhcpv4.MessageTypeOffer, testMAC).ToBytes(), dropBadType},
		{"REQUEST without address", pkt(t, dhcpv4.MessageTypeRequest, testMAC).ToBytes(), dropNoAddress},
	}
	for _, tt := range tests {
		before := testutil.ToFloat64(s.Metrics().Dropped.WithLabelValues(tt.reason))
		if b, _ := s.handlePacket(tt.b, &net.UDPAddr{IP: net.IPv4zero, Port: 68}, false); b != nil {
			t.Errorf("%s: answered", tt.name)
		}
		if after := testutil.ToFloat64(s.Metrics().Dropped.WithLabelValues(tt.reason)); after != before+1 {
			t.Errorf("%s: %s drops %v → %v", tt.name, tt.reason, before, after)
		}
	}
}

package dhcpd

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// TestAddressFromEveryServer: two servers whose Config.Address share one record of claims (what
// the API is to them) answer an inventory machine with the same address, outside the pool's
// range, whichever of them it asks; an unknown machine is not asked about; a failing Address
// drops the request and counts it.
func TestAddressFromEveryServer(t *testing.T) {
	known := hwaddr.MAC{0x52, 0x54, 0x00, 0xaa, 0xbb, 0x01}
	var mu sync.Mutex
	claims := map[hwaddr.MAC]netip.Addr{}
	asked := map[hwaddr.MAC]int{}
	var fail bool
	address := func(mac hwaddr.MAC, _ []byte) (netip.Addr, string, error) {
		mu.Lock()
		defer mu.Unlock()
		asked[mac]++
		if fail {
			return netip.Addr{}, "", errors.New("apiserver unreachable")
		}
		if _, ok := claims[mac]; !ok {
			claims[mac] = netip.MustParseAddr("10.78.0.20") // the claims range, outside the pool range 100-199
		}
		return claims[mac], "worker-7", nil
	}
	server := func(ip string) *Server {
		return newTestServer(t, ModeFull, func(c *Config) {
			c.ServerIP = netip.MustParseAddr(ip)
			c.Known = func(mac hwaddr.MAC, _ []byte) bool { return mac == known }
			c.Address = address
		})
	}
	a, b := server("10.78.0.1"), server("10.78.0.2")
	want := net.ParseIP("10.78.0.20").To4()
	for _, s := range []*Server{a, b} {
		r, _, _ := exchange(t, s, pkt(t, dhcpv4.MessageTypeDiscover, testMAC, pxeMods(0)...), false)
		if r == nil || !r.YourIPAddr.Equal(want) || r.HostName() != "worker-7" {
			t.Fatalf("offer from %v: %v", s.serverIP, r)
		}
	}
	// The machine took a's offer, then asks b in INIT-REBOOT (a died): b ACKs the same address.
	req := pkt(t, dhcpv4.MessageTypeRequest, testMAC, append(pxeMods(0), dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(want)))...)
	if r, _, _ := exchange(t, b, req, false); r == nil || r.MessageType() != dhcpv4.MessageTypeAck || !r.YourIPAddr.Equal(want) {
		t.Fatalf("b's answer to a's client: %v", r)
	}
	stranger := net.HardwareAddr{0x52, 0x54, 0x00, 0xaa, 0xbb, 0x02}
	r, _, _ := exchange(t, a, pkt(t, dhcpv4.MessageTypeDiscover, stranger), false)
	if r == nil {
		t.Fatal("no offer to a stranger")
	}
	if ip := addrOf(r.YourIPAddr); ip.Less(netip.MustParseAddr("10.78.0.100")) || netip.MustParseAddr("10.78.0.199").Less(ip) {
		t.Fatalf("stranger's offer: %v, want one from the pool", r)
	}
	if asked[hwaddr.MAC(stranger)] != 0 {
		t.Error("Address asked about a machine outside the inventory")
	}
	fail = true
	if r, _, _ := exchange(t, a, pkt(t, dhcpv4.MessageTypeDiscover, testMAC, pxeMods(0)...), false); r != nil {
		t.Fatalf("answered without an address from the API: %v", r)
	}
	if n := testutil.ToFloat64(a.metrics.Dropped.WithLabelValues(dropClaim)); n != 1 {
		t.Errorf("claim drops %v, want 1", n)
	}
}

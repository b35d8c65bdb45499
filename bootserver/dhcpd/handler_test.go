package dhcpd

import (
	"bytes"
	"encoding/hex"
	"flag"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/pxejoin/pxejoin/bootserver/leases"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

var (
	srvIP   = netip.MustParseAddr("10.78.0.1")
	relayIP = netip.MustParseAddr("10.78.1.1")
	testMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0xaa, 0xbb, 0x01}
	testXID = dhcpv4.TransactionID{0xde, 0xad, 0xbe, 0xef}
	uuid    = append([]byte{0}, bytes.Repeat([]byte{0x11}, 16)...)
)

func testPools() []Pool {
	return []Pool{
		{Subnet: netip.MustParsePrefix("10.78.0.0/24"), Start: netip.MustParseAddr("10.78.0.100"), End: netip.MustParseAddr("10.78.0.199"),
			Router: srvIP, DNS: []netip.Addr{srvIP}, LeaseTime: time.Hour},
		{Subnet: netip.MustParsePrefix("10.78.1.0/24"), Start: netip.MustParseAddr("10.78.1.100"), End: netip.MustParseAddr("10.78.1.101"),
			Router: relayIP, LeaseTime: 2 * time.Hour},
	}
}

func testPolicy() DefaultPolicy {
	return DefaultPolicy{TFTPServer: srvIP, HTTPBase: "http://10.78.0.1:8080"}
}

func openStore(t testing.TB) *leases.Store {
	t.Helper()
	st, err := leases.Open(filepath.Join(t.TempDir(), "leases.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func newTestServer(t testing.TB, mode Mode, mod func(*Config)) *Server {
	t.Helper()
	cfg := Config{
		Mode:       mode,
		ServerIP:   srvIP,
		Pools:      testPools(),
		Leases:     openStore(t),
		BootPolicy: testPolicy(),
		Reservations: []Reservation{
			{MAC: hwaddr.MAC{0x52, 0x54, 0x00, 0xcc, 0xcc, 0xcc}, IP: netip.MustParseAddr("10.78.0.50"), Hostname: "worker-1"},
		},
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// pkt builds a request from mac with fixed transaction ID.
func pkt(t testing.TB, mt dhcpv4.MessageType, mac net.HardwareAddr, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	base := []dhcpv4.Modifier{
		dhcpv4.WithTransactionID(testXID), dhcpv4.WithHwAddr(mac), dhcpv4.WithMessageType(mt), dhcpv4.WithBroadcast(true),
	}
	p, err := dhcpv4.New(append(base, mods...)...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func pxeMods(arch uint16) []dhcpv4.Modifier {
	return []dhcpv4.Modifier{
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:0000" + string(rune('0'+arch%10)) + ":UNDI:002001")),
		dhcpv4.WithGeneric(dhcpv4.OptionClientSystemArchitectureType, []byte{byte(arch >> 8), byte(arch)}),
		dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, uuid),
	}
}

func ipxeMods() []dhcpv4.Modifier {
	return append(pxeMods(0), dhcpv4.WithUserClass("iPXE", false),
		dhcpv4.WithGeneric(dhcpv4.GenericOptionCode(175), []byte{0xb1, 0x05, 0x01, 0x80, 0x86, 0x10, 0x0e}))
}

// exchange sends p through the whole packet path and parses the reply.
func exchange(t testing.TB, s *Server, p *dhcpv4.DHCPv4, pxePort bool) (*dhcpv4.DHCPv4, []byte, *net.UDPAddr) {
	t.Helper()
	peer := &net.UDPAddr{IP: net.IPv4zero, Port: 68}
	if pxePort {
		peer = &net.UDPAddr{IP: net.ParseIP("10.78.0.77"), Port: 4011}
	}
	b, dst := s.handlePacket(p.ToBytes(), peer, pxePort)
	if b == nil {
		return nil, nil, nil
	}
	r, err := dhcpv4.FromBytes(b)
	if err != nil {
		t.Fatalf("reply does not parse: %v", err)
	}
	return r, b, dst
}

func golden(t *testing.T, name string, b []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	dump := []byte(hex.Dump(b))
	if *update {
		if err := os.WriteFile(path, dump, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(want, dump) {
		t.Errorf("reply bytes differ from %s (go test -update rewrites it):\n got:\n%s\nwant:\n%s", path, dump, want)
	}
}

var bcast68 = &net.UDPAddr{IP: net.IPv4bcast, Port: 68}

func TestOffers(t *testing.T) {
	tests := []struct {
		name     string
		mode     Mode
		req      []dhcpv4.Modifier
		relay    bool
		wantYI   string
		wantFile string
		wantSI   string
		wantOpts map[dhcpv4.OptionCode][]byte
		noOpts   []dhcpv4.OptionCode
		wantDst  *net.UDPAddr
		golden   string
	}{
		{name: "BIOS PXE", mode: ModeFull, req: pxeMods(0), wantYI: "10.78.0.100", wantFile: "undionly.kpxe", wantSI: "10.78.0.1",
			wantOpts: map[dhcpv4.OptionCode][]byte{dhcpv4.OptionTFTPServerName: []byte("10.78.0.1"), dhcpv4.OptionBootfileName: []byte("undionly.kpxe")},
			noOpts:   []dhcpv4.OptionCode{dhcpv4.OptionClassIdentifier, dhcpv4.OptionVendorSpecificInformation},
			wantDst:  bcast68, golden: "offer-bios-pxe"},
		{name: "UEFI x64 PXE", mode: ModeFull, req: pxeMods(7), wantYI: "10.78.0.100", wantFile: "ipxe.efi", wantSI: "10.78.0.1", wantDst: bcast68},
		{name: "iPXE", mode: ModeFull, req: ipxeMods(), wantYI: "10.78.0.100", wantFile: "http://10.78.0.1:8080/boot/52:54:00:aa:bb:01.ipxe", wantSI: "10.78.0.1",
			wantOpts: map[dhcpv4.OptionCode][]byte{dhcpv4.GenericOptionCode(175): {176, 1, 1}},
			wantDst:  bcast68, golden: "offer-ipxe"},
		{name: "UEFI HTTP boot", mode: ModeFull, wantYI: "10.78.0.100", wantFile: "http://10.78.0.1:8080/ipxe/ipxe.efi", wantSI: "10.78.0.1",
			req: []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("HTTPClient:Arch:00016:UNDI:003001")),
				dhcpv4.WithGeneric(dhcpv4.OptionClientSystemArchitectureType, []byte{0, 16})},
			wantOpts: map[dhcpv4.OptionCode][]byte{dhcpv4.OptionClassIdentifier: []byte("HTTPClient")}, wantDst: bcast68},
		{name: "plain client", mode: ModeFull, req: []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("udhcp 1.35.0"))},
			wantYI: "10.78.0.100", wantSI: "10.78.0.1", noOpts: []dhcpv4.OptionCode{dhcpv4.OptionBootfileName}, wantDst: bcast68},
		{name: "relayed", mode: ModeFull, req: pxeMods(0), relay: true, wantYI: "10.78.1.100", wantFile: "undionly.kpxe", wantSI: "10.78.0.1",
			wantOpts: map[dhcpv4.OptionCode][]byte{dhcpv4.OptionRouter: relayIP.AsSlice()},
			wantDst:  &net.UDPAddr{IP: relayIP.AsSlice(), Port: 67}},
		{name: "proxy BIOS PXE", mode: ModeProxy, req: pxeMods(0), wantYI: "0.0.0.0", wantFile: "undionly.kpxe", wantSI: "10.78.0.1",
			wantOpts: map[dhcpv4.OptionCode][]byte{
				dhcpv4.OptionClassIdentifier:           []byte("PXEClient"),
				dhcpv4.OptionVendorSpecificInformation: {6, 1, 8, 255},
				dhcpv4.OptionClientMachineIdentifier:   uuid,
				dhcpv4.OptionServerIdentifier:          srvIP.AsSlice(),
			},
			noOpts:  []dhcpv4.OptionCode{dhcpv4.OptionIPAddressLeaseTime, dhcpv4.OptionSubnetMask},
			wantDst: bcast68, golden: "offer-proxy-bios"},
		{name: "proxy UEFI PXE has no option 43", mode: ModeProxy, req: pxeMods(7), wantYI: "0.0.0.0", wantFile: "ipxe.efi", wantSI: "10.78.0.1",
			wantOpts: map[dhcpv4.OptionCode][]byte{dhcpv4.OptionClassIdentifier: []byte("PXEClient")},
			noOpts:   []dhcpv4.OptionCode{dhcpv4.OptionVendorSpecificInformation}, wantDst: bcast68},
		{name: "proxy iPXE", mode: ModeProxy, req: ipxeMods(), wantYI: "0.0.0.0", wantFile: "http://10.78.0.1:8080/boot/52:54:00:aa:bb:01.ipxe", wantSI: "10.78.0.1", wantDst: bcast68},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newTestServer(t, tt.mode, nil)
			mods := tt.req
			if tt.relay {
				mods = append(mods, dhcpv4.WithRelay(relayIP.AsSlice()))
			}
			r, b, dst := exchange(t, s, pkt(t, dhcpv4.MessageTypeDiscover, testMAC, mods...), false)
			if r == nil {
				t.Fatal("no reply")
			}
			if r.MessageType() != dhcpv4.MessageTypeOffer || r.OpCode != dhcpv4.OpcodeBootReply || r.TransactionID != testXID {
				t.Errorf("reply %s op %v xid %v", r.MessageType(), r.OpCode, r.TransactionID)
			}
			if r.YourIPAddr.String() != tt.wantYI || r.ServerIPAddr.String() != tt.wantSI || r.BootFileName != tt.wantFile {
				t.Errorf("yiaddr %v siaddr %v file %q, want %v %v %q", r.YourIPAddr, r.ServerIPAddr, r.BootFileName, tt.wantYI, tt.wantSI, tt.wantFile)
			}
			for code, want := range tt.wantOpts {
				if got := r.Options.Get(code); !bytes.Equal(got, want) {
					t.Errorf("option %v = %x, want %x", code, got, want)
				}
			}
			for _, code := range tt.noOpts {
				if r.Options.Has(code) {
					t.Errorf("option %v present", code)
				}
			}
			if dst.String() != tt.wantDst.String() {
				t.Errorf("sent to %v, want %v", dst, tt.wantDst)
			}
			if tt.golden != "" {
				golden(t, tt.golden, b)
			}
		})
	}
}

func TestProxyIgnoresOthers(t *testing.T) {
	s := newTestServer(t, ModeProxy, nil)
	tests := []struct {
		name    string
		p       *dhcpv4.DHCPv4
		pxePort bool
	}{
		{"plain DISCOVER", pkt(t, dhcpv4.MessageTypeDiscover, testMAC, dhcpv4.WithOption(dhcpv4.OptClassIdentifier("udhcp 1.35.0"))), false},
		{"PXE REQUEST on 67 (for the other server)", pkt(t, dhcpv4.MessageTypeRequest, testMAC, pxeMods(0)...), false},
		{"PXE with unknown arch", pkt(t, dhcpv4.MessageTypeDiscover, testMAC, pxeMods(5)...), false},
		{"DISCOVER on 4011", pkt(t, dhcpv4.MessageTypeDiscover, testMAC, pxeMods(7)...), true},
	}
	for _, tt := range tests {
		if r, _, _ := exchange(t, s, tt.p, tt.pxePort); r != nil {
			t.Errorf("%s: got %s", tt.name, r.MessageType())
		}
	}
	// A UEFI client asks again on port 4011 and gets an ACK sent back to where it came from.
	req := pkt(t, dhcpv4.MessageTypeRequest, testMAC, append(pxeMods(7), dhcpv4.WithClientIP(net.ParseIP("10.78.0.77")))...)
	r, _, dst := exchange(t, s, req, true)
	if r == nil || r.MessageType() != dhcpv4.MessageTypeAck || r.BootFileName != "ipxe.efi" || !r.YourIPAddr.Equal(net.IPv4zero) {
		t.Fatalf("port 4011 REQUEST: %v", r)
	}
	if dst.String() != "10.78.0.77:4011" || r.ClientIPAddr.String() != "10.78.0.77" {
		t.Errorf("port 4011 ACK to %v ciaddr %v", dst, r.ClientIPAddr)
	}
}

package server

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/pxejoin/pxejoin/bootserver/dhcpd"
	"github.com/pxejoin/pxejoin/bootserver/leases"
	"github.com/pxejoin/pxejoin/bootserver/status"
	"github.com/pxejoin/pxejoin/bootserver/tftpd"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// TestBootEvents feeds DHCP and TFTP events of a whole PXE chain (firmware DHCP, NBP, iPXE DHCP,
// script, agent DHCP, then a reboot) and checks the phases and boots they make.
func TestBootEvents(t *testing.T) {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "s.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	st, _ := status.Open(db, status.Options{})
	defer st.Close()
	ls, err := leases.Open(filepath.Join(t.TempDir(), "leases.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer ls.Close()
	s := &Server{status: st, leases: ls, log: nopLogger()}
	hw, _ := hwaddr.Parse("52:54:00:00:00:01")
	// The lease behind the ACKs below: dhcpd commits it before it reports an ACK; TFTP finds the MAC by it.
	if err := ls.Commit(leases.Lease{MAC: hw, IP: netip.MustParseAddr("10.0.0.100"), Expiry: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	remote := netip.MustParseAddrPort("10.0.0.100:2000")
	ack := func(file string) dhcpd.Event {
		return dhcpd.Event{Kind: dhcpd.EventAck, MAC: hw, IP: netip.MustParseAddr("10.0.0.100"), File: file}
	}
	discover := func(vendor string) dhcpd.Event {
		return dhcpd.Event{Kind: dhcpd.EventDiscover, MAC: hw, VendorClass: vendor}
	}
	tftp := func(kind tftpd.EventKind) tftpd.Event {
		return tftpd.Event{Kind: kind, Remote: remote, File: "undionly.kpxe"}
	}
	steps := []struct {
		do       func()
		want     string // phases of the current boot
		wantBoot int
	}{
		{func() { s.onDHCP(discover("PXEClient:Arch:00000:UNDI:002001")) }, "dhcp/start", 1},
		{func() { s.onDHCP(discover("PXEClient:Arch:00000:UNDI:002001")) }, "dhcp/start", 1}, // retransmission
		{func() { s.onDHCP(ack("undionly.kpxe")) }, "dhcp/done", 1},
		{func() { s.onTFTP(tftp(tftpd.EventStart)) }, "dhcp/done nbp/start", 1},
		{func() { s.onTFTP(tftp(tftpd.EventDone)) }, "dhcp/done nbp/done", 1},
		{func() { s.onDHCP(discover("PXEClient:Arch:00000:UNDI:002001")) }, "dhcp/done nbp/done ipxe-dhcp/start", 1},
		{func() { s.onDHCP(ack("http://x/boot/52:54:00:00:00:01.ipxe")) }, "dhcp/done nbp/done ipxe-dhcp/done", 1},
		{func() {
			st.Record(hw, status.Event{Event: evt(status.PhaseScript, "done"), Source: status.SourceHTTP, StartsBoot: true})
		}, "dhcp/done nbp/done ipxe-dhcp/done script/done", 1},
		{func() { s.onDHCP(discover("")) }, "dhcp/done nbp/done ipxe-dhcp/done script/done agent-dhcp/start", 1},
		{func() { s.onDHCP(ack("")) }, "dhcp/done nbp/done ipxe-dhcp/done script/done agent-dhcp/done", 1},
		{func() { s.onDHCP(discover("PXEClient:Arch:00007:UNDI:003016")) }, "dhcp/start", 2}, // rebooted
	}
	for i, st2 := range steps {
		st2.do()
		m, _ := st.Get(hw)
		var got []string
		for _, p := range m.Phases {
			got = append(got, p.Phase+"/"+p.State)
		}
		if strings.Join(got, " ") != st2.want || m.Boot != st2.wantBoot {
			t.Fatalf("step %d: boot %d phases %v, want boot %d %s", i, m.Boot, got, st2.wantBoot, st2.want)
		}
	}
}

func TestARPLookup(t *testing.T) {
	p := filepath.Join(t.TempDir(), "arp")
	os.WriteFile(p, []byte(`IP address       HW type     Flags       HW address            Mask     Device
10.0.0.5         0x1         0x2         52:54:00:aa:bb:cc     *        eth1
10.0.0.6         0x1         0x0         00:00:00:00:00:00     *        eth1
`), 0o644)
	for ip, want := range map[string]string{"10.0.0.5": "52:54:00:aa:bb:cc", "10.0.0.6": "", "10.0.0.7": ""} {
		if got, ok := arpLookup(p, netip.MustParseAddr(ip)); ok != (want != "") || ok && got.String() != want {
			t.Errorf("%s: %v %v, want %q", ip, got, ok, want)
		}
	}
}

// TestHTTPBootEvents: a UEFI HTTP-boot firmware (vendor class HTTPClient) starts a boot, its
// download of iPXE from /ipxe/ is the nbp phase of the machine whose lease holds the address, and
// iPXE's own DISCOVER after it is ipxe-dhcp, not a new boot. A download from an address no lease
// holds records nothing.
func TestHTTPBootEvents(t *testing.T) {
	dir, c := startFiles(t)
	c.Cluster.Kubeconfig = ""
	if err := os.WriteFile(filepath.Join(dir, "ipxe", "ipxe.efi"), []byte("iPXE"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := New(Options{Config: c, Logger: nopLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ls, err := leases.Open(filepath.Join(t.TempDir(), "leases.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer ls.Close()
	s.leases = ls // as in DHCP full mode
	hw, _ := hwaddr.Parse("52:54:00:00:00:02")
	mac := hw
	ip := netip.MustParseAddr("10.0.0.101")
	if err := ls.Commit(leases.Lease{MAC: hw, IP: ip, Expiry: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	get := func(from string) func() {
		return func() {
			req := httptest.NewRequest("GET", "/ipxe/ipxe.efi", nil)
			req.RemoteAddr = from
			rec := httptest.NewRecorder()
			s.http.ServeHTTP(rec, req)
			if rec.Code != http.StatusOK || rec.Body.String() != "iPXE" {
				t.Fatalf("GET /ipxe/ipxe.efi from %s: %d %q", from, rec.Code, rec.Body)
			}
		}
	}
	steps := []struct {
		do       func()
		want     string // phases of the current boot
		wantBoot int
	}{
		{func() {
			s.onDHCP(dhcpd.Event{Kind: dhcpd.EventDiscover, MAC: hw, VendorClass: "HTTPClient:Arch:00016:UNDI:003001"})
		}, "dhcp/start", 1},
		{func() {
			s.onDHCP(dhcpd.Event{Kind: dhcpd.EventAck, MAC: hw, IP: ip, File: "http://10.0.0.1:8080/ipxe/ipxe.efi"})
		}, "dhcp/done", 1},
		{get("10.0.0.101:49152"), "dhcp/done nbp/done", 1},
		{get("10.0.0.102:49152"), "dhcp/done nbp/done", 1}, // no lease: not this machine's
		{func() {
			s.onDHCP(dhcpd.Event{Kind: dhcpd.EventDiscover, MAC: hw, VendorClass: "PXEClient:Arch:00007:UNDI:003016"})
		}, "dhcp/done nbp/done ipxe-dhcp/start", 1},
	}
	for i, st := range steps {
		st.do()
		m, _ := s.status.Get(mac)
		var got []string
		for _, p := range m.Phases {
			got = append(got, p.Phase+"/"+p.State)
		}
		if strings.Join(got, " ") != st.want || m.Boot != st.wantBoot {
			t.Fatalf("step %d: boot %d phases %v, want boot %d %s", i, m.Boot, got, st.wantBoot, st.want)
		}
	}
	if n := len(s.status.All()); n != 1 {
		t.Errorf("%d timelines, want only the leased machine's", n)
	}
}

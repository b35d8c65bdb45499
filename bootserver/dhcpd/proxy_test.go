package dhcpd

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pxejoin/pxejoin/lab/netlab"
	"github.com/pxejoin/pxejoin/lab/testenv"
)

// startDnsmasq runs dnsmasq (DHCP only: --port=0) in ns on ifname with the given extra arguments,
// a lease file of its own and no configuration from the host. It is killed at the end of the test.
func startDnsmasq(t testing.TB, ns *netlab.NS, ifname string, args ...string) {
	t.Helper()
	testenv.RequireTool(t, "dnsmasq")
	dir := t.TempDir()
	base := []string{"--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--port=0",
		"--interface=" + ifname, "--bind-interfaces", "--user=root", "--group=root", "--no-ping",
		"--dhcp-leasefile=" + filepath.Join(dir, "dnsmasq.leases"), "--pid-file=" + filepath.Join(dir, "dnsmasq.pid"),
		"--log-facility=" + filepath.Join(dir, "dnsmasq.log"), "--quiet-dhcp"}
	cmd := ns.Command("dnsmasq", append(base, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	// Ready when its DHCP socket is bound.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-done:
			log, _ := os.ReadFile(filepath.Join(dir, "dnsmasq.log"))
			t.Fatalf("dnsmasq exited: %v\n%s\n%s", err, out.String(), log)
		default:
		}
		if o, _ := ns.Exec("ss", "-Hulnp", "sport = :67"); bytes.Contains(o, []byte("dnsmasq")) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("dnsmasq did not bind port 67 within 10 s")
}

// lan is a bridge in a namespace of its own with member namespaces attached by veth.
type lan struct {
	br *netlab.NS
	n  int
}

func newLAN(t testing.TB) *lan {
	l := &lan{br: netlab.New(t, "dhl")}
	l.br.Bridge(t, "br0", "")
	return l
}

// attach joins ns to the bridge through interface ifname with cidr (may be empty).
func (l *lan) attach(t testing.TB, ns *netlab.NS, ifname, cidr string) {
	t.Helper()
	l.n++
	port := fmt.Sprintf("p%d", l.n)
	netlab.Veth(t, l.br, port, "", ns, ifname, cidr)
	l.br.MustExec(t, "ip", "link", "set", port, "master", "br0")
}

// TestProxyBesideDnsmasq: dnsmasq is the network's DHCP server, ours runs in proxy mode on the same
// link. A PXE client gets its address from dnsmasq and boot information (yiaddr 0) from us; a plain
// client gets nothing from us; a UEFI client asking on port 4011 gets an ACK there.
func TestProxyBesideDnsmasq(t *testing.T) {
	needNetns(t)
	net12 := newLAN(t)
	other, srv, cli := netlab.New(t, "dho"), netlab.New(t, "dhs"), netlab.New(t, "dhc")
	net12.attach(t, other, "o0", "10.78.12.1/24")
	net12.attach(t, srv, "s0", "10.78.12.2/24")
	net12.attach(t, cli, "c0", "")
	startDnsmasq(t, other, "o0", "--dhcp-range=10.78.12.100,10.78.12.150,255.255.255.0,1h")
	sip := netip.MustParseAddr("10.78.12.2")
	var events eventLog
	s, err := New(Config{Interface: "s0", Mode: ModeProxy, BootPolicy: DefaultPolicy{TFTPServer: sip, HTTPBase: "http://10.78.12.2:8080"}, OnEvent: events.add})
	if err != nil {
		t.Fatal(err)
	}
	startServer(t, srv, s)
	c := newUDPClient(t, cli, "c0")

	byServer := func(rs []*dhcpv4.DHCPv4) map[string]*dhcpv4.DHCPv4 {
		m := map[string]*dhcpv4.DHCPv4{}
		for _, r := range rs {
			m[r.ServerIdentifier().String()] = r
		}
		return m
	}
	tests := []struct {
		name     string
		mac      net.HardwareAddr
		mods     []dhcpv4.Modifier
		wantFile string // "" means: no answer from us
	}{
		{"BIOS PXE", macN(0x200), pxeMods(0), "undionly.kpxe"},
		{"UEFI PXE", macN(0x207), pxeMods(7), "ipxe.efi"},
		{"iPXE", macN(0x2a0), ipxeMods(), "http://10.78.12.2:8080/boot/52:54:00:01:02:a0.ipxe"},
		{"plain client", macN(0x2ff), []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("udhcp 1.35.0"))}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			disc, err := newMsg(dhcpv4.MessageTypeDiscover, tt.mac, tt.mods...)
			if err != nil {
				t.Fatal(err)
			}
			var got map[string]*dhcpv4.DHCPv4
			for try := 0; try < 3; try++ {
				rs, err := c.transact(disc, nil, 700*time.Millisecond, false)
				if err != nil {
					t.Fatal(err)
				}
				if got = byServer(rs); got["10.78.12.1"] != nil && (tt.wantFile == "" || got["10.78.12.2"] != nil) {
					break
				}
			}
			theirs, ours := got["10.78.12.1"], got["10.78.12.2"]
			if theirs == nil || !inPrefix(theirs.YourIPAddr, "10.78.12.0/24") {
				t.Fatalf("no address offer from dnsmasq: %v", got)
			}
			if tt.wantFile == "" {
				if ours != nil {
					t.Fatalf("proxy answered a plain client: %v", ours)
				}
				return
			}
			if ours == nil {
				t.Fatal("no ProxyDHCP offer")
			}
			if ours.MessageType() != dhcpv4.MessageTypeOffer || !ours.YourIPAddr.Equal(net.IPv4zero) || ours.BootFileName != tt.wantFile {
				t.Errorf("proxy offer %s yiaddr %v file %q, want yiaddr 0 file %q", ours.MessageType(), ours.YourIPAddr, ours.BootFileName, tt.wantFile)
			}
			if ours.ClassIdentifier() != "PXEClient" || !bytes.Equal(ours.Options.Get(dhcpv4.OptionClientMachineIdentifier), uuid) {
				t.Errorf("proxy offer option 60 %q, 97 %x", ours.ClassIdentifier(), ours.Options.Get(dhcpv4.OptionClientMachineIdentifier))
			}
			if err := events.waitFor(tt.mac, "offer file="+tt.wantFile); err != nil {
				t.Error(err)
			}
		})
	}
	if got := testutil.ToFloat64(s.Metrics().Dropped.WithLabelValues(dropNotForUs)); got < 1 {
		t.Errorf("not_for_us drops = %v, want ≥1 (the plain client)", got)
	}

	// UEFI firmware takes dnsmasq's address, then asks the proxy on port 4011.
	cli.MustExec(t, "ip", "addr", "add", "10.78.12.120/24", "dev", "c0")
	req, err := newMsg(dhcpv4.MessageTypeRequest, macN(0x207), append(pxeMods(7),
		dhcpv4.WithClientIP(net.ParseIP("10.78.12.120")), dhcpv4.WithBroadcast(false))...)
	if err != nil {
		t.Fatal(err)
	}
	ack, err := c.one(req, &net.UDPAddr{IP: sip.AsSlice(), Port: 4011}, time.Second, 3)
	if err != nil {
		t.Fatal(err)
	}
	if ack.MessageType() != dhcpv4.MessageTypeAck || ack.BootFileName != "ipxe.efi" || !ack.ServerIPAddr.Equal(sip.AsSlice()) {
		t.Errorf("port 4011: %s file %q siaddr %v", ack.MessageType(), ack.BootFileName, ack.ServerIPAddr)
	}
}

package dhcpd

import (
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
	"github.com/pxejoin/pxejoin/lab/eventually"
	"github.com/pxejoin/pxejoin/lab/testenv"
)

// fullServer is a full-mode server for subnet 10.78.<n>.0/24 at .1, pool .100-.199.
func fullServer(t testing.TB, n byte, mod func(*Config)) *Server {
	t.Helper()
	sip := netip.AddrFrom4([4]byte{10, 78, n, 1})
	cfg := Config{
		Interface: "s0",
		Mode:      ModeFull,
		Pools: []Pool{{
			Subnet: netip.PrefixFrom(sip, 24).Masked(),
			Start:  netip.AddrFrom4([4]byte{10, 78, n, 100}), End: netip.AddrFrom4([4]byte{10, 78, n, 199}),
			Router: sip, DNS: []netip.Addr{sip}, LeaseTime: time.Hour,
		}},
		Leases:     openStore(t),
		BootPolicy: DefaultPolicy{TFTPServer: sip, HTTPBase: "http://" + sip.String() + ":8080"},
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

// TestDORAWithNClient4 runs insomniacslk's nclient4 in the client namespace for BIOS, UEFI and iPXE
// clients and checks address, boot file, the stored lease and the boot events.
func TestDORAWithNClient4(t *testing.T) {
	needNetns(t)
	l := newLink(t, "10.78.10.1/24")
	var events eventLog
	s := fullServer(t, 10, func(c *Config) { c.OnEvent = events.add })
	startServer(t, l.srv, s)
	tests := []struct {
		name string
		mac  net.HardwareAddr
		mods []dhcpv4.Modifier
		file string
	}{
		{"BIOS arch 0", macN(0x100), pxeMods(0), "undionly.kpxe"},
		{"UEFI arch 7", macN(0x107), pxeMods(7), "ipxe.efi"},
		{"iPXE user class", macN(0x1a0), ipxeMods(), "http://10.78.10.1:8080/boot/52:54:00:01:01:a0.ipxe"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var lease *nclient4.Lease
			err := l.cli.Do(func() error {
				c, err := nclient4.New(l.cliIf, nclient4.WithHWAddr(tt.mac), nclient4.WithTimeout(2*time.Second), nclient4.WithRetry(3))
				if err != nil {
					return err
				}
				defer c.Close()
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				defer cancel()
				lease, err = c.Request(ctx, tt.mods...)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			ack := lease.ACK
			if !inPrefix(ack.YourIPAddr, "10.78.10.0/24") || ack.BootFileName != tt.file || ack.BootFileNameOption() != tt.file {
				t.Errorf("ACK yiaddr %v file %q/%q, want file %q", ack.YourIPAddr, ack.BootFileName, ack.BootFileNameOption(), tt.file)
			}
			if !ack.ServerIdentifier().Equal(net.ParseIP("10.78.10.1")) || ack.IPAddressLeaseTime(0) != time.Hour {
				t.Errorf("server id %v lease time %v", ack.ServerIdentifier(), ack.IPAddressLeaseTime(0))
			}
			stored, ok := s.cfg.Leases.Get(hwaddr.MAC(tt.mac))
			if !ok || stored.IP != addrOf(ack.YourIPAddr) {
				t.Errorf("store has %v %v, ACK gave %v", stored, ok, ack.YourIPAddr)
			}
			for _, kind := range []string{"discover", "offer", "ack " + ack.YourIPAddr.String() + " file=" + tt.file} {
				if err := events.waitFor(tt.mac, kind); err != nil {
					t.Error(err)
				}
			}
		})
	}
	// Junk on the wire is dropped and counted, and the server keeps answering.
	t.Run("junk", func(t *testing.T) {
		c := newUDPClient(t, l.cli, l.cliIf)
		junk := [][]byte{[]byte("hello"), make([]byte, 300), append(pkt(t, dhcpv4.MessageTypeDiscover, testMAC).ToBytes()[:240], 53, 9)}
		for _, j := range junk {
			if _, err := c.conn.WriteTo(j, &net.UDPAddr{IP: net.IPv4bcast, Port: serverPort}); err != nil {
				t.Fatal(err)
			}
		}
		dropped := func() float64 {
			return testutil.ToFloat64(s.Metrics().Dropped.WithLabelValues(dropShort)) +
				testutil.ToFloat64(s.Metrics().Dropped.WithLabelValues(dropNotRequest)) +
				testutil.ToFloat64(s.Metrics().Dropped.WithLabelValues(dropParse))
		}
		eventually.True(t, "the 3 junk datagrams are counted as dropped", func() bool { return dropped() == 3 })
		if _, err := c.dora(macN(0x1ff)); err != nil {
			t.Errorf("DORA after junk: %v", err)
		}
	})
	if got := testutil.ToFloat64(s.Metrics().Acked); got != float64(len(tests)+1) {
		t.Errorf("acked = %v, want %d", got, len(tests))
	}
}

// TestDORAWithDebianClients runs the distribution's DHCP clients in the client namespace.
func TestDORAWithDebianClients(t *testing.T) {
	needNetns(t)
	tests := []struct {
		name string
		bin  string
		run  func(t *testing.T, l *link, dir string) *exec.Cmd
	}{
		{"busybox udhcpc", "busybox", func(t *testing.T, l *link, dir string) *exec.Cmd {
			script := writeScript(t, dir, `case "$1" in bound|renew) ip addr add "$ip/$mask" dev "$interface";; esac`)
			return l.cli.Command("busybox", "udhcpc", "-i", l.cliIf, "-f", "-q", "-n", "-t", "5", "-T", "1", "-s", script)
		}},
		{"isc dhclient", "dhclient", func(t *testing.T, l *link, dir string) *exec.Cmd {
			script := writeScript(t, dir, `case "$reason" in BOUND|RENEW|REBOOT) ip addr add "$new_ip_address/$new_subnet_mask" dev "$interface";; esac`)
			conf := filepath.Join(dir, "dhclient.conf")
			if err := os.WriteFile(conf, []byte("timeout 20;\nretry 1;\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			// -1: one try; after binding it goes to the background, where the namespace's removal
			// ends it.
			return l.cli.Command("dhclient", "-4", "-1", "-v", "-cf", conf, "-lf", filepath.Join(dir, "dhclient.leases"),
				"-pf", filepath.Join(dir, "dhclient.pid"), "-sf", script, l.cliIf)
		}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			testenv.RequireTool(t, tt.bin)
			n := byte(11 + i)
			l := newLink(t, netip.AddrFrom4([4]byte{10, 78, n, 1}).String()+"/24")
			s := fullServer(t, n, nil)
			startServer(t, l.srv, s)
			dir := t.TempDir()
			cmd := tt.run(t, l, dir)
			logf, err := os.Create(filepath.Join(dir, "client.log"))
			if err != nil {
				t.Fatal(err)
			}
			defer logf.Close()
			cmd.Stdout, cmd.Stderr = logf, logf // a file, not a pipe: dhclient's daemon keeps its fds
			done := make(chan error, 1)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			go func() { done <- cmd.Wait() }()
			select {
			case err = <-done:
			case <-time.After(60 * time.Second):
				_ = cmd.Process.Kill()
				err = <-done
			}
			out, _ := os.ReadFile(logf.Name())
			if err != nil {
				t.Fatalf("%s: %v\n%s", tt.name, err, out)
			}
			mac := ifaceMAC(t, l.cli, l.cliIf)
			stored, ok := s.cfg.Leases.Get(hwaddr.MAC(mac))
			if !ok || !stored.Active(time.Now()) {
				t.Fatalf("no lease stored for %v; client said:\n%s", mac, out)
			}
			addrs := string(l.cli.MustExec(t, "ip", "-4", "-o", "addr", "show", "dev", l.cliIf))
			if !strings.Contains(addrs, " "+stored.IP.String()+"/24 ") {
				t.Errorf("client interface has %q, the store says %v", addrs, stored.IP)
			}
		})
	}
}

func writeScript(t *testing.T, dir, body string) string {
	t.Helper()
	p := filepath.Join(dir, "client-script")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

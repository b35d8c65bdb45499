package dhcpd

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/pxejoin/pxejoin/bootserver/leases"
)

// The benchmarks compare the server with dnsmasq (Debian's dnsmasq-base, started inside the test's
// namespace, never as a host service) in the same run, on the same veth link, with the same load
// generator: a UDP client bound to port 68 in the client namespace running many transactions at
// once with distinct MACs. Each run is bounded in count and in time.

const (
	benchRounds   = 3 // each figure is the median of this many rounds, each on a fresh server
	benchMACs     = 1000
	benchDeadline = 90 * time.Second
	benchSubnet   = "10.78.32.0/21"
	benchServer   = "10.78.32.1"
)

func benchMAC(i int) net.HardwareAddr {
	return net.HardwareAddr{0x52, 0x54, 0x01, 0x00, byte(i >> 8), byte(i)}
}

// load runs n transactions (f(i) for i in 0..n-1) on conc workers and returns successes per second.
func load(b *testing.B, who string, n, conc int, f func(i int) error) float64 {
	b.Helper()
	var next, ok, failed atomic.Int64
	var firstErr atomic.Value
	deadline := time.Now().Add(benchDeadline)
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	if failed.Load() > 0 {
		b.Logf("%s: %d of %d transactions failed, first: %v", who, failed.Load(), n, firstErr.Load())
	}
	if ok.Load() < int64(n)*9/10 {
		b.Fatalf("%s: only %d of %d transactions succeeded in %v", who, ok.Load(), n, el)
	}
	return float64(ok.Load()) / el.Seconds()
}

// benchLink is a fresh link with the server side at benchServer/21 and a load-generating client.
func benchLink(b *testing.B) (*link, *udpClient) {
	l := newLink(b, benchServer+"/21")
	return l, newUDPClient(b, l.cli, l.cliIf)
}

// doraRate measures DORA/s of dnsmasq or of ours: n DORAs, conc at once, each machine starting over
// up to restarts times when its DORA fails (as PXE firmware does after a NAK or a silence).
func doraRate(b *testing.B, n, conc, restarts int, dnsmasq bool) float64 {
	l, c := benchLink(b)
	if dnsmasq {
		// The reference is dnsmasq as an operator runs it: startDnsmasq gives it --quiet-dhcp, --no-ping
		// and its lease file on disk. Issue 10 asked why it gave ~1,000 DORA/s and ~15,000 proxy
		// offers/s at 16 clients where ~1,700 and ~34,000 were measured elsewhere on this machine.
		// What the benchmark's runs showed (on the 2 shared cores at load average 17-20):
		//   - Logging is not it: --log-dhcp is not set, and with --quiet-dhcp the log file gets 4 lines
		//     at start and one per NAK (5,004 lines per 5,000 offers without it).
		//   - The lease file: on every ACK dnsmasq seeks, truncates, rewrites the whole file and fsyncs it
		//     (strace: lseek, ftruncate, one 4 KiB write per ~70 leases, fsync). Its CPU per DORA doubles
		//     from 100 leases (0.6 ms) to 1,000 (1.2 ms), and the truncation makes each fsync a journal
		//     commit that waits behind whatever else the machine writes. A run with few MACs, or on an
		//     idle disk, gets more DORA/s; this one gives 1,000 machines, as a rack does, and both
		//     servers hold 1,000 leases at the end.
		//   - NAKs: dnsmasq picks an address by hashing the MAC and does not hold it while offered, so at
		//     16 clients 29 of 1,000 REQUESTs were NAKed (another client had the same offer). Those
		//     machines count as failed (the rate counts ACKs only); starting them over, as a client does
		//     after a NAK, did not get them a lease within 3 restarts either (the burst does that).
		//   - The client: per exchange it spends about as much CPU as dnsmasq (50-90 µs each under that
		//     load), and the two share the 2 cores. Requests encoded once and replies matched in place
		//     did not lower it (the cost is wake-ups and syscalls), so the client stayed. Offers/s at
		//     16 clients is the round trip of two processes on two cores: comparable within one run,
		//     not with a figure from an idle machine.
		startDnsmasq(b, l.srv, l.srvIf, "--dhcp-range=10.78.33.0,10.78.39.250,255.255.248.0,1h",
			"--dhcp-lease-max=10000", "--dhcp-authoritative")
	} else {
		st, err := leases.Open(filepath.Join(b.TempDir(), "leases.db"))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { st.Close() })
		s, err := New(Config{Interface: l.srvIf, Mode: ModeFull, Leases: st,
			Pools: []Pool{{Subnet: netip.MustParsePrefix(benchSubnet), Start: netip.MustParseAddr("10.78.33.0"),
				End: netip.MustParseAddr("10.78.39.250"), Router: netip.MustParseAddr(benchServer), LeaseTime: time.Hour}}})
		if err != nil {
			b.Fatal(err)
		}
		startServer(b, l.srv, s)
		defer func() {
			if got := len(st.All()); got != n {
				b.Errorf("store holds %d leases after %d DORAs", got, n)
			}
		}()
	}
	return load(b, name(dnsmasq), n, conc, func(i int) error {
		_, err := c.dora(benchMAC(i))
		for r := 0; err != nil && r < restarts; r++ {
			_, err = c.dora(benchMAC(i))
		}
		return err
	})
}

// BenchmarkDORA: full DORA per second with durable leases, 1000 distinct MACs, ours vs dnsmasq
// with its lease file (which it fsyncs after each change), at 1, 16 and 64 clients in lockstep,
// and as a burst: 1000 machines powered on at once, each starting over when its DORA fails (the
// figure is machines per second until the last ACK).
func BenchmarkDORA(b *testing.B) {
	needNetns(b)
	for _, conc := range []int{1, 16, 64, benchMACs} {
		label, restarts := fmt.Sprintf("conc=%d", conc), 0
		if conc == benchMACs {
			label, restarts = "burst", 3
		}
		b.Run(label, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				ours := median(benchRounds, func() float64 { return doraRate(b, benchMACs, conc, restarts, false) })
				theirs := median(benchRounds, func() float64 { return doraRate(b, benchMACs, conc, restarts, true) })
				b.ReportMetric(ours, "dora/s")
				b.ReportMetric(theirs, "dnsmasq-dora/s")
				b.ReportMetric(ours/theirs, "ours/dnsmasq")
				b.Logf("DORA %s: pxejoin %.0f/s, dnsmasq %.0f/s, ratio %.2f", label, ours, theirs, ours/theirs)
			}
		})
	}
}

func proxyRate(b *testing.B, conc, n int, dnsmasq bool) float64 {
	l, c := benchLink(b)
	if dnsmasq {
		startDnsmasq(b, l.srv, l.srvIf, "--dhcp-range=10.78.32.0,proxy", `--pxe-service=x86PC,"Network boot",undionly`)
	} else {
		s, err := New(Config{Interface: l.srvIf, Mode: ModeProxy,
			BootPolicy: DefaultPolicy{TFTPServer: netip.MustParseAddr(benchServer)}})
		if err != nil {
			b.Fatal(err)
		}
		startServer(b, l.srv, s)
	}
	return load(b, name(dnsmasq), n, conc, func(i int) error {
		disc, err := newMsg(dhcpv4.MessageTypeDiscover, benchMAC(i%benchMACs), pxeMods(0)...)
		if err != nil {
			return err
		}
		offer, err := c.one(disc, nil, time.Second, 3)
		if err != nil {
			return err
		}
		if offer.MessageType() != dhcpv4.MessageTypeOffer || !offer.YourIPAddr.Equal(net.IPv4zero) {
			return fmt.Errorf("proxy answered %s yiaddr %v", offer.MessageType(), offer.YourIPAddr)
		}
		return nil
	})
}

// BenchmarkProxyOffer: ProxyDHCP DISCOVER→OFFER per second for BIOS PXE clients, ours vs dnsmasq in
// proxy mode with a pxe-service.
func BenchmarkProxyOffer(b *testing.B) {
	needNetns(b)
	const n, conc = 5000, 16
	for i := 0; i < b.N; i++ {
		ours := median(benchRounds, func() float64 { return proxyRate(b, conc, n, false) })
		theirs := median(benchRounds, func() float64 { return proxyRate(b, conc, n, true) })
		b.ReportMetric(ours, "offers/s")
		b.ReportMetric(theirs, "dnsmasq-offers/s")
		b.ReportMetric(ours/theirs, "ours/dnsmasq")
		b.Logf("proxy DISCOVER→OFFER concurrency %d: pxejoin %.0f/s, dnsmasq %.0f/s, ratio %.2f", conc, ours, theirs, ours/theirs)
	}
}

func name(dnsmasq bool) string {
	if dnsmasq {
		return "dnsmasq"
	}
	return "pxejoin"
}

// median runs f k times and returns the median result.
func median(k int, f func() float64) float64 {
	r := make([]float64, k)
	for i := range r {
		r[i] = f()
	}
	slices.Sort(r)
	return r[k/2]
}

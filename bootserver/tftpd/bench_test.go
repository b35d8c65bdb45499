package tftpd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/pxejoin/pxejoin/lab/netlab"
	"github.com/pxejoin/pxejoin/lab/testenv"
)

// BenchmarkDownloadVsDnsmasq downloads a 10 MB file at blksize 1468 from this server and from
// dnsmasq's TFTP server (Debian's dnsmasq-base, run in the server namespace only), with the same
// client (testClient, in the client namespace, over a veth pair) asking windowsize 1 and 16.
// dnsmasq 2.90 does not implement RFC 7440: it leaves windowsize out of its OACK and the client
// falls back to lockstep, so "dnsmasq best" is the faster of its two runs. Each case is timed
// benchRuns times and its best time kept. Metrics: MB/s of each case and
// ours_ws16/dnsmasq_best, the ratio of throughputs (target ≥ 2).
func BenchmarkDownloadVsDnsmasq(b *testing.B) {
	dnsmasq := testenv.RequireTool(b, "dnsmasq")
	const (
		size      = 10 << 20
		blksize   = 1468
		benchRuns = 5
		ourPort   = "1069"
		serverIP  = "10.79.2.1"
	)
	dir := b.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	sum := randomFile(b, dir, "10M.bin", size, 42)
	srvNS, cliNS := netlab.New(b, "tftpBS"), netlab.New(b, "tftpBC")
	netlab.Veth(b, srvNS, "eth0", serverIP+"/24", cliNS, "eth0", "10.79.2.2/24")

	// Ours.
	var conn *net.UDPConn
	if err := srvNS.Do(func() (err error) {
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(serverIP), Port: 1069})
		return err
	}); err != nil {
		b.Fatal(err)
	}
	srv, err := New(Config{Dir: dir})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.ServeConn(ctx, conn) }()
	defer func() { cancel(); <-done }()

	// dnsmasq: TFTP only (no DNS, no DHCP), in the foreground, killed with the namespace.
	cmd := srvNS.Command(dnsmasq, "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
		"--enable-tftp", "--tftp-root="+dir, "--interface=eth0", "--bind-interfaces", "--user=root",
		"--pid-file=", "--log-facility=-")
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()

	get := func(port string, window int) (time.Duration, error) {
		h := sha256.New()
		c := testClient{server: net.JoinHostPort(serverIP, port), blksize: blksize, window: window, timeout: time.Second, sink: h}
		t0 := time.Now()
		err := cliNS.Do(func() (err error) { _, err = c.get("10M.bin"); return err })
		took := time.Since(t0)
		if err == nil && !bytes.Equal(h.Sum(nil), sum[:]) {
			err = fmt.Errorf("sha256 mismatch from port %s", port)
		}
		return took, err
	}
	// Wait for dnsmasq to answer.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := get("69", 16); err == nil {
			break
		} else if time.Now().After(deadline) {
			b.Fatalf("dnsmasq does not serve: %v", err)
		}
	}

	cases := []struct {
		name, port string
		window     int
	}{{"ours_pin", ourPort, 0}, {"ours_ws1", ourPort, 1}, {"ours_ws16", ourPort, 16}, {"dnsmasq_ws1", "69", 1}, {"dnsmasq_ws16", "69", 16}}
	b.ResetTimer()
	for range b.N {
		best := map[string]time.Duration{}
		for range benchRuns {
			for _, c := range cases { // interleaved, so that load from elsewhere hits all alike
				took, err := get(c.port, c.window)
				if err != nil {
					b.Fatalf("%s: %v", c.name, err)
				}
				if d, ok := best[c.name]; !ok || took < d {
					best[c.name] = took
				}
			}
		}
		mbps := func(name string) float64 { return float64(size) / 1e6 / best[name].Seconds() }
		for _, c := range cases {
			b.ReportMetric(mbps(c.name), c.name+"_MB/s")
		}
		dnsBest := max(mbps("dnsmasq_ws1"), mbps("dnsmasq_ws16"))
		ratio := mbps("ours_ws16") / dnsBest
		b.ReportMetric(ratio, "ours_ws16/dnsmasq_best")
		b.ReportMetric(mbps("ours_ws1")/mbps("dnsmasq_ws1"), "ours_ws1/dnsmasq_ws1")
		b.Logf("10 MB, blksize %d, best of %d: ours via pin/tftp (no windowsize asked) %.1f MB/s, ours ws1 %.1f MB/s, "+
			"ours ws16 %.1f MB/s, dnsmasq ws1 %.1f MB/s, dnsmasq ws16 (falls back to lockstep) %.1f MB/s; "+
			"ours ws16 / dnsmasq best = %.2f (target ≥ 2)", blksize, benchRuns, mbps("ours_pin"), mbps("ours_ws1"),
			mbps("ours_ws16"), mbps("dnsmasq_ws1"), mbps("dnsmasq_ws16"), ratio)
	}
}

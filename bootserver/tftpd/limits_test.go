package tftpd

import (
	"crypto/sha256"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pxejoin/pxejoin/lab/eventually"
)

// TestTransferLimitIsExact: a burst of requests from distinct ports, none of them ACKing, gets
// exactly MaxTransfers transfers; the rest are dropped and counted as busy. (The check used to
// come before the transfer counted itself, so a burst went past the limit.) Both senders.
func TestTransferLimitIsExact(t *testing.T) {
	dir := t.TempDir()
	randomFile(t, dir, "f", 100000, 11)
	for _, tc := range []struct {
		name string
		opts []option
	}{{"pin", nil}, {"window", []option{{"windowsize", "4"}}}} {
		t.Run(tc.name, func(t *testing.T) {
			const max, n = 3, 50
			l := newLab(t, Config{Dir: dir, MaxTransfers: max, MaxTransfersPerClient: n, Timeout: 10 * time.Second})
			rrq := appendRequest(nil, request{op: opRRQ, filename: "f", mode: "octet", opts: tc.opts})
			var answered atomic.Int32
			end := make(chan struct{})
			var wg sync.WaitGroup
			t.Cleanup(wg.Wait) // runs after the sockets are closed, which ends the readers that got no answer
			stop := sync.OnceFunc(func() { close(end) })
			t.Cleanup(stop)
			err := l.client(func() error {
				to, err := net.ResolveUDPAddr("udp4", l.addr)
				if err != nil {
					return err
				}
				for range n {
					c, err := net.ListenUDP("udp4", nil)
					if err != nil {
						return err
					}
					t.Cleanup(func() { c.Close() })
					if _, err := c.WriteToUDP(rrq, to); err != nil {
						return err
					}
					wg.Add(1)
					go func() { // hold the transfer until the test is done, then end it
						defer wg.Done()
						buf := make([]byte, 2048)
						if _, from, err := c.ReadFromUDP(buf); err == nil {
							answered.Add(1)
							<-end
							_, _ = c.WriteToUDP(appendError(nil, codeUndefined, "test done"), from)
						}
					}()
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			eventually.True(t, "every request is taken in", func() bool {
				return metric(t, l.srv.m.requests.WithLabelValues("read")) == n
			})
			if !eventually.Within(eventually.Patience, func() bool { return l.errorsOf(kindBusy) == n-max }) {
				t.Fatalf("%v of %d requests dropped as busy, %v transfers in flight; MaxTransfers is %d",
					l.errorsOf(kindBusy), n, metric(t, l.srv.m.inFlight), max)
			}
			eventually.True(t, "MaxTransfers transfers answer", func() bool { return answered.Load() == max })
			if g := metric(t, l.srv.m.inFlight); g != max {
				t.Errorf("in flight = %v, want %d", g, max)
			}
			stop()
			eventually.True(t, "the transfers end", func() bool { return metric(t, l.srv.m.inFlight) == 0 })
		})
	}
}

// twoClients returns two client addresses: on the lab's link (the client namespace gets a
// second address), or on loopback with -short.
func (l *lab) twoClients(t *testing.T) (string, string) {
	if l.cli == nil {
		return "127.0.0.2", "127.0.0.3"
	}
	l.cli.MustExec(t, "ip", "addr", "add", "10.79.1.3/24", "dev", "eth0")
	return labClientIP, "10.79.1.3"
}

// TestFloodFromOneAddress: one address floods the server with read requests that it never
// ACKs; it gets MaxTransfersPerClient transfers, the rest are dropped and counted, and a client at
// another address is served at once.
func TestFloodFromOneAddress(t *testing.T) {
	dir := t.TempDir()
	sum := randomFile(t, dir, "ipxe.efi", 200000, 12)
	// The flood's transfers would hold their slots for minutes.
	l := newLab(t, Config{Dir: dir, Timeout: 30 * time.Second})
	flooder, legit := l.twoClients(t)
	const n = 2000
	err := l.client(func() error {
		to, err := net.ResolveUDPAddr("udp4", l.addr)
		if err != nil {
			return err
		}
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(flooder)})
		if err != nil {
			return err
		}
		defer c.Close()
		// windowsize: the RFC 7440 sender, whose transfers end at once when the lab stops.
		rrq := appendRequest(nil, request{op: opRRQ, filename: "ipxe.efi", mode: "octet", opts: []option{{"windowsize", "4"}}})
		for i := range n {
			if _, err := c.WriteToUDP(rrq, to); err != nil {
				return err
			}
			if (i+1)%100 == 0 { // in batches the socket buffers hold
				eventually.True(t, "the server takes in the flood", func() bool {
					return metric(t, l.srv.m.requests.WithLabelValues("read")) >= float64(i+1)
				})
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := float64(n - DefaultMaxTransfersPerClient)
	eventually.True(t, "the flood past MaxTransfersPerClient is dropped as client_busy", func() bool {
		return l.errorsOf(kindClientBusy) == want
	})
	t0 := time.Now()
	res, err := l.get(testClient{local: legit, blksize: 1468}, "ipxe.efi")
	if err != nil {
		t.Fatalf("the client at another address during the flood: %v", err)
	}
	t.Logf("the client at another address read %d bytes in %v during the flood", len(res.data), time.Since(t0).Round(time.Millisecond))
	if sha256.Sum256(res.data) != sum {
		t.Fatal("sha256 mismatch")
	}
	if b := l.errorsOf(kindBusy); b != 0 {
		t.Errorf("busy = %v: the flood reached MaxTransfers", b)
	}
}

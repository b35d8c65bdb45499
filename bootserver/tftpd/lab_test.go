package tftpd

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/net/ipv4"

	"github.com/pxejoin/pxejoin/lab/eventually"
	"github.com/pxejoin/pxejoin/lab/netlab"
)

// lab is a running Server and a place to run clients. Without -short the server and the client
// are in two network namespaces of the test's own, joined by a veth pair (10.79.1.1 and
// 10.79.1.2, MTU 1500); with -short both use loopback, so the protocol tests stay quick.
type lab struct {
	t      *testing.T
	addr   string // the server as clients reach it
	srv    *Server
	cli    *netlab.NS // nil on loopback
	srvNS  *netlab.NS
	events *eventLog
	mtu    int // of the link the clients use
	// stop cancels ServeConn's context and waits for it to return (at most 10 s); cleanup
	// calls it too.
	stop func() error
}

const (
	labServerIP = "10.79.1.1"
	labClientIP = "10.79.1.2"
)

// newLab starts a Server with cfg (Registerer, OnEvent and Logger are set by the lab).
func newLab(t *testing.T, cfg Config) *lab {
	t.Helper()
	l := &lab{t: t, events: &eventLog{}}
	cfg.Registerer = prometheus.NewRegistry()
	cfg.OnEvent = l.events.add
	cfg.Logger = slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var conn *net.UDPConn
	var err error
	if testing.Short() {
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		l.addr, l.mtu = conn.LocalAddr().String(), 65536
	} else {
		l.srvNS, l.cli = netlab.New(t, "tftpS"), netlab.New(t, "tftpC")
		netlab.Veth(t, l.srvNS, "eth0", labServerIP+"/24", l.cli, "eth0", labClientIP+"/24")
		if err := l.srvNS.Do(func() (err error) {
			conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(labServerIP), Port: 69})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		l.addr, l.mtu = labServerIP+":69", 1500
	}
	// As a socket-activation caller would: datagrams carry their destination and interface from
	// the start, even those that come before ServeConn runs (see ServeConn).
	if err := ipv4.NewPacketConn(conn).SetControlMessage(ipv4.FlagDst|ipv4.FlagInterface, true); err != nil {
		t.Fatal(err)
	}
	l.srv, err = New(cfg)
	if err != nil {
		conn.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.srv.ServeConn(ctx, conn) }()
	l.stop = sync.OnceValue(func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			return fmt.Errorf("ServeConn did not return 10 s after cancel")
		}
	})
	t.Cleanup(func() {
		if err := l.stop(); err != nil {
			t.Errorf("ServeConn: %v", err)
		}
	})
	return l
}

// client runs f where clients run: in the client namespace, or here on loopback.
func (l *lab) client(f func() error) error {
	if l.cli == nil {
		return f()
	}
	return l.cli.Do(f)
}

// command prepares a program to run where clients run.
func (l *lab) command(name string, args ...string) *exec.Cmd {
	if l.cli == nil {
		return exec.Command(name, args...)
	}
	return l.cli.Command(name, args...)
}

// get downloads name with c (its server address set here) where clients run.
func (l *lab) get(c testClient, name string) (res testResult, err error) {
	c.server = l.addr
	err = l.client(func() error {
		res, err = c.get(name)
		return err
	})
	return res, err
}

// host and port of the server for external clients.
func (l *lab) hostPort() (string, string) {
	h, p, _ := net.SplitHostPort(l.addr)
	return h, p
}

// metric returns the value of a counter or gauge.
func metric(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		t.Fatal(err)
	}
	switch {
	case d.Counter != nil:
		return d.Counter.GetValue()
	case d.Gauge != nil:
		return d.Gauge.GetValue()
	}
	t.Fatalf("not a counter or gauge")
	return 0
}

// serverErrors sums pxejoin_tftp_errors_total over all kinds.
func (l *lab) serverErrors() float64 {
	var sum float64
	for _, k := range errorKinds {
		sum += metric(l.t, l.srv.m.errors.WithLabelValues(k))
	}
	return sum
}

func (l *lab) errorsOf(kind string) float64 {
	return metric(l.t, l.srv.m.errors.WithLabelValues(kind))
}

// eventLog records OnEvent calls as "kind file".
type eventLog struct {
	mu  sync.Mutex
	evs []string
}

func (e *eventLog) add(ev Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.evs = append(e.evs, ev.Kind.String()+" "+ev.File)
}

func (e *eventLog) get() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.evs...)
}

// waitEvents waits until n events were recorded (the server records "done" just after the client
// sent its last ACK) and returns them.
func (e *eventLog) waitEvents(t *testing.T, n int) []string {
	t.Helper()
	eventually.Within(eventually.Patience, func() bool { return len(e.get()) >= n })
	return e.get()
}

// send sends one datagram to the server port from a new socket and waits for no answer.
func (l *lab) send(p []byte) {
	l.t.Helper()
	if _, err := l.rawRequest(p, 0); err != nil {
		l.t.Fatal(err)
	}
}

// randomFile writes size pseudo-random bytes to dir/name and returns their SHA-256.
func randomFile(t testing.TB, dir, name string, size int, seed uint64) [32]byte {
	t.Helper()
	b := make([]byte, size)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	_, _ = r.Read(b)
	if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// tWriter sends log lines to t.Log.
type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func short(b []byte) string {
	if len(b) > 64 {
		return fmt.Sprintf("%x…", b[:64])
	}
	return fmt.Sprintf("%x", b)
}

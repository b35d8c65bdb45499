package tftpd

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/pxejoin/pxejoin/lab/eventually"
)

// stalledClient asks for name with windowsize and never ACKs the OACK: a transfer stays under
// way on the server until its retries run out.
type stalledClient struct {
	conn *net.UDPConn
	tid  *net.UDPAddr // the transfer's socket, from the OACK
}

func (l *lab) stall(t *testing.T, name string) *stalledClient {
	t.Helper()
	sc := &stalledClient{}
	err := l.client(func() error {
		to, err := net.ResolveUDPAddr("udp4", l.addr)
		if err != nil {
			return err
		}
		if sc.conn, err = net.ListenUDP("udp4", nil); err != nil {
			return err
		}
		rrq := appendRequest(nil, request{op: opRRQ, filename: name, mode: "octet", opts: []option{{"windowsize", "4"}}})
		if _, err := sc.conn.WriteToUDP(rrq, to); err != nil {
			return err
		}
		p, from, err := sc.read(2 * time.Second)
		if err != nil {
			return err
		}
		if binary.BigEndian.Uint16(p) != opOACK {
			t.Fatalf("want OACK, got %s", short(p))
		}
		sc.tid = from
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sc.conn.Close() })
	return sc
}

func (sc *stalledClient) read(wait time.Duration) ([]byte, *net.UDPAddr, error) {
	_ = sc.conn.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 2048)
	n, from, err := sc.conn.ReadFromUDP(buf)
	return buf[:n], from, err
}

// TestTransferControl: the in-flight gauge, MaxTransfers, a packet from a foreign transfer ID,
// and shutdown in the middle of a transfer (the client is told, ServeConn returns at once).
func TestTransferControl(t *testing.T) {
	dir := t.TempDir()
	randomFile(t, dir, "f", 100000, 10)
	// Retries that would take minutes: a shutdown that waited for them would fail l.stop.
	l := newLab(t, Config{Dir: dir, MaxTransfers: 1, Timeout: time.Minute})
	sc := l.stall(t, "f")
	if g := metric(t, l.srv.m.inFlight); g != 1 {
		t.Errorf("in flight = %v, want 1", g)
	}

	// MaxTransfers: a second request is dropped (not answered) and counted.
	l.send(appendRequest(nil, request{op: opRRQ, filename: "f", mode: "octet"}))
	eventually.True(t, "a request past MaxTransfers is counted as busy", func() bool { return l.errorsOf(kindBusy) == 1 })

	// A packet to the transfer's port from another port: ERROR 5 to the intruder only.
	err := l.client(func() error {
		c, err := net.ListenUDP("udp4", nil)
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.WriteToUDP([]byte{0, 4, 0, 0}, sc.tid); err != nil {
			return err
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 100)
		n, _, err := c.ReadFromUDP(buf)
		if err != nil {
			return err
		}
		if want := appendError(nil, codeUnknownTID, "unknown transfer ID"); !bytes.Equal(buf[:n], want) {
			t.Errorf("intruder got %s", short(buf[:n]))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if f := l.errorsOf(kindForeignTID); f != 1 {
		t.Errorf("foreign_tid = %v", f)
	}

	// Shutdown: ServeConn returns without waiting for the transfer's retries (a minute each; stop
	// gives up after 10 s), and the client gets an ERROR instead of silence.
	if err := l.stop(); err != nil {
		t.Fatal(err)
	}
	for {
		p, _, err := sc.read(10 * time.Second)
		if err != nil {
			t.Fatalf("no ERROR after shutdown: %v", err)
		}
		if binary.BigEndian.Uint16(p) == opERROR {
			break // (an OACK sent again may come first)
		}
	}
	if g := metric(t, l.srv.m.inFlight); g != 0 {
		t.Errorf("in flight = %v after shutdown", g)
	}
	if n := metric(t, l.srv.m.transfers.WithLabelValues("window", "shutdown")); n != 1 {
		t.Errorf("window shutdown = %v", n)
	}
}

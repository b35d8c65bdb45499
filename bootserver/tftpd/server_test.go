package tftpd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/pin/tftp/v3"

	"github.com/pxejoin/pxejoin/lab/eventually"
	"github.com/pxejoin/pxejoin/lab/testenv"
)

// TestDownloadPinClient: pin/tftp's client, blksize 1468 and tsize, served by pin/tftp behind the
// request loop.
func TestDownloadPinClient(t *testing.T) {
	dir := t.TempDir()
	const size = 3<<20 + 1234
	sum := randomFile(t, dir, "boot/ipxe.efi", size, 1)
	l := newLab(t, Config{Dir: dir})
	var buf bytes.Buffer
	var tsize int64
	err := l.client(func() error {
		c, err := tftp.NewClient(l.addr)
		if err != nil {
			return err
		}
		c.SetBlockSize(1468)
		c.RequestTSize(true)
		c.SetTimeout(2 * time.Second)
		wt, err := c.Receive("boot/ipxe.efi", "octet")
		if err != nil {
			return err
		}
		tsize, _ = wt.(tftp.IncomingTransfer).Size()
		_, err = wt.WriteTo(&buf)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(buf.Bytes()) != sum {
		t.Fatalf("sha256 mismatch: got %d bytes", buf.Len())
	}
	if tsize != size {
		t.Errorf("tsize %d, want %d", tsize, size)
	}
	if evs := l.events.waitEvents(t, 2); !slices.Equal(evs, []string{"start boot/ipxe.efi", "done boot/ipxe.efi"}) {
		t.Errorf("events %q", evs)
	}
	if got := metric(t, l.srv.m.transfers.WithLabelValues("pin", "done")); got != 1 {
		t.Errorf("pin transfers done = %v", got)
	}
	if got := metric(t, l.srv.m.bytesSent); got != size {
		t.Errorf("bytes sent = %v", got)
	}
	if e := l.serverErrors(); e != 0 {
		t.Errorf("server errors = %v", e)
	}
}

// TestDownloadWindowed: the RFC 7440 sender with several window sizes, checked by content, OACK
// and the number of DATA packets (no loss: each block exactly once).
func TestDownloadWindowed(t *testing.T) {
	dir := t.TempDir()
	const size = 2<<20 + 77
	sum := randomFile(t, dir, "f", size, 2)
	l := newLab(t, Config{Dir: dir})
	for _, tc := range []struct {
		window, wantWindow int
	}{{1, 1}, {4, 4}, {16, 16}, {64, 64}, {500, 64}} {
		t.Run(strconv.Itoa(tc.window), func(t *testing.T) {
			res, err := l.get(testClient{blksize: 1468, window: tc.window, tsize: true}, "f")
			if err != nil {
				t.Fatal(err)
			}
			if sha256.Sum256(res.data) != sum {
				t.Fatalf("sha256 mismatch: %d bytes", len(res.data))
			}
			want := map[string]string{"blksize": "1468", "tsize": strconv.Itoa(size), "windowsize": strconv.Itoa(tc.wantWindow)}
			if !mapsEqual(res.oack, want) {
				t.Errorf("OACK %v, want %v", res.oack, want)
			}
			if blocks := size/1468 + 1; res.dataPackets != blocks {
				t.Errorf("%d DATA packets for %d blocks", res.dataPackets, blocks)
			}
		})
	}
	if e := l.serverErrors(); e != 0 {
		t.Errorf("server errors = %v", e)
	}
	if r := metric(t, l.srv.m.retransmits); r != 0 {
		t.Errorf("retransmits = %v without loss", r)
	}
}

// TestWindowLoss: lost DATA is sent again from the last acknowledged block, whether the client
// reports the gap at once or the server's timer finds it; duplicate ACKs send nothing twice.
func TestWindowLoss(t *testing.T) {
	dir := t.TempDir()
	const size = 1<<20 + 5
	sum := randomFile(t, dir, "f", size, 3)
	blocks := size/1468 + 1
	l := newLab(t, Config{Dir: dir, Timeout: 150 * time.Millisecond})
	dropOnce := func(every uint64) func(uint64) bool {
		seen := map[uint64]bool{}
		return func(k uint64) bool {
			if k%every != 0 || seen[k] {
				return false
			}
			seen[k] = true
			return true
		}
	}
	for _, tc := range []struct {
		name            string
		c               testClient
		wantRetransmits bool
		exactPackets    bool
	}{
		{"gap-ack", testClient{window: 16, drop: dropOnce(37)}, true, false},
		// The client stays silent on a gap and waits longer than the server: the server's
		// timer must send the window again from the last ACK.
		{"server-timeout", testClient{window: 16, drop: dropOnce(101), noGapAck: true, timeout: 3 * time.Second}, true, false},
		{"lockstep-loss", testClient{window: 1, drop: dropOnce(53), timeout: 3 * time.Second}, true, false},
		{"duplicate-acks", testClient{window: 8, dupAcks: true}, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := metric(t, l.srv.m.retransmits)
			tc.c.blksize = 1468
			res, err := l.get(tc.c, "f")
			if err != nil {
				t.Fatal(err)
			}
			if sha256.Sum256(res.data) != sum {
				t.Fatalf("sha256 mismatch: %d bytes", len(res.data))
			}
			re := metric(t, l.srv.m.retransmits) - before
			if tc.wantRetransmits && re == 0 {
				t.Errorf("no retransmission counted")
			}
			if tc.exactPackets && (res.dataPackets != blocks || re != 0) {
				t.Errorf("%d DATA packets (%v retransmitted) for %d blocks", res.dataPackets, re, blocks)
			}
			t.Logf("%d DATA packets for %d blocks, %v retransmitted, %d ACKs", res.dataPackets, blocks, re, res.acks)
		})
	}
}

// TestBlockRollover: more than 65535 blocks (blksize 8): block numbers wrap to 0.
func TestBlockRollover(t *testing.T) {
	dir := t.TempDir()
	const size = 8*70000 + 3
	sum := randomFile(t, dir, "big", size, 4)
	l := newLab(t, Config{Dir: dir})
	res, err := l.get(testClient{blksize: 8, window: 64}, "big")
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(res.data) != sum {
		t.Fatalf("sha256 mismatch: %d bytes", len(res.data))
	}
	if res.dataPackets != size/8+1 {
		t.Errorf("%d DATA packets", res.dataPackets)
	}
}

// TestAtftpWindowsize: a real client that speaks RFC 7440 (atftp 0.8).
func TestAtftpWindowsize(t *testing.T) {
	testenv.RequireTool(t, "atftp")
	dir := t.TempDir()
	sum := randomFile(t, dir, "nbp.efi", 3<<20+99, 5)
	l := newLab(t, Config{Dir: dir})
	out := filepath.Join(t.TempDir(), "out")
	host, port := l.hostPort()
	cmd := l.command("atftp", "--option", "blksize 1468", "--option", "windowsize 16", "--option", "tsize enable",
		"--tftp-timeout", "2", "-g", "-r", "nbp.efi", "-l", out, host, port)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("atftp: %v: %s", err, b)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != sum {
		t.Fatalf("sha256 mismatch: %d bytes", len(got))
	}
	if n := metric(t, l.srv.m.transfers.WithLabelValues("window", "done")); n != 1 {
		t.Errorf("window transfers done = %v: atftp's windowsize was not served by the RFC 7440 sender", n)
	}
}

// TestOVMFSequence: OVMF's tsize probe (aborted with ERROR 8 after the OACK), then the real
// request. The abort is no server error and produces no event; both senders are checked.
func TestOVMFSequence(t *testing.T) {
	dir := t.TempDir()
	const size = 1<<20 + 3
	sum := randomFile(t, dir, "ipxe.efi", size, 6)
	for _, tc := range []struct {
		name   string
		window int
		sender string
	}{{"windowsize4", 4, "window"}, {"no-windowsize", 0, "pin"}} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLab(t, Config{Dir: dir})
			probe, err := l.get(testClient{tsize: true, blksize: 1468, window: tc.window, abortOACK: codeOptions}, "ipxe.efi")
			if err != nil {
				t.Fatal(err)
			}
			if probe.oack["tsize"] != strconv.Itoa(size) || probe.oack["blksize"] != "1468" {
				t.Errorf("probe OACK %v", probe.oack)
			}
			res, err := l.get(testClient{blksize: 1468, window: tc.window}, "ipxe.efi")
			if err != nil {
				t.Fatal(err)
			}
			if sha256.Sum256(res.data) != sum {
				t.Fatal("sha256 mismatch")
			}
			l.events.waitEvents(t, 2)
			eventually.True(t, "the probe's end is recorded", func() bool {
				return metric(t, l.srv.m.transfers.WithLabelValues(tc.sender, "aborted")) == 1
			})
			if evs := l.events.get(); !slices.Equal(evs, []string{"start ipxe.efi", "done ipxe.efi"}) {
				t.Errorf("events %q", evs)
			}
			if a := metric(t, l.srv.m.aborts); a != 1 {
				t.Errorf("client aborts = %v, want 1", a)
			}
			if e := l.serverErrors(); e != 0 {
				t.Errorf("server errors = %v, want 0", e)
			}
			if n := metric(t, l.srv.m.transfers.WithLabelValues(tc.sender, "aborted")); n != 1 {
				t.Errorf("%s aborted = %v", tc.sender, n)
			}
		})
	}
}

// rawRequest sends one datagram to the server port and returns the answer (nil if none came
// within wait).
func (l *lab) rawRequest(p []byte, wait time.Duration) (answer []byte, err error) {
	err = l.client(func() error {
		to, err := net.ResolveUDPAddr("udp4", l.addr)
		if err != nil {
			return err
		}
		c, err := net.ListenUDP("udp4", nil)
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.WriteToUDP(p, to); err != nil {
			return err
		}
		_ = c.SetReadDeadline(time.Now().Add(wait))
		buf := make([]byte, 2048)
		n, from, err := c.ReadFromUDP(buf) // from port 69 (errors) or a transfer's port (DATA)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil
		}
		answer = buf[:n]
		if err == nil && len(answer) >= 2 && answer[1] == byte(opDATA) {
			_, _ = c.WriteToUDP(appendError(nil, codeUndefined, "test done"), from) // end the transfer
		}
		return err
	})
	return answer, err
}

// TestRefusals: what is refused, with which code, counted under which kind.
func TestRefusals(t *testing.T) {
	dir := t.TempDir()
	randomFile(t, dir, "ok", 100, 7)
	randomFile(t, dir, "sub/inner", 100, 8)
	outside := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(outside, []byte("secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	for link, target := range map[string]string{"out": outside, "sub/up": "../../" + filepath.Base(filepath.Dir(outside)) + "/secret",
		"in": "sub/inner", "etc": "/etc"} {
		if err := os.Symlink(target, filepath.Join(dir, link)); err != nil {
			t.Fatal(err)
		}
	}
	l := newLab(t, Config{Dir: dir})
	rrq := func(name, mode string) []byte {
		return appendRequest(nil, request{op: opRRQ, filename: name, mode: mode})
	}
	for _, tc := range []struct {
		name string
		pkt  []byte
		code uint16 // 0xffff: served (DATA 1)
		kind string
	}{
		{"served", rrq("ok", "octet"), 0xffff, ""},
		{"symlink-inside", rrq("in", "octet"), 0xffff, ""},
		{"netascii", rrq("ok", "NetASCII"), 0xffff, ""},
		{"dotdot", rrq("../x", "octet"), codeAccess, kindAccess},
		{"dotdot-deep", rrq("sub/../../etc/passwd", "octet"), codeAccess, kindAccess},
		{"absolute", rrq("/etc/passwd", "octet"), codeAccess, kindAccess},
		{"backslash", rrq(`..\..\etc\passwd`, "octet"), codeAccess, kindAccess},
		{"symlink-out", rrq("out", "octet"), codeAccess, kindAccess},
		{"symlink-up", rrq("sub/up", "octet"), codeAccess, kindAccess},
		{"symlink-dir-out", rrq("etc/passwd", "octet"), codeAccess, kindAccess},
		{"directory", rrq("sub", "octet"), codeAccess, kindAccess},
		{"missing", rrq("nope", "octet"), codeNotFound, kindNotFound},
		{"missing-in-dir", rrq("sub/nope", "octet"), codeNotFound, kindNotFound},
		{"mode-mail", rrq("ok", "mail"), codeIllegalOp, kindMode},
		{"write", appendRequest(nil, request{op: opWRQ, filename: "new", mode: "octet"}), codeAccess, kindWrite},
		{"write-existing", appendRequest(nil, request{op: opWRQ, filename: "ok", mode: "octet"}), codeAccess, kindWrite},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before float64
			if tc.kind != "" {
				before = l.errorsOf(tc.kind)
			}
			ans, err := l.rawRequest(tc.pkt, 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if tc.code == 0xffff {
				if len(ans) < 4 || ans[1] != byte(opDATA) || ans[3] != 1 {
					t.Fatalf("want DATA 1, got %s", short(ans))
				}
				return
			}
			want := appendError(nil, tc.code, "")
			if len(ans) < 5 || !bytes.Equal(ans[:4], want[:4]) {
				t.Fatalf("want ERROR %d, got %s", tc.code, short(ans))
			}
			if d := l.errorsOf(tc.kind) - before; d != 1 {
				t.Errorf("errors{kind=%s} grew by %v", tc.kind, d)
			}
		})
	}
}

// TestMalformedDropped: hostile datagrams get no answer, are counted, and the server still serves.
func TestMalformedDropped(t *testing.T) {
	dir := t.TempDir()
	randomFile(t, dir, "ok", 600, 9)
	l := newLab(t, Config{Dir: dir})
	for _, tc := range []struct {
		name string
		pkt  []byte
		kind string
	}{
		{"empty-ish", []byte{0}, kindMalformed},
		{"rrq-no-nul", []byte("\x00\x01file\x00octet"), kindMalformed},
		{"rrq-no-mode", []byte("\x00\x01file\x00"), kindMalformed},
		{"rrq-empty-name", []byte("\x00\x01\x00octet\x00"), kindMalformed},
		{"too-long", append([]byte("\x00\x01"), bytes.Repeat([]byte("a\x00"), 800)...), kindMalformed},
		{"ack", []byte{0, 4, 0, 1}, kindOpcode},
		{"data", []byte{0, 3, 0, 1, 'x'}, kindOpcode},
		{"error", []byte{0, 5, 0, 0, 0}, kindOpcode},
		{"opcode-99", []byte{0, 99, 'a', 0, 'b', 0}, kindOpcode},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Counted as dropped means not answered: the drop path sends nothing.
			before := l.errorsOf(tc.kind)
			l.send(tc.pkt)
			eventually.True(t, "the datagram is counted as "+tc.kind, func() bool { return l.errorsOf(tc.kind)-before == 1 })
		})
	}
	if _, err := l.get(testClient{}, "ok"); err != nil {
		t.Fatalf("server no longer serves: %v", err)
	}
}

// TestFilesAndMTU: generated files (known and unknown size) through both senders, and blksize
// kept within the link's MTU.
func TestFilesAndMTU(t *testing.T) {
	script := bytes.Repeat([]byte("#!ipxe\nchain http://10.79.1.1/boot/${mac}.ipxe\n"), 100)
	l := newLab(t, Config{Files: map[string]Opener{
		"boot.ipxe": Bytes(script),
		"stream": func(context.Context, net.Addr) (io.ReadCloser, int64, error) {
			return io.NopCloser(bytes.NewReader(script)), -1, nil
		},
	}})
	maxBlk := strconv.Itoa(min(l.mtu-32, 65464))
	for _, tc := range []struct {
		name, file string
		c          testClient
		want       map[string]string
	}{
		{"window", "boot.ipxe", testClient{tsize: true, blksize: 65464, window: 8},
			map[string]string{"tsize": strconv.Itoa(len(script)), "blksize": maxBlk, "windowsize": "8"}},
		{"window-unknown-size", "stream", testClient{tsize: true, blksize: 1024, window: 2},
			map[string]string{"blksize": "1024", "windowsize": "2"}},
		{"pin", "boot.ipxe", testClient{tsize: true, blksize: 65464},
			map[string]string{"tsize": strconv.Itoa(len(script)), "blksize": maxBlk}},
		{"pin-unknown-size", "stream", testClient{tsize: true, blksize: 700},
			map[string]string{"blksize": "700"}},
		{"pin-no-options", "stream", testClient{}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := l.get(tc.c, tc.file)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(res.data, script) {
				t.Fatalf("content differs: %d bytes", len(res.data))
			}
			if !mapsEqual(res.oack, tc.want) {
				t.Errorf("OACK %v, want %v", res.oack, tc.want)
			}
		})
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}

package httpd

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pxejoin/pxejoin/bootserver/config"
)

const limitsMAC = "52:54:00:00:00:01"

// newLimitsLab serves a handler with limits over a veth link; its one inventory machine is limitsMAC.
func newLimitsLab(t *testing.T, lim config.HTTP) (*lab, *fixture, string) {
	t.Helper()
	l := newLab(t)
	addr := l.serverIP + ":8080"
	f := newFixture(t, "http://"+addr, 1024, false, config.Machine{MAC: mustMAC(limitsMAC), Name: "worker-1", Profile: "worker"})
	f.h.cfg.Limits = lim
	l.serve(t, f.h, "8080")
	return l, f, addr
}

// dialFrom opens a TCP connection to addr from the client namespace, from local address from ("":
// the namespace's own).
func dialFrom(t *testing.T, l *lab, from, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	var c net.Conn
	if err := l.client.Do(func() (err error) { c, err = d.Dial("tcp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// scriptOn asks for limitsMAC's script on c (kept alive) and returns the status code, or 0 if the
// connection gave no answer.
func scriptOn(t *testing.T, c net.Conn, br *bufio.Reader) int {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, "GET /boot/"+limitsMAC+".ipxe HTTP/1.1\r\nHost: boot\r\nUser-Agent: iPXE/1.21.1\r\n\r\n"); err != nil {
		return 0
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || (resp.StatusCode == 200 && !strings.HasPrefix(string(body), "#!ipxe\n")) {
		t.Fatalf("script: %v, %q", err, body)
	}
	return resp.StatusCode
}

// served asserts that a legitimate machine, from the client namespace's own address, gets its
// script.
func served(t *testing.T, l *lab, addr string) {
	t.Helper()
	c := dialFrom(t, l, "", addr)
	if code := scriptOn(t, c, bufio.NewReader(c)); code != 200 {
		t.Fatalf("a legitimate machine's script: %d", code)
	}
}

// TestSlowHeaderClosed: a client that sends its header one byte at a time is closed once
// ReadHeaderTimeout has passed since its first byte, while it is still sending, and a legitimate
// machine is served meanwhile and after.
func TestSlowHeaderClosed(t *testing.T) {
	l, _, addr := newLimitsLab(t, config.HTTP{ReadHeaderTimeout: 1500 * time.Millisecond})
	c := dialFrom(t, l, "", addr)
	closed := make(chan string) // what the server answered before closing
	go func() {
		b, _ := io.ReadAll(c)
		closed <- string(b)
	}()
	// 87 bytes at one per 100 ms: 8.7 s if the server let it finish. (httpfast pushed its deadline
	// forward by ReadHeaderTimeout whenever that moved it by a second or more.)
	header := "GET /boot/" + limitsMAC + ".ipxe HTTP/1.1\r\nHost: boot\r\nX-Slow: " + strings.Repeat("a", 20) + "\r\n\r\n"
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	sent, done := 0, false
	var answered string
	for sent < len(header) && !done {
		select {
		case answered = <-closed:
			done = true
		case <-tick.C:
			if _, err := c.Write([]byte{header[sent]}); err == nil {
				sent++
			}
			if sent == 10 {
				served(t, l, addr) // while the slow client holds its connection
			}
		}
	}
	if !done {
		t.Fatalf("the server kept a slow header's connection until all %d bytes came, and answered %.40q", sent, <-closed)
	}
	if strings.HasPrefix(answered, "HTTP/1.1 2") { // net/http says 400 as it closes
		t.Errorf("the server answered %q to an unfinished header", answered)
	}
	t.Logf("closed after %d of %d header bytes", sent, len(header))
	served(t, l, addr)
}

// TestHugeHeader431: a request with a 900 KB header gets 431, and a legitimate machine is served.
func TestHugeHeader431(t *testing.T) {
	l, _, addr := newLimitsLab(t, config.HTTP{})
	c := dialFrom(t, l, "", addr)
	go func() {
		req := "GET /boot/" + limitsMAC + ".ipxe HTTP/1.1\r\nHost: boot\r\nX-Big: " + strings.Repeat("a", 900<<10) + "\r\n\r\n"
		_, _ = io.WriteString(c, req) // fails once the server has answered and closed
	}()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer to a 900 KB header: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("900 KB header: %s, want 431", resp.Status)
	}
	served(t, l, addr)
}

// TestConnectionsPerClient: a client address holding MaxConnsPerClient connections has its next one
// closed at once and counted; another address is served meanwhile; once the first closes one of
// its connections it is served again.
func TestConnectionsPerClient(t *testing.T) {
	const max = 4
	l, f, addr := newLimitsLab(t, config.HTTP{MaxConnsPerClient: max})
	flooder := strings.TrimSuffix(l.serverIP, "1") + "3"
	l.client.MustExec(t, "ip", "addr", "add", flooder+"/24", "dev", "eth0")

	var held []net.Conn
	for i := 0; i < max; i++ {
		c := dialFrom(t, l, flooder, addr)
		if code := scriptOn(t, c, bufio.NewReader(c)); code != 200 {
			t.Fatalf("connection %d under the cap: %d", i+1, code)
		}
		held = append(held, c)
	}
	over := dialFrom(t, l, flooder, addr) // the kernel accepts it; the server closes it
	if code := scriptOn(t, over, bufio.NewReader(over)); code != 0 {
		t.Fatalf("connection %d over the cap got %d", max+1, code)
	}
	if n := testutil.ToFloat64(f.h.refused); n != 1 {
		t.Errorf("pxejoin_http_connections_refused_total %v, want 1", n)
	}
	served(t, l, addr) // another address

	held[0].Close()
	for i := 0; ; i++ { // the server sees the close when it reads the connection again
		c := dialFrom(t, l, flooder, addr)
		if scriptOn(t, c, bufio.NewReader(c)) == 200 {
			break
		}
		if i == 100 {
			t.Fatal("a closed connection never gave its place back")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

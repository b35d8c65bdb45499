package httpfast

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// stub answers GET/HEAD /fast/... on the fast path, and the same path with net/http, so the two
// can be compared; its net/http side also serves /slow (after release) and echoes POST bodies.
type stub struct {
	fast    atomic.Int64
	block   chan struct{} // if set, ServeFast of /fast/block waits for it
	entered chan struct{}
}

var stubHeader = []byte("Cache-Control: no-store\r\nContent-Type: text/plain; charset=utf-8\r\n")

func stubBody(path string) string { return "#!ipxe\necho " + path + "\n" }

func (s *stub) ServeFast(r *Request) (Response, bool) {
	if !strings.HasPrefix(r.Path, "/fast/") {
		return Response{}, false
	}
	if r.Path == "/fast/block" && s.block != nil {
		s.entered <- struct{}{}
		<-s.block
	}
	s.fast.Add(1)
	return Response{Header: stubHeader, Body: []byte(stubBody(r.Path))}, true
}

func (s *stub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodPost:
		b, _ := io.ReadAll(r.Body)
		io.WriteString(w, "posted "+string(b))
	case strings.HasPrefix(r.URL.Path, "/fast/"):
		w.Header()["Content-Type"] = []string{"text/plain; charset=utf-8"}
		w.Header()["Cache-Control"] = []string{"no-store"}
		io.WriteString(w, stubBody(r.URL.Path))
	default:
		io.WriteString(w, "net/http "+r.URL.Path)
	}
}

type testServer struct {
	*Server
	addr string
	reg  *prometheus.Registry
	done chan error
}

func start(t *testing.T, h *stub, hs *http.Server) *testServer {
	t.Helper()
	if hs == nil {
		hs = &http.Server{ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute}
	}
	if hs.Handler == nil {
		hs.Handler = h
	}
	reg := prometheus.NewRegistry()
	s, err := New(Config{HTTP: hs, Fast: h, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{Server: s, addr: ln.Addr().String(), reg: reg, done: make(chan error, 1)}
	go func() { ts.done <- s.Serve(ln) }()
	t.Cleanup(func() {
		s.Close()
		<-ts.done
	})
	return ts
}

func (ts *testServer) dial(t *testing.T) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, bufio.NewReader(c)
}

func (ts *testServer) handoffs(reason string) float64 {
	return testutil.ToFloat64(ts.Server.handoffs[reason])
}

// readResponse reads one response (with Content-Length, or to EOF) and returns it with the
// Date header's value blanked.
func readResponse(t *testing.T, br *bufio.Reader, head bool) string {
	t.Helper()
	var b strings.Builder
	length := -1
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("reading a response: %v (so far %q)", err, b.String()+line)
		}
		if v, ok := strings.CutPrefix(line, "Date: "); ok {
			if _, err := time.Parse(http.TimeFormat, strings.TrimSpace(v)); err != nil {
				t.Errorf("Date %q", v)
			}
			line = "Date: *\r\n"
		}
		if v, ok := strings.CutPrefix(line, "Content-Length: "); ok {
			length = atoiT(t, strings.TrimSpace(v))
		}
		b.WriteString(line)
		if line == "\r\n" {
			break
		}
	}
	if head {
		return b.String()
	}
	if length < 0 {
		rest, _ := io.ReadAll(br)
		return b.String() + string(rest)
	}
	body := make([]byte, length)
	if _, err := io.ReadFull(br, body); err != nil {
		t.Fatalf("reading a body: %v", err)
	}
	return b.String() + string(body)
}

func atoiT(t *testing.T, s string) int {
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			t.Fatalf("number %q", s)
		}
		n = n*10 + int(c-'0')
	}
	return n
}

func expectEOF(t *testing.T, br *bufio.Reader) {
	t.Helper()
	if b, err := br.ReadByte(); err == nil {
		t.Fatalf("the connection stayed open (read %q)", b)
	}
}

// TestSameAsNetHTTP compares the fast path's responses with net/http's for the same requests and
// the same handler output, byte for byte but the Date, and checks that the connection is kept or
// closed alike.
func TestSameAsNetHTTP(t *testing.T) {
	h := &stub{}
	fast := start(t, h, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: h}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	plain := &testServer{addr: ln.Addr().String()}

	for _, c := range []struct {
		name, req string
		head      bool
		keeps     bool
	}{
		{"1.1", "GET /fast/a HTTP/1.1\r\nHost: x\r\nUser-Agent: iPXE/1.21.1\r\n\r\n", false, true},
		{"1.1 keep-alive", "GET /fast/a?uuid=u HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n", false, true},
		{"1.1 close", "GET /fast/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", false, false},
		{"1.0", "GET /fast/a HTTP/1.0\r\n\r\n", false, false},
		{"1.0 keep-alive", "GET /fast/a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", false, true},
		{"head", "HEAD /fast/a HTTP/1.1\r\nHost: x\r\n\r\n", true, true},
		{"head 1.0", "HEAD /fast/a HTTP/1.0\r\n\r\n", true, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := h.fast.Load()
			var got [2]string
			for i, ts := range []*testServer{fast, plain} {
				conn, br := ts.dial(t)
				// Twice: the second request shows whether the connection was kept.
				io.WriteString(conn, c.req)
				got[i] = readResponse(t, br, c.head)
				if c.keeps {
					io.WriteString(conn, c.req)
					if again := readResponse(t, br, c.head); again != got[i] {
						t.Errorf("second response %q, first %q", again, got[i])
					}
				} else {
					expectEOF(t, br)
				}
			}
			if got[0] != got[1] {
				t.Errorf("fast path:\n%q\nnet/http:\n%q", got[0], got[1])
			}
			if h.fast.Load() == before {
				t.Error("the fast path did not answer")
			}
		})
	}
}

func TestPipelined(t *testing.T) {
	h := &stub{}
	ts := start(t, h, nil)
	conn, br := ts.dial(t)
	io.WriteString(conn, "GET /fast/1 HTTP/1.1\r\nHost: x\r\n\r\nGET /fast/2 HTTP/1.1\r\nHost: x\r\n\r\nGET /fast/3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /fast/4 HTTP/1.1\r\nHost: x\r\n\r\n")
	for i := 1; i <= 3; i++ {
		if r := readResponse(t, br, false); !strings.HasSuffix(r, stubBody("/fast/"+string(rune('0'+i)))) {
			t.Fatalf("response %d: %q", i, r)
		}
	}
	expectEOF(t, br)
	if n := h.fast.Load(); n != 3 {
		t.Errorf("%d answered, want 3", n)
	}
}

// TestHandOff checks that a request the fast path does not answer goes to net/http with its
// connection, bytes already read included, and that the connection stays there.
// TestEscapedPath: iPXE escapes ':' in paths, so its script requests carry escapes; they are
// answered on the fast path with the decoded path. A bad escape goes to net/http, which refuses it.
func TestEscapedPath(t *testing.T) {
	h := &stub{}
	ts := start(t, h, nil)
	conn, br := ts.dial(t)
	io.WriteString(conn, "GET /fast/52%3A54%3a00 HTTP/1.1\r\nHost: x\r\n\r\nGET /fast/%zz HTTP/1.1\r\nHost: x\r\n\r\n")
	if r := readResponse(t, br, false); !strings.HasSuffix(r, "\r\n\r\n"+stubBody("/fast/52:54:00")) {
		t.Fatalf("escaped path: %q", r)
	}
	if r := readResponse(t, br, false); !strings.HasPrefix(r, "HTTP/1.1 400 ") {
		t.Fatalf("bad escape: %q", r)
	}
	if n := h.fast.Load(); n != 1 {
		t.Errorf("%d requests answered on the fast path, want 1", n)
	}
	if n := ts.handoffs(reasonUnusual); n != 1 {
		t.Errorf("unusual hand-offs: %v", n)
	}
}

func TestHandOff(t *testing.T) {
	for _, c := range []struct {
		name, reqs, reason string
		want               []string // bodies
	}{
		{"other path", "GET /other HTTP/1.1\r\nHost: x\r\n\r\nGET /fast/a HTTP/1.1\r\nHost: x\r\n\r\n", reasonOther,
			[]string{"net/http /other", stubBody("/fast/a")}},
		{"after a fast one", "GET /fast/a HTTP/1.1\r\nHost: x\r\n\r\nGET /other HTTP/1.1\r\nHost: x\r\n\r\n", reasonOther,
			[]string{stubBody("/fast/a"), "net/http /other"}},
		{"post with a body", "POST /fast/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", reasonUnusual,
			[]string{"posted hello"}},
		{"large header", "GET /fast/a HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("b", MaxHeaderBytes) + "\r\n\r\n", reasonTooLarge,
			[]string{stubBody("/fast/a")}},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := &stub{}
			ts := start(t, h, nil)
			conn, br := ts.dial(t)
			io.WriteString(conn, c.reqs)
			for _, want := range c.want {
				if r := readResponse(t, br, false); !strings.HasPrefix(r, "HTTP/1.1 200 OK\r\n") || !strings.HasSuffix(r, "\r\n\r\n"+want) {
					t.Fatalf("response %q, want body %q", r, want)
				}
			}
			if n := ts.handoffs(c.reason); n != 1 {
				t.Errorf("%s hand-offs: %v", c.reason, n)
			}
		})
	}
}

// TestMalformed: net/http answers a malformed request with 400 and closes; it is counted.
func TestMalformed(t *testing.T) {
	for _, req := range []string{"GARBAGE\r\n\r\n", "GET / HTTP/1.1\r\nHost h\r\n\r\n", "GET /fast/a HTTP/1.1\r\n\r\n"} {
		h := &stub{}
		ts := start(t, h, nil)
		conn, br := ts.dial(t)
		io.WriteString(conn, req)
		r := readResponse(t, br, false)
		if !strings.HasPrefix(r, "HTTP/1.1 400 ") {
			t.Errorf("%q: %q", req, r)
		}
		expectEOF(t, br)
		if ts.handoffs(reasonMalformed)+ts.handoffs(reasonUnusual) != 1 {
			t.Errorf("%q: not counted", req)
		}
	}
}

func TestReadHeaderTimeout(t *testing.T) {
	ts := start(t, &stub{}, &http.Server{ReadHeaderTimeout: 200 * time.Millisecond, IdleTimeout: 300 * time.Millisecond})
	conn, br := ts.dial(t)
	io.WriteString(conn, "GET /fast/a HTTP/1.1\r\nHost: x\r\n") // and never the end
	expectEOF(t, br)

	conn, br = ts.dial(t)
	io.WriteString(conn, "GET /fast/a HTTP/1.1\r\nHost: x\r\n\r\n")
	readResponse(t, br, false)
	expectEOF(t, br) // idle
}

// TestShutdown: idle connections are closed, a request being answered finishes (with
// Connection: close), Serve returns http.ErrServerClosed, and Shutdown returns.
func TestShutdown(t *testing.T) {
	h := &stub{block: make(chan struct{}), entered: make(chan struct{})}
	ts := start(t, h, nil)
	idle, idleBR := ts.dial(t)
	io.WriteString(idle, "GET /fast/a HTTP/1.1\r\nHost: x\r\n\r\n")
	readResponse(t, idleBR, false)
	busy, busyBR := ts.dial(t)
	io.WriteString(busy, "GET /fast/block HTTP/1.1\r\nHost: x\r\n\r\n")
	<-h.entered

	shut := make(chan error, 1)
	go func() { shut <- ts.Shutdown(context.Background()) }()
	expectEOF(t, idleBR)
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(h.block)
	if r := readResponse(t, busyBR, false); !strings.Contains(r, "Connection: close\r\n") {
		t.Errorf("response during shutdown: %q", r)
	}
	expectEOF(t, busyBR)
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if err := <-ts.done; !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("Serve: %v", err)
	}
	ts.done <- nil // for the cleanup
	if _, err := net.Dial("tcp", ts.addr); err == nil {
		t.Error("still accepting")
	}
}

// TestShutdownHandedOff: Shutdown waits for net/http's connections too.
func TestShutdownHandedOff(t *testing.T) {
	release, entered := make(chan struct{}), make(chan struct{})
	ts := start(t, &stub{}, &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-release
		io.WriteString(w, "done")
	})})
	conn, br := ts.dial(t)
	io.WriteString(conn, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
	<-entered
	shut := make(chan error, 1)
	go func() { shut <- ts.Shutdown(context.Background()) }()
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if r := readResponse(t, br, false); !strings.HasSuffix(r, "done") {
		t.Errorf("response %q", r)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// TestSendfileKept: a handed-off TCP connection keeps its ReadFrom (sendfile) and CloseWrite.
func TestSendfileKept(t *testing.T) {
	var c net.Conn = &handedConn{Conn: &net.TCPConn{}}
	if _, ok := c.(io.ReaderFrom); !ok {
		t.Error("no ReadFrom")
	}
	if _, ok := c.(interface{ CloseWrite() error }); !ok {
		t.Error("no CloseWrite")
	}
}

func TestDateFormat(t *testing.T) {
	s := &Server{}
	if !regexp.MustCompile(`^[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT$`).Match(s.dateNow()) {
		t.Errorf("Date %q", s.dateNow())
	}
}

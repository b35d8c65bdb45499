package httpfast

import (
	"bytes"
	"net/url"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, c := range []struct {
		name, in      string
		v             verdict
		path, query   string
		head          bool
		minor         byte
		close, keep10 bool
		trailingBytes int // bytes after the header block
	}{
		{name: "ipxe", in: "GET /boot/52:54:00:00:00:01.ipxe HTTP/1.1\r\nConnection: keep-alive\r\nUser-Agent: iPXE/1.21.1\r\nHost: 10.0.0.1:8080\r\n\r\n", v: complete, path: "/boot/52:54:00:00:00:01.ipxe", minor: 1},
		// What iPXE really sends: it escapes ':' in a path.
		{name: "ipxe escaped", in: "GET /boot/52%3A54%3A00%3A00%3A00%3a01.ipxe HTTP/1.1\r\nConnection: keep-alive\r\nUser-Agent: iPXE/1.21.1\r\nHost: 10.0.0.1:8080\r\n\r\n", v: complete, path: "/boot/52:54:00:00:00:01.ipxe", minor: 1},
		{name: "escaped slash", in: "GET /a%2Fb HTTP/1.1\r\nHost: h\r\n\r\n", v: complete, path: "/a/b", minor: 1},
		{name: "query", in: "GET /boot/a.ipxe?uuid=x%20y&b HTTP/1.1\r\nHost: h\r\n\r\n", v: complete, path: "/boot/a.ipxe", query: "uuid=x%20y&b", minor: 1},
		{name: "empty query", in: "GET /a? HTTP/1.1\r\nHost: h\r\n\r\n", v: complete, path: "/a", query: "", minor: 1},
		{name: "head", in: "HEAD / HTTP/1.1\r\nhost: h\r\n\r\n", v: complete, path: "/", head: true, minor: 1},
		{name: "close", in: "GET / HTTP/1.1\r\nHost: h\r\nConnection: Close\r\n\r\n", v: complete, path: "/", minor: 1, close: true},
		{name: "close among tokens", in: "GET / HTTP/1.1\r\nHost: h\r\nConnection: foo, close\r\n\r\n", v: complete, path: "/", minor: 1, close: true},
		{name: "1.0", in: "GET / HTTP/1.0\r\n\r\n", v: complete, path: "/", minor: 0, close: true},
		{name: "1.0 keep-alive", in: "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", v: complete, path: "/", minor: 0, keep10: true},
		{name: "content-length 0", in: "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", v: complete, path: "/", minor: 1},
		{name: "pipelined", in: "GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\n", v: complete, path: "/a", minor: 1, trailingBytes: 17},
		{name: "ows", in: "GET / HTTP/1.1\r\nHost:\t h \r\nX-Empty:\r\n\r\n", v: complete, path: "/", minor: 1},

		{name: "empty", in: "", v: incomplete},
		{name: "partial line", in: "GET /boot/a.ip", v: incomplete},
		{name: "partial headers", in: "GET / HTTP/1.1\r\nHost: h\r\n", v: incomplete},
		{name: "partial CR", in: "GET / HTTP/1.1\r\nHost: h\r", v: incomplete},

		{name: "post", in: "POST /status/x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}", v: unusual},
		{name: "lower-case method", in: "get / HTTP/1.1\r\nHost: h\r\n\r\n", v: unusual},
		{name: "body", in: "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n", v: unusual},
		{name: "chunked", in: "GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", v: unusual},
		{name: "expect", in: "GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n", v: unusual},
		{name: "upgrade", in: "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\n\r\n", v: unusual},
		{name: "no host", in: "GET / HTTP/1.1\r\n\r\n", v: unusual},
		{name: "two hosts", in: "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", v: unusual},
		{name: "odd host", in: "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", v: unusual},
		{name: "two connections", in: "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nConnection: close\r\n\r\n", v: unusual},
		{name: "close and keep-alive", in: "GET / HTTP/1.0\r\nConnection: close, keep-alive\r\n\r\n", v: unusual},
		{name: "bad escape", in: "GET /boot/%4.ipxe HTTP/1.1\r\nHost: h\r\n\r\n", v: unusual},
		{name: "escape at the end", in: "GET /boot/a% HTTP/1.1\r\nHost: h\r\n\r\n", v: unusual},
		{name: "non-hex escape", in: "GET /%zz HTTP/1.1\r\nHost: h\r\n\r\n", v: unusual},
		{name: "fragment", in: "GET /a#b HTTP/1.1\r\nHost: h\r\n\r\n", v: unusual},
		{name: "absolute form", in: "GET http://h/a HTTP/1.1\r\nHost: h\r\n\r\n", v: unusual},
		{name: "asterisk", in: "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", v: unusual},
		{name: "http/2 preface", in: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", v: unusual},
		{name: "http/1.2", in: "GET / HTTP/1.2\r\nHost: h\r\n\r\n", v: unusual},
		{name: "obs-fold", in: "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n", v: unusual},
		{name: "bare LF", in: "GET / HTTP/1.1\nHost: h\n\n", v: unusual},
		{name: "bare LF later", in: "GET / HTTP/1.1\r\nHost: h\n", v: unusual},

		{name: "garbage", in: "GARBAGE\r\n\r\n", v: malformed},
		{name: "no version", in: "GET /\r\n\r\n", v: malformed},
		{name: "bad version", in: "GET / HTTP/x.y\r\n\r\n", v: malformed},
		{name: "space in target", in: "GET /a b HTTP/1.1\r\nHost: h\r\n\r\n", v: malformed},
		{name: "control in target", in: "GET /a\x01 HTTP/1.1\r\nHost: h\r\n\r\n", v: malformed},
		{name: "no colon", in: "GET / HTTP/1.1\r\nHost h\r\n\r\n", v: malformed},
		{name: "empty name", in: "GET / HTTP/1.1\r\n: h\r\n\r\n", v: malformed},
		{name: "space in name", in: "GET / HTTP/1.1\r\nHost : h\r\n\r\n", v: malformed},
		{name: "control in value", in: "GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n", v: malformed},
		{name: "CR in line", in: "GET / HTTP/1.1\r\nX: a\rb", v: malformed},
		{name: "leading empty line", in: "\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", v: malformed},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, n, v := parse([]byte(c.in))
			if v != c.v {
				t.Fatalf("verdict %v, want %v", v, c.v)
			}
			if v != complete {
				return
			}
			if n != len(c.in)-c.trailingBytes {
				t.Errorf("header block of %d bytes, want %d", n, len(c.in)-c.trailingBytes)
			}
			if string(p.path) != c.path || string(p.query) != c.query || p.head != c.head || p.minor != c.minor || p.close != c.close || p.keep10 != c.keep10 {
				t.Errorf("got path %q query %q head %v minor %d close %v keep10 %v", p.path, p.query, p.head, p.minor, p.close, p.keep10)
			}
		})
	}
}

func TestParseTooManyHeaderLines(t *testing.T) {
	in := "GET / HTTP/1.1\r\nHost: h\r\n" + strings.Repeat("X: y\r\n", maxHeaderLines) + "\r\n"
	if _, _, v := parse([]byte(in)); v != unusual {
		t.Fatalf("verdict %v", v)
	}
}

// FuzzParse checks that the parser never panics and that what it calls complete is a request the
// fast path may answer.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"GET /boot/52:54:00:00:00:01.ipxe HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n",
		"HEAD /a?uuid=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
		"POST / HTTP/1.1\r\nContent-Length: 1\r\n\r\nx",
		"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /",
		"GET / HTTP/1.1\nHost: h\n\n",
		"GET /boot/52%3A54%3a00%3A00%3A00%3A01.ipxe HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, n, v := parse(b)
		if v != complete {
			return
		}
		if n < 4 || n > len(b) || !bytes.HasSuffix(b[:n], []byte("\r\n\r\n")) {
			t.Fatalf("header block length %d of %q", n, b)
		}
		// The path is what net/http would make of the target.
		target := string(b[bytes.IndexByte(b, ' ')+1:])
		target = target[:strings.IndexByte(target, ' ')]
		u, err := url.ParseRequestURI(target)
		if err != nil || len(p.path) == 0 || p.path[0] != '/' || string(p.path) != u.Path {
			t.Fatalf("target %q: path %q, net/url %v %v", target, p.path, u, err)
		}
		if !bytes.HasPrefix(b, []byte("GET ")) && !bytes.HasPrefix(b, []byte("HEAD ")) {
			t.Fatalf("method of %q", b)
		}
		if p.minor > 1 || p.keep10 && (p.minor != 0 || p.close) {
			t.Fatalf("version %d, keep10 %v, close %v", p.minor, p.keep10, p.close)
		}
		if bytes.Contains(b[:n], []byte("\r\n\r\n")) && bytes.Index(b[:n], []byte("\r\n\r\n")) != n-4 {
			t.Fatalf("header block of %q does not end at the first empty line", b)
		}
	})
}

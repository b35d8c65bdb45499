package httpfast

import (
	"bytes"
	"net/url"
)

// verdict is what the parser makes of the bytes at the start of a connection's buffer.
type verdict int

const (
	// complete: a simple GET or HEAD request, whose header block ends at the returned length.
	complete verdict = iota
	// incomplete: no error so far, but the header block has not ended yet.
	incomplete
	// unusual: a well-formed request, or the start of one, that the fast path does not answer (another
	// method or version, a body, Expect, Upgrade, a folded header line, an escaped path, ...).
	unusual
	// malformed: not HTTP/1.x as RFC 9112 writes it (net/http answers 400 to most of these).
	malformed
)

// The reasons of a hand-off, as counted.
const (
	reasonOther     = "other"     // a simple request the Handler declined
	reasonUnusual   = "unusual"   // see verdict unusual
	reasonMalformed = "malformed" // see verdict malformed
	reasonTooLarge  = "too-large" // a header block larger than the fast path's buffer
)

func (v verdict) reason() string {
	switch v {
	case unusual:
		return reasonUnusual
	case malformed:
		return reasonMalformed
	}
	return ""
}

// request is a parsed simple request; its slices point into the parsed buffer.
type request struct {
	head     bool   // HEAD, else GET
	minor    byte   // HTTP/1.<minor>: 0 or 1
	path     []byte // the target up to '?', escapes decoded as in net/http's URL.Path; starts with /
	query    []byte // after '?', nil if none
	close    bool   // the connection ends after the response
	keep10   bool   // HTTP/1.0 with Connection: keep-alive (answered with Connection: keep-alive)
	hostSeen bool
}

// maxHeaderLines bounds the header fields of a request the fast path answers.
const maxHeaderLines = 64

// parse reads one request's header block from the start of b. With complete it returns the
// request and the length of its header block (request line to the empty line, included). It
// accepts only what it can answer without doubt, CRLF line ends included: anything else is
// unusual or malformed, and then the bytes go to net/http as they are, which decides.
func parse(b []byte) (req request, n int, v verdict) {
	line, rest, ok := cutLine(b)
	if !ok {
		return req, 0, partial(b)
	}
	if v := parseRequestLine(line, &req); v != complete {
		return req, 0, v
	}
	n = len(line) + 2
	var conn []byte
	connSeen, lines := false, 0
	for {
		var next []byte
		if line, next, ok = cutLine(rest); !ok {
			return req, 0, partial(rest)
		}
		rest = next
		n += len(line) + 2
		if len(line) == 0 {
			break
		}
		if lines++; lines > maxHeaderLines {
			return req, 0, unusual
		}
		if line[0] == ' ' || line[0] == '\t' {
			return req, 0, unusual // obs-fold: net/http unfolds it; not worth doing here
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return req, 0, malformed
		}
		name, value := line[:colon], trimOWS(line[colon+1:])
		for _, c := range name {
			if !isTokenByte(c) {
				return req, 0, malformed
			}
		}
		for _, c := range value {
			if c < ' ' && c != '\t' || c == 0x7f {
				return req, 0, malformed
			}
		}
		switch {
		case equalFold(name, "host"):
			if req.hostSeen || !validHost(value) {
				return req, 0, unusual // net/http rejects both; let it say so
			}
			req.hostSeen = true
		case equalFold(name, "connection"):
			if connSeen {
				return req, 0, unusual
			}
			connSeen, conn = true, value
		case equalFold(name, "content-length"):
			if string(value) != "0" {
				return req, 0, unusual
			}
		case equalFold(name, "transfer-encoding"), equalFold(name, "expect"), equalFold(name, "upgrade"),
			equalFold(name, "http2-settings"):
			return req, 0, unusual
		}
	}
	if req.minor == 1 && !req.hostSeen {
		return req, 0, unusual // HTTP/1.1 needs a Host; net/http answers 400
	}
	closeTok, keepTok := hasToken(conn, "close"), hasToken(conn, "keep-alive")
	if closeTok && keepTok {
		return req, 0, unusual
	}
	if req.minor == 1 {
		req.close = closeTok
	} else {
		req.keep10 = keepTok
		req.close = !keepTok
	}
	return req, n, complete
}

// parseRequestLine parses "GET /path?query HTTP/1.1".
func parseRequestLine(line []byte, req *request) verdict {
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return malformed
	}
	method := line[:sp1]
	for _, c := range method {
		if !isTokenByte(c) {
			return malformed
		}
	}
	rest := line[sp1+1:]
	sp2 := bytes.IndexByte(rest, ' ')
	if sp2 <= 0 {
		return malformed
	}
	target, proto := rest[:sp2], rest[sp2+1:]
	if len(proto) != 8 || string(proto[:5]) != "HTTP/" || proto[6] != '.' || !isDigit(proto[5]) || !isDigit(proto[7]) {
		return malformed
	}
	for _, c := range target {
		if c <= ' ' || c >= 0x7f {
			return malformed
		}
	}
	switch {
	case string(method) == "GET":
	case string(method) == "HEAD":
		req.head = true
	default:
		return unusual
	}
	switch string(proto) {
	case "HTTP/1.1":
		req.minor = 1
	case "HTTP/1.0":
		req.minor = 0
	default:
		return unusual
	}
	if target[0] != '/' || bytes.IndexByte(target, '#') >= 0 {
		return unusual
	}
	req.path = target
	if q := bytes.IndexByte(target, '?'); q >= 0 {
		req.path, req.query = target[:q], target[q+1:]
	}
	if bytes.IndexByte(req.path, '%') >= 0 {
		// iPXE escapes ':' in paths (it escapes "#:@?" in its URI_PATH field), so a MAC address
		// arrives as 52%3A54%3A…: decoded here as net/url decodes URL.Path. A bad escape goes to
		// net/http, which answers 400.
		p, ok := unescapePath(req.path)
		if !ok {
			return unusual
		}
		req.path = p
	}
	return complete
}

// unescapePath decodes the %XX escapes of a path as net/url does for URL.Path; false if one is
// not two hex digits (net/url refuses those).
func unescapePath(b []byte) ([]byte, bool) {
	p, err := url.PathUnescape(string(b))
	return []byte(p), err == nil
}

// cutLine cuts b at its first CRLF. A bare LF (or CR) is not a line end here.
func cutLine(b []byte) (line, rest []byte, ok bool) {
	i := bytes.IndexByte(b, '\n')
	if i < 1 || b[i-1] != '\r' {
		return nil, nil, false
	}
	return b[:i-1], b[i+1:], true
}

// partial is the verdict on b, a header block without its end so far: incomplete, or unusual if a
// line ends in a bare LF or holds a CR (net/http accepts bare LFs; the fast path does not).
func partial(b []byte) verdict {
	for i, c := range b {
		switch {
		case c == '\n' && (i == 0 || b[i-1] != '\r'):
			return unusual
		case c == '\r' && i+1 < len(b) && b[i+1] != '\n':
			return malformed
		}
	}
	return incomplete
}

// trimOWS trims the optional white space around a field value.
func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// hasToken reports whether the comma-separated list v holds token (ASCII case-insensitive).
func hasToken(v []byte, token string) bool {
	for len(v) > 0 {
		var elem []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			elem, v = v[:i], v[i+1:]
		} else {
			elem, v = v, nil
		}
		if equalFold(trimOWS(elem), token) {
			return true
		}
	}
	return false
}

// equalFold is ASCII case-insensitive equality with a lower-case s.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// validHost accepts a conservative subset of RFC 3986's host[:port]: names, IPv4, bracketed IPv6.
func validHost(b []byte) bool {
	for _, c := range b {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || isDigit(c) || c == '.' || c == '-' || c == ':' || c == '[' || c == ']' || c == '_') {
			return false
		}
	}
	return true
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// isTokenByte reports whether c may appear in an RFC 9110 token.
func isTokenByte(c byte) bool {
	if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || isDigit(c) {
		return true
	}
	switch c {
	case '!', '#', '$', '%', '&', '\'', '*', '+', '-', '.', '^', '_', '`', '|', '~':
		return true
	}
	return false
}

package httpfast

import (
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// Connection states, for Shutdown.
const (
	stateNew    int32 = iota // accepted, no byte read yet
	stateActive              // a request is being read or answered
	stateIdle                // waiting for the next request
	stateClosed              // closed by Shutdown or Close
)

// outcome is what a connection's loop does next.
type outcome int

const (
	needRead     outcome = iota // no complete request is buffered: read
	closeConn                   // close the connection (after writing what is answered)
	handOff                     // hand the connection to net/http, reason in conn.reason
	writeBlocked                // the socket has no room: write the rest with the poller
)

// conn is a connection on the fast path; one goroutine serves it.
type conn struct {
	s     *Server
	c     net.Conn
	rc    syscall.RawConn // c's file descriptor, nil if it has none (not TCP)
	since int64           // accepted (Unix seconds)
	state atomic.Int32

	buf     *[MaxHeaderBytes]byte
	rd, wr  int    // buf[rd:wr] is read and not yet used
	out     []byte // responses not yet written
	req     Request
	first   bool      // no request answered yet
	closing bool      // close once out is written
	reason  string    // of a hand-off
	dl      time.Time // the read deadline set
}

var bufPool = sync.Pool{New: func() any { return new([MaxHeaderBytes]byte) }}

func newConn(s *Server, c net.Conn) *conn {
	fc := &conn{s: s, c: c, since: time.Now().Unix(), first: true}
	if tc, ok := c.(*net.TCPConn); ok {
		fc.rc, _ = tc.SyscallConn()
	}
	return fc
}

func (fc *conn) serve() {
	s := fc.s
	fc.buf = bufPool.Get().(*[MaxHeaderBytes]byte)
	fc.req.RemoteAddr = fc.c.RemoteAddr().String()
	handed := false
	defer func() {
		if !handed {
			s.forget(fc)
			fc.c.Close()
		}
		bufPool.Put(fc.buf)
	}()
	for {
		var res outcome
		if fc.rc != nil {
			res = fc.runRaw()
		} else {
			res = fc.run()
		}
		switch res {
		case writeBlocked:
			if !fc.writeOut() {
				return
			}
		case handOff:
			s.handoffs[fc.reason].Inc()
			handed = s.handOver(fc, fc.buf[fc.rd:fc.wr])
			return
		default:
			return
		}
	}
}

// run is the connection's loop with the net.Conn's Read and Write: it answers requests until
// one is for net/http or the connection is done.
func (fc *conn) run() outcome {
	for {
		res := fc.answer()
		if len(fc.out) > 0 && !fc.writeOut() {
			return closeConn
		}
		if res != needRead {
			return res
		}
		if !fc.prepareRead() {
			return closeConn
		}
		n, _ := fc.c.Read(fc.buf[fc.wr:]) // an error comes again, with n == 0, at the next Read
		if !fc.received(n) {
			return closeConn
		}
	}
}

// runRaw is run on the file descriptor, all in one RawConn.Read: the socket is non-blocking, and
// the read and write system calls are made without telling the scheduler (RawSyscall), since
// neither sleeps. A write that hands a response to a peer over loopback or veth takes long enough
// (tens of µs: the peer's receive path runs in it) that the runtime would otherwise take the P
// away from the thread in it and wake another thread—at every request. And when a read emptied
// the socket (it returned less than asked), the loop waits for readiness before it reads again,
// rather than first reading only to find nothing: data that comes later brings a readiness event
// that this RawConn.Read waits for (it resets readiness only when it starts). When the socket has
// no room for a response, the rest is written with Write, outside.
func (fc *conn) runRaw() outcome {
	var res outcome
	reading, short := false, false
	err := fc.rc.Read(func(fd uintptr) bool {
		for {
			if !reading {
				if res = fc.answer(); len(fc.out) > 0 {
					switch ok, blocked := fc.writeRaw(fd); {
					case blocked:
						res = writeBlocked
						return true
					case !ok:
						res = closeConn
						return true
					}
				}
				if res != needRead {
					return true
				}
				if !fc.prepareRead() {
					res = closeConn
					return true
				}
				if reading = true; short {
					return false // wait for data
				}
			}
			p := fc.buf[fc.wr:]
			n, _, errno := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
			switch {
			case errno == syscall.EAGAIN:
				return false
			case errno == syscall.EINTR:
				continue
			case errno != 0 || n == 0 || !fc.received(int(n)):
				res = closeConn
				return true
			}
			reading, short = false, int(n) < len(p)
		}
	})
	if err != nil { // a deadline, or closed
		return closeConn
	}
	return res
}

// writeRaw writes fc.out on fd. blocked: the socket had no room for all of it; what is left stays
// in fc.out. Neither: an error.
func (fc *conn) writeRaw(fd uintptr) (ok, blocked bool) {
	for len(fc.out) > 0 {
		n, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(fc.out))), uintptr(len(fc.out)))
		switch errno {
		case 0:
			fc.out = fc.out[:copy(fc.out, fc.out[n:])]
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false, true
		default:
			return false, false
		}
	}
	fc.trimOut()
	return true, false
}

// writeOut writes fc.out with Write (and the WriteTimeout); false on an error.
func (fc *conn) writeOut() bool {
	if d := fc.s.http.WriteTimeout; d > 0 {
		_ = fc.c.SetWriteDeadline(time.Now().Add(d))
	}
	_, err := fc.c.Write(fc.out)
	fc.out = fc.out[:0]
	fc.trimOut()
	return err == nil
}

// trimOut drops the buffer of a rare large answer rather than keep it for the connection's life.
func (fc *conn) trimOut() {
	if cap(fc.out) > 64<<10 {
		fc.out = nil
	}
}

// answer answers the complete requests buffered, appending the responses to fc.out, until one is
// incomplete (needRead), the connection is to close, or a request is for net/http (handOff).
func (fc *conn) answer() outcome {
	s := fc.s
	for {
		if fc.closing {
			return closeConn
		}
		if fc.rd == fc.wr {
			return needRead
		}
		p, n, v := parse(fc.buf[fc.rd:fc.wr])
		switch {
		case v == incomplete && fc.wr-fc.rd == len(fc.buf):
			fc.reason = reasonTooLarge
			return handOff
		case v == incomplete:
			return needRead
		case v != complete:
			fc.reason = v.reason()
			return handOff
		}
		r := &fc.req
		r.Method = "GET"
		if p.head {
			r.Method = "HEAD"
		}
		r.Path, r.RawQuery = string(p.path), ""
		if p.query != nil {
			r.RawQuery = string(p.query)
		}
		resp, ok := s.fast.ServeFast(r)
		if !ok {
			fc.reason = reasonOther
			return handOff
		}
		fc.rd += n
		fc.first = false
		fc.closing = p.close || s.shutdown.Load()
		fc.out = s.appendResponse(fc.out, &p, &resp, fc.closing)
	}
}

// prepareRead makes room in the buffer and sets the read deadline and state for the read to
// come: waiting for a request (idle, or new), or in the middle of one. false: the server is
// shutting down and the connection idle, so it is to close.
func (fc *conn) prepareRead() bool {
	s := fc.s
	if fc.rd == fc.wr {
		fc.rd, fc.wr = 0, 0
	} else if fc.wr == len(fc.buf) {
		fc.wr = copy(fc.buf[:], fc.buf[fc.rd:fc.wr])
		fc.rd = 0
	}
	now := time.Now()
	if fc.rd == fc.wr && !fc.first {
		if s.shutdown.Load() {
			return false
		}
		fc.state.Store(stateIdle)
		fc.setReadDeadline(now, s.idleTimeout())
	} else {
		fc.setReadDeadline(now, s.readHeaderTimeout())
	}
	return true
}

// received accounts for n bytes read into fc.buf[fc.wr:]; false if the connection was closed
// by Shutdown meanwhile.
func (fc *conn) received(n int) bool {
	if n <= 0 {
		return false
	}
	if fc.rd == fc.wr { // the first bytes of a request
		st := fc.state.Load()
		if st != stateActive && (st == stateClosed || !fc.state.CompareAndSwap(st, stateActive)) {
			return false
		}
	}
	fc.wr += n
	return true
}

// setReadDeadline sets the read deadline to now+d (none if d is 0), unless the one set is at
// most a second earlier than that and not later.
func (fc *conn) setReadDeadline(now time.Time, d time.Duration) {
	var want time.Time
	if d > 0 {
		want = now.Add(d)
	}
	switch {
	case want.IsZero() && fc.dl.IsZero():
		return
	case !want.IsZero() && !fc.dl.IsZero() && !fc.dl.After(want) && want.Sub(fc.dl) < time.Second:
		return
	}
	if fc.c.SetReadDeadline(want) == nil {
		fc.dl = want
	}
}

func (s *Server) idleTimeout() time.Duration {
	if s.http.IdleTimeout != 0 {
		return s.http.IdleTimeout
	}
	return s.http.ReadTimeout
}

func (s *Server) readHeaderTimeout() time.Duration {
	if s.http.ReadHeaderTimeout != 0 {
		return s.http.ReadHeaderTimeout
	}
	return s.http.ReadTimeout
}

// handOver gives fc's connection, and pending, the bytes read from it and not used, to the
// http.Server; false if it could not (shutting down), and the connection is to be closed.
func (s *Server) handOver(fc *conn, pending []byte) bool {
	s.forget(fc)
	if s.shutdown.Load() {
		return false
	}
	hc := &handedConn{Conn: fc.c}
	if len(pending) > 0 {
		hc.pending = append([]byte(nil), pending...)
	}
	_ = fc.c.SetDeadline(time.Time{})
	return s.hl.handOver(hc)
}

// appendResponse appends the response to out, as net/http writes it: status line, the Handler's
// header lines, Date, Content-Length, Connection, blank line, body.
func (s *Server) appendResponse(out []byte, p *request, r *Response, closing bool) []byte {
	if p.minor == 1 {
		out = append(out, "HTTP/1.1 200 OK\r\n"...)
	} else {
		out = append(out, "HTTP/1.0 200 OK\r\n"...)
	}
	out = append(out, r.Header...)
	out = append(out, "Date: "...)
	out = append(out, s.dateNow()...)
	out = append(out, "\r\nContent-Length: "...)
	out = strconv.AppendInt(out, int64(len(r.Body)), 10)
	out = append(out, "\r\n"...)
	switch {
	case closing && p.minor == 1:
		out = append(out, "Connection: close\r\n"...)
	case !closing && p.keep10:
		out = append(out, "Connection: keep-alive\r\n"...)
	}
	out = append(out, "\r\n"...)
	if !p.head {
		out = append(out, r.Body...)
	}
	return out
}

// dateLine is the Date header's value for one second.
type dateLine struct {
	sec int64
	b   []byte
}

func (s *Server) dateNow() []byte {
	now := time.Now()
	d := s.date.Load()
	if d == nil || d.sec != now.Unix() {
		d = &dateLine{sec: now.Unix(), b: now.UTC().AppendFormat(nil, http.TimeFormat)}
		s.date.Store(d)
	}
	return d.b
}

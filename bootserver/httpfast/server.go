// Package httpfast answers the simplest, most frequent requests of an HTTP/1.x server itself, and
// hands every other connection to a net/http server. It exists for iPXE's script requests: a
// fleet booting at once makes tens of thousands of tiny GETs, and net/http's per-request work
// (header maps, contexts, response writers, buffers) costs more than the answer.
//
// Every connection starts on the fast path, which reads it into a buffer of its own. While the
// requests on it are simple (GET or HEAD, HTTP/1.0 or 1.1, origin-form target whose escapes
// are valid, no body, no Expect or Upgrade, CRLF line ends, a header block that fits in the buffer) and
// the Handler answers them, they are answered here, with keep-alive as RFC 9112 (and net/http)
// has it. The first request that is anything else—another path or method, anything unusual, or
// anything malformed—hands the connection, with the bytes already read, to the http.Server, which
// keeps it from then on and decides what to answer (a 400 and close for a malformed request, as
// before). Hand-offs are counted by reason.
//
// The http.Server's ReadHeaderTimeout, IdleTimeout, ReadTimeout (as their fallback, as net/http
// does) and WriteTimeout apply on the fast path too. Deliberate differences from net/http:
//   - A read deadline is moved at most once a second per connection, not at every request (it
//     costs a timer update): an idle connection may be closed up to a second before IdleTimeout.
//   - A bare LF as a line end, a folded header line, or a header block larger than
//     MaxHeaderBytes hands the request to net/http rather than being handled here.
//   - Responses carry only what the Handler gives and Date, Content-Length and Connection, in
//     net/http's order; the status is always 200.
//   - Once Shutdown has begun, a connection whose next request is for net/http is closed rather
//     than handed over (net/http no longer accepts).
package httpfast

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Request is a simple request the Handler may answer. Its strings are the Handler's to keep.
type Request struct {
	// Method is "GET" or "HEAD".
	Method string
	// Path is the target's path with its percent-escapes decoded: it starts with '/' and is what
	// net/http's URL.Path would be (not cleaned: "/a/../b" stays as it is).
	Path string
	// RawQuery is the target after '?', without it ("" if none), as net/http's URL.RawQuery.
	RawQuery string
	// RemoteAddr is the client's address, as net/http's Request.RemoteAddr.
	RemoteAddr string
}

// Response is a 200 answer to a Request.
type Response struct {
	// Header holds the header lines, each "Name: value\r\n", written as they are. The server adds
	// Content-Length, Date and, when needed, Connection.
	Header []byte
	// Body is the body (not written for HEAD). The server only reads it.
	Body []byte
}

// Handler answers simple requests.
type Handler interface {
	// ServeFast answers r with a 200, or returns false, having done nothing, to hand r and its
	// connection to net/http. It may be called from many goroutines at once.
	ServeFast(r *Request) (Response, bool)
}

// MaxHeaderBytes bounds the header block of a request answered on the fast path; a larger one
// goes to net/http with its connection.
const MaxHeaderBytes = 4096

// Config configures a Server.
type Config struct {
	// HTTP serves every connection the fast path hands over; its timeouts apply to the fast path
	// too. Required. Serve and Shutdown of the Server call its Serve and Shutdown.
	HTTP *http.Server
	// Fast answers the simple requests. Required.
	Fast Handler
	// Registerer gets pxejoin_http_fast_handoffs_total (nil: not registered).
	Registerer prometheus.Registerer
}

// Server serves connections on the fast path and hands the rest to an http.Server.
type Server struct {
	http     *http.Server
	fast     Handler
	handoffs map[string]prometheus.Counter // by reason
	date     atomic.Pointer[dateLine]

	shutdown atomic.Bool
	mu       sync.Mutex
	ln       net.Listener
	hl       *handoffListener
	conns    map[*conn]struct{}
	httpDone chan struct{} // closed when HTTP.Serve returned
}

// New makes a Server.
func New(cfg Config) (*Server, error) {
	if cfg.HTTP == nil || cfg.Fast == nil {
		return nil, errors.New("httpfast: HTTP and Fast are required")
	}
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pxejoin_http_fast_handoffs_total",
		Help: "Connections the HTTP fast path handed to net/http, by the reason of the request that did it.",
	}, []string{"reason"})
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(vec); err != nil {
			return nil, err
		}
	}
	s := &Server{http: cfg.HTTP, fast: cfg.Fast, handoffs: map[string]prometheus.Counter{}, conns: map[*conn]struct{}{}}
	for _, r := range []string{reasonOther, reasonUnusual, reasonMalformed, reasonTooLarge} {
		s.handoffs[r] = vec.WithLabelValues(r)
	}
	return s, nil
}

// Serve accepts connections on ln until Shutdown or Close, and serves them. It returns
// http.ErrServerClosed after Shutdown or Close, or the listener's error; either way ln is closed
// and the http.Server stopped accepting the hand-offs.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.shutdown.Load() || s.ln != nil {
		s.mu.Unlock()
		ln.Close()
		if s.shutdown.Load() {
			return http.ErrServerClosed
		}
		return errors.New("httpfast: Serve called twice")
	}
	s.ln, s.hl, s.httpDone = ln, newHandoffListener(ln.Addr()), make(chan struct{})
	s.mu.Unlock()
	go func() {
		defer close(s.httpDone)
		_ = s.http.Serve(s.hl) // http.ErrServerClosed, or net.ErrClosed once hl is closed below
	}()
	defer func() {
		ln.Close()
		s.hl.Close()
		<-s.httpDone
	}()
	var delay time.Duration // as net/http: back off on temporary accept errors
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.shutdown.Load() {
				return http.ErrServerClosed
			}
			if te, ok := err.(interface{ Temporary() bool }); ok && te.Temporary() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		fc := newConn(s, c)
		s.mu.Lock()
		if s.shutdown.Load() {
			s.mu.Unlock()
			c.Close()
			continue
		}
		s.conns[fc] = struct{}{}
		s.mu.Unlock()
		go fc.serve()
	}
}

// Shutdown stops accepting, closes idle connections and waits for the others to finish their
// request (on both paths), or for ctx to end, whose error it then returns.
func (s *Server) Shutdown(ctx context.Context) error {
	s.beginShutdown()
	httpErr := make(chan error, 1)
	go func() { httpErr <- s.http.Shutdown(ctx) }()
	tick := time.Millisecond
	for !s.closeIdle() {
		select {
		case <-ctx.Done():
			<-httpErr
			return ctx.Err()
		case <-time.After(tick):
			tick = min(2*tick, 500*time.Millisecond)
		}
	}
	return <-httpErr
}

// Close closes the listener and every connection at once, on both paths.
func (s *Server) Close() error {
	s.beginShutdown()
	err := s.http.Close()
	s.mu.Lock()
	for fc := range s.conns {
		fc.state.Store(stateClosed)
		fc.c.Close()
	}
	s.mu.Unlock()
	return err
}

func (s *Server) beginShutdown() {
	s.shutdown.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil {
		s.ln.Close()
		s.hl.Close()
	}
}

// closeIdle closes the fast path's idle connections (and new ones silent for 5 s, as net/http
// does) and reports whether none are left.
func (s *Server) closeIdle() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := time.Now().Unix() - 5
	for fc := range s.conns {
		st := fc.state.Load()
		if st == stateIdle || st == stateNew && fc.since < old {
			if fc.state.CompareAndSwap(st, stateClosed) {
				fc.c.Close()
			}
		}
	}
	return len(s.conns) == 0
}

func (s *Server) forget(fc *conn) {
	s.mu.Lock()
	delete(s.conns, fc)
	s.mu.Unlock()
}

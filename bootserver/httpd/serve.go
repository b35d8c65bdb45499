package httpd

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pxejoin/pxejoin/bootserver/config"
)

// shutdownGrace is how long Serve waits, once ctx ends, for requests under way.
const shutdownGrace = 10 * time.Second

// Serve serves the handler on ln until ctx ends, then shuts down. What a client may hold is bounded
// by Config.Limits: the time to send a request's header (ReadHeaderTimeout, however slowly it
// trickles in), an idle kept-alive connection's life, the header's size (a larger one gets 431) and
// the connections one client address holds at once (past it, a new one is closed at once and
// counted in pxejoin_http_connections_refused_total).
func (h *Handler) Serve(ctx context.Context, ln net.Listener) error {
	lim := h.limits()
	hs := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: lim.ReadHeaderTimeout,
		IdleTimeout:       lim.IdleTimeout,
		MaxHeaderBytes:    lim.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(h.log.Handler(), slog.LevelWarn),
	}
	done := make(chan error, 1)
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		defer cancel()
		done <- hs.Shutdown(sctx)
	}()
	err := hs.Serve(&clientLimit{Listener: ln, max: lim.MaxConnsPerClient, refused: h.refused, conns: map[netip.Addr]int{}})
	if !errors.Is(err, http.ErrServerClosed) {
		hs.Close()
		return err
	}
	return <-done
}

// limits is Config.Limits with defaults for zero fields.
func (h *Handler) limits() config.HTTP {
	l := h.cfg.Limits
	if l.ReadHeaderTimeout <= 0 {
		l.ReadHeaderTimeout = config.DefaultReadHeaderTimeout
	}
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = config.DefaultIdleTimeout
	}
	if l.MaxHeaderBytes <= 0 {
		l.MaxHeaderBytes = config.DefaultMaxHeaderBytes
	}
	if l.MaxConnsPerClient <= 0 {
		l.MaxConnsPerClient = config.DefaultMaxConnsPerClient
	}
	return l
}

// clientLimit is a listener that lets each client address hold at most max connections: past it,
// a new connection is closed as soon as it is accepted and counted. Its map holds only addresses
// with connections open.
type clientLimit struct {
	net.Listener
	max     int
	refused prometheus.Counter

	mu    sync.Mutex
	conns map[netip.Addr]int
}

func (l *clientLimit) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		var addr netip.Addr
		if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
			addr = ta.AddrPort().Addr().Unmap()
		}
		l.mu.Lock()
		ok := l.conns[addr] < l.max
		if ok {
			l.conns[addr]++
		}
		l.mu.Unlock()
		if ok {
			return &limitedConn{Conn: c, l: l, addr: addr}, nil
		}
		l.refused.Inc()
		c.Close()
	}
}

func (l *clientLimit) release(addr netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conns[addr]--; l.conns[addr] <= 0 {
		delete(l.conns, addr)
	}
}

// limitedConn gives its place back to its clientLimit when closed.
type limitedConn struct {
	net.Conn
	l    *clientLimit
	addr netip.Addr
	once sync.Once
}

func (c *limitedConn) Close() error {
	c.once.Do(func() { c.l.release(c.addr) })
	return c.Conn.Close()
}

// ReadFrom keeps the TCP connection's ReadFrom reachable: net/http sends files with it (sendfile).
func (c *limitedConn) ReadFrom(r io.Reader) (int64, error) { return io.Copy(c.Conn, r) }

// CloseWrite keeps the TCP connection's half-close reachable: net/http sends an error (431) with it
// before closing, so that the client reads the answer rather than a reset.
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

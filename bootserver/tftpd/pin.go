package tftpd

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/pin/tftp/v3"
)

// pinConn is the net.PacketConn pin/tftp's Server reads requests from. It never sees the
// network: the request loop delivers to it the normalised RRQs it chose pin/tftp for, and
// pin/tftp opens a socket of its own for each transfer. (pin/tftp writes on its listening
// connection only in single-port mode, which is not used.)
type pinConn struct {
	laddr net.Addr
	in    chan pinPacket
	done  chan struct{}
	once  sync.Once
}

type pinPacket struct {
	data []byte
	src  *net.UDPAddr
}

func newPinConn(laddr net.Addr) *pinConn {
	return &pinConn{laddr: laddr, in: make(chan pinPacket, 64), done: make(chan struct{})}
}

// deliver queues a request for pin/tftp; false if the queue is full or pinConn closed.
func (c *pinConn) deliver(p []byte, src *net.UDPAddr) bool {
	select {
	case <-c.done:
		return false
	default:
	}
	select {
	case c.in <- pinPacket{data: p, src: src}:
		return true
	default:
		return false
	}
}

// ReadFrom implements net.PacketConn.
func (c *pinConn) ReadFrom(b []byte) (int, net.Addr, error) {
	select {
	case p := <-c.in:
		return copy(b, p.data), p.src, nil
	case <-c.done:
		return 0, nil, net.ErrClosed
	}
}

// WriteTo implements net.PacketConn; pin/tftp does not write here outside single-port mode.
func (c *pinConn) WriteTo([]byte, net.Addr) (int, error) {
	return 0, errors.New("tftpd: pinConn is read-only")
}

// Close implements net.PacketConn.
func (c *pinConn) Close() error {
	c.once.Do(func() { close(c.done) })
	return nil
}

// LocalAddr implements net.PacketConn: the server socket's address.
func (c *pinConn) LocalAddr() net.Addr { return c.laddr }

// SetDeadline implements net.PacketConn (unused by pin/tftp).
func (c *pinConn) SetDeadline(time.Time) error { return nil }

// SetReadDeadline implements net.PacketConn (unused by pin/tftp).
func (c *pinConn) SetReadDeadline(time.Time) error { return nil }

// SetWriteDeadline implements net.PacketConn (unused by pin/tftp).
func (c *pinConn) SetWriteDeadline(time.Time) error { return nil }

// pinRead is pin/tftp's read handler. The request loop has already checked the name, the mode
// and the options and found the file; pin/tftp negotiates blksize and tsize and sends.
func (sv *serving) pinRead(name string, rf io.ReaderFrom) error {
	s := sv.s
	ot, ok := rf.(tftp.OutgoingTransfer)
	if !ok {
		return errors.New("tftpd: pin/tftp handed a transfer without a remote address")
	}
	ra := ot.RemoteAddr()
	remote := &ra
	defer s.slots.give(ra.AddrPort().Addr().Unmap()) // taken by the request loop
	rc, size, _, msg, err := sv.open(s.cfg.Files[name], name, remote)
	if err != nil {
		// The file went away since the loop found it. pin/tftp answers every handler error
		// with ERROR 1 and this message.
		return errors.New(msg)
	}
	defer rc.Close()
	if size >= 0 {
		ot.SetSize(size)
	}
	sr := &startReader{ctx: sv.ctx, r: rc, onStart: func() { s.event(remote, name, EventStart) }}
	t0 := time.Now()
	n, err := rf.ReadFrom(sr)
	sv.finish("pin", remote, name, n, err, time.Since(t0), sr.started)
	return nil // on error pin/tftp has already sent ERROR and closed the transfer
}

// startReader reports the first Read — pin/tftp reads only once the client accepted the OACK —
// and fails once ctx ends, which makes pin/tftp abort the transfer on shutdown. It hides the
// file's Seek on purpose: the size comes from SetSize.
type startReader struct {
	ctx     context.Context
	r       io.Reader
	onStart func()
	started bool
}

func (r *startReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	if !r.started {
		r.started = true
		r.onStart()
	}
	return r.r.Read(p)
}

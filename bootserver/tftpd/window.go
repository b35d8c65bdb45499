package tftpd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// errTimeout ends a transfer whose client stopped answering.
var errTimeout = errors.New("client stopped answering")

// clientError is an ERROR packet the client sent: it ended the transfer. OVMF does this on
// purpose after the OACK of its tsize probe (code 8), so it is not a server failure.
type clientError struct {
	code uint16
	msg  string
}

func (e *clientError) Error() string {
	return fmt.Sprintf("client sent ERROR %d: %q", e.code, e.msg)
}

// windowSender serves one read request with RFC 7440 windows (windowsize 1 is RFC 1350 lockstep)
// over a socket of its own (the transfer ID).
type windowSender struct {
	conn    *net.UDPConn
	remote  netip.AddrPort // the client's transfer ID
	blksize int
	window  int
	timeout time.Duration
	retries int
	oack    []option // empty: no OACK, DATA 1 goes first

	onStart      func() // the client accepted the OACK (or there was none): data flows
	onRetransmit func() // one DATA packet sent again
	onForeign    func() // a packet from another address or port

	bw    batchWriter // set on first use
	raddr *net.UDPAddr
	msgs  []ipv4.Message
}

// run sends r and returns the number of file bytes sent. Blocks are numbered 1, 2, … and the
// number wraps from 65535 to 0; inside, blocks are counted with 64 bits and an ACK is matched
// to the one unacknowledged block of the window that carries its number.
func (w *windowSender) run(ctx context.Context, r io.Reader) (int64, error) {
	stop := context.AfterFunc(ctx, func() { _ = w.conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	rbuf := make([]byte, maxRequest)

	if len(w.oack) > 0 {
		pkt := appendOACK(nil, w.oack)
		for tries := 0; ; tries++ {
			if tries > w.retries {
				return 0, errTimeout
			}
			if err := w.write(pkt); err != nil {
				return 0, err
			}
			_, err := w.await(ctx, rbuf, func(rp reply) bool { return rp.block == 0 })
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
			if err != nil {
				return 0, err
			}
			break
		}
	}
	if w.onStart != nil {
		w.onStart()
	}

	slots := make([][]byte, w.window)
	win := uint64(w.window)
	var (
		base   uint64 // the last block the client acknowledged
		sent   uint64 // the last block sent in the current window
		loaded uint64 // the last block read from r
		last   uint64 // the final (short) block, once read; 0 before
		total  int64
		tries  int
	)
	batch := make([][]byte, 0, w.window)
	for {
		batch = batch[:0]
		for sent < base+win && (last == 0 || sent < last) {
			k := sent + 1
			slot := slots[k%win]
			if k > loaded {
				if slot == nil {
					slot = make([]byte, 4+w.blksize)
				}
				slot = appendDataHeader(slot[:0], uint16(k))[:4+w.blksize]
				n, err := io.ReadFull(r, slot[4:])
				if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
					w.sendError(codeUndefined, "read error")
					return total, fmt.Errorf("reading block %d: %w", k, err)
				}
				slot = slot[:4+n]
				slots[k%win] = slot
				total += int64(n)
				loaded = k
				if n < w.blksize {
					last = k
				}
			} else if w.onRetransmit != nil {
				w.onRetransmit()
			}
			batch = append(batch, slot)
			sent = k
		}
		if err := w.writeBatch(batch); err != nil {
			return total, err
		}
		rp, err := w.await(ctx, rbuf, func(rp reply) bool {
			d := rp.block - uint16(base)
			return d != 0 && uint64(d) <= sent-base
		})
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// RFC 7440 §4: no ACK within the timeout: send the window again from the block after
			// the last acknowledged one.
			if tries++; tries > w.retries {
				return total, errTimeout
			}
			sent = base
			continue
		}
		if err != nil {
			return total, err
		}
		// A new ACK: the client holds every block up to it (the end of a window, or the last
		// block it got in order before a gap). The next window starts right after it. ACKs of
		// blocks already acknowledged (duplicates, or a client's timeout re-ACK) never get
		// here: they would restart a window already under way (RFC 7440 §4's warning about
		// Sorcerer's Apprentice-like duplication); the timer above covers any loss instead.
		base += uint64(rp.block - uint16(base))
		tries = 0
		if base == last {
			return total, nil
		}
		sent = base
	}
}

// await reads until an ACK accepted by want arrives, the client sends ERROR (a *clientError),
// the timeout passes (os.ErrDeadlineExceeded) or ctx ends (its error, after telling the client).
// Packets from other transfer IDs are answered with ERROR 5 (RFC 1350) and otherwise ignored,
// as are malformed packets and ACKs that want refuses.
func (w *windowSender) await(ctx context.Context, buf []byte, want func(reply) bool) (reply, error) {
	if err := ctx.Err(); err != nil {
		w.sendError(codeUndefined, "server shutting down")
		return reply{}, err
	}
	if err := w.conn.SetReadDeadline(time.Now().Add(w.timeout)); err != nil {
		return reply{}, err
	}
	for {
		n, from, err := w.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil {
				w.sendError(codeUndefined, "server shutting down")
				return reply{}, ctx.Err()
			}
			return reply{}, err
		}
		if unmap(from) != w.remote {
			if w.onForeign != nil {
				w.onForeign()
			}
			_, _ = w.conn.WriteToUDPAddrPort(appendError(nil, codeUnknownTID, "unknown transfer ID"), from)
			continue
		}
		rp, err := parseReply(buf[:n])
		if err != nil {
			continue
		}
		if rp.op == opERROR {
			return rp, &clientError{code: rp.code, msg: rp.msg}
		}
		if want(rp) {
			return rp, nil
		}
	}
}

func (w *windowSender) write(p []byte) error {
	_, err := w.conn.WriteToUDPAddrPort(p, w.remote)
	return err
}

// writeBatch sends a window's packets, with as few system calls as the OS allows (sendmmsg on
// Linux): on a busy host the window is then one wake-up of the sender, not windowsize of them.
func (w *windowSender) writeBatch(ps [][]byte) error {
	if len(ps) == 1 {
		return w.write(ps[0])
	}
	if w.bw == nil {
		w.bw, w.raddr = newBatchWriter(w.conn), net.UDPAddrFromAddrPort(w.remote)
	}
	w.msgs = w.msgs[:0]
	for i := range ps {
		w.msgs = append(w.msgs, ipv4.Message{Buffers: ps[i : i+1], Addr: w.raddr})
	}
	for ms := w.msgs; len(ms) > 0; {
		n, err := w.bw.WriteBatch(ms, 0)
		if err != nil {
			return err
		}
		ms = ms[n:]
	}
	return nil
}

// batchWriter is the part of ipv4.PacketConn and ipv6.PacketConn that writeBatch uses (their
// Message types are the same type).
type batchWriter interface {
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

func newBatchWriter(c *net.UDPConn) batchWriter {
	if la, ok := c.LocalAddr().(*net.UDPAddr); ok && la.IP.To4() != nil {
		return ipv4.NewPacketConn(c)
	}
	return ipv6.NewPacketConn(c)
}

func (w *windowSender) sendError(code uint16, msg string) {
	_, _ = w.conn.WriteToUDPAddrPort(appendError(nil, code, msg), w.remote)
}

// unmap turns an IPv4-mapped IPv6 address into plain IPv4, so that addresses read from a
// dual-stack socket compare equal to those read from an IPv4 one.
func unmap(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

package tftpd

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"sync"
	"time"

	"github.com/pin/tftp/v3/netascii"
)

// serving is the state of one ServeConn call.
type serving struct {
	s    *Server
	ctx  context.Context // cancelled when ServeConn ends
	fsys fs.FS           // nil: only Files
	pc   *pinConn
	wg   sync.WaitGroup // window transfers
}

// loop reads the server port until the socket is closed. It runs in the socket's network
// namespace (see inSocketNetns): the transfer sockets it opens must be there too.
func (sv *serving) loop(dc *datagramConn) error {
	buf := make([]byte, maxRequest+1) // one more byte: a longer datagram shows as too long
	for {
		n, src, dst, ifIndex, err := dc.read(buf)
		if err != nil {
			if sv.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return err
			}
			sv.s.log.Debug("tftp: read", "err", err)
			time.Sleep(10 * time.Millisecond) // a persistent error must not spin
			continue
		}
		sv.handle(dc, buf[:n], src, dst, ifIndex)
	}
}

// handle answers one datagram from the server port.
func (sv *serving) handle(dc *datagramConn, p []byte, src netip.AddrPort, dst netip.Addr, ifIndex int) {
	s := sv.s
	d := decide(p, s.limits(dst, ifIndex), sv.fsys, s.cfg.Files)
	if d.drop != "" {
		s.m.errors.WithLabelValues(d.drop).Inc()
		s.log.Debug("tftp: dropped packet", "remote", src.String(), "reason", d.drop, "len", len(p))
		return
	}
	op := "read"
	if d.req.op == opWRQ {
		op = "write"
	}
	s.m.requests.WithLabelValues(op).Inc()
	remote := net.UDPAddrFromAddrPort(unmap(src))
	if d.errKind != "" {
		s.m.errors.WithLabelValues(d.errKind).Inc()
		s.warn.Warn("tftp: request refused", "remote", remote.String(), "op", op, "file", d.req.filename,
			"code", d.errCode, "reason", d.errMsg)
		if d.req.op == opRRQ {
			s.event(remote, d.req.filename, EventError)
		}
		dc.write(appendError(nil, d.errCode, d.errMsg), src, dst)
		return
	}
	client := src.Addr().Unmap()
	if kind := s.slots.take(client); kind != "" {
		s.m.errors.WithLabelValues(kind).Inc()
		s.warn.Info("tftp: too many transfers, requests dropped: raise tftp.maxTransfers or tftp.maxTransfersPerClient if these are real clients",
			"remote", remote.String(), "reason", kind)
		return
	}
	if d.pinRRQ != nil {
		// pinRead gives the slot back. (pin/tftp calls it for every request delivered, unless it
		// cannot open the transfer's socket: then the slot is lost, as the socket is.)
		if !sv.pc.deliver(d.pinRRQ, remote) {
			s.slots.give(client)
			s.m.errors.WithLabelValues(kindBusy).Inc()
		}
		return
	}
	// The transfer's socket is opened here, on the loop's thread, in the server's namespace.
	conn, err := listenTransfer(dst)
	if err != nil {
		s.slots.give(client)
		s.m.errors.WithLabelValues(kindIO).Inc()
		s.warn.Warn("tftp: cannot open a transfer socket", "remote", remote.String(), "err", err)
		dc.write(appendError(nil, codeUndefined, "server error"), src, dst)
		return
	}
	sv.wg.Add(1)
	go sv.window(d, conn, remote)
}

// window runs one RFC 7440 transfer.
func (sv *serving) window(d decision, conn *net.UDPConn, remote *net.UDPAddr) {
	defer sv.wg.Done()
	defer conn.Close()
	s := sv.s
	defer s.slots.give(remote.AddrPort().Addr().Unmap())
	w := &windowSender{
		conn:         conn,
		remote:       remote.AddrPort(),
		blksize:      d.neg.blksize,
		window:       d.neg.windowsize,
		timeout:      s.cfg.Timeout,
		retries:      s.cfg.Retries,
		onRetransmit: s.m.retransmits.Inc,
		onForeign:    func() { s.m.errors.WithLabelValues(kindForeignTID).Inc() },
	}
	name := d.req.filename
	rc, size, code, msg, err := sv.open(d.opener, name, remote)
	if err != nil {
		w.sendError(code, msg)
		return
	}
	defer rc.Close()
	w.oack = d.neg.oackWithSize(size)
	started := false
	w.onStart = func() {
		started = true
		s.event(remote, name, EventStart)
	}
	var r io.Reader = rc
	if d.req.mode == "netascii" {
		r = netascii.ToReader(rc)
	}
	t0 := time.Now()
	n, err := w.run(sv.ctx, r)
	sv.finish("window", remote, name, n, err, time.Since(t0), started,
		"blksize", w.blksize, "windowsize", w.window)
}

// open opens name for remote with op (a Config.Files entry), or from the root if op is nil. A
// failure is counted, logged and reported as an event; code and msg are the TFTP error to send.
func (sv *serving) open(op Opener, name string, remote *net.UDPAddr) (rc io.ReadCloser, size int64, code uint16, msg string, err error) {
	if op != nil {
		rc, size, err = op(sv.ctx, remote)
	} else {
		rc, size, err = openFile(sv.fsys, name)
	}
	if err != nil {
		var kind string
		code, msg, kind = openError(err)
		sv.s.m.errors.WithLabelValues(kind).Inc()
		sv.s.warn.Warn("tftp: open failed", "remote", remote.String(), "file", name, "err", err)
		sv.s.event(remote, name, EventError)
	}
	return rc, size, code, msg, err
}

// pinClientError matches the error pin/tftp v3.2.0's sender returns when the client sends ERROR.
var pinClientError = regexp.MustCompile(`^sending block \d+: code=(\d+), error: (.*)$`)

// asClientError recognises an ERROR from the client, from either sender.
func asClientError(err error) (*clientError, bool) {
	var ce *clientError
	if errors.As(err, &ce) {
		return ce, true
	}
	if m := pinClientError.FindStringSubmatch(err.Error()); m != nil {
		code, _ := strconv.Atoi(m[1])
		return &clientError{code: uint16(code), msg: m[2]}, true
	}
	return nil, false
}

// finish records the end of a transfer: metrics, one log line, an event.
func (sv *serving) finish(sender string, remote *net.UDPAddr, file string, n int64, err error, took time.Duration,
	started bool, attrs ...any) {
	s := sv.s
	s.m.bytesSent.Add(float64(n))
	attrs = append([]any{"remote", remote.String(), "file", file, "bytes", n, "took", took.Round(time.Millisecond),
		"sender", sender}, attrs...)
	result := "done"
	var netErr net.Error
	var ce *clientError
	isClient := false
	if err != nil {
		ce, isClient = asClientError(err)
	}
	switch {
	case err == nil:
		s.log.Info("tftp: sent", attrs...)
		s.event(remote, file, EventDone)
	case isClient:
		// OVMF ends its tsize probe with ERROR 8 right after the OACK: normal, not a failure.
		result = "aborted"
		s.m.aborts.Inc()
		s.log.Debug("tftp: client ended the transfer", append(attrs, "code", ce.code, "msg", ce.msg)...)
		if started {
			s.event(remote, file, EventError)
		}
	case sv.ctx.Err() != nil:
		result = "shutdown"
		s.log.Info("tftp: transfer ended by shutdown", attrs...)
		s.event(remote, file, EventError)
	case errors.Is(err, errTimeout) || (errors.As(err, &netErr) && netErr.Timeout()):
		result = "failed"
		s.m.errors.WithLabelValues(kindTimeout).Inc()
		s.warn.Warn("tftp: client stopped answering", attrs...)
		s.event(remote, file, EventError)
	default:
		result = "failed"
		s.m.errors.WithLabelValues(kindIO).Inc()
		s.warn.Warn("tftp: transfer failed", append(attrs, "err", err)...)
		s.event(remote, file, EventError)
	}
	s.m.transfers.WithLabelValues(sender, result).Inc()
}

// limits returns what a request that came in on interface ifIndex to address dst may negotiate:
// blksize is kept within the interface's MTU so that no DATA packet is fragmented.
func (s *Server) limits(dst netip.Addr, ifIndex int) limits {
	lim := limits{maxBlksize: s.cfg.MaxBlockSize, maxWindow: s.cfg.MaxWindowSize}
	if ifIndex <= 0 {
		return lim
	}
	ifi, err := net.InterfaceByIndex(ifIndex)
	if err != nil || ifi.MTU <= 0 {
		return lim
	}
	overhead := 20 + 8 + 4 // IPv4, UDP, TFTP DATA header
	if dst.Is6() && !dst.Is4In6() {
		overhead = 40 + 8 + 4
	}
	if b := ifi.MTU - overhead; b >= defaultBlksize {
		lim.maxBlksize = min(lim.maxBlksize, b)
	}
	return lim
}

package tftpd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"time"

	"golang.org/x/net/ipv4"
)

// testClient is a small RFC 1350/2347/2348/2349/7440 read client for the tests and the
// benchmark. It ACKs the last block of each window, and the last block received in order as soon
// as it sees a gap (once per gap). Knobs simulate loss and misbehaving clients.
type testClient struct {
	server  string // host:port
	local   string // the client's IP address; "": the one the kernel picks
	blksize int    // 0: option not sent
	window  int    // 0: option not sent
	tsize   bool
	timeout time.Duration // default 2s
	retries int           // default 5

	// drop, if set, is asked about every DATA packet received (k is the block's 64-bit index,
	// 1-based) and a true answer discards it: simulated loss.
	drop func(k uint64) bool
	// noGapAck: do not ACK on a gap, wait for the server's timeout instead.
	noGapAck bool
	// dupAcks: send every ACK twice.
	dupAcks bool
	// abortOACK: answer the OACK with ERROR abortOACK and stop (OVMF's tsize probe).
	abortOACK uint16
	// sink, if set, receives the file instead of testResult.data (the benchmark hashes it).
	sink io.Writer
}

type testResult struct {
	data        []byte
	oack        map[string]string // nil: no OACK came
	dataPackets int               // DATA packets received, duplicates and dropped ones included
	acks        int
}

// tftpError is an ERROR the server sent.
type tftpError struct {
	code uint16
	msg  string
}

func (e *tftpError) Error() string { return fmt.Sprintf("server sent ERROR %d %q", e.code, e.msg) }

func (c testClient) get(name string) (testResult, error) {
	var res testResult
	timeout, retries := c.timeout, c.retries
	if timeout == 0 {
		timeout = 2 * time.Second
	}
	if retries == 0 {
		retries = 5
	}
	srv, err := net.ResolveUDPAddr("udp4", c.server)
	if err != nil {
		return res, err
	}
	var laddr *net.UDPAddr
	if c.local != "" {
		laddr = &net.UDPAddr{IP: net.ParseIP(c.local)}
	}
	conn, err := net.ListenUDP("udp4", laddr)
	if err != nil {
		return res, err
	}
	defer conn.Close()
	var opts []option
	if c.tsize {
		opts = append(opts, option{"tsize", "0"})
	}
	if c.blksize > 0 {
		opts = append(opts, option{"blksize", strconv.Itoa(c.blksize)})
	}
	if c.window > 0 {
		opts = append(opts, option{"windowsize", strconv.Itoa(c.window)})
	}
	out := appendRequest(nil, request{op: opRRQ, filename: name, mode: "octet", opts: opts})
	to := srv
	if _, err := conn.WriteToUDP(out, to); err != nil {
		return res, err
	}
	blksize, window := 512, 1
	var tid netip.AddrPort
	var last uint64 // the last block received in order
	inWin, tries, gapAcked, gotData := 0, 0, false, false
	ack := func(block uint64) error {
		out = binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, opACK), uint16(block))
		n := 1
		if c.dupAcks {
			n = 2
		}
		for range n {
			res.acks++
			if _, err := conn.WriteToUDP(out, to); err != nil {
				return err
			}
		}
		return nil
	}
	// handle processes one datagram; done means the transfer is over.
	handle := func(p []byte, from netip.AddrPort) (done bool, err error) {
		if !tid.IsValid() {
			tid, to = from, net.UDPAddrFromAddrPort(from)
		} else if from != tid {
			return false, nil
		}
		if len(p) < 4 {
			return true, fmt.Errorf("short packet %x", p)
		}
		switch binary.BigEndian.Uint16(p) {
		case opERROR:
			msg, _, _ := bytes.Cut(p[4:], []byte{0})
			return true, &tftpError{code: binary.BigEndian.Uint16(p[2:]), msg: string(msg)}
		case opOACK:
			if gotData || res.oack != nil {
				return false, nil
			}
			res.oack = map[string]string{}
			f := bytes.Split(p[2:], []byte{0})
			for i := 0; i+1 < len(f); i += 2 {
				res.oack[string(f[i])] = string(f[i+1])
			}
			if v, err := strconv.Atoi(res.oack["blksize"]); err == nil {
				blksize = v
			}
			if v, err := strconv.Atoi(res.oack["windowsize"]); err == nil {
				window = v
			}
			if c.abortOACK != 0 {
				_, err := conn.WriteToUDP(appendError(nil, c.abortOACK, "tsize probe done"), to)
				return true, err
			}
			return false, ack(0)
		case opDATA:
			gotData = true
			res.dataPackets++
			blk := binary.BigEndian.Uint16(p[2:])
			k := last + uint64(blk-uint16(last)) // the block's index if it is ahead of last
			if c.drop != nil && c.drop(k) {
				return false, nil
			}
			if blk != uint16(last+1) {
				if !c.noGapAck && !gapAcked {
					gapAcked, inWin = true, 0
					return false, ack(last)
				}
				return false, nil
			}
			if c.sink != nil {
				_, _ = c.sink.Write(p[4:])
			} else {
				res.data = append(res.data, p[4:]...)
			}
			last++
			inWin++
			gapAcked, tries = false, 0
			if len(p)-4 < blksize {
				return true, ack(last)
			}
			if inWin >= window {
				inWin = 0
				return false, ack(last)
			}
		}
		return false, nil
	}
	// Read with recvmmsg: a window's packets usually come in one system call.
	pc := ipv4.NewPacketConn(conn)
	msgs := make([]ipv4.Message, 16)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, 65536)}
	}
	for {
		_ = conn.SetReadDeadline(time.Now().Add(timeout))
		n, err := pc.ReadBatch(msgs, 0)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if tries++; tries > retries {
				return res, fmt.Errorf("timeout after block %d", last)
			}
			if _, err := conn.WriteToUDP(out, to); err != nil { // the RRQ or the last ACK again
				return res, err
			}
			continue
		}
		if err != nil {
			return res, err
		}
		for _, m := range msgs[:n] {
			ua, _ := m.Addr.(*net.UDPAddr)
			if ua == nil {
				continue
			}
			if done, err := handle(m.Buffers[0][:m.N], ua.AddrPort()); done || err != nil {
				return res, err
			}
		}
	}
}

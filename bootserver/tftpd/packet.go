package tftpd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strconv"
	"strings"
)

// TFTP opcodes (RFC 1350, RFC 2347).
const (
	opRRQ   uint16 = 1
	opWRQ   uint16 = 2
	opDATA  uint16 = 3
	opACK   uint16 = 4
	opERROR uint16 = 5
	opOACK  uint16 = 6
)

// TFTP error codes (RFC 1350, RFC 2347).
const (
	codeUndefined  uint16 = 0
	codeNotFound   uint16 = 1
	codeAccess     uint16 = 2
	codeIllegalOp  uint16 = 4
	codeUnknownTID uint16 = 5
	codeOptions    uint16 = 8
)

// Protocol limits.
const (
	defaultBlksize = 512   // RFC 1350
	minBlksize     = 8     // RFC 2348
	maxBlksize     = 65464 // RFC 2348: a 65535-byte IP datagram minus headers
	maxWindowLimit = 65535 // RFC 7440
	// maxRequest bounds a request datagram. RFC 2347 keeps requests within 512 bytes; some clients
	// pad them, so a little more is accepted, and anything longer is dropped as hostile.
	maxRequest = 1024
)

var (
	errShort      = errors.New("short packet")
	errOpcode     = errors.New("not a request opcode")
	errNoTerm     = errors.New("request not NUL-terminated")
	errNoFilename = errors.New("missing filename or mode")
	errTooLong    = errors.New("request too long")
)

// option is one RFC 2347 option as the client sent it, its name in lower case.
type option struct {
	name, value string
}

// request is a parsed RRQ or WRQ.
type request struct {
	op       uint16
	filename string
	mode     string   // lower case
	opts     []option // in the client's order; a repeated name keeps its first value
}

// parseRequest decodes an RRQ or WRQ. It is strict about structure (opcode, NUL-terminated
// filename and mode) and lenient where real clients are sloppy: empty trailing fields (padding)
// end the option list, and an option name without a value is ignored.
func parseRequest(p []byte) (request, error) {
	if len(p) < 2 {
		return request{}, errShort
	}
	if len(p) > maxRequest {
		return request{}, errTooLong
	}
	op := binary.BigEndian.Uint16(p)
	if op != opRRQ && op != opWRQ {
		return request{}, errOpcode
	}
	body := p[2:]
	if len(body) == 0 || body[len(body)-1] != 0 {
		return request{}, errNoTerm
	}
	fields := bytes.Split(body[:len(body)-1], []byte{0})
	if len(fields) < 2 || len(fields[0]) == 0 || len(fields[1]) == 0 {
		return request{}, errNoFilename
	}
	r := request{op: op, filename: string(fields[0]), mode: strings.ToLower(string(fields[1]))}
	seen := map[string]bool{}
	for i := 2; i+1 < len(fields); i += 2 {
		if len(fields[i]) == 0 {
			break // padding
		}
		name := strings.ToLower(string(fields[i]))
		if seen[name] {
			continue
		}
		seen[name] = true
		r.opts = append(r.opts, option{name: name, value: string(fields[i+1])})
	}
	return r, nil
}

// appendRequest encodes a request (used to hand a normalised RRQ to pin/tftp, and by tests).
func appendRequest(b []byte, r request) []byte {
	b = binary.BigEndian.AppendUint16(b, r.op)
	b = append(append(b, r.filename...), 0)
	b = append(append(b, r.mode...), 0)
	return appendOptions(b, r.opts)
}

func appendOptions(b []byte, opts []option) []byte {
	for _, o := range opts {
		b = append(append(b, o.name...), 0)
		b = append(append(b, o.value...), 0)
	}
	return b
}

// appendOACK encodes an option acknowledgement.
func appendOACK(b []byte, opts []option) []byte {
	return appendOptions(binary.BigEndian.AppendUint16(b, opOACK), opts)
}

// appendError encodes an ERROR packet.
func appendError(b []byte, code uint16, msg string) []byte {
	b = binary.BigEndian.AppendUint16(b, opERROR)
	b = binary.BigEndian.AppendUint16(b, code)
	return append(append(b, msg...), 0)
}

// appendDataHeader encodes the 4-byte header of a DATA packet; the block's bytes follow it.
func appendDataHeader(b []byte, block uint16) []byte {
	b = binary.BigEndian.AppendUint16(b, opDATA)
	return binary.BigEndian.AppendUint16(b, block)
}

// reply is a packet a client sends during a transfer, as the sender sees it.
type reply struct {
	op    uint16
	block uint16 // ACK
	code  uint16 // ERROR
	msg   string // ERROR
}

// parseReply decodes an ACK or ERROR; anything else is an error.
func parseReply(p []byte) (reply, error) {
	if len(p) < 4 {
		return reply{}, errShort
	}
	r := reply{op: binary.BigEndian.Uint16(p)}
	switch r.op {
	case opACK:
		r.block = binary.BigEndian.Uint16(p[2:])
	case opERROR:
		r.code = binary.BigEndian.Uint16(p[2:])
		msg := p[4:]
		if i := bytes.IndexByte(msg, 0); i >= 0 {
			msg = msg[:i]
		}
		r.msg = string(msg)
	default:
		return reply{}, errOpcode
	}
	return r, nil
}

// limits bound what a transfer may negotiate.
type limits struct {
	maxBlksize int // the configured cap, further lowered to the interface MTU
	maxWindow  int
}

// negotiation is the outcome of RFC 2347 option negotiation for one RRQ.
type negotiation struct {
	blksize    int
	windowsize int
	windowed   bool     // the client asked for a valid windowsize (RFC 7440)
	tsize      bool     // the client asked for tsize (RFC 2349)
	ack        []option // options to acknowledge, in the client's order; tsize's value is set later
}

// negotiate applies the options the server supports: blksize (RFC 2348: 8..65464, lowered to
// the limit), tsize (RFC 2349, answered with the file's size), windowsize (RFC 7440: 1..65535,
// lowered to the limit). Invalid values and other options (timeout, multicast, …) are left out of
// the OACK, which RFC 2347 defines as "not accepted": the client then uses the protocol's default.
func negotiate(opts []option, lim limits) negotiation {
	n := negotiation{blksize: defaultBlksize, windowsize: 1}
	for _, o := range opts {
		switch o.name {
		case "blksize":
			v, err := strconv.Atoi(o.value)
			if err != nil || v < minBlksize || v > maxBlksize {
				continue
			}
			n.blksize = min(v, lim.maxBlksize)
			n.ack = append(n.ack, option{"blksize", strconv.Itoa(n.blksize)})
		case "tsize":
			if _, err := strconv.ParseUint(o.value, 10, 63); err != nil {
				continue
			}
			n.tsize = true
			n.ack = append(n.ack, option{"tsize", "0"})
		case "windowsize":
			v, err := strconv.Atoi(o.value)
			if err != nil || v < 1 || v > maxWindowLimit {
				continue
			}
			n.windowsize = min(v, lim.maxWindow)
			n.windowed = true
			n.ack = append(n.ack, option{"windowsize", strconv.Itoa(n.windowsize)})
		}
	}
	return n
}

// oackWithSize returns the options to acknowledge with tsize set to size, or tsize left out when
// the size is unknown (size < 0).
func (n negotiation) oackWithSize(size int64) []option {
	out := make([]option, 0, len(n.ack))
	for _, o := range n.ack {
		if o.name == "tsize" {
			if size < 0 {
				continue
			}
			o.value = strconv.FormatInt(size, 10)
		}
		out = append(out, o)
	}
	return out
}

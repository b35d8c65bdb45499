package tftpd

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"unicode/utf8"
)

// Opener opens a generated file for one transfer. size is the content's length in bytes, or -1 if
// it is not known in advance (tsize is then left out of the OACK). remote is the client. An error
// that wraps fs.ErrNotExist is answered with ERROR 1 (file not found), fs.ErrPermission with
// ERROR 2, anything else with ERROR 0.
type Opener func(ctx context.Context, remote net.Addr) (rc io.ReadCloser, size int64, err error)

// File returns an Opener that serves the local file at path, opened at each request; it refuses
// (fs.ErrPermission) what is not a regular file.
func File(path string) Opener {
	return func(context.Context, net.Addr) (io.ReadCloser, int64, error) { return regular(os.Open(path)) }
}

// Error kinds counted in pxejoin_tftp_errors_total and dropped-packet reasons.
const (
	kindMalformed  = "malformed"         // a datagram on the server port that is no valid request
	kindOpcode     = "unexpected_opcode" // DATA/ACK/ERROR/OACK/unknown opcode on the server port
	kindWrite      = "write_refused"     // WRQ: the server is read-only
	kindMode       = "bad_mode"          // a mode other than octet or netascii
	kindAccess     = "access"            // traversal, absolute path, symlink out of the root, not a regular file
	kindNotFound   = "not_found"
	kindBusy       = "busy"        // MaxTransfers reached: the request is dropped, the client retries
	kindClientBusy = "client_busy" // MaxTransfersPerClient reached for the request's address: dropped
	kindTimeout    = "timeout"     // the client stopped answering
	kindIO         = "io"          // reading the file failed, or a socket error
	kindForeignTID = "foreign_tid" // a packet from another port during a transfer (RFC 1350: ERROR 5)
)

var errorKinds = []string{kindMalformed, kindOpcode, kindWrite, kindMode, kindAccess, kindNotFound,
	kindBusy, kindClientBusy, kindTimeout, kindIO, kindForeignTID}

// decision is what the request loop does with one datagram on the server port.
type decision struct {
	drop string // non-empty: drop the datagram, counted under this kind

	errKind string // non-empty: answer ERROR errCode errMsg, counted under this kind
	errCode uint16
	errMsg  string

	req    request
	neg    negotiation
	opener Opener // a generated file (Config.Files); nil: a file from the root
	size   int64  // from Stat for files from the root
	pinRRQ []byte // non-nil: hand this normalised RRQ to pin/tftp; nil: the RFC 7440 sender serves it
}

// validName reports whether a requested name may be looked up: a relative, slash-separated path
// without "." or ".." elements, empty elements, backslashes or control characters.
func validName(name string) bool {
	if name == "." || !utf8.ValidString(name) || !fs.ValidPath(name) {
		return false
	}
	for _, c := range name {
		if c < 0x20 || c == 0x7f || c == '\\' {
			return false
		}
	}
	return true
}

// decide parses one datagram from the server port and says how to answer it. It only reads
// metadata (Stat) and never blocks on the network.
func decide(p []byte, lim limits, fsys fs.FS, files map[string]Opener) decision {
	req, err := parseRequest(p)
	if err != nil {
		if errors.Is(err, errOpcode) {
			return decision{drop: kindOpcode}
		}
		return decision{drop: kindMalformed}
	}
	d := decision{req: req, size: -1}
	refuse := func(kind string, code uint16, msg string) decision {
		d.errKind, d.errCode, d.errMsg = kind, code, msg
		return d
	}
	if req.op == opWRQ {
		return refuse(kindWrite, codeAccess, "read-only server")
	}
	if req.mode != "octet" && req.mode != "netascii" {
		return refuse(kindMode, codeIllegalOp, "unsupported mode")
	}
	if !validName(req.filename) {
		return refuse(kindAccess, codeAccess, "access violation")
	}
	if op, ok := files[req.filename]; ok {
		d.opener = op
	} else {
		if fsys == nil {
			return refuse(kindNotFound, codeNotFound, "file not found")
		}
		fi, err := fs.Stat(fsys, req.filename)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return refuse(kindNotFound, codeNotFound, "file not found")
		case err != nil:
			// Permission, a symlink out of an os.Root, an invalid name for this FS.
			return refuse(kindAccess, codeAccess, "access violation")
		case !fi.Mode().IsRegular():
			return refuse(kindAccess, codeAccess, "not a regular file")
		}
		d.size = fi.Size()
	}
	d.neg = negotiate(req.opts, lim)
	if d.neg.windowed || d.neg.blksize < defaultBlksize {
		return d
	}
	// pin/tftp serves it: give it only what it understands, already clamped.
	norm := request{op: opRRQ, filename: req.filename, mode: req.mode}
	for _, o := range d.neg.ack {
		norm.opts = append(norm.opts, o) // blksize (clamped) and tsize "0": the handler sets the size
	}
	if b := appendRequest(nil, norm); len(b) <= 512 {
		d.pinRRQ = b
	}
	return d
}

// openError maps an error from opening a file to a TFTP error and a metrics kind.
func openError(err error) (code uint16, msg, kind string) {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return codeNotFound, "file not found", kindNotFound
	case errors.Is(err, fs.ErrPermission):
		return codeAccess, "access violation", kindAccess
	default:
		return codeUndefined, "cannot open file", kindIO
	}
}

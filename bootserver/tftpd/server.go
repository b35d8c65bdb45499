package tftpd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/pin/tftp/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pxejoin/pxejoin/bootserver/ratelog"
)

// EventKind says what an Event reports.
type EventKind int

// Event kinds.
const (
	// EventStart: data started to flow (the client accepted the OACK, or asked no options).
	// OVMF's tsize probe, which the client aborts right after the OACK, produces no event.
	EventStart EventKind = iota + 1
	// EventDone: the client acknowledged the last block.
	EventDone
	// EventError: the request was refused (file not found, access violation) — then without a
	// start before it — or a started transfer failed (timeout, read error, client abort,
	// shutdown).
	EventError
)

func (k EventKind) String() string {
	switch k {
	case EventStart:
		return "start"
	case EventDone:
		return "done"
	case EventError:
		return "error"
	}
	return "unknown"
}

// Event is a step of one transfer, for boot timelines.
type Event struct {
	Kind EventKind
	// Remote is the client's address (IPv4 clients as IPv4).
	Remote netip.AddrPort
	// File is the requested name.
	File string
}

// Defaults of Config's zero fields.
const (
	DefaultTimeout       = time.Second
	DefaultRetries       = 5
	DefaultMaxWindowSize = 64
	DefaultMaxTransfers  = 256
	// DefaultMaxTransfersPerClient is Config.MaxTransfersPerClient's default: a PXE client has
	// one transfer under way, two during OVMF's tsize probe.
	DefaultMaxTransfersPerClient = 4
)

// Config configures a Server. Exactly one of Dir and FS may be set; Files may come with either
// or alone.
type Config struct {
	// Dir is the directory served read-only. It is opened with os.Root: names that would leave
	// it — "..", absolute paths, symlinks pointing outside — are refused with ERROR 2.
	Dir string
	// FS is served read-only when Dir is empty. Names are checked the same way, but whether a
	// symlink may lead out of the tree is up to the FS (os.DirFS follows them; os.Root.FS and
	// embed.FS do not): prefer Dir for a directory on disk.
	FS fs.FS
	// Files are generated files by name (a relative slash-separated path such as
	// "pxelinux.cfg/default"), served before Dir/FS. See Bytes.
	Files map[string]Opener
	// Logger receives one line per transfer (Info), refusals and failures (Warn) and dropped
	// packets and client aborts (Debug). Default: discard.
	Logger *slog.Logger
	// Registerer, if set, receives the pxejoin_tftp_* metrics.
	Registerer prometheus.Registerer
	// OnEvent, if set, is told of each transfer's progress (see Event). It is called
	// synchronously, from the request loop (for refusals) and from the transfers' goroutines, so
	// it must be fast and must not block: record the event and return.
	OnEvent func(Event)
	// Timeout is how long a transfer waits for an ACK before sending again. Default 1s.
	Timeout time.Duration
	// Retries is how many times a packet (a window) is sent again before the transfer is
	// given up. Default 5.
	Retries int
	// MaxBlockSize caps the negotiated blksize (RFC 2348); the receiving interface's MTU caps
	// it further. Default and maximum 65464; minimum 512.
	MaxBlockSize int
	// MaxWindowSize caps the negotiated windowsize (RFC 7440). Default 64, maximum 1024.
	MaxWindowSize int
	// MaxTransfers bounds the transfers under way; requests past it are dropped (the client
	// sends its request again). Default 256.
	MaxTransfers int
	// MaxTransfersPerClient bounds the transfers one client address has under way, so that a
	// flood from one address cannot take every transfer; requests past it are dropped. Default 4.
	MaxTransfersPerClient int
}

// Server is a read-only TFTP server: pin/tftp serves plain, blksize and tsize requests, and
// this package's RFC 7440 sender serves those that ask for windowsize. See the package doc.
type Server struct {
	cfg   Config
	log   *slog.Logger
	warn  *ratelog.Logger // Warn lines that requests trigger
	m     *metrics
	slots *slots
}

// New checks cfg, fills in defaults and registers the metrics. It opens no socket.
func New(cfg Config) (*Server, error) {
	if cfg.Dir != "" && cfg.FS != nil {
		return nil, errors.New("tftpd: set Dir or FS, not both")
	}
	if cfg.Dir == "" && cfg.FS == nil && len(cfg.Files) == 0 {
		return nil, errors.New("tftpd: nothing to serve: set Dir, FS or Files")
	}
	if cfg.Dir != "" {
		fi, err := os.Stat(cfg.Dir)
		if err != nil {
			return nil, fmt.Errorf("tftpd: %w", err)
		}
		if !fi.IsDir() {
			return nil, fmt.Errorf("tftpd: %s is not a directory", cfg.Dir)
		}
	}
	for name, op := range cfg.Files {
		if op == nil {
			return nil, fmt.Errorf("tftpd: Files: %q has a nil Opener", name)
		}
		if !validName(name) {
			return nil, fmt.Errorf("tftpd: Files: %q is not a valid name (relative, slash-separated, no . or ..)", name)
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Retries <= 0 {
		cfg.Retries = DefaultRetries
	}
	if cfg.MaxBlockSize <= 0 || cfg.MaxBlockSize > maxBlksize {
		cfg.MaxBlockSize = maxBlksize
	}
	cfg.MaxBlockSize = max(cfg.MaxBlockSize, defaultBlksize)
	if cfg.MaxWindowSize <= 0 {
		cfg.MaxWindowSize = DefaultMaxWindowSize
	}
	cfg.MaxWindowSize = min(cfg.MaxWindowSize, 1024)
	if cfg.MaxTransfers <= 0 {
		cfg.MaxTransfers = DefaultMaxTransfers
	}
	if cfg.MaxTransfersPerClient <= 0 {
		cfg.MaxTransfersPerClient = DefaultMaxTransfersPerClient
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Server{cfg: cfg, log: cfg.Logger, warn: ratelog.New(cfg.Logger, 0), m: m,
		slots: newSlots(cfg.MaxTransfers, cfg.MaxTransfersPerClient, m.inFlight)}, nil
}

// ServeConn serves on conn, a socket the caller opened, until ctx is cancelled; it takes ownership
// of conn and closes it, ends the transfers under way and returns nil once they have ended. It
// returns an error if the socket fails. RFC 7440 transfers end at once (the client gets ERROR 0); a
// pin/tftp transfer ends at its next block, so one whose client went silent can hold ServeConn up to
// Timeout × (Retries+1) (6 s with the defaults): pin/tftp offers no way to cancel it.
// The transfer sockets are opened in conn's network namespace. ServeConn asks the OS for each datagram's destination address and interface (IP_PKTINFO);
// datagrams already queued before that lack them, so their answers leave from the address the
// kernel picks and their blksize is not lowered to the MTU. A caller that opens the socket early
// can enable it at once: ipv4.NewPacketConn(conn).SetControlMessage(ipv4.FlagDst|ipv4.FlagInterface, true).
func (s *Server) ServeConn(ctx context.Context, conn *net.UDPConn) error {
	defer conn.Close()
	dc := newDatagramConn(conn) // first of all: datagrams from now on carry their destination
	fsys := s.cfg.FS
	if s.cfg.Dir != "" {
		root, err := os.OpenRoot(s.cfg.Dir)
		if err != nil {
			return fmt.Errorf("tftpd: %w", err)
		}
		defer root.Close()
		fsys = root.FS()
	}
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()

	sv := &serving{s: s, ctx: ctx, fsys: fsys, pc: newPinConn(conn.LocalAddr())}
	ps := tftp.NewServer(sv.pinRead, nil) // WRQs never reach it: the request loop refuses them
	ps.SetTimeout(s.cfg.Timeout)
	ps.SetRetries(s.cfg.Retries)
	ps.SetBackoff(func(int) time.Duration { return 0 }) // the timeout already spaced the retries
	ps.SetBlockSizeNegotiation(false)                   // the loop clamps blksize to the MTU itself
	ps.SetBlockSize(s.cfg.MaxBlockSize)
	pinDone := make(chan error, 1)
	go func() { pinDone <- inSocketNetns(conn, func() error { return ps.Serve(sv.pc) }) }()

	s.log.Info("tftp: serving", "addr", conn.LocalAddr().String(), "dir", s.cfg.Dir,
		"files", len(s.cfg.Files), "max_window", s.cfg.MaxWindowSize)
	err := inSocketNetns(conn, func() error { return sv.loop(dc) })
	cancel() // ends every transfer: the readers given to pin/tftp fail, the window senders stop
	ps.Shutdown()
	_ = sv.pc.Close() // in case Shutdown ran before pin/tftp's Serve took the connection
	<-pinDone
	sv.wg.Wait()
	if parent.Err() != nil {
		return nil
	}
	return err
}

// event calls OnEvent if set.
func (s *Server) event(remote *net.UDPAddr, file string, kind EventKind) {
	if s.cfg.OnEvent != nil {
		ap := remote.AddrPort()
		s.cfg.OnEvent(Event{Kind: kind, Remote: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), File: file})
	}
}

// openFile opens a file of the root; directories and other non-regular files are refused.
func openFile(fsys fs.FS, name string) (io.ReadCloser, int64, error) {
	if fsys == nil {
		return nil, 0, fs.ErrNotExist
	}
	return regular(fsys.Open(name))
}

// regular returns an opened file and its size. It closes and refuses (fs.ErrPermission) what is not
// a regular file.
func regular(f fs.File, err error) (io.ReadCloser, int64, error) {
	if err != nil {
		return nil, 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, 0, fmt.Errorf("%s: not a regular file: %w", fi.Name(), fs.ErrPermission)
	}
	return f, fi.Size(), nil
}

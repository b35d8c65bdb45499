// Package dhcpd is the boot server's DHCPv4 service, built on insomniacslk/dhcp's server4: full
// DHCP (with relayed requests) or ProxyDHCP beside another server, boot information for PXE,
// UEFI HTTP boot and iPXE clients from a BootPolicy, and leases made durable before they are
// acknowledged.
package dhcpd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"

	"github.com/pxejoin/pxejoin/bootserver/ratelog"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// Server is a DHCPv4 server. Create it with New and run it with Serve.
type Server struct {
	cfg      Config
	metrics  *Metrics
	alloc    *allocator
	serverIP netip.Addr // set by New or at the start of Serve, read-only after
	events   chan Event
	ready    chan struct{}
	inFlight chan struct{}   // a slot per request being handled (Config.MaxInFlight)
	warn     *ratelog.Logger // Warn lines that the network triggers
	balance  *balancer       // nil without Config.Shards
}

const eventBuffer = 1024

// New checks cfg, fills its defaults and registers the metrics. It opens no socket.
func New(cfg Config) (*Server, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Registerer, cfg.Leases)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, metrics: m, serverIP: cfg.ServerIP, ready: make(chan struct{}),
		inFlight: make(chan struct{}, cfg.MaxInFlight), warn: ratelog.New(cfg.Logger, 0)}
	s.alloc = newAllocator(&s.cfg, func() netip.Addr { return s.serverIP })
	if cfg.Shards != nil {
		s.balance = newBalancer(cfg.Shards, cfg.TakeoverAfter, m)
	}
	if cfg.OnEvent != nil {
		s.events = make(chan Event, eventBuffer)
	}
	return s, nil
}

// SetInventory replaces Config.Inventory and Config.Reservations while the server runs (the
// inventory changed); requests under way finish with either the old or the new ones.
func (s *Server) SetInventory(n int, rs []Reservation) {
	for _, r := range rs {
		if !r.IP.Is4() {
			s.cfg.Logger.Warn("dhcp: reservation without an IPv4 address ignored", "mac", r.MAC)
		}
	}
	s.alloc.setInventory(n, slices.DeleteFunc(slices.Clone(rs), func(r Reservation) bool { return !r.IP.Is4() }))
}

// Metrics returns the server's metrics.
func (s *Server) Metrics() *Metrics { return s.metrics }

// Ready is closed once Serve listens.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// ServerIP is the address the server names itself by (valid once Ready is closed).
func (s *Server) ServerIP() netip.Addr { return s.serverIP }

// Serve opens the sockets (in the calling goroutine's network namespace) and answers requests
// until ctx ends; then it closes them and returns nil. A Server serves once.
func (s *Server) Serve(ctx context.Context) error {
	laddr, err := net.ResolveUDPAddr("udp4", s.cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("dhcpd: listen address %q: %w", s.cfg.ListenAddr, err)
	}
	if !s.serverIP.Is4() {
		ip, err := interfaceIPv4(s.cfg.Interface)
		if err != nil {
			return err
		}
		s.serverIP = ip
	}
	if s.cfg.Mode == ModeFull && s.cfg.poolFor(s.serverIP) == nil {
		s.cfg.Logger.Warn("dhcp: no pool holds the server's address: only relayed requests get addresses", "server", s.serverIP)
	}
	conns := []struct {
		port    int
		pxePort bool
	}{{laddr.Port, false}}
	if s.cfg.Mode == ModeProxy && s.cfg.ProxyPort > 0 {
		conns = append(conns, struct {
			port    int
			pxePort bool
		}{s.cfg.ProxyPort, true})
	}
	var servers []*server4.Server
	for _, c := range conns {
		uc, err := server4.NewIPv4UDPConn(s.cfg.Interface, &net.UDPAddr{IP: laddr.IP, Port: c.port})
		if err != nil {
			for _, srv := range servers {
				srv.Close()
			}
			return fmt.Errorf("dhcpd: listen on %s port %d: %w", s.cfg.Interface, c.port, err)
		}
		srv, err := server4.NewServer(s.cfg.Interface, nil, s.handler(c.pxePort),
			server4.WithConn(&filterConn{UDPConn: uc, s: s}), server4.WithLogger(parseLogger{s}))
		if err != nil {
			uc.Close()
			return err
		}
		servers = append(servers, srv)
	}
	var wg sync.WaitGroup
	if s.events != nil {
		wg.Add(1)
		go func() { defer wg.Done(); s.dispatchEvents(ctx) }()
	}
	s.cfg.Logger.Info("dhcp serving", "mode", s.cfg.Mode, "interface", s.cfg.Interface, "server", s.serverIP, "listen", laddr)
	close(s.ready)
	errc := make(chan error, len(servers))
	for _, srv := range servers {
		go func() { errc <- srv.Serve() }()
	}
	var first error
	got := 0
	select {
	case <-ctx.Done():
	case first = <-errc:
		got++
	}
	for _, srv := range servers {
		srv.Close()
	}
	for ; got < len(servers); got++ {
		<-errc
	}
	wg.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("dhcpd: %w", first)
}

// handler answers one parsed packet; server4 runs it in a goroutine of its own. At most
// Config.MaxInFlight run at once (a REQUEST waits for its lease to be durable): past that, packets
// are dropped and counted, and the clients send again.
func (s *Server) handler(pxePort bool) server4.Handler {
	return func(conn net.PacketConn, peer net.Addr, m *dhcpv4.DHCPv4) {
		select {
		case s.inFlight <- struct{}{}:
			defer func() { <-s.inFlight }()
		default:
			mac, _ := hwaddr.FromHardwareAddr(m.ClientHWAddr)
			s.drop(dropBusy, mac, "")
			return
		}
		up, _ := peer.(*net.UDPAddr)
		reply, dst := s.handle(m, up, pxePort)
		if reply == nil {
			return
		}
		if _, err := conn.WriteTo(reply.ToBytes(), dst); err != nil {
			s.warn.Warn("dhcp send failed", "to", dst, "mac", m.ClientHWAddr.String(), "err", err)
			s.metrics.Dropped.WithLabelValues(dropSendFailed).Inc()
			return
		}
		s.metrics.repliesByType[reply.MessageType()].Inc()
	}
}

func (s *Server) dispatchEvents(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-s.events:
			s.cfg.OnEvent(e)
		}
	}
}

// filterConn drops, before server4 parses them, datagrams that cannot be DHCP requests, and counts
// them.
type filterConn struct {
	*net.UDPConn
	s *Server
}

func (c *filterConn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		n, addr, err := c.UDPConn.ReadFrom(b)
		if err != nil {
			return n, addr, err
		}
		if reason := precheck(b[:n]); reason != "" {
			c.s.drop(reason, hwaddr.MAC{}, fmt.Sprint(addr))
			continue
		}
		return n, addr, nil
	}
}

// parseLogger is server4's logger: it counts the packets server4 could not parse and forgets the
// rest (handle logs what matters).
type parseLogger struct{ s *Server }

func (l parseLogger) PrintMessage(string, *dhcpv4.DHCPv4) {}

func (l parseLogger) Printf(format string, v ...any) {
	if strings.HasPrefix(format, "Error parsing") {
		l.s.drop(dropParse, hwaddr.MAC{}, fmt.Sprintf(format, v...))
	}
}

func interfaceIPv4(name string) (netip.Addr, error) {
	if name == "" {
		return netip.Addr{}, errors.New("dhcpd: set Config.ServerIP or Config.Interface")
	}
	p, err := InterfacePrefix(name)
	return p.Addr(), err
}

// InterfacePrefix is the first IPv4 address of the named interface with its prefix length (e.g.
// 10.0.0.1/24). Call it in the interface's network namespace. Errors say what to do next.
func InterfacePrefix(name string) (netip.Prefix, error) {
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("interface %q: %w: name the boot network's interface (ip -br link lists them)", name, err)
	}
	addrs, err := ifc.Addrs()
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("interface %s: its addresses: %w", name, err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip := addrOf(n.IP); ip.Is4() {
				ones, _ := n.Mask.Size()
				return netip.PrefixFrom(ip, ones), nil
			}
		}
	}
	return netip.Prefix{}, fmt.Errorf("interface %s has no IPv4 address: give it one (ip addr add 10.0.0.1/24 dev %s)", name, name)
}

// Package routeradv sends IPv6 Router Advertisements that say "no default router, no DHCPv6, no
// prefixes" on the boot network. iPXE configures IPv6 beside DHCPv4 and waits about 16 s in
// "Configuring" on a link where no router answers its Router Solicitation; one such RA ends that wait
// (../shared/notes/pxe-lab.md). The advertisement gives hosts nothing: router lifetime 0 means "not a
// default router" (RFC 4861 §4.2), M=O=0 means no DHCPv6, and there is no prefix to configure.
package routeradv

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv6"
)

// DefaultInterval is how often an unsolicited advertisement is sent.
const DefaultInterval = 30 * time.Second

// Config configures the sender.
type Config struct {
	// Interface is the boot network's interface.
	Interface string
	// Interval between unsolicited advertisements; 0 means DefaultInterval.
	Interval time.Duration
	// Logger may be nil.
	Logger *slog.Logger
}

// Server answers Router Solicitations and advertises periodically.
type Server struct {
	cfg Config
	log *slog.Logger
}

// New checks the configuration; it opens no socket.
func New(cfg Config) (*Server, error) {
	if cfg.Interface == "" {
		return nil, errors.New("routeradv: no interface")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg, log: log}, nil
}

var allNodes = &net.IPAddr{IP: net.ParseIP("ff02::1")}

// Message is the advertisement's ICMPv6 bytes (the kernel fills in the checksum) for a sender with
// hardware address mac.
func Message(mac net.HardwareAddr) []byte {
	body := make([]byte, 12, 12+8)
	// cur hop limit 0 (unspecified), flags 0 (M=O=0), router lifetime 0, reachable time 0, retrans timer 0.
	binary.BigEndian.PutUint16(body[2:4], 0)
	if len(mac) == 6 {
		body = append(body, 1, 1) // source link-layer address option, 8 bytes
		body = append(body, mac...)
	}
	m := icmp.Message{Type: ipv6.ICMPTypeRouterAdvertisement, Code: 0, Body: &icmp.RawBody{Data: body}}
	b, _ := m.Marshal(nil)
	return b
}

// Serve opens its socket in the calling goroutine's network namespace and runs until ctx ends.
func (s *Server) Serve(ctx context.Context) error {
	ifi, err := net.InterfaceByName(s.cfg.Interface)
	if err != nil {
		return fmt.Errorf("routeradv: %w", err)
	}
	c, err := icmp.ListenPacket("ip6:ipv6-icmp", "::")
	if err != nil {
		return fmt.Errorf("routeradv: %w", err)
	}
	defer c.Close()
	p := c.IPv6PacketConn()
	var f ipv6.ICMPFilter
	f.SetAll(true)
	f.Accept(ipv6.ICMPTypeRouterSolicitation)
	if err := p.SetICMPFilter(&f); err != nil {
		return fmt.Errorf("routeradv: %w", err)
	}
	if err := p.SetControlMessage(ipv6.FlagInterface, true); err != nil {
		return fmt.Errorf("routeradv: %w", err)
	}
	if err := p.SetMulticastInterface(ifi); err != nil {
		return fmt.Errorf("routeradv: %w", err)
	}
	if err := p.SetMulticastHopLimit(255); err != nil { // RFC 4861: hosts drop RAs with another hop limit
		return fmt.Errorf("routeradv: %w", err)
	}
	if err := p.JoinGroup(ifi, &net.IPAddr{IP: net.ParseIP("ff02::2")}); err != nil {
		return fmt.Errorf("routeradv: joining all-routers on %s: %w", ifi.Name, err)
	}
	msg := Message(ifi.HardwareAddr)
	send := func(why string) {
		if _, err := p.WriteTo(msg, &ipv6.ControlMessage{IfIndex: ifi.Index, HopLimit: 255}, allNodes); err != nil {
			// No link-local address yet (duplicate address detection), or the link is down: try again later.
			s.log.Debug("router advertisement not sent", "why", why, "err", err)
			return
		}
		s.log.Debug("router advertisement sent", "why", why)
	}
	go func() {
		<-ctx.Done()
		c.Close()
	}()
	go func() {
		send("start")
		t := time.NewTicker(s.cfg.Interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				send("periodic")
			}
		}
	}()
	buf := make([]byte, 1500)
	for {
		n, cm, _, err := p.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("routeradv: %w", err)
		}
		if cm != nil && cm.IfIndex != ifi.Index {
			continue
		}
		if n > 0 && ipv6.ICMPType(buf[0]) == ipv6.ICMPTypeRouterSolicitation {
			send("solicited")
		}
	}
}

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

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv6"

	"github.com/pxejoin/pxejoin/bootserver/ratelog"
)

// DefaultInterval is how often an unsolicited advertisement is sent.
const DefaultInterval = 30 * time.Second

// DefaultMinDelay is RFC 4861's MIN_DELAY_BETWEEN_RAS: multicast advertisements go out at least
// this far apart (§6.2.6), however many solicitations come in.
const DefaultMinDelay = 3 * time.Second

// Config configures the sender.
type Config struct {
	// Interface is the boot network's interface.
	Interface string
	// Interval between unsolicited advertisements; 0 means DefaultInterval.
	Interval time.Duration
	// MinDelay is the least time between two advertisements; 0 means DefaultMinDelay. A
	// solicitation that comes sooner is answered by one advertisement when the delay is over,
	// shared with every other solicitation in between.
	MinDelay time.Duration
	// Logger may be nil.
	Logger *slog.Logger
	// Registerer, if set, receives the pxejoin_ra_* metrics.
	Registerer prometheus.Registerer
}

// Server answers Router Solicitations and advertises periodically.
type Server struct {
	cfg  Config
	log  *slog.Logger
	warn *ratelog.Logger
	m    metrics
}

// metrics are the sender's Prometheus metrics.
type metrics struct {
	sent          *prometheus.CounterVec // why: start, periodic, solicited
	solicitations prometheus.Counter
	coalesced     prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (metrics, error) {
	m := metrics{
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pxejoin_ra_sent_total", Help: "Router Advertisements sent, by cause (start, periodic, solicited).",
		}, []string{"why"}),
		solicitations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pxejoin_ra_solicitations_total", Help: "Router Solicitations received on the boot interface.",
		}),
		coalesced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pxejoin_ra_solicitations_coalesced_total",
			Help: "Router Solicitations answered by an advertisement sent or due for another (RFC 4861 MIN_DELAY_BETWEEN_RAS).",
		}),
	}
	for _, why := range []string{"start", "periodic", "solicited"} {
		m.sent.WithLabelValues(why)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.sent, m.solicitations, m.coalesced} {
			if err := reg.Register(c); err != nil {
				return m, fmt.Errorf("routeradv: register metrics: %w", err)
			}
		}
	}
	return m, nil
}

// New checks the configuration; it opens no socket.
func New(cfg Config) (*Server, error) {
	if cfg.Interface == "" {
		return nil, errors.New("routeradv: no interface")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.MinDelay <= 0 {
		cfg.MinDelay = DefaultMinDelay
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Server{cfg: cfg, log: log, warn: ratelog.New(log, 0), m: m}, nil
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
	send := func(why string) bool {
		if _, err := p.WriteTo(msg, &ipv6.ControlMessage{IfIndex: ifi.Index, HopLimit: 255}, allNodes); err != nil {
			// No link-local address yet (duplicate address detection), or the link is down: try again later.
			s.warn.Log(slog.LevelDebug, "router advertisement not sent", "why", why, "err", err)
			return false
		}
		s.m.sent.WithLabelValues(why).Inc()
		s.log.Debug("router advertisement sent", "why", why)
		return true
	}
	go func() {
		<-ctx.Done()
		c.Close()
	}()
	solicited := make(chan struct{}, 1)
	go s.advertise(ctx, send, solicited)
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
			s.m.solicitations.Inc()
			select {
			case solicited <- struct{}{}:
			default:
				s.m.coalesced.Inc() // the advertiser has one to answer already
			}
		}
	}
}

// advertise sends an advertisement at start, every Interval, and for each solicitation, never two
// within MinDelay: a solicitation that comes sooner is answered when MinDelay is over, by one
// advertisement for all that came in between (RFC 4861 §6.2.6).
func (s *Server) advertise(ctx context.Context, send func(why string) bool, solicited <-chan struct{}) {
	var last time.Time // of the last advertisement that went out
	sendNow := func(why string) {
		if send(why) {
			last = time.Now()
		}
	}
	sendNow("start")
	tick := time.NewTicker(s.cfg.Interval)
	defer tick.Stop()
	var due <-chan time.Time // set while a solicited advertisement waits for MinDelay
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if time.Since(last) >= s.cfg.MinDelay {
				sendNow("periodic")
			}
		case <-solicited:
			switch wait := s.cfg.MinDelay - time.Since(last); {
			case due != nil:
				s.m.coalesced.Inc()
			case wait > 0:
				due = time.After(wait)
			default:
				sendNow("solicited")
			}
		case <-due:
			if wait := s.cfg.MinDelay - time.Since(last); wait > 0 { // a periodic one went out meanwhile
				due = time.After(wait)
				continue
			}
			due = nil
			sendNow("solicited")
		}
	}
}

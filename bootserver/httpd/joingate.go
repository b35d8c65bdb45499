package httpd

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pxejoin/pxejoin/bootserver/status"
	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// Reasons a join file is refused (label of pxejoin_join_refused_total).
const (
	JoinRefusedNotLeaseHolder = "not-lease-holder"
	JoinRefusedAlreadyServed  = "already-served"
	// JoinRefusedNoCertificateKey: a control-plane profile's certificate key file cannot be read.
	JoinRefusedNoCertificateKey = "no-certificate-key"
)

// maxServed bounds the join files remembered (one per MAC); past it the oldest is forgotten.
const maxServed = 4096

// joinGate decides who may have a join file (Config.LeaseHolder, Config.OncePerBoot) and remembers
// where each went.
type joinGate struct {
	cfg     *Config
	mu      sync.Mutex
	served  map[hwaddr.MAC]servedJoin
	refused *prometheus.CounterVec
	evicted prometheus.Counter
}

// servedJoin is a machine's last join file.
type servedJoin struct {
	boot int
	to   netip.Addr
	at   time.Time
	// joinError is the attempt of the agent's last failed join when the file was served (0: none).
	joinError int
}

func newJoinGate(cfg *Config) (*joinGate, error) {
	g := &joinGate{cfg: cfg, served: map[hwaddr.MAC]servedJoin{},
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pxejoin_join_refused_total",
			Help: "Join files refused, by reason (not-lease-holder: asked from an address not holding the MAC's DHCP lease; already-served: a second fetch in one boot; no-certificate-key: a control-plane profile's certificate key file cannot be read)."},
			[]string{"reason"}),
		evicted: prometheus.NewCounter(prometheus.CounterOpts{Name: "pxejoin_join_served_forgotten_total",
			Help: "Machines whose served join file was forgotten to stay within the bound (4096), oldest first."}),
	}
	if r := cfg.Registerer; r != nil {
		for _, c := range []prometheus.Collector{g.refused, g.evicted} {
			if err := r.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return g, nil
}

// check returns why mac's join file must not go to r in boot (0 and "" when it may).
func (g *joinGate) check(r *http.Request, mac hwaddr.MAC, boot int) (code int, reason, msg string) {
	remote := remoteAddr(r)
	if g.cfg.LeaseHolder != nil {
		if holder, ok := g.cfg.LeaseHolder(remote); !ok || holder != mac {
			g.refused.WithLabelValues(JoinRefusedNotLeaseHolder).Inc()
			return http.StatusForbidden, JoinRefusedNotLeaseHolder, fmt.Sprintf("the join file of %s is answered only to the address holding its DHCP lease, "+
				"and %s does not: fetch it from the machine itself, after it got its address from this boot server", mac, remote)
		}
	}
	if !g.cfg.OncePerBoot {
		return 0, "", ""
	}
	g.mu.Lock()
	s, ok := g.served[mac]
	g.mu.Unlock()
	if ok && s.boot == boot && g.joinError(mac) == s.joinError {
		g.refused.WithLabelValues(JoinRefusedAlreadyServed).Inc()
		return http.StatusConflict, JoinRefusedAlreadyServed, fmt.Sprintf("the join file of %s was handed out in this boot already (to %s at %s) and is handed out once per boot: "+
			"if that was not this machine, someone else took its identity; reboot the machine for a new join file and token", mac, s.to, s.at.UTC().Format(time.RFC3339))
	}
	return 0, "", ""
}

// joinError is the attempt number of the failed join mac's agent reported last in this boot (0:
// none). An agent whose join failed fetches its join file again (nodeagent/initmode: the "join"
// phase retries from "join-file"); a failure reported since the file was served lets it. Attempt
// numbers, not times, tell the reports apart: the machine's clock is not the server's.
func (g *joinGate) joinError(mac hwaddr.MAC) int {
	m, ok := g.cfg.Status.Get(mac)
	if !ok {
		return 0
	}
	for _, p := range m.Phases {
		if p.Source == status.SourceAgent && p.Phase == "join" && p.State == bootstatus.StateError {
			return max(p.Attempt, 1)
		}
	}
	return 0
}

// record remembers that mac's join file went to r in boot.
func (g *joinGate) record(r *http.Request, mac hwaddr.MAC, boot int) {
	joinError := g.joinError(mac)
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.served[mac]; !ok && len(g.served) >= maxServed {
		var oldest hwaddr.MAC
		var t time.Time
		for m, s := range g.served {
			if t.IsZero() || s.at.Before(t) {
				oldest, t = m, s.at
			}
		}
		delete(g.served, oldest)
		g.evicted.Inc()
	}
	g.served[mac] = servedJoin{boot: boot, to: remoteAddr(r), at: time.Now(), joinError: joinError}
}

// JoinAddr is the address mac's last join file went to (in proxy mode, the address the boot server
// knows the machine by).
func (h *Handler) JoinAddr(mac hwaddr.MAC) (netip.Addr, bool) {
	h.gate.mu.Lock()
	defer h.gate.mu.Unlock()
	s, ok := h.gate.served[mac]
	return s.to, ok && s.to.IsValid()
}

func remoteAddr(r *http.Request) netip.Addr {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	a, _ := netip.ParseAddr(host)
	return a.Unmap()
}

package dhcpd

import (
	"fmt"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pxejoin/pxejoin/bootserver/leases"
)

// Metrics are the server's Prometheus metrics. They are counted whether or not they are registered.
type Metrics struct {
	// Packets counts requests received, by DHCP message type ("discover", "request", …, "none").
	Packets *prometheus.CounterVec
	// Dropped counts requests dropped, by reason ("short", "not_request", "bad_cookie", "bad_hlen",
	// "parse", "no_type", "no_pool", "pool_exhausted", "bad_uuid", "store_error", "not_for_us",
	// "busy" (past Config.MaxInFlight), "unknown_cap" (past Config.MaxUnknown), "silenced"
	// (Config.Silent), …).
	Dropped *prometheus.CounterVec
	// Replies counts replies sent, by DHCP message type.
	Replies *prometheus.CounterVec
	// Offered, Acked and Naked count lease offers, acknowledgements and refusals.
	Offered, Acked, Naked prometheus.Counter
	// EventsDropped counts boot events lost because OnEvent fell behind.
	EventsDropped prometheus.Counter
	// LeasesActive is the number of unexpired leases in the store.
	LeasesActive prometheus.GaugeFunc
	// Takeovers counts DISCOVERs answered here although another live server's share (balance.go):
	// the machine was still DISCOVERing Config.TakeoverAfter after it was left to that server.
	// BalanceFull counts DISCOVERs answered here because the machines left to other servers were
	// as many as this server remembers.
	Takeovers, BalanceFull prometheus.Counter

	// The per-type counters, looked up once (the packet path indexes them by message type).
	packetsByType, repliesByType [256]prometheus.Counter
}

// Drop reasons counted in Metrics.Dropped.
const (
	dropShort       = "short"
	dropNotRequest  = "not_request"
	dropBadCookie   = "bad_cookie"
	dropBadHlen     = "bad_hlen"
	dropParse       = "parse"
	dropNoType      = "no_type"
	dropBadType     = "unexpected_type"
	dropNoPool      = "no_pool"
	dropExhausted   = "pool_exhausted"
	dropBadUUID     = "bad_uuid"
	dropStore       = "store_error"
	dropNotForUs    = "not_for_us"
	dropNoBoot      = "no_boot_info"
	dropNoAddress   = "no_requested_address"
	dropSendFailed  = "send_failed"
	dropRelayedLoop = "hops"
	dropBusy        = "busy"
	dropUnknownCap  = "unknown_cap"
	dropSilenced    = "silenced"
	dropNoShard     = "no_shard"
	dropNotHeld     = "shard_not_held"
	dropShardLost   = "shard_lost"
	dropInUse       = "probe_in_use"
	dropPeerShare   = "peer_share"
)

func newMetrics(reg prometheus.Registerer, store *leases.Store) (*Metrics, error) {
	m := &Metrics{
		Packets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pxejoin_dhcp_packets_total", Help: "DHCPv4 requests received, by message type.",
		}, []string{"type"}),
		Dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pxejoin_dhcp_dropped_total", Help: "DHCPv4 requests dropped, by reason.",
		}, []string{"reason"}),
		Replies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pxejoin_dhcp_replies_total", Help: "DHCPv4 replies sent, by message type.",
		}, []string{"type"}),
		Offered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pxejoin_dhcp_leases_offered_total", Help: "Addresses offered.",
		}),
		Acked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pxejoin_dhcp_leases_acked_total", Help: "Leases acknowledged (durable before the ACK).",
		}),
		Naked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pxejoin_dhcp_leases_naked_total", Help: "Requests refused with a NAK.",
		}),
		EventsDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pxejoin_dhcp_events_dropped_total", Help: "Boot events dropped because the event callback fell behind.",
		}),
		Takeovers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pxejoin_dhcp_takeovers_total", Help: "DISCOVERs answered although another live server's share: the machine was still DISCOVERing dhcp.ha.takeoverAfter after it was left to that server.",
		}),
		BalanceFull: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pxejoin_dhcp_balance_full_total", Help: "DISCOVERs of another server's share answered here because this server remembers as many machines left to others as it may.",
		}),
		LeasesActive: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pxejoin_dhcp_leases_active", Help: "Unexpired leases in the store.",
		}, func() float64 {
			if store == nil {
				return 0
			}
			return float64(store.Active(time.Now()))
		}),
	}
	for t := range m.packetsByType {
		name := msgName(dhcpv4.MessageType(t))
		m.packetsByType[t] = m.Packets.WithLabelValues(name)
		m.repliesByType[t] = m.Replies.WithLabelValues(name)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.Packets, m.Dropped, m.Replies, m.Offered, m.Acked, m.Naked, m.EventsDropped, m.Takeovers, m.BalanceFull, m.LeasesActive} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("dhcpd: register metrics: %w", err)
			}
		}
	}
	return m, nil
}

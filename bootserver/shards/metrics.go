package shards

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the shards' Prometheus metrics (label shard: the shard's number).
type metrics struct {
	held, adopted, lag *prometheus.GaugeVec
	live               prometheus.Gauge
	decisions          *prometheus.CounterVec
	mirrorWrites       prometheus.Counter
	mirrorErrors       prometheus.Counter
	imported           prometheus.Counter
	badBindings        prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, n int) *metrics {
	x := &metrics{
		held: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "pxejoin_dhcp_shard_held",
			Help: "1 while this server may allocate from the shard (it holds its Lease and loaded its bindings)."}, []string{"shard"}),
		adopted: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "pxejoin_dhcp_shard_adopted",
			Help: "1 while this server holds the shard after its previous holder let the Lease expire."}, []string{"shard"}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "pxejoin_dhcp_shard_mirror_lag_seconds",
			Help: "How long the shard's bindings in the API have lagged the local store (0: in sync)."}, []string{"shard"}),
		live: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pxejoin_dhcp_shard_servers_live",
			Help: "Boot servers sharing the pool, as this server last saw them."}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pxejoin_dhcp_shard_decisions_total",
			Help: "Shard decisions: acquire, adopt (the previous holder vanished), release (given back), lost (not renewed within the renew deadline)."}, []string{"decision"}),
		mirrorWrites: prometheus.NewCounter(prometheus.CounterOpts{Name: "pxejoin_dhcp_shard_mirror_writes_total",
			Help: "Writes of a shard's bindings to the API."}),
		mirrorErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "pxejoin_dhcp_shard_mirror_errors_total",
			Help: "Failed writes of a shard's bindings (retried at the next interval)."}),
		imported: prometheus.NewCounter(prometheus.CounterOpts{Name: "pxejoin_dhcp_shard_bindings_loaded_total",
			Help: "Bindings written into the local store from the API on taking a shard."}),
		badBindings: prometheus.NewCounter(prometheus.CounterOpts{Name: "pxejoin_dhcp_shard_bad_bindings_total",
			Help: "Mirrored bindings that could not be read and were skipped."}),
	}
	for i := range n {
		for _, g := range []*prometheus.GaugeVec{x.held, x.adopted, x.lag} {
			g.WithLabelValues(itoa(i)).Set(0)
		}
	}
	for _, d := range []string{"acquire", "adopt", "release", "lost"} {
		x.decisions.WithLabelValues(d)
	}
	if reg != nil {
		reg.MustRegister(x.held, x.adopted, x.lag, x.live, x.decisions, x.mirrorWrites, x.mirrorErrors, x.imported, x.badBindings)
	}
	return x
}

func itoa(i int) string { return strconv.Itoa(i) }

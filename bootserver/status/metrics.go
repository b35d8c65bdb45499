package status

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pxejoin/pxejoin/internal/bootstatus"
)

// PhaseLabel is the metric label of a phase name: the name itself if the protocol knows it
// (bootstatus.Known), else "other", so the network cannot grow the label set.
func PhaseLabel(phase string) string {
	if bootstatus.Known(phase) {
		return phase
	}
	return "other"
}

var machinesDesc = prometheus.NewDesc("pxejoin_machines",
	"Machines by the last phase of their current boot and its state.", []string{"last_phase", "state"}, nil)

// machinesCollector counts machines by last phase at scrape time.
type machinesCollector struct{ s *Store }

func (c machinesCollector) Describe(ch chan<- *prometheus.Desc) { ch <- machinesDesc }

func (c machinesCollector) Collect(ch chan<- prometheus.Metric) {
	type key struct{ phase, state string }
	counts := map[key]int{}
	c.s.mu.Lock()
	for _, m := range c.s.m {
		counts[key{PhaseLabel(m.LastPhase), m.LastState}]++
	}
	c.s.mu.Unlock()
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(machinesDesc, prometheus.GaugeValue, float64(n), k.phase, k.state)
	}
}

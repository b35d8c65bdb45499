package status

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pxejoin/pxejoin/internal/bootstatus"
)

// knownPhases are the phase names used as metric labels; any other phase an agent reports is
// counted as "other", so the network cannot grow the label set.
var knownPhases = map[string]bool{
	PhaseDHCP: true, PhaseNBP: true, PhaseIPXEDHCP: true, PhaseScript: true, PhaseKernel: true,
	PhaseInitrd: true, PhaseAgentDHCP: true,
	bootstatus.PhaseAgentStart: true, bootstatus.PhaseNetwork: true, bootstatus.PhaseJoinFile: true,
	bootstatus.PhaseRootImage: true, bootstatus.PhaseSwitchRoot: true, bootstatus.PhaseNodeReady: true,
	"preflight": true, "control-plane-prepare": true, "kubelet-start": true, "kubelet-start/config": true,
	"kubelet-start/tls-bootstrap": true, "kubelet-start/start": true, "control-plane-join": true,
	"discovery": true, "join": true,
}

// PhaseLabel is the metric label of a phase name.
func PhaseLabel(phase string) string {
	if knownPhases[phase] {
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

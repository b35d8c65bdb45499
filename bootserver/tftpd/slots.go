package tftpd

import (
	"net/netip"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// slots counts the transfers under way, in all and per client address. The request loop takes a
// slot before it starts a transfer (so a burst of requests cannot pass the check before any
// transfer counts itself) and the transfer gives it back when it ends.
type slots struct {
	max, perClient int
	gauge          prometheus.Gauge

	mu     sync.Mutex
	total  int
	byAddr map[netip.Addr]int // only addresses with a transfer under way
}

func newSlots(max, perClient int, gauge prometheus.Gauge) *slots {
	return &slots{max: max, perClient: perClient, gauge: gauge, byAddr: map[netip.Addr]int{}}
}

// take takes a slot for a transfer to a; it returns "" or the error kind that refused it
// (kindBusy, kindClientBusy).
func (sl *slots) take(a netip.Addr) string {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	switch {
	case sl.total >= sl.max:
		return kindBusy
	case sl.byAddr[a] >= sl.perClient:
		return kindClientBusy
	}
	sl.total++
	sl.byAddr[a]++
	sl.gauge.Inc()
	return ""
}

// give returns a slot taken for a.
func (sl *slots) give(a netip.Addr) {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	sl.total--
	if sl.byAddr[a]--; sl.byAddr[a] <= 0 {
		delete(sl.byAddr, a)
	}
	sl.gauge.Dec()
}

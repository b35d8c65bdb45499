package fleet

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// stats summarises a run: each stage of the machines that finished, from power-on (t0).
func stats(t0 time.Time, machines []*machine, errs []error, writes map[string]float64, cpu map[string]time.Duration) Stats {
	st := Stats{Writes: writes, CPU: cpu}
	var ok []*machine
	for i, m := range machines {
		if errs[i] != nil {
			st.Failed++
			if st.Err == nil {
				st.Err = fmt.Errorf("%s: %w", m.node, errs[i])
			}
			continue
		}
		ok = append(ok, m)
		st.Total = max(st.Total, m.done[3].Sub(t0))
	}
	var all time.Duration
	for _, m := range ok {
		all += m.done[3].Sub(t0)
	}
	for i, name := range Stages {
		var ds []time.Duration
		var sum time.Duration
		var first, last time.Time
		for _, m := range ok {
			if m.done[i].IsZero() {
				continue
			}
			prev := t0
			for j := i - 1; j >= 0; j-- {
				if !m.done[j].IsZero() {
					prev = m.done[j]
					break
				}
			}
			d := m.done[i].Sub(prev)
			ds, sum = append(ds, d), sum+d
			if first.IsZero() || m.done[i].Before(first) {
				first = m.done[i]
			}
			if m.done[i].After(last) {
				last = m.done[i]
			}
		}
		if len(ds) == 0 {
			continue
		}
		s := StageStats{Name: name, P50: quantile(ds, 0.5), P99: quantile(ds, 0.99), Last: last.Sub(t0)}
		if all > 0 {
			s.Share = float64(sum) / float64(all)
		}
		if span := last.Sub(first); len(ds) > 1 && span > 0 {
			s.Rate = float64(len(ds)-1) / span.Seconds()
		}
		st.Stages = append(st.Stages, s)
	}
	return st
}

// what each stage's time is spent on, for naming the bottleneck.
var stageCost = map[string]string{
	StageDHCP:     "the boot server's DHCP",
	StageScript:   "the boot server's HTTP (iPXE scripts)",
	StageJoinFile: "the join file: the boot server creates each machine's token Secret through its API client, within that client's write budget",
	StageJoin:     "the control plane: discovery, then CSR approval and signing (kube-controller-manager)",
}

// Bottleneck names what held the fleet up most.
func (r *Result) Bottleneck() string {
	var top StageStats
	for _, s := range r.Fleet.Stages {
		if s.Share > top.Share {
			top = s
		}
	}
	if top.Name == "" {
		return "none measured"
	}
	msg := fmt.Sprintf("%s (%.0f%% of the machines' time): %s", top.Name, 100*top.Share, stageCost[top.Name])
	if c := r.Fleet.CPU["bootserver"]; r.Fleet.Total > 0 && c > r.Fleet.Total*8/10 {
		msg += fmt.Sprintf("; the boot server used %.1f CPU-s in %.1f s: its CPU", c.Seconds(), r.Fleet.Total.Seconds())
	}
	if top.Name == StageJoin && r.Reference != nil {
		for _, s := range r.Reference.Stages {
			if s.Name == StageJoin {
				msg += fmt.Sprintf("; the reference's joins took p50 %.1f s against the fleet's %.1f s", s.P50.Seconds(), top.P50.Seconds())
			}
		}
	}
	return msg
}

// String is the report make bench-fleet prints.
func (r *Result) String() string {
	var b strings.Builder
	secs := func(d time.Duration) string { return fmt.Sprintf("%.1fs", d.Seconds()) }
	fmt.Fprintf(&b, "fleet: %d machines booted at once; all had credentials after %s", r.N, secs(r.Fleet.Total))
	if r.Reference != nil && r.Reference.Total > 0 {
		fmt.Fprintf(&b, "; reference (control plane alone, tokens made beforehand) %s: %.2fx",
			secs(r.Reference.Total), r.Fleet.Total.Seconds()/r.Reference.Total.Seconds())
	}
	b.WriteString("\n")
	for _, run := range []struct {
		name string
		st   *Stats
	}{{"fleet", &r.Fleet}, {"reference", r.Reference}} {
		if run.st == nil {
			continue
		}
		if run.st.Failed > 0 {
			fmt.Fprintf(&b, "%s: %d of %d machines FAILED; first: %v\n", run.name, run.st.Failed, r.N, run.st.Err)
		}
		fmt.Fprintf(&b, "%-10s %-10s %8s %8s %7s %9s %8s\n", run.name, "stage", "p50", "p99", "share", "rate/s", "last")
		for _, s := range run.st.Stages {
			fmt.Fprintf(&b, "%-10s %-10s %8s %8s %6.0f%% %9.1f %8s\n", "", s.Name, secs(s.P50), secs(s.P99), 100*s.Share, s.Rate, secs(s.Last))
		}
	}
	fmt.Fprintf(&b, "bottleneck: %s\n", r.Bottleneck())
	for _, run := range []struct {
		name string
		st   *Stats
	}{{"fleet", &r.Fleet}, {"reference", r.Reference}} {
		if run.st == nil {
			continue
		}
		var total float64
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(run.st.Writes)) {
			n := run.st.Writes[k]
			total += n
			if n/float64(r.N) >= 0.05 {
				parts = append(parts, fmt.Sprintf("%s %.2f", k, n/float64(r.N)))
			}
		}
		fmt.Fprintf(&b, "API writes per machine, %s: %.2f (%s)\n", run.name, total/float64(r.N), strings.Join(parts, ", "))
		if run.st == &r.Fleet {
			fmt.Fprintf(&b, "  of which the boot server's (token Secrets, Machines, events): %.2f\n", bootServerWrites(run.st.Writes)/float64(r.N))
		}
		var cpu []string
		for _, k := range slices.Sorted(maps.Keys(run.st.CPU)) {
			cpu = append(cpu, fmt.Sprintf("%s %.1f", k, run.st.CPU[k].Seconds()))
		}
		fmt.Fprintf(&b, "CPU-s, %s: %s\n", run.name, strings.Join(cpu, ", "))
	}
	fmt.Fprintf(&b, "tokens live when the last machine had credentials: %d; all deleted %s later\n", r.Fleet.LiveTokens, secs(r.Fleet.TokensDrained))
	fmt.Fprintf(&b, "boot server peak RSS: %.1f MiB\n", float64(r.BootServerPeakRSS)/(1<<20))
	if r.Inventory == InventoryKubernetes {
		fmt.Fprintf(&b, "inventory: Machine resources; status writes per machine: %.2f (target <= 3)\n", statusWrites(r.Fleet.Writes)/float64(r.N))
	}
	if c := r.CRD; c != nil {
		fmt.Fprintf(&b, "fleet with the Machine inventory (inventory.source kubernetes): all had credentials after %s", secs(c.Stats.Total))
		if r.Reference != nil && r.Reference.Total > 0 {
			fmt.Fprintf(&b, ": %.2fx the reference", c.Stats.Total.Seconds()/r.Reference.Total.Seconds())
		}
		b.WriteString("\n")
		if c.Stats.Failed > 0 {
			fmt.Fprintf(&b, "fleet-crd: %d of %d machines FAILED; first: %v\n", c.Stats.Failed, r.N, c.Stats.Err)
		}
		for _, s := range c.Stats.Stages {
			fmt.Fprintf(&b, "%-10s %-10s %8s %8s %6.0f%% %9.1f %8s\n", "fleet-crd", s.Name, secs(s.P50), secs(s.P99), 100*s.Share, s.Rate, secs(s.Last))
		}
		var total float64
		for _, v := range c.Stats.Writes {
			total += v
		}
		fmt.Fprintf(&b, "API writes per machine, fleet-crd: %.2f, of which the boot server's %.2f; Machine status writes per machine: %.2f (target <= 3)\n",
			total/float64(r.N), bootServerWrites(c.Stats.Writes)/float64(r.N), statusWrites(c.Stats.Writes)/float64(r.N))
		fmt.Fprintf(&b, "tokens live when the last machine had credentials, fleet-crd: %d; boot server peak RSS, fleet-crd: %.1f MiB (target <= 256 MiB at 1000)\n",
			c.Stats.LiveTokens, float64(c.PeakRSS)/(1<<20))
	}
	return b.String()
}

// bootServerWrites sums the writes only the boot server makes in a fleet run: token Secrets,
// Machines and their status, events.
func bootServerWrites(w map[string]float64) float64 {
	var n float64
	for k, v := range w {
		_, r, _ := strings.Cut(k, " ")
		if r == "secrets" || r == "events" || strings.HasPrefix(r, "machines") {
			n += v
		}
	}
	return n
}

package fleet

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/pxejoin/pxejoin/lab/controlplane"
)

// HAResult is the HA benchmark (make bench-fleet): unknown machines' DHCP through one boot server
// (the local store alone), through one with dhcp.ha (shards, their Leases and mirror, alone on the
// segment) and through two (dhcp.ha), each measured for capacity (a closed loop:
// HABenchOptions.InFlight machines at a time) and as a burst (N at once), and a run where one of
// two is SIGKILLed at 30% of a burst, with half the machines known (a reserved or claimed address:
// HAOptions.Known).
type HAResult struct {
	N int
	// One, OneHA and Two are the runs through one server, one with dhcp.ha, and two.
	One, OneHA, Two HASetup
	// Known is how many machines of the kill run had an address.
	Known int
	// KillFailed counts the kill run's machines without a lease after the burst; Retried those
	// still without one after booting again (as firmware does after a failed PXE boot).
	KillFailed, Retried int
	// Adopted is how long after the kill the survivor held every shard; Limit is lease duration +
	// MCLT, the target.
	Adopted, Limit time.Duration
}

// HASetup is one setup's figures: its capacity, then a burst of N machines at once.
type HASetup struct {
	Capacity *Capacity
	// Burst is the time from the burst's start to its last ACK (not a rate: the client's
	// retransmit timeouts decide it); Failed counts the burst's machines without a lease.
	Burst  time.Duration
	Failed int
}

func (s *HASetup) burst(n int) string {
	if s.Failed == 0 {
		return fmt.Sprintf("burst: all %d leased in %.1f s (time to the last ACK: retransmit timeouts, not a rate)", n, s.Burst.Seconds())
	}
	return fmt.Sprintf("burst: %d of %d leased in %.1f s, %d without a lease", n-s.Failed, n, s.Burst.Seconds(), s.Failed)
}

func (r *HAResult) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "HA DHCP, unknown machines:\n")
	fmt.Fprintf(&b, "  one server (local store):\n    %s\n    %s\n", r.One.Capacity, r.One.burst(r.N))
	fmt.Fprintf(&b, "  one server with dhcp.ha (shards, their Leases and mirror):\n    %s\n    %s\n", r.OneHA.Capacity, r.OneHA.burst(r.N))
	fmt.Fprintf(&b, "  two servers (dhcp.ha):\n    %s\n    %s\n", r.Two.Capacity, r.Two.burst(r.N))
	fmt.Fprintf(&b, "  sharding alone (one server with dhcp.ha / without): capacity %.2f×, DORA per server CPU-second %.2f× (target ≥ 0.9×: sharding costs nothing measurable)\n",
		r.OneHA.Capacity.Rate()/r.One.Capacity.Rate(), r.OneHA.Capacity.PerCPU()/r.One.Capacity.PerCPU())
	fmt.Fprintf(&b, "  two servers / one, on the same %d cores: capacity %.2f×, DORA per server CPU-second %.2f× (target ≥ 0.9×)\n",
		r.One.Capacity.Cores, r.Two.Capacity.Rate()/r.One.Capacity.Rate(), r.Two.Capacity.PerCPU()/r.One.Capacity.PerCPU())
	fmt.Fprintf(&b, "  per core (what a multi-core deployment scales from, one server per core): %.0f DORA per CPU-second with one server, %.0f with one with dhcp.ha, %.0f with two\n",
		r.One.Capacity.PerCPU(), r.OneHA.Capacity.PerCPU(), r.Two.Capacity.PerCPU())
	fmt.Fprintf(&b, "  one of two SIGKILLed at 30%% of a burst of %d (%d of the machines with a reserved or claimed address): survivor held every shard %v after the kill (target ≤ lease duration + MCLT = %v)\n", r.N, r.Known, r.Adopted.Round(time.Millisecond), r.Limit)
	fmt.Fprintf(&b, "    machines without a lease: %d after the burst, %d after booting again\n", r.KillFailed, r.Retried)
	return b.String()
}

// HABenchOptions configure RunHA.
type HABenchOptions struct {
	Options
	// InFlight is how many machines the capacity runs keep in flight; default 32. Fewer if the
	// report shows retransmits.
	InFlight int
	// Capacity is how many machines each capacity run does; default 6000 (seconds of server CPU,
	// so that CPU time's 10 ms ticks do not matter). With the burst's N, at most the pool's size
	// (15,102) less some room for offers.
	Capacity int
}

// RunHA runs the HA benchmark on a fresh control plane.
func RunHA(ctx context.Context, opts HABenchOptions) (*HAResult, error) {
	if opts.N == 0 {
		opts.N = 1000
	}
	if opts.InFlight == 0 {
		opts.InFlight = 32
	}
	if opts.Capacity == 0 {
		opts.Capacity = 6000
	}
	// Every setup's servers are fresh, and no client releases its lease: the capacity run's
	// machines and the burst's share one pool.
	if opts.InFlight < 1 || opts.Capacity < 1 || opts.N < 1 {
		return nil, fmt.Errorf("ha: %d machines in flight, %d capacity machines, a burst of %d: choose 1 or more of each", opts.InFlight, opts.Capacity, opts.N)
	}
	if room := haPoolSize() - 2*opts.InFlight; opts.N+opts.Capacity > room {
		return nil, fmt.Errorf("ha: %d capacity machines and a burst of %d do not fit the pool of %d addresses (less room for %d offers): lower -capacity or -n",
			opts.Capacity, opts.N, haPoolSize(), 2*opts.InFlight)
	}
	cp, err := controlplane.Start(ctx, controlplane.Options{StateDir: filepath.Join(opts.Dir, "ha-cp"), Logf: opts.Logf})
	if err != nil {
		return nil, err
	}
	defer cp.Stop()
	res := &HAResult{N: opts.N}
	setups := []struct {
		servers int
		ha      bool
		res     *HASetup
	}{{1, false, &res.One}, {1, true, &res.OneHA}, {2, true, &res.Two}, {2, true, nil}}
	for run, setup := range setups {
		servers := setup.servers
		// The mirror writes at dhcp.ha's default interval (the tests' 250 ms would cost four
		// times the API writes a user's servers make); the Lease timings stay short, for the kill.
		o := HAOptions{Servers: servers, HA: setup.ha, Bootserver: opts.Bootserver, Dir: filepath.Join(opts.Dir, fmt.Sprintf("ha-%d", run)), CP: cp,
			Prefix: fmt.Sprintf("bench%d-", run), MirrorInterval: time.Second, Logf: opts.Logf}
		if setup.res == nil {
			o.Known = min(opts.N/2, MaxKnown)
			res.Known = o.Known
		}
		h, err := StartHA(ctx, o)
		if err != nil {
			return nil, err
		}
		if setup.ha {
			deadline := time.Now().Add(time.Minute)
			for time.Now().Before(deadline) && !h.shared() {
				time.Sleep(100 * time.Millisecond)
			}
		}
		if setup.res != nil {
			if err := setup.res.measure(h, run, opts); err != nil {
				h.Close()
				return nil, err
			}
			opts.logf("ha run %d (%d servers, dhcp.ha %v): %.0f DORA/s in a closed loop, burst of %d in %.1f s", run, servers, setup.ha, setup.res.Capacity.Rate(), opts.N, setup.res.Burst.Seconds())
			h.Close()
			continue
		}
		adopted := make(chan time.Duration, 1)
		killed := h.KillAt(h.Servers[0], opts.N*3/10)
		go func() { // from the kill on, not after the burst: the burst waits out its lost offers
			tKill := <-killed
			for len(h.heldOf(1)) != h.opts.Shards && time.Since(tKill) < 2*time.Minute {
				time.Sleep(50 * time.Millisecond)
			}
			adopted <- time.Since(tKill)
		}()
		macs := make([]net.HardwareAddr, opts.N)
		for i := range macs {
			macs[i] = haMAC(10+run, i)
			if i < o.Known {
				macs[i] = haMAC(KnownRun, i)
			}
		}
		failed, _ := doraAll(h, macs)
		res.KillFailed = len(failed)
		// A first-boot claim waits on the API: under load some machines give up before theirs
		// is made; they boot again, as firmware does after a failed PXE boot.
		failed, _ = doraAll(h, failed)
		res.Retried = len(failed)
		opts.logf("ha run %d (2 servers, one killed): %d without a lease after the burst, %d after booting again", run, res.KillFailed, res.Retried)
		res.Limit = h.opts.LeaseDuration + h.opts.MCLT
		res.Adopted = <-adopted
		if err := CheckAcks(h.Acks()); err != nil {
			h.Close()
			return nil, err
		}
		var known error
		for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
			if known = h.CheckKnown(ctx, h.Acks()); known == nil {
				break
			}
		}
		h.Close()
		if known != nil {
			return nil, fmt.Errorf("ha: known machines: %w", known)
		}
	}
	return res, nil
}

// measure runs the capacity run, then the burst, on a fresh segment h.
func (s *HASetup) measure(h *HA, run int, opts HABenchOptions) error {
	macs := make([]net.HardwareAddr, opts.Capacity)
	for i := range macs {
		macs[i] = haMAC(20+run, i)
	}
	var err error
	if s.Capacity, err = capacity(h, macs, opts.InFlight); err != nil {
		return err
	}
	macs = make([]net.HardwareAddr, opts.N)
	for i := range macs {
		macs[i] = haMAC(10+run, i)
	}
	failed, last := doraAll(h, macs)
	s.Failed, s.Burst = len(failed), last
	return nil
}

// doraAll runs the DHCP of every machine of macs at once and returns those that got no lease, and
// the time from the start to the last ACK.
func doraAll(h *HA, macs []net.HardwareAddr) (failed []net.HardwareAddr, last time.Duration) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	t0 := time.Now()
	for _, mac := range macs {
		wg.Go(func() {
			_, err := h.DORA(mac)
			d := time.Since(t0)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed = append(failed, mac)
				return
			}
			last = max(last, d)
		})
	}
	wg.Wait()
	return failed, last
}

// haPoolSize is how many addresses the HA segment's pool holds.
func haPoolSize() int {
	u := func(s string) int {
		b := netip.MustParseAddr(s).As4()
		return int(b[0])<<24 | int(b[1])<<16 | int(b[2])<<8 | int(b[3])
	}
	return u(haPoolEnd) - u(haPoolStart) + 1
}

// heldOf is the shards server i says it may allocate from (none if it cannot be asked).
func (h *HA) heldOf(i int) []int {
	m, err := h.Metrics(context.Background(), h.Servers[i])
	if err != nil {
		return nil
	}
	var held []int
	for s := range h.opts.Shards {
		if m[fmt.Sprintf(`pxejoin_dhcp_shard_held{shard="%d"}`, s)] == 1 {
			held = append(held, s)
		}
	}
	return held
}

// shared reports whether every server holds its fair share of the shards.
func (h *HA) shared() bool {
	for i := range h.Servers {
		if len(h.heldOf(i)) != h.opts.Shards/len(h.Servers) {
			return false
		}
	}
	return true
}

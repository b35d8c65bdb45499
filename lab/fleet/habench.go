package fleet

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/pxejoin/pxejoin/lab/controlplane"
)

// HAResult is the HA benchmark (make bench-fleet): N unknown machines' DHCP through one boot server
// (the local store alone) and through two (dhcp.ha, shards), and a run where one of two is SIGKILLed
// at 30% of the burst, with half the machines known (a reserved or claimed address: HAOptions.Known).
type HAResult struct {
	N int
	// Known is how many machines of the kill run had an address.
	Known int
	// OneServer and TwoServers are DORA/s for the burst, all servers together.
	OneServer, TwoServers float64
	// Failed counts machines without a lease after the burst, per run; Retried those of the kill run
	// still without one after booting again (as firmware does after a failed PXE boot).
	Failed  [3]int
	Retried int
	// Adopted is how long after the kill the survivor held every shard; Limit is lease duration +
	// MCLT, the target.
	Adopted, Limit time.Duration
}

func (r *HAResult) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "HA DHCP, %d unknown machines at once:\n", r.N)
	fmt.Fprintf(&b, "  one server (local store):   %.0f DORA/s\n", r.OneServer)
	fmt.Fprintf(&b, "  two servers (dhcp.ha):      %.0f DORA/s together (%.2f× one; target ≥ 0.9×)\n", r.TwoServers, r.TwoServers/r.OneServer)
	fmt.Fprintf(&b, "  one of two SIGKILLed at 30%% (%d of the machines with a reserved or claimed address): survivor held every shard %v after the kill (target ≤ lease duration + MCLT = %v)\n", r.Known, r.Adopted.Round(time.Millisecond), r.Limit)
	fmt.Fprintf(&b, "  machines without a lease: %d / %d / %d (the kill run's after booting again: %d)\n", r.Failed[0], r.Failed[1], r.Failed[2], r.Retried)
	return b.String()
}

// RunHA runs the HA benchmark on a fresh control plane.
func RunHA(ctx context.Context, opts Options) (*HAResult, error) {
	if opts.N == 0 {
		opts.N = 1000
	}
	cp, err := controlplane.Start(ctx, controlplane.Options{StateDir: filepath.Join(opts.Dir, "ha-cp"), Logf: opts.Logf})
	if err != nil {
		return nil, err
	}
	defer cp.Stop()
	res := &HAResult{N: opts.N}
	for run, servers := range []int{1, 2, 2} {
		o := HAOptions{Servers: servers, Bootserver: opts.Bootserver, Dir: filepath.Join(opts.Dir, fmt.Sprintf("ha-%d", run)), CP: cp,
			Prefix: fmt.Sprintf("bench%d-", run), Logf: opts.Logf}
		if run == 2 {
			o.Known = min(opts.N/2, MaxKnown)
			res.Known = o.Known
		}
		h, err := StartHA(ctx, o)
		if err != nil {
			return nil, err
		}
		if servers == 2 {
			deadline := time.Now().Add(time.Minute)
			for time.Now().Before(deadline) && !(len(h.heldOf(0)) == h.opts.Shards/2 && len(h.heldOf(1)) == h.opts.Shards/2) {
				time.Sleep(100 * time.Millisecond)
			}
		}
		adopted := make(chan time.Duration, 1)
		if run == 2 {
			killed := h.KillAt(h.Servers[0], opts.N*3/10)
			go func() { // from the kill on, not after the burst: the burst waits out its lost offers
				tKill := <-killed
				for len(h.heldOf(1)) != h.opts.Shards && time.Since(tKill) < 2*time.Minute {
					time.Sleep(50 * time.Millisecond)
				}
				adopted <- time.Since(tKill)
			}()
		}
		t0 := time.Now()
		macs := make([]net.HardwareAddr, opts.N)
		for i := range macs {
			macs[i] = haMAC(10+run, i)
			if i < o.Known {
				macs[i] = haMAC(KnownRun, i)
			}
		}
		failed := doraAll(h, macs)
		res.Failed[run] = len(failed)
		rate := float64(opts.N) / time.Since(t0).Seconds()
		if run == 2 {
			// A first-boot claim waits on the API: under load some machines give up before theirs
			// is made; they boot again, as firmware does after a failed PXE boot.
			res.Retried = len(doraAll(h, failed))
		}
		switch run {
		case 0:
			res.OneServer = rate
		case 1:
			res.TwoServers = rate
		case 2:
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
			if known != nil {
				h.Close()
				return nil, fmt.Errorf("ha: known machines: %w", known)
			}
		}
		opts.logf("ha run %d (%d servers): %.0f DORA/s", run, servers, rate)
		h.Close()
	}
	return res, nil
}

// doraAll runs the DHCP of every machine of macs at once and returns those that got no lease.
func doraAll(h *HA, macs []net.HardwareAddr) []net.HardwareAddr {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed []net.HardwareAddr
	for _, mac := range macs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := h.DORA(mac); err != nil {
				mu.Lock()
				failed = append(failed, mac)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return failed
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

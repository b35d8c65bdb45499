package fleet

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pxejoin/pxejoin/lab/controlplane"
	"github.com/pxejoin/pxejoin/lab/eventually"
	"github.com/pxejoin/pxejoin/lab/testenv"
)

// haN is the machines of TestHAKill: PXEJOIN_HA_N, default 200 (make test); make bench-fleet runs 1,000.
func haN(t *testing.T) int {
	if v := os.Getenv("PXEJOIN_HA_N"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("PXEJOIN_HA_N=%q is not a number", v)
		}
		return n
	}
	return 200
}

// startHA builds the boot server, starts a control plane and a segment of two servers; known
// machines have a Machine (HAOptions.Known).
func startHA(t *testing.T, prefix string, known int) *HA {
	testenv.RequireRoot(t)
	testenv.RequireK8s(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "bootserver")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/pxejoin/pxejoin/bootserver").CombinedOutput(); err != nil {
		t.Fatalf("go build bootserver: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cp, err := controlplane.Start(ctx, controlplane.Options{StateDir: filepath.Join(dir, "cp")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cp.Stop)
	h, err := StartHA(ctx, HAOptions{Servers: 2, Bootserver: bin, Dir: dir, CP: cp, Prefix: prefix, Known: known, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	t.Cleanup(func() {
		if t.Failed() {
			for _, s := range h.Servers {
				t.Logf("%s holds shards %v; its log ends:\n%s", s.Name, h.heldOf(slices.Index(h.Servers, s)), s.Log(60))
			}
		}
	})
	eventually.True(t, "each server holds half the shards", func() bool {
		return len(h.held(t, 0)) == h.opts.Shards/2 && len(h.held(t, 1)) == h.opts.Shards/2
	})
	return h
}

// held is the shards server i says it may allocate from.
func (h *HA) held(t *testing.T, i int) []int { return h.heldOf(i) }

func (h *HA) decisions(t *testing.T, i int, d string) float64 {
	m, err := h.Metrics(context.Background(), h.Servers[i])
	if err != nil {
		t.Fatalf("metrics of %s: %v", h.Servers[i].Name, err)
	}
	return m[fmt.Sprintf(`pxejoin_dhcp_shard_decisions_total{decision="%s"}`, d)]
}

// checkOwners fails the test if two servers ACKed new bindings in one shard in interleaved runs:
// per shard, the ACKs sorted by time form at most maxRuns runs of one server each.
func checkOwners(t *testing.T, acks []Ack, shards, maxRuns int) {
	t.Helper()
	runs := map[int][]Ack{}
	for _, a := range acks {
		if !InPool(a.IP) {
			continue // reserved or claimed: every server's
		}
		s := ShardOf(a.IP, shards)
		r := runs[s]
		if len(r) == 0 || r[len(r)-1].Server != a.Server {
			runs[s] = append(r, a)
		}
	}
	for s, r := range runs {
		if len(r) > maxRuns {
			var who []string
			for _, a := range r {
				who = append(who, a.Server.String()+"@"+a.At.Format(time.StampMilli))
			}
			t.Errorf("shard %d changed hands %d times (at most %d expected): %v", s, len(r)-1, maxRuns-1, who)
		}
	}
}

// trickle does a DORA for a new machine every interval until stop is closed.
func trickle(h *HA, run int, every time.Duration) (stop func() int) {
	quit := make(chan struct{})
	var wg sync.WaitGroup
	var failed atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-quit:
				return
			case <-time.After(every):
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := h.DORA(haMAC(run, i)); err != nil {
					failed.Add(1)
				}
			}()
		}
	}()
	return func() int { close(quit); wg.Wait(); return int(failed.Load()) }
}

// TestHAKill: two servers, machines booting at once, half of them with an address (a Machine with
// spec.ipv4, or one claimed through the API: dhcp.ha.claims), the rest unknown; one server is
// SIGKILLed at 30% of the burst. Every machine gets a lease, no address is ACKed to two machines,
// the survivor hands out the dead server's pool addresses only after its Leases expired, new ones
// only after MCLT more, and the machines with an address keep it, recorded in their Machine.
func TestHAKill(t *testing.T) {
	n := haN(t)
	h := startHA(t, "kill-", n/2)
	dead, survivor := h.Servers[0], h.Servers[1]
	deadShards := h.held(t, 0)
	killed := h.KillAt(dead, n*3/10)
	t0 := time.Now()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = h.DORA(haMAC(KnownRun, i))
		}()
	}
	wg.Wait()
	total := time.Since(t0)
	for i, err := range errs {
		if err != nil {
			t.Errorf("machine %d: %v", i, err)
		}
	}
	acks := h.Acks()
	if err := CheckAcks(acks); err != nil {
		t.Error(err)
	}
	var tKill time.Time
	select {
	case tKill = <-killed:
	default:
		t.Fatal("the server was never killed")
	}
	dead.Kill() // reaped
	o := h.opts
	expiry := tKill.Add(o.LeaseDuration - o.RetryPeriod) // the dead server renewed at most a retry period before
	first := map[netip.Addr]bool{}
	var firstAfter time.Time
	seen := map[string]bool{}
	for _, a := range acks {
		if !InPool(a.IP) {
			continue // a known machine's: checked by CheckKnown
		}
		if !seen[a.MAC.String()] && a.Lease > o.MCLT {
			t.Errorf("%s's first lease is %v, more than MCLT %v (not yet mirrored)", a.MAC, a.Lease, o.MCLT)
		}
		seen[a.MAC.String()] = true
		if a.Server != survivor.IP || !slices.Contains(deadShards, ShardOf(a.IP, o.Shards)) {
			continue
		}
		if a.At.Before(expiry) {
			t.Errorf("%s ACKed %s of the dead server's shard %d at %s, before its Lease could expire (%s)", survivor.Name, a.IP, ShardOf(a.IP, o.Shards), a.At.Format(time.StampMilli), expiry.Format(time.StampMilli))
		}
		if !first[a.IP] && a.At.Before(expiry.Add(o.MCLT)) {
			t.Errorf("%s handed out %s (adopted) at %s, before MCLT passed (%s)", survivor.Name, a.IP, a.At.Format(time.StampMilli), expiry.Add(o.MCLT).Format(time.StampMilli))
		}
		first[a.IP] = true
		if firstAfter.IsZero() {
			firstAfter = a.At
		}
	}
	checkOwners(t, acks, o.Shards, 2)
	eventually.True(t, "the survivor adopts the dead server's shards", func() bool {
		return len(h.held(t, 1)) == o.Shards
	})
	adopted := time.Since(tKill) // an upper bound: polled after the burst
	if got := h.decisions(t, 1, "adopt"); got != float64(len(deadShards)) {
		t.Errorf("%s adopted %v shards, want %d", survivor.Name, got, len(deadShards))
	}
	// The dead server's machines, booting again, are served by the survivor: with the address they
	// had when their binding was mirrored before the kill, else (a short lease, at most MCLT) with
	// any; CheckAcks below shows no old address went to another machine while its lease ran.
	last := map[string]Ack{}
	for _, a := range acks {
		last[a.MAC.String()] = a
	}
	again, same := 0, 0
	for mac, a := range last {
		if a.Server != dead.IP {
			continue
		}
		hw, _ := net.ParseMAC(mac)
		ack, err := h.DORA(hw)
		if err != nil {
			t.Errorf("%s (bound by the dead server): %v", mac, err)
			continue
		}
		if got, _ := netip.AddrFromSlice(ack.YourIPAddr.To4()); got == a.IP {
			same++
		} else if a.Lease > o.MCLT || !InPool(a.IP) {
			t.Errorf("%s had %s from the dead server for %v (mirrored), the survivor gave %s", mac, a.IP, a.Lease, got)
		}
		again++
	}
	if err := CheckAcks(h.Acks()); err != nil {
		t.Error(err)
	}
	// Machine status is written behind the ACKs: wait for it, then report what is still wrong.
	var known error
	if !eventually.Within(eventually.Patience, func() bool {
		known = h.CheckKnown(context.Background(), h.Acks())
		return known == nil
	}) {
		t.Errorf("known machines, after %v: %v", eventually.Patience, known)
	}
	t.Logf("%d machines (%d with an address) in %v; killed at ACK %d; survivor held every shard within %v of the kill; %d of the dead server's machines served again, %d with their address",
		n, n/2, total, n*3/10, adopted, again, same)
	if !firstAfter.IsZero() {
		t.Logf("first address of an adopted shard handed out %v after the kill", firstAfter.Sub(tKill))
	}
}

// TestHAPartition: a server cut off from the API stops allocating from its shards before the other
// takes them; on heal the other gives them back cleanly.
func TestHAPartition(t *testing.T) {
	h := startHA(t, "part-", 0)
	cut := h.Servers[0]
	before := h.held(t, 0)
	stopTrickle := trickle(h, 2, 20*time.Millisecond)
	time.Sleep(time.Second) // some traffic before the cut (not an assertion)
	cut.Proxy.Stall()
	tStall := time.Now()
	eventually.True(t, "the other server holds every shard", func() bool { return len(h.held(t, 1)) == h.opts.Shards })
	if got := h.held(t, 0); len(got) != 0 {
		t.Errorf("the cut-off server still holds %v", got)
	}
	cut.Proxy.Heal()
	eventually.True(t, "half each again after heal", func() bool {
		return len(h.held(t, 0)) == h.opts.Shards/2 && len(h.held(t, 1)) == h.opts.Shards/2
	})
	failed := stopTrickle()
	acks := h.Acks()
	if err := CheckAcks(acks); err != nil {
		t.Error(err)
	}
	for _, a := range acks { // the cut-off server's last ACKs came before its renew deadline
		if a.Server == cut.IP && slices.Contains(before, ShardOf(a.IP, h.opts.Shards)) && a.At.After(tStall.Add(h.opts.RenewDeadline)) && a.At.Before(tStall.Add(h.opts.LeaseDuration)) {
			t.Errorf("%s ACKed %s at %s, after its renew deadline", cut.Name, a.IP, a.At.Format(time.StampMilli))
		}
	}
	checkOwners(t, acks, h.opts.Shards, 3)
	if h.decisions(t, 0, "lost") != float64(len(before)) || h.decisions(t, 1, "adopt") != float64(len(before)) || h.decisions(t, 1, "release") < float64(len(before)) {
		t.Errorf("decisions: cut lost %v; other adopt %v release %v; want %d each", h.decisions(t, 0, "lost"), h.decisions(t, 1, "adopt"), h.decisions(t, 1, "release"), len(before))
	}
	if h.decisions(t, 0, "adopt") != 0 {
		t.Errorf("the healed server adopted its shards back instead of taking them cleanly")
	}
	t.Logf("%d ACKs, %d machines failed (those caught by the cut retry against the other)", len(acks), failed)
}

// TestHAStop: a server SIGSTOPped shorter than the Lease keeps its shards; longer, the other adopts
// them, and the thawed server never allocates from them again until given back.
func TestHAStop(t *testing.T) {
	h := startHA(t, "stop-", 0)
	s := h.Servers[0]
	n := len(h.held(t, 0))
	stopTrickle := trickle(h, 3, 20*time.Millisecond)
	s.Stop()
	time.Sleep(h.opts.LeaseDuration / 4) // the stop's length is the point here
	s.Cont()
	eventually.True(t, "the server holds its shards after a short stop", func() bool { return len(h.held(t, 0)) == n })
	if got := h.decisions(t, 1, "adopt"); got != 0 {
		t.Errorf("the other adopted %v shards during a stop shorter than the Lease", got)
	}
	s.Stop()
	eventually.True(t, "the other adopts the stopped server's shards", func() bool { return h.decisions(t, 1, "adopt") == float64(n) })
	time.Sleep(h.opts.MCLT) // let the other hand out adopted addresses before the thaw
	s.Cont()
	eventually.True(t, "half each again", func() bool {
		return len(h.held(t, 0)) == h.opts.Shards/2 && len(h.held(t, 1)) == h.opts.Shards/2
	})
	failed := stopTrickle()
	acks := h.Acks()
	if err := CheckAcks(acks); err != nil {
		t.Error(err)
	}
	checkOwners(t, acks, h.opts.Shards, 3)
	t.Logf("%d ACKs, %d machines failed", len(acks), failed)
}

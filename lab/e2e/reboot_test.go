package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/lab/labenv"
	"github.com/pxejoin/pxejoin/lab/vm"
)

// TestDisklessPowerCycle: a diskless VM joins through the real boot server and becomes a Ready node;
// its plug is pulled while the Node still reads Ready and the same machine (same MAC) powers on again.
// The second boot takes the Node back (phase takeover done: the boot server's token, the old kubelet's
// Lease no longer renewed) and the Node is Ready again from the new kubelet, with nothing refused on
// the way: no phase in error and no retried join in the boot server's status, no refusal on the
// console. It prints both boots' power-on → Ready; the target (first boot + 15 s) is measured by
// BenchmarkDisklessReboot.
func TestDisklessPowerCycle(t *testing.T) {
	extended(t)
	r := runReboot(t)
	t.Logf("power-on → Ready: first boot %.1fs, diskless reboot %.1fs (%+.1fs)", r.first.ready.Seconds(), r.reboot.ready.Seconds(),
		(r.reboot.ready - r.first.ready).Seconds())
	t.Logf("first boot:\n%s", r.first.timeline)
	t.Logf("reboot:\n%s", r.reboot.timeline)
	if len(r.refused) > 0 {
		t.Errorf("the reboot was refused on the way:\n  %s", strings.Join(r.refused, "\n  "))
	}
	if p := findPhase(r.reboot.phases, bootstatus.PhaseTakeover); p == nil || p.State != bootstatus.StateDone {
		t.Errorf("the reboot reported no takeover done (the Node read Ready when it joined): %+v", p)
	} else {
		t.Logf("takeover: %s", p.Detail)
	}
}

// bootRun is one boot of the lab machine, power-on to Ready.
type bootRun struct {
	ready    time.Duration         // qemu start → the Node Ready from this boot's kubelet
	phases   []labenv.MachinePhase // the boot server's status of this boot
	started  time.Time             // qemu start
	timeline string                // phases relative to started
	console  func(string) (time.Duration, bool)
}

// rebootRun is a first boot and a diskless power-cycle of the same machine.
type rebootRun struct {
	first, reboot bootRun
	// refused lists what refused the reboot on the way: phases in error or retried, console lines.
	refused []string
}

// runReboot boots a diskless BIOS VM through the real boot server (approval by its approver only, as
// in runJoin), waits for its Node to be Ready, power-cycles it and waits for the Node to be Ready again
// from the new kubelet, watching the boot server's status of the second boot throughout.
func runReboot(t testing.TB) rebootRun {
	needRoot(t)
	img := image(t)
	n := labNet(t)
	ctx := ctxFor(t, durationEnv("PXEJOIN_JOIN_TIMEOUT", 20*time.Minute))
	cp, _ := startControlPlane(ctx, t, n)
	if err := cp.SetAutoApprove(ctx, false); err != nil {
		t.Fatal(err)
	}
	if err := cp.SetServerTLSBootstrap(ctx, true); err != nil {
		t.Fatal(err)
	}
	const node = "vm-reboot"
	mac := n.MAC(1)
	rb := &labenv.BootServer{Bin: bootserverBin(t), NS: n.NS, Interface: n.Bridge, Addr: n.BridgeAddr, Dir: t.TempDir(),
		Kubeconfig: cp.AdminKubeconfig(), Image: img, Machines: map[string]string{mac.String(): node}}
	if err := rb.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rb.Stop)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("bootserver log:\n%s", rb.LogTail(80))
		}
	})
	bs := real{rb}
	var r rebootRun

	v := startVM(t, n, node, mac, vm.BIOS, 2048)
	r.first.started = v.Started
	r.first.ready = waitReady(ctx, t, cp.Admin(), node, v, nil)
	m, _ := bs.machine(mac.String())
	r.first.phases, r.first.timeline = m.Phases, labenv.FormatTimeline(v.Started, m)

	// The plug is pulled while the Node reads Ready and its kubelet renews its Lease.
	v2, err := v.PowerCycle()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		v2.Stop()
		if t.Failed() {
			t.Logf("console of the reboot (last 60 lines):\n%s", v2.Console.Tail(60))
		}
	})
	seen := map[string]bool{}
	watch := func() { // what the boot server shows of the second boot
		m, ok := bs.machine(mac.String())
		if !ok || m.Boot < 2 {
			return
		}
		for _, p := range m.Phases {
			if p.State == bootstatus.StateError || p.Attempt > 1 {
				seen[fmt.Sprintf("boot server status: %s %s (attempt %d) %s", p.Phase, p.State, p.Attempt, p.Error)] = true
			}
		}
	}
	r.reboot.started = v2.Started
	r.reboot.ready = waitReady(ctx, t, cp.Admin(), node, v2, watch)
	watch()
	m, _ = bs.machine(mac.String())
	if m.Boot != 2 {
		t.Errorf("the boot server counts boot %d of %s, not 2", m.Boot, mac)
	}
	r.reboot.phases, r.reboot.timeline = m.Phases, labenv.FormatTimeline(v2.Started, m)
	if at, ok := v2.Console.FirstSeen(`status "Ready" already exists`); ok {
		seen[fmt.Sprintf("console at %.1fs: the join was refused over the Ready Node", at.Seconds())] = true
	}
	for s := range seen {
		r.refused = append(r.refused, s)
	}
	slices.Sort(r.refused)
	return r
}

// waitReady waits until node reads Ready from a kubelet of v's boot (its Ready heartbeat not older than
// qemu's start: a Node left Ready by an earlier boot does not count) and returns the time since qemu
// started. poll, if set, runs at every look.
func waitReady(ctx context.Context, t testing.TB, c kubernetes.Interface, node string, v *vm.VM, poll func()) time.Duration {
	t.Helper()
	// A heartbeat from v's kubelet: API timestamps are truncated to the second, so one at or after
	// v.Started (the earlier VM was stopped before v started) cannot be the earlier kubelet's. One
	// second before it could: the earlier kubelet's last report, made just before the power cut,
	// ended the wait at once (BenchmarkDisklessReboot: "the boot server counts boot 1, not 2").
	since := v.Started
	for {
		if poll != nil {
			poll()
		}
		if nd, err := c.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{}); err == nil {
			for _, cond := range nd.Status.Conditions {
				if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue && !cond.LastHeartbeatTime.Time.Before(since) {
					return time.Since(v.Started)
				}
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("node %s not Ready from %s's boot: %v", node, v.Opts.Name, ctx.Err())
		case <-v.Done():
			t.Fatalf("the VM ended before node %s was Ready", node)
		case <-time.After(time.Second):
		}
	}
}

func findPhase(ps []labenv.MachinePhase, phase string) *labenv.MachinePhase {
	for i := range ps {
		if ps[i].Phase == phase {
			return &ps[i]
		}
	}
	return nil
}

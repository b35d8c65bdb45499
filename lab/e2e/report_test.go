package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/lab/vm"
)

// TestBIOSAgentReports: a BIOS VM PXE-boots the initramfs; the agent (PID 1) reports agent-start,
// network and join-file, then fails to reach the control plane named in the join file (nothing listens
// there: the join's discovery gives up after the join file's 15 s timeouts.discovery), reports that
// without the token, and retries.
func TestBIOSAgentReports(t *testing.T) {
	extended(t)
	needRoot(t)
	n := labNet(t)
	img := image(t)
	bs := &StandIn{NS: n.NS, Addr: n.BridgeAddr, Bridge: n.Bridge, Dir: t.TempDir(), Kernel: img.Kernel, Initrd: img.Initrd}
	if err := bs.Start(); err != nil {
		t.Fatal(err)
	}
	defer bs.Stop()
	t.Cleanup(func() { bs.LogOnFailure(t) })
	mac := n.MAC(1)
	const secret = "0123456789abcdef"
	bs.SetJoin(mac.String(), []byte(fmt.Sprintf(`apiVersion: kubeadm.k8s.io/v1beta4
kind: JoinConfiguration
nodeRegistration: {name: vm-report}
discovery:
  bootstrapToken:
    token: abcdef.%s
    apiServerEndpoint: %s:6443
    caCertHashes: ["sha256:0000000000000000000000000000000000000000000000000000000000000000"]
  tlsBootstrapToken: abcdef.%s
timeouts:
  discovery: 15s
`, secret, n.BridgeAddr, secret)))
	v := startVM(t, n, "bios1", mac, vm.BIOS, 1024)
	ctx := ctxFor(t, durationEnv("PXEJOIN_BOOT_TIMEOUT", 4*time.Minute))
	for _, p := range []struct{ phase, state string }{
		{bootstatus.PhaseAgentStart, bootstatus.StateDone},
		{bootstatus.PhaseNetwork, bootstatus.StateDone},
		{bootstatus.PhaseJoinFile, bootstatus.StateDone},
		{"join", bootstatus.StateError},
	} {
		if _, err := bs.WaitEvent(ctx, mac.String(), p.phase, p.state); err != nil {
			t.Fatal(err)
		}
	}
	// A retry: the join file is fetched again after the backoff.
	if _, err := bs.WaitFor(ctx, mac.String(), "a second join file", func(e bootstatus.Event) bool {
		return e.Phase == bootstatus.PhaseJoinFile && e.State == bootstatus.StateDone && e.Attempt >= 2
	}); err != nil {
		t.Errorf("the agent did not retry after the join failed: %v", err)
	}
	evs := bs.Events(mac.String())
	t.Logf("timeline (VM clock, from qemu start):\n%s", Timeline(v.Started, evs))
	consoleMarks(t, v, "Linux version", "nodeagent init mode", "network done", "join-file done", "join error")
	for _, e := range evs {
		if strings.Contains(e.Error+e.Detail, secret) {
			t.Errorf("a status report holds the token secret: %+v", e)
		}
	}
}

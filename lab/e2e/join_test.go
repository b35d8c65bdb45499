package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pxejoin/pxejoin/bootstatus"
	"github.com/pxejoin/pxejoin/lab/controlplane"
	"github.com/pxejoin/pxejoin/lab/vm"
)

// joinCase is one VM that PXE-boots and must become a Node of the test's control plane.
type joinCase struct {
	fw vm.Firmware
	// wrongPinFirst serves a join file with a wrong CA pin until the agent reported the failure.
	wrongPinFirst bool
	// restartBootServer stops the boot server's HTTP side once the kernel runs and starts it again.
	restartBootServer bool
}

// extended skips unless make test-e2e asked for every VM case (PXEJOIN_E2E=all).
func extended(t *testing.T) {
	if os.Getenv("PXEJOIN_E2E") != "all" {
		t.Skip("extended VM case; run make test-e2e")
	}
}

// TestBIOSJoin is the VM end to end of make test: BIOS, virtio, PXE → a Ready Node.
func TestBIOSJoin(t *testing.T) { runJoin(t, joinCase{fw: vm.BIOS}) }

// TestUEFIJoin: OVMF with the NIC's iPXE EFI ROM.
func TestUEFIJoin(t *testing.T) { extended(t); runJoin(t, joinCase{fw: vm.UEFI}) }

// TestUEFINativePXEJoin: OVMF's own PXE client → TFTP ipxe.efi → iPXE → HTTP.
func TestUEFINativePXEJoin(t *testing.T) { extended(t); runJoin(t, joinCase{fw: vm.UEFIPXE}) }

// TestWrongCAPinReportedAndRetried: the agent reports the pin mismatch to the boot server and keeps
// retrying; once the join file is right the node joins.
func TestWrongCAPinReportedAndRetried(t *testing.T) {
	extended(t)
	runJoin(t, joinCase{fw: vm.BIOS, wrongPinFirst: true})
}

// TestBootServerRestartDuringBoot: the boot server goes away while the agent runs and comes back; the
// reports queued meanwhile arrive and the node joins.
func TestBootServerRestartDuringBoot(t *testing.T) {
	extended(t)
	runJoin(t, joinCase{fw: vm.BIOS, restartBootServer: true})
}

func runJoin(t *testing.T, c joinCase) {
	needRoot(t)
	if os.Getenv("PXEJOIN_K8S_BIN") == "" {
		t.Fatal("PXEJOIN_K8S_BIN is not set: run through make test (it builds the control plane with make k8s)")
	}
	img := image(t)
	n := labNet(t)
	ctx := ctxFor(t, durationEnv("PXEJOIN_JOIN_TIMEOUT", 15*time.Minute))
	t0 := time.Now()
	cp, err := controlplane.Start(ctx, controlplane.Options{StateDir: t.TempDir(), Address: n.BridgeAddr, NetNS: n.NS.Name, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cp.Stop)
	token, err := cp.CreateToken(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.WaitSigned(ctx, token, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	t.Logf("control plane at %s ready with a signed token after %s", cp.Endpoint(), time.Since(t0).Round(time.Millisecond))

	bs := &StandIn{NS: n.NS, Addr: n.BridgeAddr, Bridge: n.Bridge, Dir: t.TempDir(), Kernel: img.Kernel,
		Initrd: img.Initrd, Image: img.Root}
	if err := bs.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bs.Stop)
	t.Cleanup(func() { bs.LogOnFailure(t) })

	node := fmt.Sprintf("vm-%s", strings.ReplaceAll(string(c.fw), "-", ""))
	mac := n.MAC(1)
	pin := cp.CAPin()
	if c.wrongPinFirst {
		pin = "sha256:" + strings.Repeat("ab", 32)
	}
	bs.SetJoin(mac.String(), joinFile(node, token, cp.Endpoint(), pin))
	v := startVM(t, n, node, mac, c.fw, 2048)

	if c.wrongPinFirst {
		ev, err := bs.WaitEvent(ctx, mac.String(), "join", bootstatus.StateError)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("agent reported: %s", ev.Error)
		if !strings.Contains(strings.ToLower(ev.Error), "pin") && !strings.Contains(strings.ToLower(ev.Error), "hash") {
			t.Errorf("the reported error does not name the CA pin: %q", ev.Error)
		}
		bs.SetJoin(mac.String(), joinFile(node, token, cp.Endpoint(), cp.CAPin()))
	}
	if c.restartBootServer {
		if _, err := bs.WaitEvent(ctx, mac.String(), bootstatus.PhaseNetwork, bootstatus.StateDone); err != nil {
			t.Fatal(err)
		}
		bs.Stop()
		t.Logf("boot server stopped at %s", time.Since(v.Started).Round(time.Millisecond))
		time.Sleep(10 * time.Second)
		if err := bs.Start(); err != nil {
			t.Fatal(err)
		}
		bs.SetJoin(mac.String(), joinFile(node, token, cp.Endpoint(), cp.CAPin()))
		t.Logf("boot server started again at %s", time.Since(v.Started).Round(time.Millisecond))
	}

	// The Node registers (kubelet started by the image's systemd) and becomes Ready.
	var registered, ready time.Duration
	for registered == 0 || ready == 0 {
		nd, err := cp.Admin().CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err == nil {
			if registered == 0 {
				registered = time.Since(v.Started)
			}
			for _, cond := range nd.Status.Conditions {
				if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
					ready = time.Since(v.Started)
				}
			}
		}
		select {
		case <-ctx.Done():
			t.Logf("timeline:\n%s", Timeline(v.Started, bs.Events(mac.String())))
			t.Fatalf("node %s: registered after %s, not Ready: %v", node, registered, ctx.Err())
		case <-v.Done():
			t.Logf("timeline:\n%s", Timeline(v.Started, bs.Events(mac.String())))
			t.Fatalf("the VM ended before node %s was Ready", node)
		case <-time.After(time.Second):
		}
	}
	evs := bs.Events(mac.String())
	t.Logf("%s: Node registered at %.1fs, Ready at %.1fs after qemu started; agent timeline:\n%s", node,
		registered.Seconds(), ready.Seconds(), Timeline(v.Started, evs))
	consoleMarks(t, v, "Linux version", "nodeagent init mode", "network done", "join-file done",
		"root-image done", "switch-root done", "systemd[1]", "containerd container runtime", "The Kubernetes Node Agent", "login:")
	for _, e := range evs {
		if strings.Contains(e.Error+e.Detail, strings.SplitN(token, ".", 2)[1]) {
			t.Errorf("a status report holds the token secret: %s %s", e.Phase, e.State)
		}
	}
	want := []string{bootstatus.PhaseAgentStart, bootstatus.PhaseNetwork, bootstatus.PhaseJoinFile,
		bootstatus.PhaseRootImage, "kubelet-start/tls-bootstrap", bootstatus.PhaseSwitchRoot}
	for _, p := range want {
		found := false
		for _, e := range evs {
			found = found || (e.Phase == p && e.State == bootstatus.StateDone)
		}
		if !found {
			t.Errorf("no %q done report", p)
		}
	}
	if keep := os.Getenv("PXEJOIN_KEEP"); keep != "" {
		os.WriteFile(filepath.Join(keep, node+".timeline"), []byte(Timeline(v.Started, evs)), 0o644)
	}
}

func joinFile(node, token, endpoint, pin string) []byte {
	return []byte(fmt.Sprintf(`apiVersion: kubeadm.k8s.io/v1beta4
kind: JoinConfiguration
nodeRegistration:
  name: %s
  criSocket: unix:///var/run/containerd/containerd.sock
  taints: []
discovery:
  bootstrapToken:
    token: %s
    apiServerEndpoint: %s
    caCertHashes: [%q]
  tlsBootstrapToken: %s
`, node, token, endpoint, pin, token))
}

package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/lab/controlplane"
	"github.com/pxejoin/pxejoin/lab/labenv"
	"github.com/pxejoin/pxejoin/lab/vm"
)

// joinCase is one VM that PXE-boots and must become a Node of the test's control plane.
type joinCase struct {
	fw vm.Firmware
	// wrongPinFirst serves a join file with a wrong CA pin until the agent reported the failure.
	wrongPinFirst bool
	// restartBootServer stops the boot server's HTTP side once the kernel runs and starts it again.
	restartBootServer bool
	// proxy runs the boot server in proxy mode beside dnsmasq, a DHCP server that knows nothing of PXE.
	proxy bool
	// cniAddon installs a CNI add-on's config on the node and checks that pods then use it.
	cniAddon bool
}

// extended skips unless make test-e2e asked for every VM case (PXEJOIN_E2E=all).
func extended(t *testing.T) {
	if os.Getenv("PXEJOIN_E2E") != "all" {
		t.Skip("extended VM case; run make test-e2e")
	}
}

// TestBIOSJoin is the VM end to end of make test: BIOS, virtio, PXE → a Ready Node that runs pods,
// and whose pods move to a CNI add-on once one is installed.
func TestBIOSJoin(t *testing.T) { runJoin(t, joinCase{fw: vm.BIOS, cniAddon: true}) }

// TestUEFIJoin: OVMF with the NIC's iPXE EFI ROM.
func TestUEFIJoin(t *testing.T) { extended(t); runJoin(t, joinCase{fw: vm.UEFI}) }

// TestUEFINativePXEJoin: OVMF's own PXE client → TFTP ipxe.efi → iPXE → HTTP.
func TestUEFINativePXEJoin(t *testing.T) { extended(t); runJoin(t, joinCase{fw: vm.UEFIPXE}) }

// TestUEFINativePXEProxyJoin: OVMF's own PXE client beside another DHCP server (dnsmasq hands out the
// address), the boot server in proxy mode. EDK2 takes the proxy offer (PXEClient, no option 43) for a
// BINL offer and asks the boot server again on port 4011, as it does with WDS: that exchange must work.
func TestUEFINativePXEProxyJoin(t *testing.T) {
	extended(t)
	runJoin(t, joinCase{fw: vm.UEFIPXE, proxy: true})
}

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
	img := image(t)
	n := labNet(t)
	ctx := ctxFor(t, durationEnv("PXEJOIN_JOIN_TIMEOUT", 15*time.Minute))
	cp, token := startControlPlane(ctx, t, n)

	node := fmt.Sprintf("vm-%s", strings.ReplaceAll(string(c.fw), "-", ""))
	mac := n.MAC(1)
	var bs server
	var sa *StandIn
	if c.proxy {
		dns, err := startDnsmasq(n.NS, n.Bridge, n.BridgeAddr, t.TempDir(), "")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dns.Process.Kill(); dns.Wait() })
	}
	var rb *labenv.BootServer
	// secrets lists the token secrets this machine may be given, which must reach no report, status
	// page or log.
	var secrets func() []string
	// The real boot server serves every case but one: it writes the join file itself, so it cannot
	// serve one with a wrong CA pin; the stand-in does.
	if !c.wrongPinFirst {
		// The real boot server: it mints this machine's token and writes its join file itself.
		secrets = mintedSecrets(ctx, t, cp.Admin())
		mode := ""
		if c.proxy {
			mode = "proxy"
		}
		// Only the boot server's approver may approve this machine's certificates: kubeadm's
		// auto-approval is off, and the kubelet asks for a serving certificate too.
		if err := cp.SetAutoApprove(ctx, false); err != nil {
			t.Fatal(err)
		}
		if err := cp.SetServerTLSBootstrap(ctx, true); err != nil {
			t.Fatal(err)
		}
		rb = startBootServer(ctx, t, n, cp, img, mac.String(), node, mode)
		bs = real{rb}
	} else {
		// The stand-in serves a join file of the test's making (a wrong CA pin first).
		sa = &StandIn{NS: n.NS, Addr: n.BridgeAddr, Bridge: n.Bridge, Dir: t.TempDir(), Kernel: img.Kernel,
			Initrd: img.Initrd, Image: img.Root}
		if err := sa.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(sa.Stop)
		t.Cleanup(func() { sa.LogOnFailure(t) })
		pin := cp.CAPin()
		if c.wrongPinFirst {
			pin = "sha256:" + strings.Repeat("ab", 32)
		}
		sa.SetJoin(mac.String(), joinFile(node, token, cp.Endpoint(), pin))
		secrets = func() []string { return []string{strings.SplitN(token, ".", 2)[1]} }
		bs = standIn{sa}
		t.Logf("boot server: the stand-in (dnsmasq + Go HTTP)")
	}
	v := startVM(t, n, node, mac, c.fw, 2048)
	if c.fw == vm.UEFIHTTP {
		watchHTTPBoot(ctx, t, v) // stops the VM at once if the firmware's HTTP boot fails
	}

	if c.wrongPinFirst {
		ev, err := sa.WaitEvent(ctx, mac.String(), "join", bootstatus.StateError)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("agent reported: %s", ev.Error)
		if !strings.Contains(strings.ToLower(ev.Error), "pin") && !strings.Contains(strings.ToLower(ev.Error), "hash") {
			t.Errorf("the reported error does not name the CA pin: %q", ev.Error)
		}
		// It retries: the join file is fetched again.
		if _, err := sa.WaitEvent(ctx, mac.String(), bootstatus.PhaseJoinFile, bootstatus.StateStart); err != nil {
			t.Fatal(err)
		}
		sa.SetJoin(mac.String(), joinFile(node, token, cp.Endpoint(), cp.CAPin()))
	}
	if c.restartBootServer {
		if err := bs.waitPhase(ctx, mac.String(), bootstatus.PhaseNetwork, bootstatus.StateDone); err != nil {
			t.Fatal(err)
		}
		bs.restart(t, 8*time.Second)
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
			t.Logf("timeline:\n%s", bs.timeline(v.Started, mac.String()))
			t.Fatalf("node %s: registered after %s, not Ready: %v", node, registered, ctx.Err())
		case <-v.Done():
			t.Logf("timeline:\n%s", bs.timeline(v.Started, mac.String()))
			t.Fatalf("the VM ended before node %s was Ready", node)
		case <-time.After(time.Second):
		}
	}
	tl := bs.timeline(v.Started, mac.String())
	t.Logf("%s: Node registered at %.1fs, Ready at %.1fs after qemu started; timeline:\n%s", node,
		registered.Seconds(), ready.Seconds(), tl)
	if rb != nil {
		checkServingCert(ctx, t, cp, n, node)
	}
	// The CNI config of the image (images/rootfs/etc/cni/net.d) hands out 10.88.0.0/16.
	if ip := runPod(ctx, t, cp, node); !podNet.Contains(ip) {
		t.Errorf("the pod's IP %s is outside the image's CNI range %s", ip, podNet)
	}
	if c.cniAddon {
		checkAddonTakesOver(ctx, t, cp, node)
	}
	consoleMarks(t, v, "Linux version", "nodeagent init mode", "network done", "join-file done",
		"root-image done", "switch-root done", "systemd[1]", "containerd container runtime", "The Kubernetes Node Agent", "login:")
	if c.proxy && c.fw == vm.UEFIPXE {
		if log := rb.LogTail(100000); !strings.Contains(log, "pxe_port=true") {
			t.Errorf("the firmware never asked on port 4011 (no proxy ACK with pxe_port=true in the boot server's log)")
		} else {
			t.Logf("port 4011: %s", firstLine(log, "pxe_port=true"))
		}
	}
	checkNoSecret(t, bs, mac.String(), secrets())
	want := []string{bootstatus.PhaseAgentStart, bootstatus.PhaseNetwork, bootstatus.PhaseJoinFile,
		bootstatus.PhaseRootImage, "kubelet-start/tls-bootstrap", bootstatus.PhaseSwitchRoot}
	done := bs.phasesDone(mac.String())
	for _, p := range want {
		if !done[p] {
			t.Errorf("no %q done report", p)
		}
	}
	if keep := os.Getenv("PXEJOIN_KEEP"); keep != "" {
		os.WriteFile(filepath.Join(keep, node+".timeline"), []byte(tl), 0o644)
	}
}

var _, podNet, _ = net.ParseCIDR("10.88.0.0/16")

// startBootServer starts the real boot server for one machine (dhcpMode "" is full DHCP) and stops
// it at the test's end, printing its log if the test failed.
func startBootServer(ctx context.Context, t *testing.T, n *labenv.Net, cp *controlplane.ControlPlane, img *labenv.Image, mac, node, dhcpMode string) *labenv.BootServer {
	t.Helper()
	rb := &labenv.BootServer{Bin: bootserverBin(t), NS: n.NS, Interface: n.Bridge, Addr: n.BridgeAddr, Dir: t.TempDir(),
		Kubeconfig: cp.AdminKubeconfig(), Image: img, Machines: map[string]string{mac: node}, DHCPMode: dhcpMode}
	if err := rb.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rb.Stop)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("bootserver log:\n%s", rb.LogTail(80))
		}
	})
	t.Logf("boot server: the real bootserver (%s)", rb.Bin)
	return rb
}

// checkNoSecret fails the test if one of the machine's token secrets reached the boot server's
// reports, status pages or log.
func checkNoSecret(t *testing.T, bs server, mac string, secrets []string) {
	t.Helper()
	if len(secrets) == 0 {
		t.Errorf("no token was minted for %s: there is no secret to look for", mac)
	}
	for _, sec := range secrets {
		if where := bs.secretSeen(mac, sec); len(where) > 0 {
			t.Errorf("a token secret of %s reached %s", mac, strings.Join(where, ", "))
		}
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

// firstLine is the first line of text that contains s.
func firstLine(text, s string) string {
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, s) {
			return l
		}
	}
	return ""
}

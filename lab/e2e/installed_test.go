package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/lab/vm"
)

// TestInstalledJoin is `nodeagent join` on a machine already running the node image, as on an
// installed machine: the VM boots the image with pxejoin.join=skip (the initramfs mounts the root and
// switch_roots without joining), then systemd runs the join with kubeadm's flags (systemd.run=, the
// kernel command line's way to run one command in the booted system; systemd then boots into that
// command's target, so systemd.wants= adds the usual multi-user.target, containerd included). The join writes the kubelet's
// files, starts kubelet.service through systemd's D-Bus API (go-systemd), and the Node registers.
// A pod bound to the node then runs.
//
// The VM loads kernel and initramfs directly (qemu -kernel): there is no PXE in this path, and the
// command line holds a shell command that iPXE's parser would mangle. The command waits for containerd's
// socket first: at boot, the join's preflight would otherwise race containerd's start.
func TestInstalledJoin(t *testing.T) {
	needRoot(t)
	img := image(t)
	n := labNet(t)
	ctx := ctxFor(t, durationEnv("PXEJOIN_JOIN_TIMEOUT", 15*time.Minute))
	cp, token := startControlPlane(ctx, t, n)
	const node = "vm-installed"
	mac := n.MAC(2)
	// The real boot server hands out the address, serves the root image and takes the reports.
	rb := startBootServer(ctx, t, n, cp, img, mac.String(), node, "")
	bs := real{rb}
	join := fmt.Sprintf("/usr/bin/nodeagent join %s --token %s --discovery-token-ca-cert-hash %s --node-name %s "+
		"--cri-socket unix:///var/run/containerd/containerd.sock", cp.Endpoint(), token, cp.CAPin(), node)
	cmdline := fmt.Sprintf("console=ttyS0 pxejoin.mac=%s pxejoin.join=skip pxejoin.image=%s/images/node/root.squashfs "+
		"pxejoin.status=%s/status/%s "+
		`systemd.run="/bin/sh -c 'until test -S /run/containerd/containerd.sock; do sleep 1; done; exec %s'" `+
		"systemd.run_success_action=none systemd.run_failure_action=none systemd.wants=multi-user.target",
		mac, rb.URL(), rb.URL(), mac, join)
	dir := t.TempDir()
	v, err := vm.Start(vm.Options{Name: "installed", NetNS: n.NS.Name, Bridge: n.Bridge, MAC: mac, Dir: dir, MemoryMB: 2048,
		Extra: []string{"-kernel", img.Kernel, "-initrd", img.Initrd, "-append", cmdline}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		v.Stop()
		if t.Failed() {
			t.Logf("console (last 80 lines):\n%s", v.Console.Tail(80))
		}
	})

	// The initramfs skipped the join and switched root.
	if err := bs.waitPhase(ctx, mac.String(), bootstatus.PhaseSwitchRoot, bootstatus.StateDone); err != nil {
		t.Fatal(err)
	}
	if m, ok := bs.machine(mac.String()); ok {
		for _, p := range m.Phases {
			if (p.Phase == bootstatus.PhaseJoinFile || p.Phase == "join") && p.State != bootstatus.StateStart && p.State != bootstatus.StateSkipped {
				t.Errorf("the initramfs did not skip %s: %+v", p.Phase, p)
			}
		}
	} else {
		t.Errorf("%s is not in the boot server's /machines", mac)
	}
	// The join inside the booted image ends with kubeadm's words, after starting the kubelet itself.
	if _, err := v.Console.Wait(ctx, "This node has joined the cluster"); err != nil {
		t.Fatalf("the join did not finish: %v", err)
	}
	// Registered as the join said, under the name given with --node-name.
	for {
		if _, err := cp.Admin().CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{}); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("node %s did not register: %v", node, ctx.Err())
		case <-v.Done():
			t.Fatalf("the VM ended before node %s registered", node)
		case <-time.After(time.Second):
		}
	}
	registered := time.Since(v.Started)
	// The join's own account: it started the kubelet and saw its Node register.
	for _, want := range []string{"[preflight] Running pre-flight checks", "[kubelet-start] Certificate issued",
		"[kubelet-start] Starting the kubelet", fmt.Sprintf("[kubelet-start] Node %q registered", node)} {
		if _, ok := v.Console.FirstSeen(want); !ok {
			t.Errorf("the console lacks the join's %q", want)
		}
	}
	// The secret is on this test's kernel command line (which the kernel prints); nothing else shows it.
	secret := strings.SplitN(token, ".", 2)[1]
	for _, line := range strings.Split(v.Console.Text(), "\n") {
		if strings.Contains(line, secret) && !strings.Contains(line, "ommand line:") {
			t.Errorf("the console shows the token secret: %q", strings.ReplaceAll(line, secret, "<secret>"))
		}
	}
	checkNoSecret(t, bs, mac.String(), []string{secret})
	t.Logf("node %s registered %.1fs after qemu started (kubelet started by the join through systemd)", node, registered.Seconds())
	// The kubelet the join started runs workloads.
	runPod(ctx, t, cp, node)
	consoleMarks(t, v, "Linux version", "nodeagent init mode", "switch-root done", "systemd[1]",
		"containerd container runtime", "[preflight] Running pre-flight checks", "[kubelet-start] Certificate issued",
		"[kubelet-start] Starting the kubelet", fmt.Sprintf("[kubelet-start] Node %q registered", node), "This node has joined the cluster")
}

package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/bootserver/machineapi"
	"github.com/pxejoin/pxejoin/deploy/crd"
	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/lab/controlplane"
	"github.com/pxejoin/pxejoin/lab/eventually"
	"github.com/pxejoin/pxejoin/lab/labenv"
	"github.com/pxejoin/pxejoin/lab/netlab"
	"github.com/pxejoin/pxejoin/lab/vm"
)

// TestHAServerKilledMidBoot: two real boot servers (dhcp.ha with address claims, the Machine
// inventory) answer the VM's segment. The server that ACKed the VM's firmware DHCP is SIGKILLed
// once the VM asked it for the kernel; the VM still becomes a Ready Node, through the survivor
// (the iPXE script's next server, or the agent's pxejoin.servers=), with one address throughout:
// the one claimed on its first DHCP and recorded in its Machine's status.
func TestHAServerKilledMidBoot(t *testing.T) {
	extended(t)
	needRoot(t)
	img := image(t)
	n := labNet(t)
	ctx := ctxFor(t, durationEnv("PXEJOIN_JOIN_TIMEOUT", 20*time.Minute))
	cp, _ := startControlPlane(ctx, t, n)
	dyn, err := dynamic.NewForConfig(cp.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := crd.Install(ctx, dyn, crd.Machines, "pxejoin-test"); err != nil {
		t.Fatal(err)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: config.DefaultHANamespace}}
	if _, err := cp.Admin().CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	// No spec.ipv4: the address is claimed on the first DHCP, from the claims range.
	node, mac := "vm-ha", n.MAC(1)
	m := &machineapi.Machine{Spec: machineapi.MachineSpec{MACs: []string{mac.String()}, Profile: "node"}}
	m.APIVersion, m.Kind, m.Name = machineapi.GVK.GroupVersion().String(), machineapi.Kind, node
	u, err := machineapi.ToUnstructured(m)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dyn.Resource(machineapi.GVR).Create(ctx, u, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Only the boot servers' approvers may approve the node's certificate.
	if err := cp.SetAutoApprove(ctx, false); err != nil {
		t.Fatal(err)
	}
	servers := []*labenv.BootServer{haServer(ctx, t, n, cp, img, "a", 2), haServer(ctx, t, n, cp, img, "b", 3)}
	// Each names the other in its scripts once it has seen the other's presence Lease.
	for _, s := range servers {
		if !eventually.Within(time.Minute, func() bool {
			script, err := httpGet(s.URL() + "/boot/" + mac.String() + ".ipxe")
			return err == nil && strings.Contains(script, "pxejoin.servers=") && strings.Contains(script, ":server1")
		}) {
			t.Fatalf("the script of %s does not name the other server; log:\n%s", s.URL(), s.LogTail(40))
		}
	}

	v := startVM(t, n, node, mac, vm.BIOS, 2048)

	// The server that ACKed the firmware's DHCP serves the script and the kernel: it is killed
	// as soon as it records the kernel's download.
	var first, survivor *labenv.BootServer
	var acked netip.Addr
	if !eventually.Within(10*time.Minute, func() bool {
		for i, s := range servers {
			m, ok := real{s}.machine(mac.String())
			if !ok {
				continue
			}
			if p := phaseOf(m, bootstatus.PhaseDHCP); p != nil && p.State == bootstatus.StateDone {
				first, survivor = s, servers[1-i]
				acked, _ = netip.ParseAddr(strings.Fields(p.Detail)[0])
				return true
			}
		}
		return false
	}) {
		t.Fatalf("no server ACKed the VM's DHCP within 10 minutes")
	}
	t.Logf("%s ACKed %s to the firmware %.1fs after power-on", first.ServerName, acked, time.Since(v.Started).Seconds())
	var killedAt time.Time
	if !eventually.Within(5*time.Minute, func() bool {
		m, ok := real{first}.machine(mac.String())
		if ok && phaseOf(m, bootstatus.PhaseKernel) != nil {
			first.Kill()
			killedAt = time.Now()
			return true
		}
		return false
	}) {
		t.Fatalf("%s did not see the kernel's download; its log:\n%s", first.ServerName, first.LogTail(40))
	}
	t.Logf("%s killed (SIGKILL) %.1fs after power-on, once it recorded the kernel's download", first.ServerName, killedAt.Sub(v.Started).Seconds())
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log of the killed server %s:\n%s", first.ServerName, first.LogTail(40))
		}
	})

	ready := waitReady(ctx, t, cp.Admin(), node, v, nil)
	t.Logf("node %s Ready %.1fs after power-on", node, ready.Seconds())

	// The survivor's view: what it served after the kill, and how soon.
	sm, ok := real{survivor}.machine(mac.String())
	if !ok {
		t.Fatalf("%s has no timeline of %s", survivor.ServerName, mac)
	}
	t.Logf("%s's timeline:\n%s", survivor.ServerName, labenv.FormatTimeline(v.Started, sm))
	next, at := nextAfter(sm, killedAt)
	if next == nil {
		t.Fatalf("%s recorded nothing of %s after the kill", survivor.ServerName, mac)
	}
	t.Logf("%s served the VM's next request (%s, from %s) %.1fs after the kill", survivor.ServerName, next.Phase, next.Source, at.Sub(killedAt).Seconds())
	if p := phaseOf(sm, bootstatus.PhaseKernel); p != nil && p.State == bootstatus.StateDone {
		t.Logf("iPXE took the script's next server: %s served the kernel", survivor.ServerName)
	} else {
		t.Logf("the initramfs was loaded before the kill: the agent took pxejoin.servers=")
	}
	if p := phaseOf(sm, bootstatus.PhaseJoinFile); p == nil || p.State != bootstatus.StateDone {
		t.Errorf("%s did not serve the join file: %+v", survivor.ServerName, p)
	}

	// One address throughout: the firmware's ACK, the agent's, the Node's, the Machine's status.
	addrs := map[string]netip.Addr{"firmware's ACK from " + first.ServerName: acked}
	if p := phaseOf(sm, bootstatus.PhaseAgentDHCP); p != nil && p.State == bootstatus.StateDone {
		addrs["agent's ACK from "+survivor.ServerName], _ = netip.ParseAddr(strings.Fields(p.Detail)[0])
	}
	nd, err := cp.Admin().CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range nd.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			addrs["Node's InternalIP"], _ = netip.ParseAddr(a.Address)
		}
	}
	var st machineapi.MachineStatus
	if !eventually.Within(2*time.Minute, func() bool {
		got, err := dyn.Resource(machineapi.GVR).Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false
		}
		mm, err := machineapi.FromUnstructured(got)
		if err != nil {
			return false
		}
		st = mm.Status
		return st.ClaimedIPv4 != "" && st.ServedBy == survivor.ServerName && st.NodeRef != nil && st.NodeRef.Name == node
	}) {
		t.Errorf("Machine %s's status does not show the survivor's boot and the node: %+v", node, st)
	}
	addrs["Machine's status.claimedIPv4"], _ = netip.ParseAddr(st.ClaimedIPv4)
	var seen []string
	for what, a := range addrs {
		seen = append(seen, fmt.Sprintf("%s %s", what, a))
		if a != acked {
			t.Errorf("%s is %s, the firmware got %s", what, a, acked)
		}
	}
	t.Logf("addresses: %s", strings.Join(seen, "; "))
	t.Logf("Machine %s: phase %s, boot %d, served by %s", node, st.Phase, st.Boot, st.ServedBy)
}

// haServer runs boot server id in a namespace of its own at 10.77.<subnet>.<host>, its eth0 on the
// lab bridge, with dhcp.ha and address claims in .20-.40; the test process reaches it through the
// lab namespace, which routes.
func haServer(ctx context.Context, t *testing.T, n *labenv.Net, cp *controlplane.ControlPlane, img *labenv.Image, id string, host int) *labenv.BootServer {
	t.Helper()
	prefix := n.BridgeAddr[:strings.LastIndex(n.BridgeAddr, ".")]
	addr := fmt.Sprintf("%s.%d", prefix, host)
	sns := netlab.New(t, "bsha"+id)
	netlab.Veth(t, sns, "eth0", addr+"/24", n.NS, "ha-"+id, "")
	n.NS.MustExec(t, "ip", "link", "set", "ha-"+id, "master", n.Bridge)
	sns.MustExec(t, "ip", "route", "add", "default", "via", n.BridgeAddr)
	n.NS.MustExec(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	if out, err := exec.Command("ip", "route", "replace", addr+"/32", "via", fmt.Sprintf("10.78.%d.2", n.Subnet), "dev", n.HostIf).CombinedOutput(); err != nil {
		t.Fatalf("ip route: %v: %s", err, out)
	}
	dir := t.TempDir()
	bs := &labenv.BootServer{Bin: bootserverBin(t), NS: sns, Interface: "eth0", Addr: addr, Dir: dir,
		Kubeconfig: cp.AdminKubeconfig(), Image: img, FromAPI: true, ServerName: "bs-" + id,
		HA: fmt.Sprintf("{identity: bs-%s, claims: {start: %s.20, end: %s.40}}", id, prefix, prefix)}
	if err := bs.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		bs.Stop()
		if keep := os.Getenv("PXEJOIN_KEEP"); keep != "" {
			b, _ := os.ReadFile(filepath.Join(dir, "bootserver.log"))
			os.WriteFile(filepath.Join(keep, "bootserver-"+id+".log"), b, 0o644)
		}
	})
	return bs
}

// phaseOf is m's phase named name, nil if m has none.
func phaseOf(m labenv.Machine, name string) *labenv.MachinePhase {
	return findPhase(m.Phases, name)
}

// nextAfter is m's first phase seen after t (its start, or its end for one under way at t) and
// when.
func nextAfter(m labenv.Machine, t time.Time) (*labenv.MachinePhase, time.Time) {
	var next *labenv.MachinePhase
	var when time.Time
	for i, p := range m.Phases {
		at := p.Start
		if !at.After(t) {
			at = p.End
		}
		if at.After(t) && (next == nil || at.Before(when)) {
			next, when = &m.Phases[i], at
		}
	}
	return next, when
}

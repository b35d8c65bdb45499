package e2e

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/bootserver/machineapi"
	"github.com/pxejoin/pxejoin/deploy/crd"
	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
	"github.com/pxejoin/pxejoin/internal/joinconfig"
	"github.com/pxejoin/pxejoin/lab/controlplane"
	"github.com/pxejoin/pxejoin/lab/eventually"
	"github.com/pxejoin/pxejoin/lab/labenv"
	"github.com/pxejoin/pxejoin/lab/netlab"
	"github.com/pxejoin/pxejoin/lab/testenv"
	"github.com/pxejoin/pxejoin/lab/vm"
	"github.com/pxejoin/pxejoin/nodeagent/initmode"
)

// TestHAServerKilledMidBoot: two real boot servers (dhcp.ha with address claims, the Machine
// inventory) answer the VM's segment. The server that ACKed the VM's firmware DHCP is SIGKILLed
// mid-boot; the VM still becomes a Ready Node through the survivor, with one address throughout:
// the one claimed on its first DHCP and recorded in its Machine's status. Killed once it served
// the kernel ("kernel"), while the initramfs downloads, iPXE goes on with the script's next
// server; killed once it served the initramfs ("initrd"), the agent of the kernel it served takes
// its join file and root image from pxejoin.servers=. In "host" the dead server's link goes down
// too, as when its host dies: nothing refuses the agent's connections any more.
func TestHAServerKilledMidBoot(t *testing.T) {
	extended(t)
	needRoot(t)
	for _, c := range []struct {
		killAt   string
		hostDown bool
	}{
		{bootstatus.PhaseKernel, false},
		{bootstatus.PhaseInitrd, false},
		{bootstatus.PhaseInitrd, true},
	} {
		name := c.killAt
		if c.hostDown {
			name = "host"
		}
		t.Run(name, func(t *testing.T) { runHAKill(t, name, c.killAt, c.hostDown) })
	}
}

// runHAKill boots VM vm-<name> through two servers and kills the one that ACKed its firmware's
// DHCP once that server recorded phase killAt done; hostDown takes its link down too.
func runHAKill(t *testing.T, name, killAt string, hostDown bool) {
	img := image(t)
	n := labNet(t)
	ctx := ctxFor(t, durationEnv("PXEJOIN_JOIN_TIMEOUT", 20*time.Minute))
	cp, _ := startControlPlane(ctx, t, n)
	// No spec.ipv4: the address is claimed on the first DHCP, from the claims range.
	node, mac := "vm-"+name, n.MAC(1)
	dyn := haMachine(ctx, t, cp, node, mac)
	servers := []*labenv.BootServer{haServer(ctx, t, n, cp, img, "a", 2), haServer(ctx, t, n, cp, img, "b", 3)}
	waitPeers(t, servers)

	v := startVM(t, n, node, mac, vm.BIOS, 2048)

	// The server that ACKed the firmware's DHCP serves the script, kernel and initramfs: it is
	// killed once it has served killAt.
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
		if p := phaseOf(m, killAt); ok && p != nil && p.State == bootstatus.StateDone {
			killedAt = time.Now() // Kill waits a little after the signal
			first.Kill()
			if hostDown {
				first.NS.MustExec(t, "ip", "link", "set", "eth0", "down")
			}
			return true
		}
		return false
	}) {
		t.Fatalf("%s did not record %s; its log:\n%s", first.ServerName, killAt, first.LogTail(40))
	}
	t.Logf("%s killed (SIGKILL) %.1fs after power-on, once it served the %s (link down too: %v)", first.ServerName, killedAt.Sub(v.Started).Seconds(), killAt, hostDown)
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
	t.Logf("%s served the VM's next request (%s, from %s) %.2fs after the kill", survivor.ServerName, next.Phase, next.Source, at.Sub(killedAt).Seconds())
	switch p := phaseOf(sm, bootstatus.PhaseKernel); {
	case p != nil && p.State == bootstatus.StateDone && killAt != bootstatus.PhaseKernel:
		t.Errorf("%s served the kernel, although the agent of the first server's kernel ran", survivor.ServerName)
	case p != nil && p.State == bootstatus.StateDone:
		t.Logf("iPXE took the script's next server: %s served the kernel", survivor.ServerName)
	default:
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
// waitPeers waits until each of two servers names the other in its scripts: it has seen the
// other's presence Lease.
func waitPeers(t *testing.T, servers []*labenv.BootServer) {
	t.Helper()
	for _, s := range servers {
		if !eventually.Within(time.Minute, func() bool {
			metrics, err := httpGet(s.URL() + "/metrics")
			return err == nil && strings.Contains(metrics, "\npxejoin_peers_live 1\n")
		}) {
			t.Fatalf("%s does not see the other server (pxejoin_peers_live); log:\n%s", s.URL(), s.LogTail(40))
		}
	}
}

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
	keep := strings.ReplaceAll(t.Name(), "/", "-") + "-" + id
	bs := &labenv.BootServer{Bin: bootserverBin(t), NS: sns, Interface: "eth0", Addr: addr, Dir: dir,
		Kubeconfig: cp.AdminKubeconfig(), Image: img, FromAPI: true, ServerName: "bs-" + id,
		HA: fmt.Sprintf("{identity: bs-%s, claims: {start: %s.20, end: %s.40}}", id, prefix, prefix)}
	if err := bs.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		bs.Stop()
		if dst := os.Getenv("PXEJOIN_KEEP"); dst != "" {
			b, _ := os.ReadFile(filepath.Join(dir, "bootserver.log"))
			os.WriteFile(filepath.Join(dst, keep+".log"), b, 0o644)
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

// TestJoinFileFromTheOtherServer: a machine's DHCP and script come from one boot server, its join
// file from the other (as when the first dies before the agent asks), and the other server's token
// works: the agent's join (TLS bootstrap into a node root) against the real control plane gets a
// client certificate for the node, approved by a boot server's approver (kubeadm's auto-approval
// is off). Each server hands the join file out once per boot: a second fetch from the same server
// gets 409.
func TestJoinFileFromTheOtherServer(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireK8s(t)
	ctx := ctxFor(t, 8*time.Minute)
	n := labNet(t)
	cp, _ := startControlPlane(ctx, t, n)
	node, mac := "ha-join", n.MAC(2)
	haMachine(ctx, t, cp, node, mac)
	// The servers only serve the image's files; this test boots nothing.
	imgDir := t.TempDir()
	img := &labenv.Image{Dir: imgDir, Kernel: filepath.Join(imgDir, "vmlinuz"), Initrd: filepath.Join(imgDir, "initramfs.img"),
		Root: filepath.Join(imgDir, "root.squashfs")}
	for _, f := range []string{img.Kernel, img.Initrd, img.Root} {
		if err := os.WriteFile(f, []byte("not booted"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	servers := []*labenv.BootServer{haServer(ctx, t, n, cp, img, "a", 2), haServer(ctx, t, n, cp, img, "b", 3)}
	waitPeers(t, servers) // else the script may not name the other server yet

	// The machine: a namespace on the lab bridge with the Machine's MAC, addressed by DHCP.
	ns := netlab.New(t, "ham")
	netlab.Veth(t, ns, "eth0", "", n.NS, "ham0", "")
	ns.MustExec(t, "ip", "link", "set", "eth0", "address", mac.String())
	ns.MustExec(t, "ip", "link", "set", "lo", "up")
	n.NS.MustExec(t, "ip", "link", "set", "ham0", "master", n.Bridge)
	var ack *dhcpv4.DHCPv4
	if !eventually.Within(2*time.Minute, func() bool {
		// Until both informers have the Machine, a server does not answer it.
		return ns.Do(func() error {
			c, err := nclient4.New("eth0", nclient4.WithTimeout(5*time.Second), nclient4.WithRetry(2))
			if err != nil {
				return err
			}
			defer c.Close()
			lease, err := c.Request(ctx)
			if err == nil {
				ack = lease.ACK
			}
			return err
		}) == nil
	}) {
		t.Fatalf("no DHCP lease from either server; logs:\n%s\n%s", servers[0].LogTail(20), servers[1].LogTail(20))
	}
	addr := ack.YourIPAddr.String()
	ns.MustExec(t, "ip", "addr", "add", addr+"/24", "dev", "eth0")
	first, other := servers[0], servers[1]
	if ack.ServerIdentifier().String() == other.Addr {
		first, other = other, first
	}
	t.Logf("%s ACKed %s; the join file comes from %s", first.ServerName, addr, other.ServerName)

	script := string(ns.MustExec(t, "curl", "-sS", "--fail", "--max-time", "60", first.URL()+"/boot/"+mac.String()+".ipxe"))
	if !strings.Contains(script, "pxejoin.url="+first.URL()+"/join/") || !strings.Contains(script, "pxejoin.servers="+other.URL()) {
		t.Fatalf("%s's script does not name itself first and %s as the other server:\n%s", first.ServerName, other.ServerName, script)
	}
	body := ns.MustExec(t, "curl", "-sS", "--fail", "--max-time", "60", other.URL()+"/join/"+mac.String())
	jc, err := joinconfig.Parse(body)
	if err != nil {
		t.Fatalf("the join file is not a JoinConfiguration: %v", err)
	}
	id, _, _ := strings.Cut(jc.Discovery.TLSBootstrapToken, ".")

	// The agent's join with it: discovery, TLS bootstrap with the other server's token.
	rootfs := t.TempDir()
	joinPath := filepath.Join(t.TempDir(), "join.yaml")
	if err := os.WriteFile(joinPath, body, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := ns.Command(agentBin(t), "join", "--config", joinPath, "--rootfs", rootfs, "--skip-phases", strings.Join(initmode.SkipPhases, ",")).CombinedOutput()
	if err != nil {
		t.Fatalf("join with %s's join file: %v\n%s", other.ServerName, err, out)
	}
	raw, err := os.ReadFile(filepath.Join(rootfs, "var/lib/kubelet/pki/kubelet-client-current.pem"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(raw)
	if blk == nil {
		t.Fatal("kubelet-client-current.pem holds no certificate")
	}
	crt, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if crt.Subject.CommonName != "system:node:"+node {
		t.Errorf("the client certificate is for %q, want system:node:%s", crt.Subject.CommonName, node)
	}
	csrs, err := cp.Admin().CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, c := range csrs.Items {
		if c.Spec.Username != bootstrapapi.BootstrapUserPrefix+id {
			continue
		}
		for _, cond := range c.Status.Conditions {
			if cond.Type == certificatesv1.CertificateApproved {
				found = true
				t.Logf("CSR %s (token of %s) approved: %s: %s", c.Name, other.ServerName, cond.Reason, cond.Message)
			}
		}
	}
	if !found {
		t.Errorf("no approved CSR made with %s's token", other.ServerName)
	}

	// Once per boot, per server: the other server refuses a second fetch.
	code := ns.MustExec(t, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "60", other.URL()+"/join/"+mac.String())
	if string(code) != "409" {
		t.Errorf("a second fetch from %s answered %s, want 409 (once per boot)", other.ServerName, code)
	}
	code = ns.MustExec(t, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "60", first.URL()+"/join/"+mac.String())
	t.Logf("a fetch from %s, which has not handed it out this boot, answers %s", first.ServerName, code)
}

// haMachine creates the Machines CRD, dhcp.ha's namespace and a Machine for mac without spec.ipv4
// (its address is claimed), and turns kubeadm's auto-approval off: only the boot servers'
// approvers approve its certificates.
func haMachine(ctx context.Context, t *testing.T, cp *controlplane.ControlPlane, node string, mac hwaddr.MAC) *dynamic.DynamicClient {
	t.Helper()
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
	m := &machineapi.Machine{Spec: machineapi.MachineSpec{MACs: []string{mac.String()}, Profile: "node"}}
	m.APIVersion, m.Kind, m.Name = machineapi.GVK.GroupVersion().String(), machineapi.Kind, node
	u, err := machineapi.ToUnstructured(m)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dyn.Resource(machineapi.GVR).Create(ctx, u, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := cp.SetAutoApprove(ctx, false); err != nil {
		t.Fatal(err)
	}
	return dyn
}

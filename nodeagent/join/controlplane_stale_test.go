package join_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/pxejoin/pxejoin/lab/controlplane"
	"github.com/pxejoin/pxejoin/lab/labenv"
	"github.com/pxejoin/pxejoin/lab/netlab"
)

// cpMember is a control-plane node in its own namespace on the lab bridge, with its own root and a
// stand-in kubelet: the static Pods run as processes, the Node is registered once kubelet.conf is
// written, and the etcd mirror Pod (with kubeadm's client URL annotation, which joins read) is
// created from etcd.yaml as a kubelet does.
type cpMember struct {
	name, addr, rootfs string
	ns                 *netlab.NS
	pods               *staticPods
	stop               context.CancelFunc
}

// newCPMember makes node name at 10.77.<subnet>.<host> with an empty root.
func newCPMember(ctx context.Context, t testing.TB, kcp *controlplane.ControlPlane, n *labenv.Net, name string, host int) *cpMember {
	t.Helper()
	ns := netlab.New(t, "cpm")
	addr := fmt.Sprintf("10.77.%d.%d", n.Subnet, host)
	peer := fmt.Sprintf("cpm%d", host)
	netlab.Veth(t, ns, "eth0", addr+"/24", n.NS, peer, "")
	if out, err := n.NS.Exec("ip", "link", "set", peer, "master", n.Bridge); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	ns.MustExec(t, "ip", "link", "set", "lo", "up")
	m := &cpMember{name: name, addr: addr, ns: ns}
	m.boot(ctx, t, kcp)
	return m
}

// boot starts the node's stand-in kubelet on a new, empty root.
func (m *cpMember) boot(ctx context.Context, t testing.TB, kcp *controlplane.ControlPlane) {
	t.Helper()
	m.rootfs = t.TempDir()
	m.pods = &staticPods{t: t, root: m.rootfs, bin: controlplane.RequireKubeadm(t), ns: m.ns, started: map[string]*exec.Cmd{}, logs: map[string]*strings.Builder{}}
	pctx, stop := context.WithCancel(ctx)
	pods := m.pods
	m.stop = func() { stop(); pods.stop() }
	t.Cleanup(m.stop)
	go pods.poll(pctx)
	go m.kubelet(pctx, t, kcp, m.rootfs)
}

// kubelet is the stand-in kubelet's API part: the Node once kubelet.conf exists, and the etcd mirror
// Pod once etcd.yaml does (replacing the one of the node's previous life, as a kubelet does when the
// manifest changed).
func (m *cpMember) kubelet(ctx context.Context, t testing.TB, kcp *controlplane.ControlPlane, rootfs string) {
	c := kcp.Admin()
	node, mirror := false, false
	for ctx.Err() == nil && !(node && mirror) {
		if _, err := os.Stat(filepath.Join(rootfs, "etc/kubernetes/kubelet.conf")); err == nil && !node {
			// With the labels a kubelet registers (kubeadm's mark-control-plane waits for the hostname).
			_, err := c.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: m.name, Labels: map[string]string{
				corev1.LabelHostname: m.name, corev1.LabelOSStable: "linux", corev1.LabelArchStable: runtime.GOARCH}}}, metav1.CreateOptions{})
			node = err == nil || apierrors.IsAlreadyExists(err)
		}
		if raw, err := os.ReadFile(filepath.Join(rootfs, "etc/kubernetes/manifests/etcd.yaml")); err == nil && !mirror {
			var pod corev1.Pod
			if err := yaml.Unmarshal(raw, &pod); err != nil {
				t.Errorf("etcd.yaml: %v", err)
				return
			}
			pods := c.CoreV1().Pods(metav1.NamespaceSystem)
			name := "etcd-" + m.name
			pods.Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
			pod.ObjectMeta = metav1.ObjectMeta{Name: name, Labels: pod.Labels,
				Annotations: map[string]string{controlplane.EtcdClientURLsAnnotation: pod.Annotations[controlplane.EtcdClientURLsAnnotation],
					"kubernetes.io/config.mirror": "stand-in", "kubernetes.io/config.source": "file"}}
			pod.Spec.NodeName = m.name
			_, err = pods.Create(ctx, &pod, metav1.CreateOptions{})
			mirror = err == nil
		}
		select {
		case <-ctx.Done():
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// signedCPToken is a new bootstrap token whose signature cluster-info already carries.
func signedCPToken(ctx context.Context, t testing.TB, kcp *controlplane.ControlPlane) string {
	t.Helper()
	tok, err := kcp.CreateToken(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := kcp.WaitSigned(ctx, tok, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	return tok
}

// joinCommand is `nodeagent join --control-plane` for the node with a new signed token, in its
// namespace.
func (m *cpMember) joinCommand(ctx context.Context, t testing.TB, kcp *controlplane.ControlPlane) *exec.Cmd {
	t.Helper()
	tok := signedCPToken(ctx, t, kcp)
	return m.ns.Command(agentBin(t), "join", kcp.Endpoint(), "--token", tok, "--discovery-token-ca-cert-hash", kcp.CAPin(),
		"--node-name", m.name, "--rootfs", m.rootfs, "--skip-phases", "kubelet-start/start",
		"--control-plane", "--certificate-key", kcp.CertificateKey(), "--apiserver-advertise-address", m.addr)
}

// join runs joinCommand and returns its output.
func (m *cpMember) join(ctx context.Context, t testing.TB, kcp *controlplane.ControlPlane) string {
	t.Helper()
	out, err := m.joinCommand(ctx, t, kcp).CombinedOutput()
	if err != nil {
		t.Fatalf("join of %s at %s: %v\n%s\netcd:\n%s", m.name, m.addr, err, out, m.pods.tail("etcd"))
	}
	return string(out)
}

// reboot is a diskless reboot: the node's processes die and its root, etcd data included, is gone.
func (m *cpMember) reboot(ctx context.Context, t testing.TB, kcp *controlplane.ControlPlane) {
	m.stop()
	if err := os.RemoveAll(m.rootfs); err != nil {
		t.Fatal(err)
	}
	m.boot(ctx, t, kcp)
}

type etcdMember struct {
	Name       string   `json:"name"`
	PeerURLs   []string `json:"peerURLs"`
	ClientURLs []string `json:"clientURLs"`
	IsLearner  bool     `json:"isLearner"`
}

// etcdMembers is `etcdctl member list` through the first node's etcd.
func etcdMembers(ctx context.Context, t testing.TB, kcp *controlplane.ControlPlane) []etcdMember {
	t.Helper()
	pki, bin := kcp.CertificatesDir(), controlplane.RequireKubeadm(t)
	out, err := exec.CommandContext(ctx, filepath.Join(bin, "etcdctl"), "--endpoints="+strings.Join(kcp.EtcdEndpoints(), ","),
		"--cacert="+filepath.Join(pki, "etcd/ca.crt"), "--cert="+filepath.Join(pki, "etcd/healthcheck-client.crt"),
		"--key="+filepath.Join(pki, "etcd/healthcheck-client.key"), "member", "list", "-w", "json").CombinedOutput()
	if err != nil {
		t.Fatalf("etcdctl member list: %v\n%s", err, out)
	}
	var l struct{ Members []etcdMember }
	if err := json.Unmarshal(out, &l); err != nil {
		t.Fatalf("etcdctl member list: %v\n%s", err, out)
	}
	return l.Members
}

// etcdHealthy is `etcdctl endpoint health --cluster` through the first node's etcd, run in ns (the
// members' addresses are reachable on the lab bridge, not from the host): every member commits a
// proposal.
func etcdHealthy(t testing.TB, ns *netlab.NS, kcp *controlplane.ControlPlane) error {
	t.Helper()
	pki, bin := kcp.CertificatesDir(), controlplane.RequireKubeadm(t)
	out, err := ns.Command(filepath.Join(bin, "etcdctl"), "--endpoints="+strings.Join(kcp.EtcdEndpoints(), ","),
		"--cacert="+filepath.Join(pki, "etcd/ca.crt"), "--cert="+filepath.Join(pki, "etcd/healthcheck-client.crt"),
		"--key="+filepath.Join(pki, "etcd/healthcheck-client.key"), "endpoint", "health", "--cluster").CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v\n%s", err, out)
	}
	return nil
}

// wantVoters checks that etcd has exactly the started voting members want (name → peer URL).
func wantVoters(ctx context.Context, t testing.TB, kcp *controlplane.ControlPlane, want map[string]string) {
	t.Helper()
	ms := etcdMembers(ctx, t, kcp)
	got := map[string]string{}
	for _, m := range ms {
		if m.IsLearner || m.Name == "" || len(m.PeerURLs) != 1 {
			t.Errorf("etcd member %+v is not a started voting member", m)
			continue
		}
		got[m.Name] = m.PeerURLs[0]
	}
	if len(ms) != len(want) || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("etcd members %+v, want %v", ms, want)
	}
}

// TestControlPlaneJoinStaleMember: in a three-member stacked etcd (the lab's first node, cp2, cp3),
// cp3 loses its disk and rejoins under its name, first at its old address (the stale member has the
// same peer URL), then at a new one (the stale member's peer URL is the old address). Each time the
// cluster keeps its quorum throughout, the join says it removed the stale member, and etcd ends with
// three started voting members and cp3's API server ready.
func TestControlPlaneJoinStaleMember(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	kcp, n := controlplane.StartKubeadm(t)
	first := etcdMembers(ctx, t, kcp)
	if len(first) != 1 {
		t.Fatalf("the lab's etcd has members %+v, want one", first)
	}
	peer := func(m *cpMember) string { return "https://" + m.addr + ":2380" }
	cp2 := newCPMember(ctx, t, kcp, n, "cp2", 12)
	cp2.join(ctx, t, kcp)
	cp3 := newCPMember(ctx, t, kcp, n, "cp3", 13)
	cp3.join(ctx, t, kcp)
	want := map[string]string{first[0].Name: first[0].PeerURLs[0], "cp2": peer(cp2), "cp3": peer(cp3)}
	wantVoters(ctx, t, kcp, want)

	// Quorum: the API, which reads and writes through etcd, answers all along.
	qctx, stopQuorum := context.WithCancel(ctx)
	quorum := make(chan error, 1)
	go func() {
		var lost error
		for i := 0; qctx.Err() == nil; i++ {
			cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("quorum-%d", i)}}
			wctx, cancel := context.WithTimeout(qctx, 10*time.Second)
			if _, err := kcp.Admin().CoreV1().ConfigMaps("default").Create(wctx, cm, metav1.CreateOptions{}); err != nil && qctx.Err() == nil && lost == nil {
				lost = fmt.Errorf("write %d through the first API server: %w", i, err)
			}
			cancel()
			select {
			case <-qctx.Done():
			case <-time.After(time.Second):
			}
		}
		quorum <- lost
	}()

	for _, step := range []struct {
		what string
		host int // 0: the same address
	}{{"same address", 0}, {"new address", 14}} {
		oldPeer := peer(cp3)
		if step.host == 0 {
			cp3.reboot(ctx, t, kcp)
		} else {
			cp3.stop()
			cp3 = newCPMember(ctx, t, kcp, n, "cp3", step.host)
		}
		out := cp3.join(ctx, t, kcp)
		t.Logf("rejoin of cp3 (%s):\n%s", step.what, out)
		for _, w := range []string{`Removing the stale etcd member "cp3"`, oldPeer, "Promoted etcd member",
			"This node has joined the cluster and a new control plane instance was created"} {
			if !strings.Contains(out, w) {
				t.Errorf("%s: the output lacks %q", step.what, w)
			}
		}
		want["cp3"] = peer(cp3)
		wantVoters(ctx, t, kcp, want)
		if err := etcdHealthy(t, cp2.ns, kcp); err != nil {
			t.Errorf("%s: etcd is not healthy: %v", step.what, err)
		}
		b, err := cp3.ns.Command(filepath.Join(cp3.pods.bin, "kubectl"), "--kubeconfig", filepath.Join(cp3.rootfs, "etc/kubernetes/admin.conf"),
			"--server", "https://"+cp3.addr+":6443", "get", "--raw", "/readyz").CombinedOutput()
		if err != nil || string(b) != "ok" {
			t.Errorf("%s: /readyz on cp3's API server: %v %s", step.what, err, b)
		}
	}
	stopQuorum()
	if err := <-quorum; err != nil {
		t.Errorf("the cluster lost its quorum: %v", err)
	}
	if !slices.ContainsFunc(etcdMembers(ctx, t, kcp), func(m etcdMember) bool { return m.Name == "cp3" && m.PeerURLs[0] == peer(cp3) }) {
		t.Error("cp3 is not a member at its new address")
	}
}

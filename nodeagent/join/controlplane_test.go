package join_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/pxejoin/pxejoin/bootserver/httpd"
	"github.com/pxejoin/pxejoin/bootserver/inventory"
	"github.com/pxejoin/pxejoin/internal/joinconfig"
	"github.com/pxejoin/pxejoin/lab/controlplane"
	"github.com/pxejoin/pxejoin/lab/labenv"
	"github.com/pxejoin/pxejoin/lab/logbuf"
	"github.com/pxejoin/pxejoin/lab/netlab"
	"github.com/pxejoin/pxejoin/nodeagent/initmode"
)

// staticPods is a stand-in kubelet for a node root: it runs each static Pod manifest that appears under
// root's /etc/kubernetes/manifests as a process in the node's namespace, its command from the
// control-plane binaries and every absolute path in its flags moved under root.
type staticPods struct {
	t       testing.TB
	root    string
	bin     string
	ns      *netlab.NS
	mu      sync.Mutex
	started map[string]*exec.Cmd
	logs    map[string]*strings.Builder
}

func (s *staticPods) poll(ctx context.Context) {
	for {
		entries, _ := os.ReadDir(filepath.Join(s.root, "etc/kubernetes/manifests"))
		for _, e := range entries {
			if strings.HasSuffix(e.Name(), ".yaml") && !strings.HasPrefix(e.Name(), ".") {
				s.start(filepath.Join(s.root, "etc/kubernetes/manifests", e.Name()))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (s *staticPods) start(path string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.started[path]; ok {
		return
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return
	}
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict(raw, &pod); err != nil {
		s.t.Errorf("%s is not a Pod: %v", path, err)
		s.started[path] = nil
		return
	}
	argv := slices.Clone(pod.Spec.Containers[0].Command)
	for i, a := range argv[1:] {
		if k, v, ok := strings.Cut(a, "="); ok && strings.HasPrefix(v, "/") {
			argv[i+1] = k + "=" + filepath.Join(s.root, v)
		}
	}
	cmd := s.ns.Command(filepath.Join(s.bin, argv[0]), argv[1:]...)
	log := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = &lockedLog{b: log, mu: &s.mu}, &lockedLog{b: log, mu: &s.mu}
	if err := cmd.Start(); err != nil {
		s.t.Errorf("starting %s: %v", argv[0], err)
	}
	s.started[path], s.logs[pod.Name] = cmd, log
}

func (s *staticPods) stop() {
	s.mu.Lock()
	var cmds []*exec.Cmd
	for _, cmd := range s.started {
		cmds = append(cmds, cmd)
	}
	s.started = map[string]*exec.Cmd{}
	s.mu.Unlock() // the output copiers Wait waits for take it
	for _, cmd := range cmds {
		if cmd != nil && cmd.Process != nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}
}

func (s *staticPods) tail(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l, ok := s.logs[name]; ok {
		lines := strings.Split(l.String(), "\n")
		return strings.Join(lines[max(0, len(lines)-30):], "\n")
	}
	return "(not started)"
}

type lockedLog struct {
	b  *strings.Builder
	mu *sync.Mutex
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// cpNode is a control-plane node to be: a namespace on the lab bridge at 10.77.<subnet>.12.
func cpNode(t *testing.T, n *labenv.Net) (*netlab.NS, string) {
	t.Helper()
	ns := netlab.New(t, "cpn")
	addr := fmt.Sprintf("10.77.%d.12", n.Subnet)
	netlab.Veth(t, ns, "eth0", addr+"/24", n.NS, "cpn0", "")
	if out, err := n.NS.Exec("ip", "link", "set", "cpn0", "master", n.Bridge); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	ns.MustExec(t, "ip", "link", "set", "lo", "up")
	return ns, addr
}

// cpJoin is a control-plane node to be joined as cp2 into a kubeadm-made cluster, in its own namespace
// with its own root, beside a stand-in kubelet: the static Pods run as processes, and the Node is
// registered once the join wrote kubelet.conf.
type cpJoin struct {
	kcp               *controlplane.ControlPlane
	ns                *netlab.NS
	addr, rootfs, bin string
	pods              *staticPods
}

func newCPJoin(ctx context.Context, t *testing.T) *cpJoin {
	t.Helper()
	bin := controlplane.RequireKubeadm(t)
	kcp, n := controlplane.StartKubeadm(t)
	ns, addr := cpNode(t, n)
	rootfs := t.TempDir()
	pods := &staticPods{t: t, root: rootfs, bin: bin, ns: ns, started: map[string]*exec.Cmd{}, logs: map[string]*strings.Builder{}}
	pctx, stopPods := context.WithCancel(ctx)
	go pods.poll(pctx)
	t.Cleanup(func() { stopPods(); pods.stop() })
	// The kubelet's part: register the Node once the join wrote kubelet.conf.
	go func() {
		for pctx.Err() == nil {
			if _, err := os.Stat(filepath.Join(rootfs, "etc/kubernetes/kubelet.conf")); err == nil {
				if _, err := kcp.Admin().CoreV1().Nodes().Create(pctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "cp2"}}, metav1.CreateOptions{}); err == nil {
					return
				}
			}
			time.Sleep(500 * time.Millisecond)
		}
	}()
	return &cpJoin{kcp: kcp, ns: ns, addr: addr, rootfs: rootfs, bin: bin, pods: pods}
}

// TestControlPlaneJoin joins a second control-plane node into a kubeadm-made cluster under --rootfs in
// its own namespace, with the static Pods it writes run as processes: its etcd member is promoted, its
// API server answers /readyz and serves the same objects, and its Node is labelled and tainted.
func TestControlPlaneJoin(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	c := newCPJoin(ctx, t)
	kcp, ns, addr, rootfs, pods := c.kcp, c.ns, c.addr, c.rootfs, c.pods
	tok, err := kcp.CreateToken(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"join", kcp.Endpoint(), "--token", tok, "--discovery-token-ca-cert-hash", kcp.CAPin(),
		"--node-name", "cp2", "--rootfs", rootfs, "--skip-phases", "kubelet-start/start",
		"--control-plane", "--certificate-key", kcp.CertificateKey(), "--apiserver-advertise-address", addr}
	out, err := ns.Command(agentBin(t), args...).CombinedOutput()
	if strings.Contains(string(out), kcp.CertificateKey()) || strings.Contains(string(out), strings.Split(tok, ".")[1]) {
		t.Error("the join's output shows the certificate key or the token's secret")
	}
	if err != nil {
		t.Fatalf("join: %v\n%s\netcd:\n%s\nkube-apiserver:\n%s", err, out, pods.tail("etcd"), pods.tail("kube-apiserver"))
	}
	t.Logf("join:\n%s", out)
	for _, w := range []string{"Promoted etcd member", "This node has joined the cluster and a new control plane instance was created"} {
		if !strings.Contains(string(out), w) {
			t.Errorf("output lacks %q", w)
		}
	}

	c.check(ctx, t)
}

// check asserts what a finished control-plane join leaves: two voting etcd members, the new API
// server ready and serving the first one's objects, the Node labelled and tainted, the files' modes.
func (c *cpJoin) check(ctx context.Context, t *testing.T) {
	t.Helper()
	kcp, ns, addr, rootfs, bin := c.kcp, c.ns, c.addr, c.rootfs, c.bin
	// etcd: two voting members.
	pki := kcp.CertificatesDir()
	list, err := exec.CommandContext(ctx, filepath.Join(bin, "etcdctl"), "--endpoints="+strings.Join(kcp.EtcdEndpoints(), ","),
		"--cacert="+filepath.Join(pki, "etcd/ca.crt"), "--cert="+filepath.Join(pki, "etcd/healthcheck-client.crt"),
		"--key="+filepath.Join(pki, "etcd/healthcheck-client.key"), "member", "list", "-w", "json").CombinedOutput()
	if err != nil {
		t.Fatalf("etcdctl: %v\n%s", err, list)
	}
	var members struct {
		Members []struct {
			Name      string `json:"name"`
			IsLearner bool   `json:"isLearner"`
		} `json:"members"`
	}
	json.Unmarshal(list, &members)
	if len(members.Members) != 2 || members.Members[0].IsLearner || members.Members[1].IsLearner {
		t.Errorf("etcd members %s, want two voting members", list)
	}

	// The new API server: ready, and it serves what the first one holds.
	kubectl := func(args ...string) string {
		b, err := ns.Command(filepath.Join(bin, "kubectl"), append([]string{"--kubeconfig", filepath.Join(rootfs, "etc/kubernetes/admin.conf"),
			"--server", "https://" + addr + ":6443"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl %v: %v\n%s", args, err, b)
		}
		return string(b)
	}
	if got := kubectl("get", "--raw", "/readyz"); got != "ok" {
		t.Errorf("/readyz on the new API server: %q", got)
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "written-through-the-first"}, Data: map[string]string{"k": "v"}}
	if _, err := kcp.Admin().CoreV1().ConfigMaps("default").Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := kubectl("get", "configmap", "written-through-the-first", "-o", "jsonpath={.data.k}"); got != "v" {
		t.Errorf("the new API server does not serve the first one's ConfigMap: %q", got)
	}

	node, err := kcp.Admin().CoreV1().Nodes().Get(ctx, "cp2", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []string{"node-role.kubernetes.io/control-plane", "node.kubernetes.io/exclude-from-external-load-balancers"} {
		if _, ok := node.Labels[l]; !ok {
			t.Errorf("Node lacks label %s: %v", l, node.Labels)
		}
	}
	if !slices.ContainsFunc(node.Spec.Taints, func(tn corev1.Taint) bool {
		return tn.Key == "node-role.kubernetes.io/control-plane" && tn.Effect == corev1.TaintEffectNoSchedule
	}) {
		t.Errorf("Node lacks the control-plane taint: %v", node.Spec.Taints)
	}
	for _, f := range []struct {
		path string
		mode os.FileMode
	}{{"etc/kubernetes/admin.conf", 0o600}, {"etc/kubernetes/pki/ca.key", 0o600}, {"etc/kubernetes/pki/ca.crt", 0o644}, {"etc/kubernetes/pki/apiserver.key", 0o600},
		{"etc/kubernetes/manifests/etcd.yaml", 0o600}} {
		fi, err := os.Stat(filepath.Join(rootfs, f.path))
		if err != nil || fi.Mode().Perm() != f.mode {
			t.Errorf("%s: %v %v, want mode %04o", f.path, fi.Mode(), err, f.mode)
		}
	}
}

// TestControlPlaneJoinRefusals: a wrong certificate key, an expired kubeadm-certs Secret and a cluster
// without a controlPlaneEndpoint are each refused with what to do, and nothing is written.
func TestControlPlaneJoinRefusals(t *testing.T) {
	controlplane.RequireKubeadm(t)
	kcp, n := controlplane.StartKubeadm(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	tok, err := kcp.CreateToken(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	wrongKey := strings.Repeat("ab", 32)
	join := func(t *testing.T, key string) (string, string) {
		rootfs := t.TempDir()
		out := &logbuf.Buffer{}
		code := agent(t, ctx, out, "join", kcp.Endpoint(), "--token", tok, "--discovery-token-ca-cert-hash", kcp.CAPin(),
			"--node-name", "cp2", "--rootfs", rootfs, "--skip-phases", "kubelet-start/start",
			"--control-plane", "--certificate-key", key, "--apiserver-advertise-address", fmt.Sprintf("10.77.%d.12", n.Subnet))
		if code == 0 {
			t.Fatal("the join succeeded")
		}
		if strings.Contains(out.String(), key) {
			t.Error("the output shows the certificate key")
		}
		var written []string
		filepath.WalkDir(rootfs, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				written = append(written, strings.TrimPrefix(p, rootfs))
			}
			return nil
		})
		if len(written) > 0 {
			t.Errorf("a refused join wrote %v", written)
		}
		return out.String(), rootfs
	}
	t.Run("wrong certificate key", func(t *testing.T) {
		out, _ := join(t, wrongKey)
		if !strings.Contains(out, "not the key this Secret was encrypted with") {
			t.Errorf("output:\n%s", out)
		}
	})
	t.Run("no controlPlaneEndpoint", func(t *testing.T) {
		if err := kcp.SetControlPlaneEndpoint(ctx, false); err != nil {
			t.Fatal(err)
		}
		defer kcp.SetControlPlaneEndpoint(ctx, true)
		out, _ := join(t, kcp.CertificateKey())
		if !strings.Contains(out, "doesn't have a stable controlPlaneEndpoint address") {
			t.Errorf("output:\n%s", out)
		}
	})
	t.Run("kubeadm-certs expired", func(t *testing.T) {
		if err := kcp.ExpireCerts(ctx, time.Second); err != nil {
			t.Fatal(err)
		}
		if err := kcp.WaitCertsGone(ctx, 2*time.Minute); err != nil {
			t.Fatal(err)
		}
		out, _ := join(t, kcp.CertificateKey())
		if !strings.Contains(out, "kubeadm init phase upload-certs --upload-certs") || !strings.Contains(out, "might have expired") {
			t.Errorf("output:\n%s", out)
		}
	})
}

// TestControlPlaneJoinSplit joins cp2 as a PXE boot does (nodeagent/initmode): the initramfs's
// invocation with the phases it skips, then the image unit's command line, taken from
// images/rootfs's pxejoin-control-plane.service, with the join file the boot server builds and, as
// with the boot server, the token deleted in between. The node ends as TestControlPlaneJoin's does.
func TestControlPlaneJoinSplit(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	c := newCPJoin(ctx, t)
	tok, err := c.kcp.CreateToken(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	jc := httpd.JoinConfig(inventory.Assignment{NodeName: "cp2"}, tok, c.kcp.Endpoint(), []string{c.kcp.CAPin()})
	jc.ControlPlane = &joinconfig.JoinControlPlane{CertificateKey: c.kcp.CertificateKey(),
		LocalAPIEndpoint: joinconfig.APIEndpoint{AdvertiseAddress: c.addr, BindPort: 6443}}
	body, err := joinconfig.Marshal(jc)
	if err != nil {
		t.Fatal(err)
	}
	joinFile := filepath.Join(c.rootfs, initmode.ControlPlaneJoinFile)
	if err := os.MkdirAll(filepath.Dir(joinFile), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(joinFile, body, 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(what string, args ...string) string {
		out, err := c.ns.Command(agentBin(t), args...).CombinedOutput()
		if strings.Contains(string(out), c.kcp.CertificateKey()) {
			t.Errorf("%s: the output shows the certificate key", what)
		}
		if err != nil {
			t.Fatalf("%s: %v\n%s\netcd:\n%s\nkube-apiserver:\n%s", what, err, out, c.pods.tail("etcd"), c.pods.tail("kube-apiserver"))
		}
		t.Logf("%s:\n%s", what, out)
		return string(out)
	}

	skip := append(append([]string{}, initmode.SkipPhases...), initmode.ControlPlaneUnitPhases...)
	out := run("initramfs", "join", "--config", joinFile, "--rootfs", c.rootfs, "--skip-phases", strings.Join(skip, ","))
	if strings.Contains(out, "[etcd]") || strings.Contains(out, "[mark-control-plane]") {
		t.Errorf("the initramfs's part touched etcd:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(c.rootfs, "etc/kubernetes/manifests/etcd.yaml")); !os.IsNotExist(err) {
		t.Errorf("the initramfs's part wrote etcd.yaml (%v): etcd-join belongs to the unit", err)
	}

	// The boot server deletes a machine's token once its CSR is issued: the unit runs without it.
	id, _, _ := strings.Cut(tok, ".")
	if err := c.kcp.Admin().CoreV1().Secrets("kube-system").Delete(ctx, "bootstrap-token-"+id, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	unit, err := os.ReadFile("../../images/rootfs/etc/systemd/system/pxejoin-control-plane.service")
	if err != nil {
		t.Fatal(err)
	}
	var execStart []string
	for _, l := range strings.Split(string(unit), "\n") {
		if v, ok := strings.CutPrefix(l, "ExecStart="); ok {
			execStart = strings.Fields(v)
		}
	}
	if len(execStart) < 2 || execStart[0] != "/usr/bin/nodeagent" {
		t.Fatalf("the unit's ExecStart: %q", execStart)
	}
	args := slices.Clone(execStart[1:])
	for i := range args {
		if args[i] == initmode.ControlPlaneJoinFile {
			args[i] = joinFile
		}
	}
	out = run("pxejoin-control-plane.service", append(args, "--rootfs", c.rootfs)...)
	for _, w := range []string{"Promoted etcd member", "This node has joined the cluster and a new control plane instance was created"} {
		if !strings.Contains(out, w) {
			t.Errorf("the unit's output lacks %q", w)
		}
	}
	c.check(ctx, t)
}

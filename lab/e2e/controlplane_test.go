package e2e

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
	"github.com/pxejoin/pxejoin/internal/joinconfig"
	"github.com/pxejoin/pxejoin/lab/controlplane"
	"github.com/pxejoin/pxejoin/lab/eventually"
	"github.com/pxejoin/pxejoin/lab/labenv"
	"github.com/pxejoin/pxejoin/lab/netlab"
	"github.com/pxejoin/pxejoin/lab/vm"
	"github.com/pxejoin/pxejoin/nodeagent/initmode"
)

var (
	agentOnce sync.Once
	agentPath string
	agentErr  error
)

// agentBin is PXEJOIN_AGENT, or nodeagent built static from this tree, once per test binary.
func agentBin(t testing.TB) string {
	agentOnce.Do(func() {
		if a := os.Getenv("PXEJOIN_AGENT"); a != "" {
			agentPath = a
			return
		}
		dir, err := os.MkdirTemp("", "pxejoin-agent-")
		if err != nil {
			agentErr = err
			return
		}
		tempDirs = append(tempDirs, dir)
		agentPath = filepath.Join(dir, "nodeagent")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", agentPath, "./nodeagent")
		cmd.Dir, cmd.Env = repoRoot, append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			agentErr = fmt.Errorf("build agent: %v: %s", err, out)
		}
	})
	if agentErr != nil {
		t.Fatal(agentErr)
	}
	return agentPath
}

// cpBootServer starts the real boot server on the kubeadm-made cluster's lab network with a
// control-plane profile (its key file holds the cluster's certificate key) for the machine mac, named
// node. img's files are only served, never booted, unless a VM asks for them.
func cpBootServer(ctx context.Context, t *testing.T, kcp *controlplane.ControlPlane, n *labenv.Net, img *labenv.Image, mac, node string) *labenv.BootServer {
	t.Helper()
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "certificate-key")
	if err := os.WriteFile(keyFile, []byte(kcp.CertificateKey()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Only the boot server's approver may approve the machine's certificates (approval.selfCheck strict).
	if err := kcp.SetAutoApprove(ctx, false); err != nil {
		t.Fatal(err)
	}
	bs := &labenv.BootServer{Bin: bootserverBin(t), NS: n.NS, Interface: n.Bridge, Addr: n.BridgeAddr, Dir: dir,
		Kubeconfig: kcp.AdminKubeconfig(), Image: img, Machines: map[string]string{mac: node}, CertificateKeyFile: keyFile}
	if err := bs.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bs.Stop)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("bootserver log:\n%s", bs.LogTail(80))
		}
	})
	return bs
}

// keyShown lists where the boot server shows key: its log, /metrics, /machines, its status page.
func keyShown(t *testing.T, bs *labenv.BootServer, key string) []string {
	t.Helper()
	log, err := os.ReadFile(filepath.Join(bs.Dir, "bootserver.log"))
	if err != nil {
		t.Fatal(err)
	}
	var where []string
	if strings.Contains(string(log), key) {
		where = append(where, "log")
	}
	for _, p := range []string{"/metrics", "/machines", "/"} {
		body, err := httpGet(bs.URL() + p)
		if err != nil {
			t.Fatalf("GET %s: %v", p, err)
		}
		if strings.Contains(body, key) {
			where = append(where, p)
		}
	}
	return where
}

// TestControlPlaneJoinFileFromBootServer: a machine of a control-plane profile gets its address from
// the real boot server's DHCP and its join file over HTTP, as the initramfs does. The file is a
// JoinConfiguration with kubeadm's controlPlane section (the leased address as advertiseAddress, the
// cluster's certificate key), and `nodeagent join --config` with it runs the initramfs's half of a
// control-plane join (preflight, control-plane-prepare, kubelet-start) against the kubeadm-made cluster:
// the certificates, kubeconfigs and static Pods name the leased address. The key reaches no log,
// metric or status page of the boot server.
func TestControlPlaneJoinFileFromBootServer(t *testing.T) {
	controlplane.RequireKubeadm(t)
	ctx := ctxFor(t, 8*time.Minute)
	kcp, n := controlplane.StartKubeadm(t)
	mac := n.MAC(1)
	// The boot server only serves the image's files; this test boots nothing.
	imgDir := t.TempDir()
	img := &labenv.Image{Dir: imgDir, Kernel: filepath.Join(imgDir, "vmlinuz"), Initrd: filepath.Join(imgDir, "initramfs.img"),
		Root: filepath.Join(imgDir, "root.squashfs")}
	for _, f := range []string{img.Kernel, img.Initrd, img.Root} {
		if err := os.WriteFile(f, []byte("not booted"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bs := cpBootServer(ctx, t, kcp, n, img, mac.String(), "cp2")

	// The machine: a namespace on the lab bridge with the inventory's MAC, addressed by DHCP.
	ns := netlab.New(t, "cpm")
	netlab.Veth(t, ns, "eth0", "", n.NS, "cpm0", "")
	ns.MustExec(t, "ip", "link", "set", "eth0", "address", mac.String())
	ns.MustExec(t, "ip", "link", "set", "lo", "up")
	if out, err := n.NS.Exec("ip", "link", "set", "cpm0", "master", n.Bridge); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	var lease *nclient4.Lease
	err := ns.Do(func() error {
		c, err := nclient4.New("eth0", nclient4.WithTimeout(5*time.Second), nclient4.WithRetry(6))
		if err != nil {
			return err
		}
		defer c.Close()
		lease, err = c.Request(ctx)
		return err
	})
	if err != nil {
		t.Fatalf("DHCP from the boot server: %v\nbootserver log:\n%s", err, bs.LogTail(30))
	}
	addr := lease.ACK.YourIPAddr.String()
	ns.MustExec(t, "ip", "addr", "add", addr+"/24", "dev", "eth0")
	t.Logf("lease: %s", addr)

	body := string(ns.MustExec(t, "curl", "-sS", "--fail", "--max-time", "60", bs.URL()+"/join/"+mac.String()))
	jc, err := joinconfig.Parse([]byte(body))
	if err != nil {
		t.Fatalf("the join file is not a JoinConfiguration: %v", err)
	}
	switch {
	case jc.ControlPlane == nil:
		t.Fatal("the join file has no controlPlane section")
	case jc.ControlPlane.CertificateKey != kcp.CertificateKey():
		t.Error("the join file's certificateKey is not the one in the key file")
	case jc.ControlPlane.LocalAPIEndpoint.AdvertiseAddress != addr:
		t.Errorf("advertiseAddress %q, want the leased %s", jc.ControlPlane.LocalAPIEndpoint.AdvertiseAddress, addr)
	case jc.ControlPlane.LocalAPIEndpoint.BindPort != 6443:
		t.Errorf("bindPort %d, want 6443", jc.ControlPlane.LocalAPIEndpoint.BindPort)
	}

	// The initramfs's half of the join, with the file as the initramfs leaves it in the node's root.
	rootfs := t.TempDir()
	joinPath := filepath.Join(rootfs, initmode.ControlPlaneJoinFile)
	if err := os.MkdirAll(filepath.Dir(joinPath), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(joinPath, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	skip := append(slices.Clone(initmode.SkipPhases), initmode.ControlPlaneUnitPhases...)
	out, err := ns.Command(agentBin(t), "join", "--config", joinPath, "--rootfs", rootfs, "--skip-phases", strings.Join(skip, ",")).CombinedOutput()
	if strings.Contains(string(out), kcp.CertificateKey()) {
		t.Error("the join's output shows the certificate key")
	}
	if err != nil {
		t.Fatalf("join: %v\n%s", err, out)
	}
	t.Logf("join:\n%s", out)

	for _, f := range []string{"etc/kubernetes/admin.conf", "etc/kubernetes/kubelet.conf", "etc/kubernetes/pki/ca.key",
		"etc/kubernetes/pki/etcd/ca.key", "etc/kubernetes/manifests/kube-controller-manager.yaml", "etc/kubernetes/manifests/kube-scheduler.yaml"} {
		if _, err := os.Stat(filepath.Join(rootfs, f)); err != nil {
			t.Errorf("the join did not write %s: %v", f, err)
		}
	}
	manifest, err := os.ReadFile(filepath.Join(rootfs, "etc/kubernetes/manifests/kube-apiserver.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(manifest), "--advertise-address="+addr) {
		t.Errorf("kube-apiserver.yaml does not advertise the leased %s:\n%s", addr, manifest)
	}
	raw, err := os.ReadFile(filepath.Join(rootfs, "etc/kubernetes/pki/apiserver.crt"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(raw)
	if blk == nil {
		t.Fatal("apiserver.crt holds no PEM block")
	}
	crt, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(crt.IPAddresses, func(ip net.IP) bool { return ip.String() == addr }) {
		t.Errorf("apiserver.crt's IP SANs %v lack the leased %s", crt.IPAddresses, addr)
	}
	if where := keyShown(t, bs, kcp.CertificateKey()); len(where) > 0 {
		t.Errorf("the certificate key reached the boot server's %s", strings.Join(where, ", "))
	}
}

// cpComponents are the static Pods a control-plane node runs; their mirror Pods are <component>-<node>.
var cpComponents = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"}

// TestControlPlaneVMJoin PXE-boots a VM through the real boot server with a control-plane profile into
// the kubeadm-made cluster: the initramfs prepares the node, the image's systemd imports the
// control-plane images, starts the kubelet and finishes the join (pxejoin-control-plane.service). The
// static Pods run under the VM's kubelet (their mirror Pods are Running), its etcd member is promoted,
// and once the first API server is stopped the cluster still answers through the VM's. The VM's memory
// is PXEJOIN_CP_VM_MB (default 4096); the test logs what the node used.
func TestControlPlaneVMJoin(t *testing.T) {
	extended(t)
	needRoot(t)
	bin := controlplane.RequireKubeadm(t)
	img := image(t)
	ctx := ctxFor(t, durationEnv("PXEJOIN_JOIN_TIMEOUT", 40*time.Minute))
	// Under TCG on a loaded host the VM's etcd answers late: raft timeouts ten times etcd's defaults
	// (both members, through kubeadm-config's etcd.local.extraArgs) keep the two-member cluster from
	// electing a new leader whenever the VM stalls.
	kcp, n := controlplane.StartKubeadmWith(t, controlplane.Options{EtcdExtraArgs: map[string]string{
		"heartbeat-interval": "1000", "election-timeout": "10000"}})
	node, mac := "vm-cp2", n.MAC(1)
	bs := cpBootServer(ctx, t, kcp, n, img, mac.String(), node)
	memMB := 4096
	if v, err := strconv.Atoi(os.Getenv("PXEJOIN_CP_VM_MB")); err == nil {
		memMB = v
	}
	v := startCPVM(t, n, node, mac, memMB)
	admin := kcp.Admin()

	// The mirror Pods of the four static Pods, Running under the VM's kubelet.
	var pods map[string]*corev1.Pod
	running := func() bool {
		pods = map[string]*corev1.Pod{}
		for _, c := range cpComponents {
			p, err := admin.CoreV1().Pods("kube-system").Get(ctx, c+"-"+node, metav1.GetOptions{})
			if err != nil {
				return false
			}
			pods[c] = p
		}
		for _, p := range pods {
			if p.Status.Phase != corev1.PodRunning {
				return false
			}
		}
		return true
	}
	for !running() {
		select {
		case <-ctx.Done():
			t.Logf("timeline:\n%s", real{bs}.timeline(v.Started, mac.String()))
			t.Fatalf("the static Pods of %s are not all Running: %s", node, podPhases(pods))
		case <-v.Done():
			t.Fatalf("the VM ended before its static Pods ran")
		case <-time.After(2 * time.Second):
		}
	}
	t.Logf("%s: static Pods Running %.1fs after qemu started", node, time.Since(v.Started).Seconds())
	for _, c := range cpComponents {
		if src := pods[c].Annotations["kubernetes.io/config.source"]; src != "file" {
			t.Errorf("%s-%s is not a static Pod's mirror (config.source %q)", c, node, src)
		}
	}

	// The join finished (its unit removed the join file): etcd has two voting members, the Node is a
	// control-plane node.
	if err := (real{bs}).waitPhase(ctx, mac.String(), bootstatus.PhaseSwitchRoot, bootstatus.StateDone); err != nil {
		t.Fatal(err)
	}
	members := func() (string, bool) {
		pki := kcp.CertificatesDir()
		out, err := exec.CommandContext(ctx, filepath.Join(bin, "etcdctl"), "--endpoints="+strings.Join(kcp.EtcdEndpoints(), ","),
			"--cacert="+filepath.Join(pki, "etcd/ca.crt"), "--cert="+filepath.Join(pki, "etcd/healthcheck-client.crt"),
			"--key="+filepath.Join(pki, "etcd/healthcheck-client.key"), "member", "list", "-w", "json").CombinedOutput()
		if err != nil {
			return string(out), false
		}
		var list struct {
			Members []struct {
				Name      string `json:"name"`
				IsLearner bool   `json:"isLearner"`
			} `json:"members"`
		}
		if json.Unmarshal(out, &list) != nil || len(list.Members) != 2 {
			return string(out), false
		}
		for _, m := range list.Members {
			if m.IsLearner {
				return string(out), false
			}
		}
		return string(out), true
	}
	var list string
	if !eventually.Within(10*time.Minute, func() bool { l, ok := members(); list = l; return ok }) {
		t.Fatalf("etcd members: %s, want two voting members", list)
	}
	var nd *corev1.Node
	if !eventually.Within(10*time.Minute, func() bool {
		var err error
		nd, err = admin.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false
		}
		_, labelled := nd.Labels["node-role.kubernetes.io/control-plane"]
		return labelled && slices.ContainsFunc(nd.Spec.Taints, func(tn corev1.Taint) bool {
			return tn.Key == "node-role.kubernetes.io/control-plane" && tn.Effect == corev1.TaintEffectNoSchedule
		})
	}) {
		t.Fatalf("Node %s is not labelled and tainted as a control-plane node: %v", node, nd)
	}
	t.Logf("%s: etcd member promoted and Node marked %.1fs after qemu started", node, time.Since(v.Started).Seconds())

	// The VM's API server, on the leased address its manifest advertises.
	endpoint := pods["kube-apiserver"].Annotations[controlplane.APIServerEndpointAnnotation]
	if endpoint == "" {
		t.Fatalf("kube-apiserver-%s has no %s annotation", node, controlplane.APIServerEndpointAnnotation)
	}
	kubectl := func(args ...string) (string, error) {
		out, err := n.NS.Command(filepath.Join(bin, "kubectl"), append([]string{"--kubeconfig", kcp.AdminKubeconfig(),
			"--server", "https://" + endpoint, "--request-timeout", "30s"}, args...)...).CombinedOutput()
		return string(out), err
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "written-through-the-first"}, Data: map[string]string{"k": "v"}}
	if _, err := admin.CoreV1().ConfigMaps("default").Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if summary, err := kubectl("get", "--raw", "/api/v1/nodes/"+node+"/proxy/stats/summary"); err == nil {
		var s struct {
			Node struct {
				Memory struct {
					WorkingSetBytes uint64 `json:"workingSetBytes"`
					AvailableBytes  uint64 `json:"availableBytes"`
				} `json:"memory"`
			} `json:"node"`
		}
		if json.Unmarshal([]byte(summary), &s) == nil {
			t.Logf("%s memory (of %d MiB): working set %d MiB, available %d MiB", node, memMB,
				s.Node.Memory.WorkingSetBytes>>20, s.Node.Memory.AvailableBytes>>20)
		}
	}

	// Stop the first API server: the cluster answers through the VM's.
	kcp.StopAPIServer()
	if _, err := admin.CoreV1().ConfigMaps("default").Get(ctx, cm.Name, metav1.GetOptions{}); err == nil {
		t.Fatal("the first API server still answers after StopAPIServer")
	}
	var out string
	if !eventually.Within(2*time.Minute, func() bool {
		var err error
		out, err = kubectl("get", "configmap", cm.Name, "-o", "jsonpath={.data.k}")
		return err == nil && out == "v"
	}) {
		t.Fatalf("the VM's API server does not serve the first one's ConfigMap: %s", out)
	}
	if out, err := kubectl("create", "configmap", "written-through-the-second", "--from-literal=k=w"); err != nil {
		t.Fatalf("writing through the VM's API server: %v\n%s", err, out)
	}
	out, err := kubectl("get", "nodes", "-o", "wide")
	if err != nil {
		t.Fatalf("kubectl get nodes through the VM's API server: %v\n%s", err, out)
	}
	t.Logf("through the VM's API server at %s, the first stopped:\n%s", endpoint, out)
	consoleMarks(t, v, "Linux version", "nodeagent init mode", "network done", "join-file done", "root-image done",
		"switch-root done", "Import the control-plane images", "The Kubernetes Node Agent", "Finish the pxejoin control-plane join")
	if where := keyShown(t, bs, kcp.CertificateKey()); len(where) > 0 {
		t.Errorf("the certificate key reached the boot server's %s", strings.Join(where, ", "))
	}
}

// startCPVM is startVM with two vCPUs: a control plane starts four servers at once.
func startCPVM(t *testing.T, n *labenv.Net, name string, mac hwaddr.MAC, memMB int) *vm.VM {
	t.Helper()
	dir := t.TempDir()
	v, err := vm.Start(vm.Options{Name: name, NetNS: n.NS.Name, Bridge: n.Bridge, MAC: mac, Firmware: vm.BIOS, Dir: dir, MemoryMB: memMB, CPUs: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		v.Stop()
		if t.Failed() {
			t.Logf("console of %s (last 60 lines):\n%s", name, v.Console.Tail(60))
		}
		if keep := os.Getenv("PXEJOIN_KEEP"); keep != "" {
			b, _ := os.ReadFile(filepath.Join(dir, name+".console"))
			os.WriteFile(filepath.Join(keep, name+".console"), b, 0o644)
		}
	})
	return v
}

// podPhases prints each Pod's phase.
func podPhases(pods map[string]*corev1.Pod) string {
	var b strings.Builder
	for _, c := range cpComponents {
		if p, ok := pods[c]; ok {
			fmt.Fprintf(&b, "%s=%s ", c, p.Status.Phase)
		} else {
			fmt.Fprintf(&b, "%s=absent ", c)
		}
	}
	return b.String()
}

package join_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/pxejoin/pxejoin/lab/controlplane"
	"github.com/pxejoin/pxejoin/lab/kubeadmoracle"
	"github.com/pxejoin/pxejoin/nodeagent/tlsbootstrap"
)

// cpPhases are the control-plane join's phases as both tools print them: each starts at the first
// output line matching its pattern (the first at the command's start) and ends where the next starts
// (the last at the command's exit). etcd-join is split where the learner has been added.
var cpPhases = []struct {
	name  string
	start *regexp.Regexp
}{
	{"discovery+preflight", nil},
	{"control-plane-prepare", regexp.MustCompile(`\[download-certs\]`)},
	{"kubelet-start", regexp.MustCompile(`\[kubelet-start\]`)},
	// kubeadm says this at -v=1 only.
	{"etcd-join: add learner", regexp.MustCompile(`\[etcd\] (Adding|Removing)`)},
	{"etcd-join: catch up, promote", regexp.MustCompile(`\[etcd\] Announced new etcd member`)},
	// kubeadm's kubelet-wait-bootstrap says [kubelet-check].
	{"kubelet, mark, API server ready", regexp.MustCompile(`^\[(kubelet-wait-bootstrap|kubelet-check|mark-control-plane)\]`)},
}

// timedLine is an output line and when it came, from the command's start.
type timedLine struct {
	at   time.Duration
	line string
}

// runTimed runs cmd and returns its output lines (stdout and stderr) with their arrival times, and
// how long it ran.
func runTimed(cmd *exec.Cmd) ([]timedLine, time.Duration, error) {
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	var lines []timedLine
	done := make(chan struct{})
	t0 := time.Now()
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines = append(lines, timedLine{time.Since(t0), sc.Text()})
		}
	}()
	err := cmd.Run()
	total := time.Since(t0)
	pw.Close()
	<-done
	return lines, total, err
}

// phaseTimes splits a join's run into cpPhases; a phase whose start line is missing is an error.
func phaseTimes(lines []timedLine, total time.Duration) ([]time.Duration, error) {
	starts := make([]time.Duration, len(cpPhases)+1)
	starts[len(cpPhases)] = total
	for i, p := range cpPhases[1:] {
		found := false
		for _, l := range lines {
			if l.at >= starts[i] && p.start.MatchString(l.line) {
				starts[i+1], found = l.at, true
				break
			}
		}
		if !found {
			return nil, fmt.Errorf("no line starts the phase %q (%s)", p.name, p.start)
		}
	}
	d := make([]time.Duration, len(cpPhases))
	for i := range d {
		d[i] = starts[i+1] - starts[i]
	}
	return d, nil
}

// timeCPJoin joins a second control-plane node "cp2" into a new kubeadm-shaped lab cluster with the
// command that command returns, and returns its time per phase and in total.
func timeCPJoin(b *testing.B, command func(context.Context, *cpMember, *controlplane.ControlPlane) *exec.Cmd) ([]time.Duration, time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	kcp, n := controlplane.StartKubeadm(b)
	first := etcdMembers(ctx, b, kcp)
	m := newCPMember(ctx, b, kcp, n, "cp2", 12)
	lines, total, err := runTimed(command(ctx, m, kcp))
	var out strings.Builder
	for _, l := range lines {
		fmt.Fprintf(&out, "%7.3fs %s\n", l.at.Seconds(), l.line)
	}
	if err != nil {
		b.Fatalf("join: %v\n%s\netcd:\n%s\nkube-apiserver:\n%s", err, out.String(), m.pods.tail("etcd"), m.pods.tail("kube-apiserver"))
	}
	b.Logf("join:\n%s", out.String())
	wantVoters(ctx, b, kcp, map[string]string{first[0].Name: first[0].PeerURLs[0], "cp2": "https://" + m.addr + ":2380"})
	phases, err := phaseTimes(lines, total)
	if err != nil {
		b.Fatal(err)
	}
	return phases, total
}

// kubeadmJoin is `kubeadm join --control-plane` for m, chrooted into its root (--rootfs) in its
// namespace, beside what the node's kubelet would do for it: answer /healthz on 127.0.0.1:10248 and
// bootstrap its client certificate from bootstrap-kubelet.conf into kubelet.conf. Preflight errors
// are ignored: the root holds no container runtime or kubelet. -v=1 makes it say when it adds the
// etcd learner.
func kubeadmJoin(ctx context.Context, b *testing.B, m *cpMember, kcp *controlplane.ControlPlane) *exec.Cmd {
	bin := controlplane.RequireKubeadm(b)
	tok := signedCPToken(ctx, b, kcp)
	cfg := kubeadmoracle.JoinConfig(kubeadmoracle.Join{Endpoint: kcp.Endpoint(), Token: tok, CACertHash: kcp.CAPin(),
		CertificateKey: kcp.CertificateKey(), Node: kubeadmoracle.Node{Name: m.name, AdvertiseAddress: m.addr}})
	if err := os.WriteFile(filepath.Join(m.rootfs, "join.yaml"), cfg, 0o600); err != nil {
		b.Fatal(err)
	}
	var ln net.Listener
	if err := m.ns.Do(func() (err error) { ln, err = net.Listen("tcp", "127.0.0.1:10248"); return err }); err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	go func() {
		if err := kubeletBootstrap(ctx, m); err != nil && ctx.Err() == nil {
			b.Errorf("the stand-in kubelet's TLS bootstrap: %v", err)
		}
	}()
	return m.ns.Command(filepath.Join(bin, "kubeadm"), "--rootfs", m.rootfs, "join", "--config", "/join.yaml",
		"--ignore-preflight-errors=all", "--v=1")
}

// kubeletBootstrap is a kubelet's TLS bootstrap: once kubeadm wrote bootstrap-kubelet.conf, a CSR with
// its token, and kubelet.conf with the issued certificate (kubelet-client-current.pem), as a kubelet
// writes them.
func kubeletBootstrap(ctx context.Context, m *cpMember) error {
	boot := filepath.Join(m.rootfs, "etc/kubernetes/bootstrap-kubelet.conf")
	for {
		if _, err := os.Stat(boot); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	time.Sleep(100 * time.Millisecond) // written whole: kubeadm writes it in one go, but not atomically
	cfg, err := clientcmd.BuildConfigFromFlags("", boot)
	if err != nil {
		return err
	}
	// It names this node's own API server (kubeadm's ControlPlaneKubeletLocalMode), on the node's
	// address: dial from its namespace, and retry until the API server runs (after etcd-join).
	cfg.Dial = func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		err = m.ns.Do(func() error {
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	key, keyPEM, _, err := tlsbootstrap.Key(nil)
	if err != nil {
		return err
	}
	var certPEM []byte
	for {
		if certPEM, _, err = tlsbootstrap.Run(ctx, tlsbootstrap.Request{Client: c, NodeName: m.name, Key: key}); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(500 * time.Millisecond):
		}
	}
	const current = "/var/lib/kubelet/pki/kubelet-client-current.pem"
	if err := os.MkdirAll(filepath.Join(m.rootfs, filepath.Dir(current)), 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(m.rootfs, current), append(certPEM, keyPEM...), 0o600); err != nil {
		return err
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["default-cluster"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["default-auth"] = &clientcmdapi.AuthInfo{ClientCertificate: current, ClientKey: current}
	kc.Contexts["default-context"] = &clientcmdapi.Context{Cluster: "default-cluster", AuthInfo: "default-auth"}
	kc.CurrentContext = "default-context"
	return clientcmd.WriteToFile(*kc, filepath.Join(m.rootfs, "etc/kubernetes/kubelet.conf"))
}

// BenchmarkControlPlaneJoin: a second control-plane node's join, time per phase, pxejoin's agent
// beside the real `kubeadm join --control-plane` (v1.37.2) run the same way in the same run: each
// into its own new kubeadm-shaped lab cluster, in its own namespace under --rootfs, its static Pods
// run as processes by the stand-in kubelet (which, for kubeadm, also answers its /healthz and does
// the kubelet's TLS bootstrap, work the agent does itself). Both get a token cluster-info is already
// signed for: discovery's wait for a fresh token's signature (kubeadm polls every 5 s, the agent
// watches) is BenchmarkJoinFreshToken's subject, not this one's.
func BenchmarkControlPlaneJoin(b *testing.B) {
	controlplane.RequireKubeadm(b)
	var ours, theirs []time.Duration
	var oursTotal, theirsTotal time.Duration
	b.Run("pxejoin", func(b *testing.B) {
		ours, oursTotal = timeCPJoin(b, func(ctx context.Context, m *cpMember, kcp *controlplane.ControlPlane) *exec.Cmd {
			return m.joinCommand(ctx, b, kcp)
		})
		b.ReportMetric(oursTotal.Seconds(), "s")
	})
	b.Run("kubeadm", func(b *testing.B) {
		theirs, theirsTotal = timeCPJoin(b, func(ctx context.Context, m *cpMember, kcp *controlplane.ControlPlane) *exec.Cmd {
			return kubeadmJoin(ctx, b, m, kcp)
		})
		b.ReportMetric(theirsTotal.Seconds(), "s")
	})
	if ours == nil || theirs == nil {
		return
	}
	var t strings.Builder
	fmt.Fprintf(&t, "%-30s %9s %9s %7s\n", "phase", "pxejoin", "kubeadm", "ratio")
	for i, p := range cpPhases {
		fmt.Fprintf(&t, "%-30s %8.2fs %8.2fs %6.2fx\n", p.name, ours[i].Seconds(), theirs[i].Seconds(), float64(ours[i])/float64(theirs[i]))
	}
	fmt.Fprintf(&t, "%-30s %8.2fs %8.2fs %6.2fx\n", "total", oursTotal.Seconds(), theirsTotal.Seconds(), float64(oursTotal)/float64(theirsTotal))
	b.ReportMetric(float64(oursTotal)/float64(theirsTotal), "x-kubeadm")
	b.Logf("control-plane join (second member), pxejoin beside kubeadm join --control-plane, same machine, same run:\n%s", t.String())
}

// Package controlplane runs a real, single-node Kubernetes control plane (etcd + kube-apiserver +
// kube-controller-manager, v1.37.2 built by lab/build-k8s.sh) on one address, and leaves it the way
// `kubeadm init` leaves a cluster for joining workers. Tests and `make lab` share it. Options.Kubeadm
// makes it the cluster `kubeadm init --upload-certs` leaves for joining control planes (kubeadm.go).
package controlplane

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/pxejoin/pxejoin/internal/pubkeypin"
	"github.com/pxejoin/pxejoin/lab/testenv"
)

// Version is the Kubernetes version the control plane runs.
const Version = testenv.K8sVersion

// Options configure a control plane.
type Options struct {
	// BinDir holds kube-apiserver and kube-controller-manager (and, for Kubeadm, kube-scheduler, kubeadm,
	// etcd); default testenv.K8sBinDir().
	BinDir string
	// Etcd is the etcd binary; default /usr/bin/etcd (Debian's etcd-server), or BinDir/etcd (3.7, built by
	// lab/build-k8s.sh) with Kubeadm.
	Etcd string
	// StateDir holds PKI, etcd data and logs. Required.
	StateDir string
	// Address is where the apiserver (and with Kubeadm etcd) listens and what nodes dial; default
	// 127.0.0.1. Kubeadm needs a non-loopback one, e.g. labenv.NewNet's BridgeAddr with its NetNS.
	Address string
	// APIPort is the apiserver's port; 0 picks a free one.
	APIPort int
	// NetNS, if set, runs the daemons inside that network namespace.
	NetNS string
	// Kubeadm starts the control plane `kubeadm init` leaves, for control-plane joins (kubeadm.go):
	// PKI, kubeconfigs, kubeadm-config and the kubeadm-certs Secret written by the real kubeadm, etcd 3.7
	// with TLS on Address, kube-scheduler, and the first node's etcd and kube-apiserver Pods.
	Kubeadm bool
	// NodeName is the first control-plane node's name with Kubeadm (its etcd member, Node and Pods);
	// default "cp1".
	NodeName string
	// EtcdExtraArgs (name → value, Kubeadm only) go into the ClusterConfiguration's etcd.local.extraArgs
	// and on the first member's command line: e.g. longer raft timeouts for a member in a slow VM.
	EtcdExtraArgs map[string]string
	// Logf receives progress lines; may be nil.
	Logf func(format string, args ...any)
}

// ControlPlane is a running control plane.
type ControlPlane struct {
	opts      Options
	pki       string
	ca        *x509.Certificate
	endpoint  string // host:port
	etcd      *process
	apiserver *process
	kcm       *process
	scheduler *process // Kubeadm only
	admin     *rest.Config
	client    kubernetes.Interface
	kubeadm   *kubeadmState // Kubeadm only
}

// Start brings up etcd, kube-apiserver and kube-controller-manager and creates kubeadm's join objects.
// It returns when the apiserver is ready; the controllers come up a few seconds later (WaitControllers).
func Start(ctx context.Context, opts Options) (*ControlPlane, error) {
	if opts.StateDir == "" {
		return nil, errors.New("controlplane: StateDir is required")
	}
	if opts.BinDir == "" {
		opts.BinDir = testenv.K8sBinDir()
	}
	if opts.Etcd == "" {
		opts.Etcd = "/usr/bin/etcd"
		if opts.Kubeadm {
			opts.Etcd = filepath.Join(opts.BinDir, "etcd")
		}
	}
	if opts.Address == "" {
		opts.Address = "127.0.0.1"
	}
	if opts.NodeName == "" {
		opts.NodeName = "cp1"
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if _, err := os.Stat(opts.Etcd); err != nil {
		if opts.Kubeadm {
			return nil, fmt.Errorf("etcd not found at %s: run `make k8s` (it builds etcd %s from the Go module proxy)", opts.Etcd, EtcdVersion)
		}
		return nil, fmt.Errorf("etcd not found at %s: run `make deps` (Debian's etcd-server)", opts.Etcd)
	}
	cp := &ControlPlane{opts: opts, pki: filepath.Join(opts.StateDir, "pki")}
	ip := net.ParseIP(opts.Address)
	if ip == nil {
		return nil, fmt.Errorf("controlplane: Address %q is not an IP", opts.Address)
	}
	if opts.Kubeadm && ip.IsLoopback() {
		// kubeadm takes a loopback advertise address to mean "the global address on lo" and fails without one.
		return nil, fmt.Errorf("controlplane: Kubeadm needs a non-loopback Address (kubeadm refuses %s as an advertise address): bind it to a bridge address, e.g. labenv.NewNet's BridgeAddr with its NetNS", opts.Address)
	}
	ports, err := freePorts(5)
	if err != nil {
		return nil, err
	}
	if opts.APIPort != 0 {
		ports[2] = opts.APIPort
	}
	cp.endpoint = net.JoinHostPort(opts.Address, strconv.Itoa(ports[2]))
	if err := os.MkdirAll(filepath.Join(opts.StateDir, "logs"), 0o755); err != nil {
		return nil, err
	}
	if opts.Kubeadm {
		err = cp.prepareKubeadm(ctx, ports)
	} else {
		err = cp.prepare(ports)
	}
	if err != nil {
		return nil, err
	}
	cp.admin, err = clientcmd.BuildConfigFromFlags("", cp.AdminKubeconfig())
	if err != nil {
		return nil, err
	}
	cp.client = kubernetes.NewForConfigOrDie(cp.admin)

	t0 := time.Now()
	if err := cp.etcd.start(opts.NetNS); err != nil {
		return nil, err
	}
	if err := cp.StartAPIServer(ctx); err != nil {
		cp.Stop()
		return nil, err
	}
	opts.Logf("control plane: apiserver ready at %s after %s", cp.Endpoint(), time.Since(t0).Round(time.Millisecond))
	if opts.Kubeadm {
		if err := cp.bindClusterAdmins(ctx); err != nil {
			cp.Stop()
			return nil, err
		}
	}
	for _, p := range []*process{cp.kcm, cp.scheduler} {
		if p == nil {
			continue
		}
		if err := p.start(opts.NetNS); err != nil {
			cp.Stop()
			return nil, err
		}
	}
	if opts.Kubeadm {
		// kubeadm's own upload-config writes kubeadm-config first; applyJoinObjects finds it there.
		if err := cp.uploadConfig(ctx); err != nil {
			cp.Stop()
			return nil, err
		}
	}
	if err := cp.applyJoinObjects(ctx); err != nil {
		cp.Stop()
		return nil, fmt.Errorf("controlplane: creating kubeadm's join objects: %w", err)
	}
	if opts.Kubeadm {
		if err := cp.applyKubeadmObjects(ctx); err != nil {
			cp.Stop()
			return nil, err
		}
		opts.Logf("control plane: kubeadm-shaped, ready after %s", time.Since(t0).Round(time.Millisecond))
	}
	return cp, nil
}

// prepare writes the PKI and kubeconfigs of the default mode and sets the daemons' command lines:
// Debian's etcd on plain HTTP, loopback only.
func (cp *ControlPlane) prepare(ports []int) error {
	opts := cp.opts
	kcmBin, err := binPath(opts.BinDir, "kube-controller-manager")
	if err != nil {
		return err
	}
	ca, err := writePKI(cp.pki, []net.IP{net.ParseIP(opts.Address)})
	if err != nil {
		return err
	}
	cp.ca = ca.cert
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	cp.etcd = &process{name: "etcd", log: cp.logPath("etcd"), argv: []string{opts.Etcd,
		"--name=cp", "--data-dir=" + filepath.Join(opts.StateDir, "etcd"),
		"--listen-client-urls=" + etcdURL, "--advertise-client-urls=" + etcdURL,
		"--listen-peer-urls=" + peerURL, "--initial-advertise-peer-urls=" + peerURL,
		"--initial-cluster=cp=" + peerURL, "--log-level=warn"}}
	cp.apiserver, err = cp.apiserverProcess(ports[2], "--etcd-servers="+etcdURL,
		// etcd 3.4 (Debian 12) cannot answer the watch-progress requests a v1.37 watch cache relies on to
		// catch up, so consistent watches would stall for 3 s and fail with "Too large resource version".
		// Serving watches from etcd directly gives real clusters' (etcd 3.5+) consistency.
		"--watch-cache=false")
	if err != nil {
		return err
	}
	kcmConf := filepath.Join(opts.StateDir, "controller-manager.conf")
	cp.kcm = cp.kcmProcess(kcmBin, kcmConf, ports[3])
	if err := cp.writeKubeconfig(kcmConf, "controller-manager"); err != nil {
		return err
	}
	return cp.writeKubeconfig(cp.AdminKubeconfig(), "admin")
}

// apiserverProcess is kube-apiserver with kubeadm's flags, plus the mode's etcd flags.
func (cp *ControlPlane) apiserverProcess(port int, etcdArgs ...string) (*process, error) {
	apiBin, err := binPath(cp.opts.BinDir, "kube-apiserver")
	if err != nil {
		return nil, err
	}
	p := func(n string) string { return filepath.Join(cp.pki, n) }
	argv := []string{apiBin,
		"--advertise-address=" + cp.opts.Address, "--bind-address=" + cp.opts.Address, "--secure-port=" + strconv.Itoa(port),
		"--allow-privileged=true",
		"--authorization-mode=Node,RBAC", "--enable-bootstrap-token-auth=true", "--enable-admission-plugins=NodeRestriction",
		"--client-ca-file=" + p("ca.crt"), "--tls-cert-file=" + p("apiserver.crt"), "--tls-private-key-file=" + p("apiserver.key"),
		"--kubelet-client-certificate=" + p("apiserver-kubelet-client.crt"), "--kubelet-client-key=" + p("apiserver-kubelet-client.key"),
		"--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local", "--service-account-key-file=" + p("sa.pub"),
		"--service-account-signing-key-file=" + p("sa.key"), "--service-cluster-ip-range=10.96.0.0/12",
		"--requestheader-client-ca-file=" + p("front-proxy-ca.crt"), "--requestheader-allowed-names=front-proxy-client",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-", "--requestheader-group-headers=X-Remote-Group",
		"--requestheader-username-headers=X-Remote-User", "--proxy-client-cert-file=" + p("front-proxy-client.crt"),
		"--proxy-client-key-file=" + p("front-proxy-client.key"), "--endpoint-reconciler-type=none",
		"--profiling=false", "--v=1"}
	return &process{name: "kube-apiserver", log: cp.logPath("kube-apiserver"), argv: append(argv, etcdArgs...)}, nil
}

func (cp *ControlPlane) kcmProcess(bin, kubeconfig string, port int) *process {
	p := func(n string) string { return filepath.Join(cp.pki, n) }
	return &process{name: "kube-controller-manager", log: cp.logPath("kube-controller-manager"), argv: []string{bin,
		"--kubeconfig=" + kubeconfig, "--authentication-kubeconfig=" + kubeconfig, "--authorization-kubeconfig=" + kubeconfig,
		"--bind-address=127.0.0.1", "--secure-port=" + strconv.Itoa(port),
		"--controllers=*,bootstrapsigner,tokencleaner", "--cluster-signing-cert-file=" + p("ca.crt"),
		"--cluster-signing-key-file=" + p("ca.key"), "--use-service-account-credentials=true",
		"--root-ca-file=" + p("ca.crt"), "--service-account-private-key-file=" + p("sa.key"),
		"--leader-elect=false", "--flex-volume-plugin-dir=" + filepath.Join(cp.opts.StateDir, "flexvolume"),
		"--cluster-name=kubernetes", "--v=1"}}
}

func (cp *ControlPlane) logPath(name string) string {
	return filepath.Join(cp.opts.StateDir, "logs", name+".log")
}

// StartAPIServer (re)starts kube-apiserver and waits until /readyz says ok.
func (cp *ControlPlane) StartAPIServer(ctx context.Context) error {
	if err := cp.apiserver.start(cp.opts.NetNS); err != nil {
		return err
	}
	return cp.waitReady(ctx, cp.apiserver, "/readyz", 90*time.Second)
}

// StopAPIServer stops kube-apiserver (etcd and the controllers keep running).
func (cp *ControlPlane) StopAPIServer() { cp.apiserver.stop(10 * time.Second) }

// Stop stops every daemon.
func (cp *ControlPlane) Stop() {
	for _, p := range []*process{cp.scheduler, cp.kcm, cp.apiserver, cp.etcd} {
		if p != nil {
			p.stop(10 * time.Second)
		}
	}
}

// Endpoint is the apiserver's host:port, as a JoinConfiguration's apiServerEndpoint.
func (cp *ControlPlane) Endpoint() string { return cp.endpoint }

// CA is the cluster CA certificate.
func (cp *ControlPlane) CA() *x509.Certificate { return cp.ca }

// CAPin is the CA's public-key pin ("sha256:…") for --discovery-token-ca-cert-hash.
func (cp *ControlPlane) CAPin() string { return pubkeypin.Hash(cp.ca) }

// CAFile is the path of the CA certificate.
func (cp *ControlPlane) CAFile() string { return filepath.Join(cp.pki, "ca.crt") }

// AdminKubeconfig is the path of a cluster-admin kubeconfig.
func (cp *ControlPlane) AdminKubeconfig() string {
	return filepath.Join(cp.opts.StateDir, "admin.conf")
}

// Admin is a cluster-admin client.
func (cp *ControlPlane) Admin() kubernetes.Interface { return cp.client }

// AdminConfig is the cluster-admin rest config.
func (cp *ControlPlane) AdminConfig() *rest.Config { return rest.CopyConfig(cp.admin) }

// LogTail returns the end of a daemon's log ("etcd", "kube-apiserver", "kube-controller-manager",
// "kube-scheduler").
func (cp *ControlPlane) LogTail(name string, lines int) string {
	for _, p := range []*process{cp.etcd, cp.apiserver, cp.kcm, cp.scheduler} {
		if p != nil && p.name == name {
			return p.tail(lines)
		}
	}
	return ""
}

func (cp *ControlPlane) writeKubeconfig(path, user string) error {
	caPEM, err := os.ReadFile(cp.CAFile())
	if err != nil {
		return err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubernetes"] = &clientcmdapi.Cluster{Server: "https://" + cp.endpoint, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificate: filepath.Join(cp.pki, user+".crt"), ClientKey: filepath.Join(cp.pki, user+".key")}
	cfg.Contexts[user] = &clientcmdapi.Context{Cluster: "kubernetes", AuthInfo: user}
	cfg.CurrentContext = user
	return clientcmd.WriteToFile(*cfg, path)
}

func (cp *ControlPlane) waitReady(ctx context.Context, p *process, path string, limit time.Duration) error {
	hc, err := rest.HTTPClientFor(cp.admin)
	if err != nil {
		return err
	}
	hc.Timeout = 2 * time.Second
	defer hc.CloseIdleConnections()
	deadline := time.Now().Add(limit)
	for {
		resp, err := hc.Get("https://" + cp.endpoint + path)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		if !p.running() {
			return fmt.Errorf("%s exited while starting; its log ends with:\n%s", p.name, p.tail(20))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s; its log ends with:\n%s", p.name, limit, p.tail(20))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

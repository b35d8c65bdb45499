package controlplane

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	certutil "k8s.io/client-go/util/cert"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
	"sigs.k8s.io/yaml"
)

// EtcdVersion is the etcd the kubeadm-shaped control plane runs (the Makefile's ETCD_VERSION).
const EtcdVersion = "v3.7.3"

// Names kubeadm v1.37 uses (cmd/kubeadm/app/constants).
const (
	// CertsSecret is the Secret `kubeadm init phase upload-certs` writes in kube-system.
	CertsSecret = "kubeadm-certs"
	// EtcdClientURLsAnnotation is on every etcd Pod; a joining control plane finds the members through it.
	EtcdClientURLsAnnotation = "kubeadm.kubernetes.io/etcd.advertise-client-urls"
	// APIServerEndpointAnnotation is on every kube-apiserver Pod.
	APIServerEndpointAnnotation = "kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint"
	// NodeCertificatesDir and NodeEtcdDataDir are what the uploaded ClusterConfiguration says: the paths on
	// a joining node. The lab's first node keeps its own under StateDir.
	NodeCertificatesDir = "/etc/kubernetes/pki"
	NodeEtcdDataDir     = "/var/lib/etcd"
)

// kubeadmState is what the Kubeadm mode adds to a control plane.
type kubeadmState struct {
	bin           string // kubeadm
	localConfig   string // InitConfiguration + ClusterConfiguration with the lab's own paths
	uploadConfig  string // the same with the node paths, as kubeadm-config holds it
	certKey       string // hex, 32 bytes
	etcdClientURL string // https://Address:port
	etcdPeerURL   string
	clusterConfig []byte // the kubeadm-config ClusterConfiguration as kubeadm uploaded it
}

// kubeadmConfig is the InitConfiguration + ClusterConfiguration `kubeadm init` would be given. The
// certificate key goes in the file, not on kubeadm's command line (which refuses it beside --config,
// and where it would show in ps).
func (cp *ControlPlane) kubeadmConfig(certsDir, etcdDir string) string {
	host, port, _ := net.SplitHostPort(cp.endpoint)
	return fmt.Sprintf(`apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
certificateKey: %[8]s
localAPIEndpoint:
  advertiseAddress: %[1]s
  bindPort: %[2]s
nodeRegistration:
  name: %[3]s
  criSocket: unix:///run/containerd/containerd.sock
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: %[4]s
clusterName: kubernetes
controlPlaneEndpoint: %[5]s
certificatesDir: %[6]s
networking:
  dnsDomain: cluster.local
  serviceSubnet: 10.96.0.0/12
  podSubnet: 10.244.0.0/16
etcd:
  local:
    dataDir: %[7]s
%[9]sapiServer:
  certSANs:
  - %[1]s
`, host, port, cp.opts.NodeName, Version, cp.endpoint, certsDir, etcdDir, cp.kubeadm.certKey, cp.etcdExtraArgs())
}

// etcdExtraArgs is Options.EtcdExtraArgs as the ClusterConfiguration's etcd.local.extraArgs, sorted.
func (cp *ControlPlane) etcdExtraArgs() string {
	if len(cp.opts.EtcdExtraArgs) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("    extraArgs:\n")
	for _, k := range slices.Sorted(maps.Keys(cp.opts.EtcdExtraArgs)) {
		fmt.Fprintf(&b, "    - name: %s\n      value: %q\n", k, cp.opts.EtcdExtraArgs[k])
	}
	return b.String()
}

// prepareKubeadm has the real kubeadm write the PKI (kubeadm's layout: etcd/ca, front-proxy-ca, sa, the
// first node's leaves) and kubeconfigs, and sets the daemons' command lines: etcd 3.7 with TLS for
// clients and peers on Address (and loopback), as kubeadm's etcd manifest runs it, the apiserver
// dialing it with apiserver-etcd-client, and kube-scheduler.
func (cp *ControlPlane) prepareKubeadm(ctx context.Context, ports []int) error {
	opts := cp.opts
	bins := map[string]string{}
	for _, name := range []string{"kubeadm", "kube-controller-manager", "kube-scheduler"} {
		p, err := binPath(opts.BinDir, name)
		if err != nil {
			return err
		}
		bins[name] = p
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return err
	}
	k := &kubeadmState{bin: bins["kubeadm"], certKey: hex.EncodeToString(key),
		localConfig:  filepath.Join(opts.StateDir, "kubeadm.yaml"),
		uploadConfig: filepath.Join(opts.StateDir, "kubeadm-upload.yaml")}
	cp.kubeadm = k
	etcdDir := filepath.Join(opts.StateDir, "etcd")
	if err := os.WriteFile(k.localConfig, []byte(cp.kubeadmConfig(cp.pki, etcdDir)), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(k.uploadConfig, []byte(cp.kubeadmConfig(NodeCertificatesDir, NodeEtcdDataDir)), 0o600); err != nil {
		return err
	}
	if err := cp.runKubeadm(ctx, "init", "phase", "certs", "all", "--config", k.localConfig); err != nil {
		return err
	}
	if err := cp.runKubeadm(ctx, "init", "phase", "kubeconfig", "all", "--config", k.localConfig, "--kubeconfig-dir", opts.StateDir); err != nil {
		return err
	}
	cas, err := certutil.CertsFromFile(cp.CAFile())
	if err != nil {
		return err
	}
	cp.ca = cas[0]

	p := func(n string) string { return filepath.Join(cp.pki, n) }
	addr := opts.Address
	k.etcdClientURL = "https://" + net.JoinHostPort(addr, strconv.Itoa(ports[0]))
	k.etcdPeerURL = "https://" + net.JoinHostPort(addr, strconv.Itoa(ports[1]))
	localURL := "https://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
	listen := localURL
	if k.etcdClientURL != localURL {
		listen += "," + k.etcdClientURL
	}
	// kubeadm v1.37's etcd flags (phases/etcd/local.go getEtcdCommand), on the lab's ports; no metrics URL.
	cp.etcd = &process{name: "etcd", log: cp.logPath("etcd"), argv: []string{opts.Etcd,
		"--name=" + opts.NodeName, "--data-dir=" + etcdDir,
		"--listen-client-urls=" + listen, "--advertise-client-urls=" + k.etcdClientURL,
		"--listen-peer-urls=" + k.etcdPeerURL, "--initial-advertise-peer-urls=" + k.etcdPeerURL,
		"--initial-cluster=" + opts.NodeName + "=" + k.etcdPeerURL,
		"--cert-file=" + p("etcd/server.crt"), "--key-file=" + p("etcd/server.key"),
		"--trusted-ca-file=" + p("etcd/ca.crt"), "--client-cert-auth=true",
		"--peer-cert-file=" + p("etcd/peer.crt"), "--peer-key-file=" + p("etcd/peer.key"),
		"--peer-trusted-ca-file=" + p("etcd/ca.crt"), "--peer-client-cert-auth=true",
		"--snapshot-count=10000", "--feature-gates=InitialCorruptCheck=true",
		"--watch-progress-notify-interval=5s", "--log-level=warn"}}
	for _, k := range slices.Sorted(maps.Keys(opts.EtcdExtraArgs)) {
		cp.etcd.argv = append(cp.etcd.argv, "--"+k+"="+opts.EtcdExtraArgs[k])
	}
	cp.apiserver, err = cp.apiserverProcess(ports[2], "--etcd-servers="+localURL,
		"--etcd-cafile="+p("etcd/ca.crt"), "--etcd-certfile="+p("apiserver-etcd-client.crt"),
		"--etcd-keyfile="+p("apiserver-etcd-client.key"))
	if err != nil {
		return err
	}
	cp.kcm = cp.kcmProcess(bins["kube-controller-manager"], filepath.Join(opts.StateDir, "controller-manager.conf"), ports[3])
	sched := filepath.Join(opts.StateDir, "scheduler.conf")
	cp.scheduler = &process{name: "kube-scheduler", log: cp.logPath("kube-scheduler"), argv: []string{bins["kube-scheduler"],
		"--kubeconfig=" + sched, "--authentication-kubeconfig=" + sched, "--authorization-kubeconfig=" + sched,
		"--bind-address=127.0.0.1", "--secure-port=" + strconv.Itoa(ports[4]), "--leader-elect=false", "--v=1"}}
	return nil
}

// runKubeadm runs the real kubeadm; its output goes to logs/kubeadm.log. No secret is on its command
// line (the certificate key is in the config file), and it prints the key only where asked: never.
func (cp *ControlPlane) runKubeadm(ctx context.Context, args ...string) error {
	f, err := os.OpenFile(cp.logPath("kubeadm"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, cp.kubeadm.bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	fmt.Fprintf(f, "$ kubeadm %s\n%s", strings.Join(args, " "), out.Bytes())
	if err != nil {
		return fmt.Errorf("kubeadm %s: %w\n%s", strings.Join(args, " "), err, out.Bytes())
	}
	return nil
}

// bindClusterAdmins does what kubeadm init does with super-admin.conf before admin.conf can work: bind
// admin.conf's group kubeadm:cluster-admins to cluster-admin.
func (cp *ControlPlane) bindClusterAdmins(ctx context.Context) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(cp.opts.StateDir, "super-admin.conf"))
	if err != nil {
		return err
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	_, err = c.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "kubeadm:cluster-admins"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "cluster-admin"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: "kubeadm:cluster-admins"}},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("controlplane: binding kubeadm:cluster-admins: %w", err)
	}
	return nil
}

// uploadConfig has kubeadm write kubeadm-config (the defaulted ClusterConfiguration, with the node
// paths) and its RBAC, and reads it back.
func (cp *ControlPlane) uploadConfig(ctx context.Context) error {
	if err := cp.runKubeadm(ctx, "init", "phase", "upload-config", "kubeadm", "--config", cp.kubeadm.uploadConfig,
		"--kubeconfig", cp.AdminKubeconfig()); err != nil {
		return err
	}
	cm, err := cp.client.CoreV1().ConfigMaps(metav1.NamespaceSystem).Get(ctx, "kubeadm-config", metav1.GetOptions{})
	if err != nil {
		return err
	}
	cp.kubeadm.clusterConfig = []byte(cm.Data["ClusterConfiguration"])
	return nil
}

// applyKubeadmObjects creates what the first node's kubelet and `kubeadm init` would: its Node, the
// mirror Pods of its etcd and kube-apiserver with kubeadm's annotations (the lab runs no kubelet for
// it), and the kubeadm-certs Secret with its RBAC, written by the real kubeadm.
func (cp *ControlPlane) applyKubeadmObjects(ctx context.Context) error {
	name := cp.opts.NodeName
	c := cp.client
	// Without the Node the pod garbage collector deletes Pods bound to it after 40 s.
	_, err := c.CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
			"kubernetes.io/hostname":                                  name,
			"node-role.kubernetes.io/control-plane":                   "",
			"node.kubernetes.io/exclude-from-external-load-balancers": "",
		}},
		Spec: corev1.NodeSpec{Taints: []corev1.Taint{{Key: "node-role.kubernetes.io/control-plane", Effect: corev1.TaintEffectNoSchedule}}},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("controlplane: node %s: %w", name, err)
	}
	pods := []struct {
		component, image, annotation, value string
		argv                                []string
	}{
		{"etcd", "registry.k8s.io/etcd:3.7.0-0", EtcdClientURLsAnnotation, cp.kubeadm.etcdClientURL, cp.etcd.argv},
		{"kube-apiserver", "registry.k8s.io/kube-apiserver:" + Version, APIServerEndpointAnnotation, cp.endpoint, cp.apiserver.argv},
	}
	for _, p := range pods {
		if err := cp.mirrorPod(ctx, p.component, p.image, p.annotation, p.value, p.argv); err != nil {
			return fmt.Errorf("controlplane: pod %s-%s: %w", p.component, name, err)
		}
	}
	return cp.UploadCerts(ctx)
}

// mirrorPod creates a Pod shaped like the mirror Pod of a kubeadm static Pod, Running and Ready.
func (cp *ControlPlane) mirrorPod(ctx context.Context, component, image, annotation, value string, argv []string) error {
	pods := cp.client.CoreV1().Pods(metav1.NamespaceSystem)
	pod, err := pods.Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:   component + "-" + cp.opts.NodeName,
			Labels: map[string]string{"component": component, "tier": "control-plane"},
			// A mirror Pod: the kubelet's annotations (which also spare it the service account admission).
			Annotations: map[string]string{annotation: value, "kubernetes.io/config.mirror": "lab-" + component,
				"kubernetes.io/config.source": "file"},
		},
		Spec: corev1.PodSpec{
			NodeName:          cp.opts.NodeName,
			HostNetwork:       true,
			PriorityClassName: "system-node-critical",
			// The kubelet gives static Pods this toleration.
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute}},
			Containers: []corev1.Container{{Name: component, Image: image,
				Command: append([]string{component}, argv[1:]...)}},
		},
	}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	if err != nil {
		return err
	}
	now := metav1.Now()
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, HostIP: cp.opts.Address, PodIP: cp.opts.Address,
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}}}
	_, err = pods.UpdateStatus(ctx, pod, metav1.UpdateOptions{})
	return err
}

// UploadCerts runs the real `kubeadm init phase upload-certs --upload-certs` with CertificateKey: it
// (re)writes the kubeadm-certs Secret (owned by a new 2 h bootstrap token) and its Role and RoleBinding
// kubeadm:kubeadm-certs. Kubeadm mode only.
func (cp *ControlPlane) UploadCerts(ctx context.Context) error {
	return cp.runKubeadm(ctx, "init", "phase", "upload-certs", "--upload-certs", "--skip-certificate-key-print",
		"--config", cp.kubeadm.localConfig, "--kubeconfig", cp.AdminKubeconfig())
}

// ExpireCerts makes the kubeadm-certs Secret expire after ttl the way it does in a kubeadm cluster: the
// bootstrap token that owns it expires, the token cleaner deletes the token and the garbage collector the
// Secret. WaitCertsGone waits for that. Kubeadm mode only.
func (cp *ControlPlane) ExpireCerts(ctx context.Context, ttl time.Duration) error {
	s, err := cp.client.CoreV1().Secrets(metav1.NamespaceSystem).Get(ctx, CertsSecret, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if len(s.OwnerReferences) != 1 {
		return fmt.Errorf("controlplane: %s has %d owners, want its bootstrap token", CertsSecret, len(s.OwnerReferences))
	}
	exp := []byte(time.Now().Add(ttl).UTC().Format(time.RFC3339))
	patch, err := json.Marshal(map[string]any{"data": map[string][]byte{bootstrapapi.BootstrapTokenExpirationKey: exp}})
	if err != nil {
		return err
	}
	_, err = cp.client.CoreV1().Secrets(metav1.NamespaceSystem).Patch(ctx, s.OwnerReferences[0].Name,
		types.MergePatchType, patch, metav1.PatchOptions{})
	return err
}

// WaitCertsGone waits until the kubeadm-certs Secret no longer exists.
func (cp *ControlPlane) WaitCertsGone(ctx context.Context, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		_, err := cp.client.CoreV1().Secrets(metav1.NamespaceSystem).Get(ctx, CertsSecret, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("controlplane: %s still there after %s (err %v)", CertsSecret, limit, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// DeleteCerts deletes the kubeadm-certs Secret (UploadCerts writes it again). Kubeadm mode only.
func (cp *ControlPlane) DeleteCerts(ctx context.Context) error {
	err := cp.client.CoreV1().Secrets(metav1.NamespaceSystem).Delete(ctx, CertsSecret, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// CertificateKey is the hex key the kubeadm-certs Secret is encrypted with (--certificate-key). A secret:
// keep it out of logs. Kubeadm mode only.
func (cp *ControlPlane) CertificateKey() string { return cp.kubeadm.certKey }

// ClusterConfiguration is the ClusterConfiguration kubeadm uploaded to kubeadm-config (with the node
// paths NodeCertificatesDir and NodeEtcdDataDir). Kubeadm mode only.
func (cp *ControlPlane) ClusterConfiguration() []byte { return bytes.Clone(cp.kubeadm.clusterConfig) }

// SetControlPlaneEndpoint writes kubeadm-config with (on) or without its controlPlaneEndpoint, for the
// refusal a control-plane join owes a cluster without one. Kubeadm mode only.
func (cp *ControlPlane) SetControlPlaneEndpoint(ctx context.Context, on bool) error {
	data := cp.kubeadm.clusterConfig
	if !on {
		var m map[string]any
		if err := yaml.Unmarshal(data, &m); err != nil {
			return err
		}
		delete(m, "controlPlaneEndpoint")
		var err error
		if data, err = yaml.Marshal(m); err != nil {
			return err
		}
	}
	patch, err := json.Marshal(map[string]any{"data": map[string]string{"ClusterConfiguration": string(data)}})
	if err != nil {
		return err
	}
	_, err = cp.client.CoreV1().ConfigMaps(metav1.NamespaceSystem).Patch(ctx, "kubeadm-config", types.MergePatchType, patch, metav1.PatchOptions{})
	return err
}

// EtcdEndpoints are the etcd members' client URLs (https, client certificate required: etcd/ca.crt and
// etcd/healthcheck-client under CertificatesDir). Kubeadm mode only.
func (cp *ControlPlane) EtcdEndpoints() []string { return []string{cp.kubeadm.etcdClientURL} }

// CertificatesDir is the first node's certificatesDir, in kubeadm's layout.
func (cp *ControlPlane) CertificatesDir() string { return cp.pki }

// KubeadmConfig is the path of the InitConfiguration + ClusterConfiguration the lab gave kubeadm (with
// the lab's own paths). Kubeadm mode only.
func (cp *ControlPlane) KubeadmConfig() string { return cp.kubeadm.localConfig }

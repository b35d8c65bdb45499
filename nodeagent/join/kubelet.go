package join

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	kubeletv1beta1 "k8s.io/kubelet/config/v1beta1"
	"sigs.k8s.io/yaml"

	"github.com/pxejoin/pxejoin/internal/joinconfig"
	"github.com/pxejoin/pxejoin/nodeagent/kubeletstart"
	"github.com/pxejoin/pxejoin/nodeagent/nodefiles"
	"github.com/pxejoin/pxejoin/nodeagent/tlsbootstrap"
)

// kubeletConfigMap is where kubeadm keeps the cluster-wide KubeletConfiguration.
const kubeletConfigMap = "kubelet-config"

func (d *data) write(files ...nodefiles.File) error {
	if d.dryRun() {
		nodefiles.Print(d.out, files...)
		return nil
	}
	return d.root.Write(files...)
}

// runKubeletConfig writes config.yaml (from the cluster's kubelet-config ConfigMap, patched),
// kubeadm-flags.env and the cluster CA.
func runKubeletConfig(ctx context.Context, d *data) error {
	c, err := d.bootstrapClient(ctx)
	if err != nil {
		return err
	}
	if err := d.checkExistingNode(ctx, c); err != nil {
		return err
	}
	cm, err := c.CoreV1().ConfigMaps(metav1.NamespaceSystem).Get(ctx, kubeletConfigMap, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("cannot read the kubelet configuration (ConfigMap kube-system/%s): %w (kubeadm init creates it, with a Role letting bootstrap tokens read it)", kubeletConfigMap, err)
	}
	config, err := kubeletConfig([]byte(cm.Data["kubelet"]))
	if err != nil {
		return err
	}
	if dir := d.patchesDir(); dir != "" {
		if config, err = applyPatches(dir, "kubeletconfiguration", config, d.printf); err != nil {
			return err
		}
	}
	caPath := d.cfg.CACertPath
	if caPath == "" {
		caPath = joinconfig.DefaultCACertPath
	}
	if old, err := d.root.Read(caPath); err == nil && !bytes.Equal(old, d.disc.CAData) {
		return fmt.Errorf("%s already exists and is not this cluster's CA: this machine belongs to another cluster; remove it (kubeadm reset) or join into another --rootfs", caPath)
	}
	d.printf("[kubelet-start] Writing kubelet configuration to file %q", nodefiles.KubeletConfig)
	d.printf("[kubelet-start] Writing kubelet environment file with flags to file %q", nodefiles.KubeletFlags)
	return d.write(
		nodefiles.File{Path: caPath, Data: d.disc.CAData, Mode: 0o644},
		nodefiles.File{Path: nodefiles.KubeletConfig, Data: config, Mode: 0o644},
		nodefiles.File{Path: nodefiles.KubeletFlags, Data: []byte(d.kubeletFlags()), Mode: 0o644},
	)
}

func (d *data) patchesDir() string {
	if d.opts.PatchesDir != "" {
		return d.opts.PatchesDir
	}
	if d.cfg.Patches != nil {
		return d.cfg.Patches.Directory
	}
	return ""
}

// kubeletConfig parses the cluster's KubeletConfiguration (typed, so a broken one is caught here and
// not by the kubelet at boot) and renders it for config.yaml.
func kubeletConfig(raw []byte) ([]byte, error) {
	if len(raw) == 0 {
		return nil, fmt.Errorf("the ConfigMap kube-system/%s has no \"kubelet\" key", kubeletConfigMap)
	}
	var kc kubeletv1beta1.KubeletConfiguration
	if err := yaml.Unmarshal(raw, &kc); err != nil {
		return nil, fmt.Errorf("the cluster's KubeletConfiguration (kube-system/%s) does not parse: %w", kubeletConfigMap, err)
	}
	if kc.Kind != "" && kc.Kind != "KubeletConfiguration" {
		return nil, fmt.Errorf("kube-system/%s holds a %s, not a KubeletConfiguration", kubeletConfigMap, kc.Kind)
	}
	kc.APIVersion, kc.Kind = kubeletv1beta1.SchemeGroupVersion.String(), "KubeletConfiguration"
	return yaml.Marshal(&kc)
}

// kubeletFlags renders kubeadm-flags.env as kubeadm does: the node-specific flags, then the extra args.
func (d *data) kubeletFlags() string {
	nr := d.cfg.NodeRegistration
	cri := nr.CRISocket
	if cri == "" {
		cri = joinconfig.DefaultCRI
	}
	args := map[string]string{"container-runtime-endpoint": cri}
	if h, err := os.Hostname(); err != nil || strings.ToLower(h) != d.nodeName || string(d.root) != "/" {
		args["hostname-override"] = d.nodeName
	}
	if len(nr.Taints) > 0 {
		var ts []string
		for _, t := range nr.Taints {
			s := t.Key
			if t.Value != "" {
				s += "=" + t.Value
			}
			ts = append(ts, s+":"+string(t.Effect))
		}
		args["register-with-taints"] = strings.Join(ts, ",")
	}
	for _, a := range nr.KubeletExtraArgs {
		args[a.Name] = a.Value
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(args)) {
		parts = append(parts, "--"+k+"="+args[k])
	}
	return fmt.Sprintf("KUBELET_KUBEADM_ARGS=%q\n", strings.Join(parts, " "))
}

// checkExistingNode refuses to join over a Ready Node of the same name, as kubeadm does, unless
// takeOver proves its kubelet gone; once it passed, it passes without asking again (config and tls-bootstrap both need it).
func (d *data) checkExistingNode(ctx context.Context, c kubernetes.Interface) error {
	if d.nodeChecked {
		return nil
	}
	if err := d.checkNode(ctx, c); err != nil {
		return err
	}
	d.nodeChecked = true
	return nil
}

// tokenPropagation is how long a 401 for the bootstrap token is taken for a token the API server has
// not seen yet: its token authenticator reads Secrets through an informer, so a token created a moment
// before the join (file discovery does not wait for cluster-info's signature) can be refused at first.
const tokenPropagation = 10 * time.Second

func (d *data) checkNode(ctx context.Context, c kubernetes.Interface) error {
	var n *corev1.Node
	var err error
	_ = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, tokenPropagation, true, func(ctx context.Context) (bool, error) {
		n, err = c.CoreV1().Nodes().Get(ctx, d.nodeName, metav1.GetOptions{})
		return !apierrors.IsUnauthorized(err), nil
	})
	switch {
	case apierrors.IsUnauthorized(err):
		return fmt.Errorf("the API server refuses the TLS bootstrap token (%v): check the token and that it has not expired or been deleted (kubeadm token list)", err)
	case apierrors.IsNotFound(err):
		return nil
	case apierrors.IsForbidden(err):
		d.printf("[kubelet-start] WARNING: cannot check for an existing Node %q (%v); kubeadm's ClusterRoleBinding kubeadm:get-nodes allows it", d.nodeName, err)
		return nil
	case err != nil:
		return fmt.Errorf("cannot check for an existing Node %q: %w", d.nodeName, err)
	}
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
			// kubeadm refuses here; a machine of the boot server takes the name back once its old
			// kubelet is proven gone (takeover.go).
			return d.takeOver(ctx, c)
		}
	}
	d.printf("[kubelet-start] A Node named %q exists but is not Ready: this node takes its place", d.nodeName)
	return nil
}

// runTLSBootstrap gets the kubelet's client certificate and writes it with kubelet.conf. Nothing
// under /etc/kubernetes or the kubelet's pki is written unless the certificate was issued.
func runTLSBootstrap(ctx context.Context, d *data) error {
	c, err := d.bootstrapClient(ctx)
	if err != nil {
		return err
	}
	if err := d.checkExistingNode(ctx, c); err != nil {
		return err
	}
	if d.dryRun() {
		name, err := d.loadKey()
		if err != nil {
			return err
		}
		d.printf("[dryrun] Would create the certificate signing request %s for system:node:%s (signer %s) and wait for it", name, d.nodeName, tlsbootstrap.SignerName)
		nodefiles.Print(d.out, d.credentialFiles(nil)...)
		return nil
	}
	if err := d.sendCSR(ctx, c); err != nil {
		return err
	}
	certPEM, csrName, err := d.awaitCSR(ctx)
	d.csrName = csrName
	if err != nil {
		return err
	}
	d.certPEM = certPEM
	if err := d.root.Write(d.credentialFiles(certPEM)...); err != nil {
		return err
	}
	// The key now lives in the pem; the bootstrap copy is no longer needed.
	_ = os.Remove(d.root.Join(nodefiles.BootstrapKey))
	d.printf("[kubelet-start] Certificate issued (%s); wrote %s", csrName, nodefiles.KubeletConf)
	if d.opts.RegisterNode {
		// In the background: the phase ends with kubelet.conf; Run waits for it before returning.
		d.registering = make(chan struct{})
		go func() { defer close(d.registering); d.registerNode(ctx) }()
	}
	return nil
}

// credentialFiles are the kubelet's client pem (cert + key, as the kubelet's certificate store keeps
// it), its "current" symlink, and kubelet.conf pointing at it — written last.
func (d *data) credentialFiles(certPEM []byte) []nodefiles.File {
	pemName := fmt.Sprintf("kubelet-client-%s.pem", time.Now().UTC().Format("2006-01-02-15-04-05"))
	pem := append(append([]byte{}, certPEM...), d.keyPEM...)
	return []nodefiles.File{
		{Path: filepath.Join(nodefiles.KubeletPKI, pemName), Data: pem, Mode: 0o600, Secret: true},
		{Path: nodefiles.KubeletClientCurrent, Link: pemName},
		{Path: nodefiles.KubeletConf, Data: d.kubeletConf(), Mode: 0o600, Secret: true},
	}
}

// kubeletConf points the kubelet at the discovered API server or, on a control-plane node, at its own
// (kubeadm's ControlPlaneKubeletLocalMode: the kubelet starts the local static pods and talks to them).
func (d *data) kubeletConf() []byte {
	server := d.disc.Server
	if d.cfg.ControlPlane != nil {
		server, _ = d.localURL() // checked in prepare
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["default-cluster"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: d.disc.CAData}
	cfg.AuthInfos["default-auth"] = &clientcmdapi.AuthInfo{ClientCertificate: nodefiles.KubeletClientCurrent, ClientKey: nodefiles.KubeletClientCurrent}
	cfg.Contexts["default-context"] = &clientcmdapi.Context{Cluster: "default-cluster", AuthInfo: "default-auth", Namespace: "default"}
	cfg.CurrentContext = "default-context"
	b, err := clientcmd.Write(*cfg)
	if err != nil {
		panic(err) // only fails on unencodable input, which this is not
	}
	return b
}

// runKubeletStart starts the kubelet through systemd and waits until its Node exists.
func runKubeletStart(ctx context.Context, d *data) error {
	if d.dryRun() {
		d.printf("[dryrun] Would enable and restart %s through systemd and wait for Node %q", kubeletstart.Unit, d.nodeName)
		return nil
	}
	d.printf("[kubelet-start] Starting the kubelet")
	tctx, cancel := context.WithTimeout(ctx, d.cfg.KubeletHealthCheckTimeout())
	defer cancel()
	if err := kubeletstart.Start(tctx); err != nil {
		return err
	}
	if d.cfg.ControlPlane != nil {
		// Its API server is one of the static pods it starts, after etcd-join: kubelet-wait-bootstrap waits.
		return nil
	}
	d.printf("[kubelet-start] Waiting for the kubelet to register Node %q", d.nodeName)
	return d.waitNode(tctx)
}

func (d *data) waitNode(ctx context.Context) error {
	kc, err := clientcmd.LoadFromFile(d.root.Join(nodefiles.KubeletConf))
	if err != nil {
		return err
	}
	// kubelet.conf names its credentials by their paths on the node.
	for _, a := range kc.AuthInfos {
		if a.ClientCertificate != "" {
			a.ClientCertificate = d.root.Join(a.ClientCertificate)
		}
		if a.ClientKey != "" {
			a.ClientKey = d.root.Join(a.ClientKey)
		}
	}
	cfg, err := clientcmd.NewDefaultClientConfig(*kc, nil).ClientConfig()
	if err != nil {
		return err
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	for {
		if _, err := c.CoreV1().Nodes().Get(ctx, d.nodeName, metav1.GetOptions{}); err == nil {
			d.printf("[kubelet-start] Node %q registered", d.nodeName)
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the kubelet did not register Node %q in time: see `journalctl -u kubelet`", d.nodeName)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

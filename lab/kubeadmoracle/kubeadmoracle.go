// Package kubeadmoracle runs the real kubeadm (v1.37.2, built by lab/build-k8s.sh) to render the files
// it would write on a control-plane node, so tests can compare what the agent writes with what kubeadm
// writes for the same ClusterConfiguration. kubeadm runs chrooted (its --rootfs flag) into a temporary
// directory: the host's /etc/kubernetes and /var/lib/etcd are never touched.
package kubeadmoracle

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"sigs.k8s.io/yaml"
)

// Node is the control-plane node kubeadm renders for.
type Node struct {
	// Name is the node's name (the etcd member's name, the apiserver certificate's DNS name).
	Name string
	// AdvertiseAddress is the node's apiserver and etcd address. kubeadm refuses loopback addresses
	// unless lo carries a global one.
	AdvertiseAddress string
	// BindPort is the apiserver's port; default 6443.
	BindPort int
}

// Manifests runs `kubeadm init phase control-plane all` and `kubeadm init phase etcd local` for cluster
// (a kubeadm.k8s.io/v1beta4 ClusterConfiguration, e.g. kubeadm-config's) and node, and returns the static
// Pod manifests by file name: etcd.yaml, kube-apiserver.yaml, kube-controller-manager.yaml,
// kube-scheduler.yaml. The etcd manifest is the first member's (initial-cluster is this node alone);
// a joining member's lists every member and adds --initial-cluster-state=existing.
func Manifests(ctx context.Context, kubeadm string, cluster []byte, node Node) (map[string][]byte, error) {
	root, err := newRoot(cluster, node)
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(root)
	for _, phase := range [][]string{{"control-plane", "all"}, {"etcd", "local"}} {
		if err := run(ctx, kubeadm, root, phase...); err != nil {
			return nil, err
		}
	}
	return readDir(filepath.Join(root, "etc/kubernetes/manifests"))
}

// Kubeconfigs runs `kubeadm init phase kubeconfig` for admin, controller-manager and scheduler (the
// ones a control-plane join writes) with the cluster's CA from caDir (ca.crt, ca.key), and returns them
// by file name. Each holds a new client certificate: compare everything but the credentials.
func Kubeconfigs(ctx context.Context, kubeadm string, cluster []byte, node Node, caDir string) (map[string][]byte, error) {
	root, err := newRoot(cluster, node)
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(root)
	var cc struct {
		CertificatesDir string `json:"certificatesDir"`
	}
	if err := yaml.Unmarshal(cluster, &cc); err != nil {
		return nil, fmt.Errorf("kubeadmoracle: ClusterConfiguration: %w", err)
	}
	if cc.CertificatesDir == "" {
		cc.CertificatesDir = "/etc/kubernetes/pki"
	}
	pki := filepath.Join(root, cc.CertificatesDir)
	if err := os.MkdirAll(pki, 0o700); err != nil {
		return nil, err
	}
	for _, f := range []string{"ca.crt", "ca.key"} {
		b, err := os.ReadFile(filepath.Join(caDir, f))
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(pki, f), b, 0o600); err != nil {
			return nil, err
		}
	}
	for _, name := range []string{"admin", "controller-manager", "scheduler"} {
		if err := run(ctx, kubeadm, root, "kubeconfig", name); err != nil {
			return nil, err
		}
	}
	return readDir(filepath.Join(root, "etc/kubernetes"))
}

// newRoot makes the directory kubeadm is chrooted into, with /kubeadm.yaml: an InitConfiguration for
// node and cluster.
func newRoot(cluster []byte, node Node) (string, error) {
	if node.Name == "" || net.ParseIP(node.AdvertiseAddress) == nil {
		return "", errors.New("kubeadmoracle: Node needs a Name and an AdvertiseAddress that is an IP")
	}
	if node.BindPort == 0 {
		node.BindPort = 6443
	}
	root, err := os.MkdirTemp("", "kubeadmoracle-")
	if err != nil {
		return "", err
	}
	init := fmt.Sprintf(`apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: %s
  bindPort: %d
nodeRegistration:
  name: %s
  criSocket: unix:///run/containerd/containerd.sock
---
`, node.AdvertiseAddress, node.BindPort, node.Name)
	if err := os.WriteFile(filepath.Join(root, "kubeadm.yaml"), append([]byte(init), cluster...), 0o600); err != nil {
		os.RemoveAll(root)
		return "", err
	}
	return root, nil
}

// run runs `kubeadm --rootfs root init phase args... --config /kubeadm.yaml`.
func run(ctx context.Context, kubeadm, root string, args ...string) error {
	argv := append([]string{"--rootfs", root, "init", "phase"}, args...)
	argv = append(argv, "--config", "/kubeadm.yaml")
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, kubeadm, argv...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("kubeadm init phase %s: %w\n%s", strings.Join(args, " "), err, out.Bytes())
	}
	return nil
}

// readDir returns the regular files directly in dir by name.
func readDir(dir string) (map[string][]byte, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		out[e.Name()] = b
	}
	return out, nil
}

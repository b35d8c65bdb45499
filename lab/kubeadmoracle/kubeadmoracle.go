// Package kubeadmoracle runs the real kubeadm (v1.37.2, built by lab/build-k8s.sh) to render the files
// it would write on a control-plane node, so tests can compare what the agent writes with what kubeadm
// writes for the same ClusterConfiguration (Manifests, Kubeconfigs: `kubeadm init phase`), or for the
// same join against a running cluster (JoinPhase: `kubeadm join phase`, e.g. control-plane-prepare).
// kubeadm runs chrooted (its --rootfs flag) into a temporary directory: the host's /etc/kubernetes and
// /var/lib/etcd are never touched.
package kubeadmoracle

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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
	_, err := runIn(ctx, kubeadm, root, "init", "/kubeadm.yaml", args...)
	return err
}

// runIn runs `kubeadm --rootfs root <cmd> phase args... --config config` and returns its output.
func runIn(ctx context.Context, kubeadm, root, cmdName, config string, args ...string) (string, error) {
	argv := append([]string{"--rootfs", root, cmdName, "phase"}, args...)
	argv = append(argv, "--config", config)
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, kubeadm, argv...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("kubeadm %s phase %s: %w\n%s", cmdName, strings.Join(args, " "), err, out.Bytes())
	}
	return out.String(), nil
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

// Join is a control-plane join of Node to a running cluster, as `kubeadm join --control-plane` is
// given it.
type Join struct {
	// Endpoint is the apiserver's host:port (the join's apiServerEndpoint).
	Endpoint string
	// Token is the bootstrap token; CACertHash the CA pin ("sha256:…").
	Token, CACertHash string
	// CertificateKey is the hex key of the kubeadm-certs Secret.
	CertificateKey string
	Node           Node
}

// JoinPhase runs the real `kubeadm join phase <phase...>` for j, e.g. ("control-plane-prepare", "all")
// or ("preflight"), with a JoinConfiguration (so the token and the certificate key stay off the command
// line), chrooted into a temporary directory. It returns the files kubeadm wrote, by their path under
// the root ("etc/kubernetes/pki/ca.crt", "etc/kubernetes/manifests/kube-apiserver.yaml"), and kubeadm's
// output. A kubeadm failure is an error that carries its output: kubeadm's own words for a refusal.
// preflight runs with --ignore-preflight-errors=all (the root holds no container runtime, kubelet or
// tools), so only the refusals kubeadm cannot ignore remain, e.g. a cluster without controlPlaneEndpoint.
// Phases that change the cluster (etcd-join, mark-control-plane) are not for this.
func JoinPhase(ctx context.Context, kubeadm string, j Join, phase ...string) (map[string][]byte, string, error) {
	if j.Node.Name == "" || net.ParseIP(j.Node.AdvertiseAddress) == nil {
		return nil, "", errors.New("kubeadmoracle: Node needs a Name and an AdvertiseAddress that is an IP")
	}
	if j.Node.BindPort == 0 {
		j.Node.BindPort = 6443
	}
	root, err := os.MkdirTemp("", "kubeadmoracle-")
	if err != nil {
		return nil, "", err
	}
	defer os.RemoveAll(root)
	cfg := JoinConfig(j)
	const cfgName = "join.yaml"
	if err := os.WriteFile(filepath.Join(root, cfgName), cfg, 0o600); err != nil {
		return nil, "", err
	}
	args := phase
	if len(phase) > 0 && phase[0] == "preflight" {
		args = append(slices.Clone(phase), "--ignore-preflight-errors=all")
	}
	out, err := runIn(ctx, kubeadm, root, "join", "/"+cfgName, args...)
	if err != nil {
		return nil, out, err
	}
	files := map[string][]byte{}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil || rel == cfgName {
			return err
		}
		files[rel], err = os.ReadFile(p)
		return err
	})
	return files, out, err
}

// JoinConfig is the JoinConfiguration (v1beta4) of j that `kubeadm join --config` is given: the token
// and the certificate key are in it, so keep it 0600 and out of logs. A zero BindPort is 6443.
func JoinConfig(j Join) []byte {
	if j.Node.BindPort == 0 {
		j.Node.BindPort = 6443
	}
	return []byte(fmt.Sprintf(`apiVersion: kubeadm.k8s.io/v1beta4
kind: JoinConfiguration
discovery:
  bootstrapToken:
    apiServerEndpoint: %q
    token: %q
    caCertHashes:
    - %q
nodeRegistration:
  name: %q
  criSocket: unix:///run/containerd/containerd.sock
controlPlane:
  localAPIEndpoint:
    advertiseAddress: %q
    bindPort: %d
  certificateKey: %q
`, j.Endpoint, j.Token, j.CACertHash, j.Node.Name, j.Node.AdvertiseAddress, j.Node.BindPort, j.CertificateKey))
}

package kubeadmoracle

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/keyutil"

	"github.com/pxejoin/pxejoin/lab/controlplane"
	"github.com/pxejoin/pxejoin/lab/testenv"
)

const cluster = `apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: v1.37.2
controlPlaneEndpoint: 10.77.9.1:6443
certificatesDir: /etc/kubernetes/pki
networking:
  serviceSubnet: 10.96.0.0/12
  podSubnet: 10.244.0.0/16
etcd:
  local:
    dataDir: /var/lib/etcd
`

// TestManifests renders a second control-plane node's manifests with the real kubeadm, and checks they
// are for that node and that the host's /etc/kubernetes stayed as it was.
func TestManifests(t *testing.T) {
	kubeadm := requireKubeadm(t)
	_, hostBefore := os.Stat("/etc/kubernetes/manifests/etcd.yaml")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	node := Node{Name: "cp2", AdvertiseAddress: "10.77.9.2"}
	m, err := Manifests(ctx, kubeadm, []byte(cluster), node)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"etcd.yaml": {"kubeadm.kubernetes.io/etcd.advertise-client-urls: https://10.77.9.2:2379",
			"--initial-cluster=cp2=https://10.77.9.2:2380", "--name=cp2", "image: registry.k8s.io/etcd:"},
		"kube-apiserver.yaml": {"--advertise-address=10.77.9.2", "--etcd-servers=https://127.0.0.1:2379",
			"kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint: 10.77.9.2:6443", "image: registry.k8s.io/kube-apiserver:v1.37.2"},
		"kube-controller-manager.yaml": {"--kubeconfig=/etc/kubernetes/controller-manager.conf", "--cluster-signing-key-file=/etc/kubernetes/pki/ca.key"},
		"kube-scheduler.yaml":          {"--kubeconfig=/etc/kubernetes/scheduler.conf"},
	}
	if len(m) != len(want) {
		t.Errorf("manifests %d, want %d", len(m), len(want))
	}
	for name, subs := range want {
		for _, s := range subs {
			if !strings.Contains(string(m[name]), s) {
				t.Errorf("%s lacks %q:\n%s", name, s, m[name])
			}
		}
	}
	if _, after := os.Stat("/etc/kubernetes/manifests/etcd.yaml"); (hostBefore == nil) != (after == nil) {
		t.Fatal("kubeadm changed the host's /etc/kubernetes/manifests")
	}
	if _, err := Manifests(ctx, kubeadm, []byte(cluster), Node{Name: "cp2"}); err == nil {
		t.Fatal("a node without an address was rendered")
	}
}

// TestKubeconfigs renders admin.conf, controller-manager.conf and scheduler.conf with a given CA.
func TestKubeconfigs(t *testing.T) {
	kubeadm := requireKubeadm(t)
	caDir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := certutil.NewSelfSignedCACert(certutil.Config{CommonName: "kubernetes"}, key)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := keyutil.MarshalPrivateKeyToPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw})
	if err := os.WriteFile(filepath.Join(caDir, "ca.crt"), caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(caDir, "ca.key"), kp, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kc, err := Kubeconfigs(ctx, kubeadm, []byte(cluster), Node{Name: "cp2", AdvertiseAddress: "10.77.9.2"}, caDir)
	if err != nil {
		t.Fatal(err)
	}
	// admin.conf dials the controlPlaneEndpoint; the components dial their own node's apiserver.
	for name, server := range map[string]string{"admin.conf": "https://10.77.9.1:6443",
		"controller-manager.conf": "https://10.77.9.2:6443", "scheduler.conf": "https://10.77.9.2:6443"} {
		cfg, err := clientcmd.Load(kc[name])
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		cl := cfg.Clusters[cfg.Contexts[cfg.CurrentContext].Cluster]
		if cl.Server != server || string(cl.CertificateAuthorityData) != string(caPEM) {
			t.Errorf("%s: server %s, want %s (CA the same: %v)", name, cl.Server, server, string(cl.CertificateAuthorityData) == string(caPEM))
		}
	}
	if len(kc) != 3 {
		t.Errorf("kubeconfigs %d, want 3", len(kc))
	}
}

// requireKubeadm skips under -short (kubeadm chroots: root) and fails without the kubeadm binary.
func requireKubeadm(t *testing.T) string {
	t.Helper()
	testenv.RequireRoot(t)
	p := filepath.Join(testenv.RequireK8s(t), "kubeadm")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%v: run make k8s (or make test), or set PXEJOIN_K8S_BIN", err)
	}
	return p
}

// TestJoinPhase runs the real kubeadm's control-plane join phases against the kubeadm-shaped lab
// control plane: control-plane-prepare writes the node's PKI (the shared CAs and keys downloaded from
// kubeadm-certs), kubeconfigs and manifests; a wrong certificate key and a cluster without
// controlPlaneEndpoint get kubeadm's refusals.
func TestJoinPhase(t *testing.T) {
	kubeadm := requireKubeadm(t)
	cp, n := controlplane.StartKubeadm(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tok, err := cp.CreateToken(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.WaitSigned(ctx, tok, time.Minute); err != nil {
		t.Fatal(err)
	}
	node := Node{Name: "cp2", AdvertiseAddress: fmt.Sprintf("10.77.%d.2", n.Subnet)}
	j := Join{Endpoint: cp.Endpoint(), Token: tok, CACertHash: cp.CAPin(), CertificateKey: cp.CertificateKey(), Node: node}

	files, out, err := JoinPhase(ctx, kubeadm, j, "control-plane-prepare", "all")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for name := range files {
		names = append(names, name)
	}
	if len(files) != 28 {
		t.Errorf("%d files, want 22 in pki, 3 kubeconfigs, 3 manifests: %v", len(files), names)
	}
	for _, shared := range []string{"ca.crt", "ca.key", "sa.key", "sa.pub", "front-proxy-ca.key", "etcd/ca.key"} {
		disk, err := os.ReadFile(filepath.Join(cp.CertificatesDir(), shared))
		if err != nil {
			t.Fatal(err)
		}
		if got := files["etc/kubernetes/pki/"+shared]; string(got) != string(disk) {
			t.Errorf("%s: not the cluster's", shared)
		}
	}
	if m := string(files["etc/kubernetes/manifests/kube-apiserver.yaml"]); !strings.Contains(m, "--advertise-address="+node.AdvertiseAddress) {
		t.Errorf("kube-apiserver.yaml:\n%s", m)
	}
	if strings.Contains(out, tok) || strings.Contains(out, cp.CertificateKey()) {
		t.Error("kubeadm's output holds a secret")
	}

	bad := j
	bad.CertificateKey = strings.Repeat("ab", 32)
	if _, _, err := JoinPhase(ctx, kubeadm, bad, "control-plane-prepare", "download-certs"); err == nil || !strings.Contains(err.Error(), "message authentication failed") {
		t.Errorf("wrong certificate key: %v", err)
	}

	if _, _, err := JoinPhase(ctx, kubeadm, j, "preflight"); err != nil {
		t.Fatalf("preflight: %v", err)
	}
	if err := cp.SetControlPlaneEndpoint(ctx, false); err != nil {
		t.Fatal(err)
	}
	_, _, err = JoinPhase(ctx, kubeadm, j, "preflight")
	if err == nil || !strings.Contains(err.Error(), "doesn't have a stable controlPlaneEndpoint address") {
		t.Errorf("preflight without controlPlaneEndpoint: %v", err)
	}
}

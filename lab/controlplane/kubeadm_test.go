package controlplane

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// TestKubeadm starts the kubeadm-shaped control plane on a bridge address and checks what a
// control-plane join reads: one etcd member over TLS (and none without a client certificate), the
// kubeadm-certs Secret kubeadm wrote (decrypting with CertificateKey), its RBAC, kubeadm-config, the
// etcd Pod's annotation, and that the Secret expires and comes back.
func TestKubeadm(t *testing.T) {
	bin := RequireKubeadm(t)
	cp, _ := StartKubeadm(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	if b, err := cp.Admin().Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx); err != nil || string(b) != "ok" {
		t.Fatalf("/readyz: %q, %v", b, err)
	}

	// etcd: one member named after the node, TLS with client certificates only.
	pki := cp.CertificatesDir()
	etcdctl := func(args ...string) ([]byte, error) {
		base := []string{"--endpoints=" + strings.Join(cp.EtcdEndpoints(), ","), "--cacert=" + filepath.Join(pki, "etcd/ca.crt"), "--dial-timeout=5s"}
		return exec.CommandContext(ctx, filepath.Join(bin, "etcdctl"), append(base, args...)...).CombinedOutput()
	}
	out, err := etcdctl("--cert="+filepath.Join(pki, "etcd/healthcheck-client.crt"), "--key="+filepath.Join(pki, "etcd/healthcheck-client.key"), "member", "list", "-w", "json")
	if err != nil {
		t.Fatalf("etcdctl member list: %v\n%s", err, out)
	}
	var members struct {
		Members []struct {
			Name       string   `json:"name"`
			ClientURLs []string `json:"clientURLs"`
		} `json:"members"`
	}
	if err := json.Unmarshal(out, &members); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(members.Members) != 1 || members.Members[0].Name != "cp1" || !slices.Equal(members.Members[0].ClientURLs, cp.EtcdEndpoints()) {
		t.Fatalf("members %+v, want one, cp1 at %v", members.Members, cp.EtcdEndpoints())
	}
	// etcd requires a client certificate (--client-cert-auth, and implied by --trusted-ca-file).
	if out, err := etcdctl("--command-timeout=3s", "member", "list"); err == nil {
		t.Fatalf("etcd answered a client without a certificate: %s", out)
	}

	// kubeadm-certs, as kubeadm wrote it, decrypts with the certificate key to the files on disk.
	admin := cp.Admin()
	s, err := admin.CoreV1().Secrets("kube-system").Get(ctx, CertsSecret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"ca.crt", "ca.key", "etcd-ca.crt", "etcd-ca.key", "front-proxy-ca.crt", "front-proxy-ca.key", "sa.key", "sa.pub"}
	var keys []string
	for k := range s.Data {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if !slices.Equal(keys, want) {
		t.Fatalf("%s keys %v, want %v", CertsSecret, keys, want)
	}
	plain := decrypt(t, cp.CertificateKey(), s.Data["etcd-ca.key"])
	if disk, _ := os.ReadFile(filepath.Join(pki, "etcd/ca.key")); string(plain) != string(disk) {
		t.Fatal("etcd-ca.key does not decrypt to pki/etcd/ca.key")
	}
	if len(s.OwnerReferences) != 1 || !strings.HasPrefix(s.OwnerReferences[0].Name, "bootstrap-token-") {
		t.Fatalf("owners %+v, want the bootstrap token", s.OwnerReferences)
	}
	rb, err := admin.RbacV1().RoleBindings("kube-system").Get(ctx, "kubeadm:kubeadm-certs", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rb.Subjects) != 1 || rb.Subjects[0].Name != "system:bootstrappers:kubeadm:default-node-token" {
		t.Fatalf("kubeadm:kubeadm-certs binds %+v", rb.Subjects)
	}

	// kubeadm-config and the etcd Pod a join reads.
	cc := clusterConfig(t, cp)
	if cc["controlPlaneEndpoint"] != cp.Endpoint() || cc["certificatesDir"] != NodeCertificatesDir || cc["kubernetesVersion"] != Version {
		t.Fatalf("ClusterConfiguration: %v", cc)
	}
	pods, err := admin.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "component=etcd,tier=control-plane"})
	if err != nil {
		t.Fatal(err)
	}
	if len(pods.Items) != 1 || pods.Items[0].Annotations[EtcdClientURLsAnnotation] != cp.EtcdEndpoints()[0] {
		t.Fatalf("etcd pods: %+v", pods.Items)
	}
	api, err := admin.CoreV1().Pods("kube-system").Get(ctx, "kube-apiserver-cp1", metav1.GetOptions{})
	if err != nil || api.Annotations[APIServerEndpointAnnotation] != cp.Endpoint() {
		t.Fatalf("kube-apiserver-cp1: %v %v", api.Annotations, err)
	}
	if err := cp.SetControlPlaneEndpoint(ctx, false); err != nil {
		t.Fatal(err)
	}
	if cc := clusterConfig(t, cp); cc["controlPlaneEndpoint"] != nil || cc["certificatesDir"] != NodeCertificatesDir {
		t.Fatalf("without controlPlaneEndpoint: %v", cc)
	}
	if err := cp.SetControlPlaneEndpoint(ctx, true); err != nil {
		t.Fatal(err)
	}
	if cc := clusterConfig(t, cp); cc["controlPlaneEndpoint"] != cp.Endpoint() {
		t.Fatalf("restored: %v", cc)
	}

	// Expiry: the owning token expires, the token cleaner and the garbage collector remove the Secret.
	if err := cp.ExpireCerts(ctx, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := cp.WaitCertsGone(ctx, 90*time.Second); err != nil {
		t.Fatalf("%v\n%s", err, cp.LogTail("kube-controller-manager", 20))
	}
	if err := cp.UploadCerts(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CoreV1().Secrets("kube-system").Get(ctx, CertsSecret, metav1.GetOptions{}); err != nil {
		t.Fatalf("after UploadCerts: %v", err)
	}

	// The certificate key is in no daemon's or kubeadm's log.
	logs, _ := filepath.Glob(filepath.Join(cp.opts.StateDir, "logs", "*.log"))
	if len(logs) != 5 {
		t.Errorf("logs %v, want etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubeadm", logs)
	}
	for _, l := range logs {
		if b, _ := os.ReadFile(l); strings.Contains(string(b), cp.CertificateKey()) {
			t.Errorf("%s holds the certificate key", l)
		}
	}
}

func clusterConfig(t *testing.T, cp *ControlPlane) map[string]any {
	t.Helper()
	cm, err := cp.Admin().CoreV1().ConfigMaps("kube-system").Get(context.Background(), "kubeadm-config", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := yaml.Unmarshal([]byte(cm.Data["ClusterConfiguration"]), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// decrypt opens one kubeadm-certs value: AES-256-GCM, nonce ‖ ciphertext ‖ tag.
func decrypt(t *testing.T, hexKey string, v []byte) []byte {
	t.Helper()
	key, err := hex.DecodeString(hexKey)
	if err != nil {
		t.Fatal(err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := gcm.Open(nil, v[:gcm.NonceSize()], v[gcm.NonceSize():], nil)
	if err != nil {
		t.Fatalf("decrypting with the certificate key: %v", err)
	}
	return plain
}

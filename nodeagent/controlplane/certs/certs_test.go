package certs

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/keyutil"

	"github.com/pxejoin/pxejoin/internal/joinconfig"
	"github.com/pxejoin/pxejoin/nodeagent/nodefiles"
)

// seal is kubeadm's EncryptBytes: a random nonce, then the GCM ciphertext and tag.
func seal(t *testing.T, key, plain []byte) []byte {
	t.Helper()
	gcm, err := newGCM(key)
	if err != nil {
		t.Fatal(err)
	}
	nonce := make([]byte, gcm.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		t.Fatal(err)
	}
	return gcm.Seal(nonce, nonce, plain, nil)
}

func newCA(t *testing.T, cn string) (*CA, []byte, []byte) {
	t.Helper()
	key, err := NewKey("ECDSA-P256")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := certutil.NewSelfSignedCACert(certutil.Config{CommonName: cn}, key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _ := certutil.EncodeCertificates(cert)
	keyPEM, _ := keyutil.MarshalPrivateKeyToPEM(key)
	return &CA{Cert: cert, Key: key}, certPEM, keyPEM
}

// kubeadmCertsSecret is what `kubeadm init phase upload-certs` writes for a stacked etcd.
func kubeadmCertsSecret(t *testing.T, key []byte) (*corev1.Secret, map[string][]byte) {
	t.Helper()
	plain := map[string][]byte{}
	for _, ca := range []string{"ca", "front-proxy-ca", "etcd-ca"} {
		_, c, k := newCA(t, ca)
		plain[ca+".crt"], plain[ca+".key"] = c, k
	}
	sa, err := NewKey("RSA-2048")
	if err != nil {
		t.Fatal(err)
	}
	plain["sa.key"], _ = keyutil.MarshalPrivateKeyToPEM(sa)
	der, _ := x509.MarshalPKIXPublicKey(sa.Public())
	plain["sa.pub"] = pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	s := &corev1.Secret{Data: map[string][]byte{}}
	for k, v := range plain {
		s.Data[k] = seal(t, key, v)
	}
	return s, plain
}

func TestDecrypt(t *testing.T) {
	key := make([]byte, 32)
	rand.Read(key)
	secret, plain := kubeadmCertsSecret(t, key)
	cc, _ := joinconfig.ParseClusterConfiguration([]byte("apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\n"))

	files, err := Decrypt(secret, hex.EncodeToString(key), cc)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		secretKey string
		mode      os.FileMode
	}{
		"/etc/kubernetes/pki/ca.crt": {"ca.crt", 0o644}, "/etc/kubernetes/pki/ca.key": {"ca.key", 0o600},
		"/etc/kubernetes/pki/front-proxy-ca.crt": {"front-proxy-ca.crt", 0o644}, "/etc/kubernetes/pki/front-proxy-ca.key": {"front-proxy-ca.key", 0o600},
		"/etc/kubernetes/pki/etcd/ca.crt": {"etcd-ca.crt", 0o644}, "/etc/kubernetes/pki/etcd/ca.key": {"etcd-ca.key", 0o600},
		"/etc/kubernetes/pki/sa.pub": {"sa.pub", 0o644}, "/etc/kubernetes/pki/sa.key": {"sa.key", 0o600},
	}
	if len(files) != len(want) {
		t.Fatalf("got %d files, want %d", len(files), len(want))
	}
	for _, f := range files {
		w, ok := want[f.Path]
		if !ok {
			t.Errorf("unexpected file %s", f.Path)
			continue
		}
		if string(f.Data) != string(plain[w.secretKey]) || f.Mode != w.mode || f.Secret != (w.mode == 0o600) {
			t.Errorf("%s: mode %v secret %v, content matches %v", f.Path, f.Mode, f.Secret, string(f.Data) == string(plain[w.secretKey]))
		}
	}

	refusals := []struct {
		name   string
		key    string
		secret func() *corev1.Secret
		want   string
	}{
		{"wrong key", hex.EncodeToString(make([]byte, 32)), func() *corev1.Secret { return secret }, "not the key this Secret was encrypted with"},
		{"short key", "abcd", func() *corev1.Secret { return secret }, "64 hexadecimal digits"},
		{"not hex", strings.Repeat("zz", 32), func() *corev1.Secret { return secret }, "64 hexadecimal digits"},
		{"entry missing", hex.EncodeToString(key), func() *corev1.Secret {
			s := secret.DeepCopy()
			delete(s.Data, "etcd-ca.key")
			return s
		}, "does not include etcd-ca.key"},
		{"entry truncated", hex.EncodeToString(key), func() *corev1.Secret {
			s := secret.DeepCopy()
			s.Data["sa.key"] = s.Data["sa.key"][:10]
			return s
		}, "cannot decrypt sa.key"},
		{"entry not PEM", hex.EncodeToString(key), func() *corev1.Secret {
			s := secret.DeepCopy()
			s.Data["sa.pub"] = seal(t, key, []byte("hello"))
			return s
		}, "neither a PEM key nor a certificate"},
	}
	for _, r := range refusals {
		t.Run(r.name, func(t *testing.T) {
			files, err := Decrypt(r.secret(), r.key, cc)
			if err == nil || !strings.Contains(err.Error(), r.want) {
				t.Fatalf("err = %v, want %q", err, r.want)
			}
			if files != nil {
				t.Errorf("a refusal returned %d files to write", len(files))
			}
			if strings.Contains(err.Error(), r.key) && len(r.key) > 8 {
				t.Errorf("the error shows the key: %v", err)
			}
		})
	}

	// An entry left empty by kubeadm (nothing on disk when it uploaded) is not written.
	s := secret.DeepCopy()
	s.Data["sa.pub"] = nil
	files, err = Decrypt(s, hex.EncodeToString(key), cc)
	if err != nil || len(files) != len(want)-1 {
		t.Fatalf("empty entry: %d files, %v", len(files), err)
	}
}

func TestLeaves(t *testing.T) {
	cc, err := joinconfig.ParseClusterConfiguration([]byte(`apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
controlPlaneEndpoint: cp.example.test:6443
networking: {serviceSubnet: "10.100.0.0/16,fd00::/108", dnsDomain: corp.local}
apiServer: {certSANs: [10.9.9.9, api.example.test]}
etcd: {local: {serverCertSANs: [etcd.example.test], peerCertSANs: [10.8.8.8]}}
`))
	if err != nil {
		t.Fatal(err)
	}
	leaves, err := Leaves(cc, Node{Name: "cp-2", AdvertiseAddress: net.ParseIP("10.0.0.12")})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	byName := map[string]Leaf{}
	for _, l := range leaves {
		names = append(names, l.Name)
		byName[l.Name] = l
	}
	if want := []string{"apiserver", "apiserver-kubelet-client", "front-proxy-client", "etcd-server", "etcd-peer", "etcd-healthcheck-client", "apiserver-etcd-client"}; !slices.Equal(names, want) {
		t.Fatalf("leaves %v, want %v", names, want)
	}
	api := byName["apiserver"].Config.AltNames
	for _, n := range []string{"cp-2", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.corp.local", "cp.example.test", "api.example.test"} {
		if !slices.Contains(api.DNSNames, n) {
			t.Errorf("apiserver lacks DNS name %s: %v", n, api.DNSNames)
		}
	}
	for _, ip := range []string{"10.100.0.1", "10.0.0.12", "10.9.9.9"} {
		if !slices.ContainsFunc(api.IPs, net.ParseIP(ip).Equal) {
			t.Errorf("apiserver lacks IP %s: %v", ip, api.IPs)
		}
	}
	if s := byName["etcd-server"].Config; s.CommonName != "cp-2" || !slices.Contains(s.AltNames.DNSNames, "etcd.example.test") || !slices.Contains(s.AltNames.DNSNames, "localhost") {
		t.Errorf("etcd-server: %+v", s)
	}
	if p := byName["etcd-peer"].Config; !slices.ContainsFunc(p.AltNames.IPs, net.ParseIP("10.8.8.8").Equal) || !slices.ContainsFunc(p.AltNames.IPs, net.ParseIP("127.0.0.1").Equal) {
		t.Errorf("etcd-peer: %+v", p)
	}
	if o := byName["apiserver-kubelet-client"].Config.Organization; !slices.Equal(o, []string{"kubeadm:cluster-admins"}) {
		t.Errorf("apiserver-kubelet-client O=%v", o)
	}

	cc.Etcd = joinconfig.Etcd{External: &joinconfig.ExternalEtcd{Endpoints: []string{"https://e:2379"}}}
	leaves, _ = Leaves(cc, Node{Name: "cp-2", AdvertiseAddress: net.ParseIP("10.0.0.12")})
	if len(leaves) != 3 {
		t.Errorf("external etcd: %d leaves, want 3 (no etcd certificates)", len(leaves))
	}
}

// TestEnsure: a leaf on the node is kept only while it verifies against the CA and carries the
// names asked for.
func TestEnsure(t *testing.T) {
	root := nodefiles.Root(t.TempDir())
	ca, _, _ := newCA(t, "kubernetes")
	now := time.Now()
	cfg := certutil.Config{CommonName: "kube-apiserver", AltNames: certutil.AltNames{DNSNames: []string{"a"}, IPs: []net.IP{net.ParseIP("10.0.0.1")}},
		Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	write := func(is *Issued) {
		if err := root.Write(nodefiles.File{Path: "/pki/apiserver.crt", Data: is.CertPEM}, nodefiles.File{Path: "/pki/apiserver.key", Data: is.KeyPEM, Mode: 0o600}); err != nil {
			t.Fatal(err)
		}
	}
	first, err := Ensure(root, "/pki", "apiserver", ca, cfg, "ECDSA-P256", time.Hour, now)
	if err != nil || first.Reused {
		t.Fatalf("first: reused=%v err=%v", first != nil && first.Reused, err)
	}
	if err := Verify(first.CertPEM, first.KeyPEM, ca, cfg, now); err != nil {
		t.Fatalf("a new certificate does not verify: %v", err)
	}
	write(first)
	again, err := Ensure(root, "/pki", "apiserver", ca, cfg, "ECDSA-P256", time.Hour, now)
	if err != nil || !again.Reused {
		t.Fatalf("a valid certificate was not reused: %v", err)
	}

	more := cfg
	more.AltNames.DNSNames = []string{"a", "b"}
	if is, _ := Ensure(root, "/pki", "apiserver", ca, more, "ECDSA-P256", time.Hour, now); is.Reused {
		t.Error("a certificate lacking a name was reused")
	}
	other, _, _ := newCA(t, "kubernetes")
	if is, _ := Ensure(root, "/pki", "apiserver", other, cfg, "ECDSA-P256", time.Hour, now); is.Reused {
		t.Error("a certificate from another CA was reused")
	}
	if is, _ := Ensure(root, "/pki", "apiserver", ca, cfg, "ECDSA-P256", time.Hour, now.Add(2*time.Hour)); is.Reused {
		t.Error("an expired certificate was reused")
	}
	// A key that is not the certificate's.
	k, _ := NewKey("ECDSA-P256")
	kp, _ := keyutil.MarshalPrivateKeyToPEM(k)
	write(&Issued{CertPEM: first.CertPEM, KeyPEM: kp})
	if is, _ := Ensure(root, "/pki", "apiserver", ca, cfg, "ECDSA-P256", time.Hour, now); is.Reused {
		t.Error("a certificate with a foreign key was reused")
	}
	if _, err := os.Stat(filepath.Join(string(root), "pki")); err != nil {
		t.Fatal(err)
	}
}

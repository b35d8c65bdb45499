package controlplane

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	certutil "k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/keyutil"
)

// certSpec is one certificate of the control plane's PKI.
type certSpec struct {
	name  string // file base name under pki/
	cn    string
	orgs  []string
	ips   []net.IP
	dns   []string
	usage []x509.ExtKeyUsage
}

type authority struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func newKey() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }

func newCA(dir, name, cn string) (*authority, error) {
	key, err := newKey()
	if err != nil {
		return nil, err
	}
	cert, err := certutil.NewSelfSignedCACert(certutil.Config{CommonName: cn}, key)
	if err != nil {
		return nil, err
	}
	if err := writePair(dir, name, cert, key); err != nil {
		return nil, err
	}
	return &authority{cert: cert, key: key}, nil
}

func (ca *authority) issue(dir string, s certSpec) error {
	key, err := newKey()
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: s.cn, Organization: s.orgs},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  s.usage,
		IPAddresses:  s.ips,
		DNSNames:     s.dns,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return err
	}
	return writePair(dir, s.name, cert, key)
}

func writePair(dir, name string, cert *x509.Certificate, key crypto.Signer) error {
	if err := os.WriteFile(filepath.Join(dir, name+".crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o644); err != nil {
		return err
	}
	kp, err := keyutil.MarshalPrivateKeyToPEM(key)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, name+".key"), kp, 0o600)
}

// writePKI creates the CA, front-proxy CA, serving and client certificates and the service-account
// key pair under dir, as kubeadm lays them out.
func writePKI(dir string, ips []net.IP) (*authority, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	ca, err := newCA(dir, "ca", "kubernetes")
	if err != nil {
		return nil, err
	}
	fp, err := newCA(dir, "front-proxy-ca", "front-proxy-ca")
	if err != nil {
		return nil, err
	}
	server := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	client := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	apiIPs := append([]net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.96.0.1")}, ips...)
	specs := []struct {
		ca *authority
		s  certSpec
	}{
		{ca, certSpec{name: "apiserver", cn: "kube-apiserver", ips: apiIPs, usage: server,
			dns: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}}},
		{ca, certSpec{name: "apiserver-kubelet-client", cn: "kube-apiserver-kubelet-client", orgs: []string{"kubeadm:cluster-admins"}, usage: client}},
		{ca, certSpec{name: "admin", cn: "kubernetes-admin", orgs: []string{"system:masters"}, usage: client}},
		{ca, certSpec{name: "controller-manager", cn: "system:kube-controller-manager", usage: client}},
		{fp, certSpec{name: "front-proxy-client", cn: "front-proxy-client", usage: client}},
	}
	for _, s := range specs {
		if err := s.ca.issue(dir, s.s); err != nil {
			return nil, fmt.Errorf("certificate %s: %w", s.s.name, err)
		}
	}
	sa, err := newKey()
	if err != nil {
		return nil, err
	}
	kp, err := keyutil.MarshalPrivateKeyToPEM(sa)
	if err != nil {
		return nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(sa.Public())
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "sa.key"), kp, 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644); err != nil {
		return nil, err
	}
	return ca, nil
}

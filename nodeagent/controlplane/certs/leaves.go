package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math"
	"math/big"
	"net"
	"path"
	"slices"
	"strings"
	"time"

	certutil "k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/keyutil"
	netutils "k8s.io/utils/net"

	"github.com/pxejoin/pxejoin/internal/joinconfig"
	"github.com/pxejoin/pxejoin/nodeagent/nodefiles"
)

// Groups and names kubeadm v1.37 puts in its certificates.
const (
	clusterAdminsGroup = "kubeadm:cluster-admins"
	mastersGroup       = "system:masters"
)

// Node is what the leaves say about this node.
type Node struct {
	Name             string
	AdvertiseAddress net.IP
}

// Leaf is one certificate kubeadm makes on a joining control-plane node.
type Leaf struct {
	// Name is kubeadm's name for it ("apiserver", "etcd-server", …); Base its file name without
	// extension, relative to the certificates directory.
	Name, Base string
	// CA is the base name of the signing CA.
	CA     string
	Config certutil.Config
}

// Leaves lists the certificates kubeadm's certs phase makes on a joining control-plane node (the CAs
// come from download-certs): the etcd ones only with a local etcd.
func Leaves(cc *joinconfig.ClusterConfiguration, n Node) ([]Leaf, error) {
	apiAlt, err := apiserverAltNames(cc, n)
	if err != nil {
		return nil, err
	}
	leaves := []Leaf{
		{Name: "apiserver", Base: "apiserver", CA: "ca", Config: certutil.Config{CommonName: "kube-apiserver", AltNames: apiAlt,
			Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}},
		{Name: "apiserver-kubelet-client", Base: "apiserver-kubelet-client", CA: "ca", Config: certutil.Config{CommonName: "kube-apiserver-kubelet-client",
			Organization: []string{clusterAdminsGroup}, Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}},
		{Name: "front-proxy-client", Base: "front-proxy-client", CA: "front-proxy-ca", Config: certutil.Config{CommonName: "front-proxy-client",
			Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}},
	}
	if cc.Etcd.Local == nil {
		return leaves, nil
	}
	serverAlt := etcdAltNames(n, cc.Etcd.Local.ServerCertSANs)
	peerAlt := etcdAltNames(n, cc.Etcd.Local.PeerCertSANs)
	both := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	return append(leaves,
		Leaf{Name: "etcd-server", Base: "etcd/server", CA: "etcd/ca", Config: certutil.Config{CommonName: n.Name, AltNames: serverAlt, Usages: both}},
		Leaf{Name: "etcd-peer", Base: "etcd/peer", CA: "etcd/ca", Config: certutil.Config{CommonName: n.Name, AltNames: peerAlt, Usages: both}},
		Leaf{Name: "etcd-healthcheck-client", Base: "etcd/healthcheck-client", CA: "etcd/ca", Config: certutil.Config{CommonName: "kube-etcd-healthcheck-client",
			Organization: []string{mastersGroup}, Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}},
		Leaf{Name: "apiserver-etcd-client", Base: "apiserver-etcd-client", CA: "etcd/ca", Config: certutil.Config{CommonName: "kube-apiserver-etcd-client",
			Organization: []string{mastersGroup}, Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}},
	), nil
}

// apiserverAltNames are kubeadm's GetAPIServerAltNames: the node name, the kubernetes Service's names
// and first address, the advertise address, the controlPlaneEndpoint's host and apiServer.certSANs.
func apiserverAltNames(cc *joinconfig.ClusterConfiguration, n Node) (certutil.AltNames, error) {
	// Dual-stack: the kubernetes Service gets its address from the first family.
	subnet, _, _ := strings.Cut(cc.Networking.ServiceSubnet, ",")
	_, svcNet, err := net.ParseCIDR(subnet)
	if err != nil {
		return certutil.AltNames{}, fmt.Errorf("networking.serviceSubnet %q in the cluster's ClusterConfiguration is not a CIDR: %w", cc.Networking.ServiceSubnet, err)
	}
	svcIP, err := netutils.GetIndexedIP(svcNet, 1)
	if err != nil {
		return certutil.AltNames{}, fmt.Errorf("networking.serviceSubnet %s has no first address: %w", subnet, err)
	}
	alt := certutil.AltNames{
		DNSNames: []string{n.Name, "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc." + cc.Networking.DNSDomain},
		IPs:      []net.IP{svcIP, n.AdvertiseAddress},
	}
	if cc.ControlPlaneEndpoint != "" {
		host, _, err := cc.ControlPlaneEndpointHostPort(joinconfig.DefaultAPIServerBindPort)
		if err != nil {
			return certutil.AltNames{}, err
		}
		addSAN(&alt, host)
	}
	for _, s := range cc.APIServer.CertSANs {
		addSAN(&alt, s)
	}
	return alt, nil
}

func etcdAltNames(n Node, extra []string) certutil.AltNames {
	alt := certutil.AltNames{
		DNSNames: []string{n.Name, "localhost"},
		IPs:      []net.IP{n.AdvertiseAddress, net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	for _, s := range extra {
		addSAN(&alt, s)
	}
	return alt
}

func addSAN(alt *certutil.AltNames, s string) {
	if ip := net.ParseIP(s); ip != nil {
		if !slices.ContainsFunc(alt.IPs, ip.Equal) {
			alt.IPs = append(alt.IPs, ip)
		}
	} else if s != "" && !slices.Contains(alt.DNSNames, s) {
		alt.DNSNames = append(alt.DNSNames, s)
	}
}

// CA is a loaded certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// LoadCA reads base.crt and base.key from the certificates directory under root.
func LoadCA(root nodefiles.Root, certDir, base string) (*CA, error) {
	certPEM, err := root.Read(path.Join(certDir, base+".crt"))
	if err != nil {
		return nil, fmt.Errorf("the %s CA certificate is missing (%w): run download-certs with --certificate-key, or copy the shared certificates to this node", base, err)
	}
	keyPEM, err := root.Read(path.Join(certDir, base+".key"))
	if err != nil {
		return nil, fmt.Errorf("the %s CA key is missing (%w): run download-certs with --certificate-key, or copy the shared certificates to this node", base, err)
	}
	certs, err := certutil.ParseCertsPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("%s.crt: %w", base, err)
	}
	k, err := keyutil.ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s.key: %w", base, err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s.key is not a signing key", base)
	}
	if !publicKeysEqual(certs[0].PublicKey, signer.Public()) {
		return nil, fmt.Errorf("%s.key does not belong to %s.crt", base, base)
	}
	return &CA{Cert: certs[0], Key: signer}, nil
}

// Issued is a certificate and its key, PEM-encoded.
type Issued struct {
	CertPEM, KeyPEM []byte
	// Reused is set when the files already on the node were kept.
	Reused bool
}

// Ensure returns the existing certificate and key at base (under certDir) when they verify against ca
// and carry cfg's names and usages, and otherwise a new key and certificate, valid for validity.
func Ensure(root nodefiles.Root, certDir, base string, ca *CA, cfg certutil.Config, algorithm string, validity time.Duration, now time.Time) (*Issued, error) {
	certPEM, cerr := root.Read(path.Join(certDir, base+".crt"))
	keyPEM, kerr := root.Read(path.Join(certDir, base+".key"))
	if cerr == nil && kerr == nil && Verify(certPEM, keyPEM, ca, cfg, now) == nil {
		return &Issued{CertPEM: certPEM, KeyPEM: keyPEM, Reused: true}, nil
	}
	return Issue(ca, cfg, algorithm, validity, now)
}

// Issue makes a new key (kubeadm's encryptionAlgorithm) and a certificate for it signed by ca.
func Issue(ca *CA, cfg certutil.Config, algorithm string, validity time.Duration, now time.Time) (*Issued, error) {
	key, err := NewKey(algorithm)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).SetInt64(math.MaxInt64-1))
	if err != nil {
		return nil, err
	}
	tmpl := x509.Certificate{
		Subject:      pkix.Name{CommonName: cfg.CommonName, Organization: cfg.Organization},
		DNSNames:     cfg.AltNames.DNSNames,
		IPAddresses:  cfg.AltNames.IPs,
		SerialNumber: serial.Add(serial, big.NewInt(1)),
		// As kubeadm: valid from the CA's start, so a node whose clock lags the CA's still accepts it.
		NotBefore:   ca.Cert.NotBefore,
		NotAfter:    now.Add(validity).UTC(),
		KeyUsage:    x509.KeyUsageKeyEncipherment | x509.KeyUsageDigitalSignature,
		ExtKeyUsage: cfg.Usages,
	}
	if _, ok := key.(*ecdsa.PrivateKey); ok {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, fmt.Errorf("signing the certificate for %s: %w", cfg.CommonName, err)
	}
	keyPEM, err := keyutil.MarshalPrivateKeyToPEM(key)
	if err != nil {
		return nil, err
	}
	cert, _ := x509.ParseCertificate(der)
	certPEM, err := certutil.EncodeCertificates(cert)
	if err != nil {
		return nil, err
	}
	return &Issued{CertPEM: certPEM, KeyPEM: keyPEM}, nil
}

// NewKey makes a private key for kubeadm's encryptionAlgorithm (RSA-2048 by default).
func NewKey(algorithm string) (crypto.Signer, error) {
	switch algorithm {
	case "", "RSA-2048":
		return rsa.GenerateKey(rand.Reader, 2048)
	case "RSA-3072":
		return rsa.GenerateKey(rand.Reader, 3072)
	case "RSA-4096":
		return rsa.GenerateKey(rand.Reader, 4096)
	case "ECDSA-P256":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "ECDSA-P384":
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	}
	return nil, fmt.Errorf("encryptionAlgorithm %q in the cluster's ClusterConfiguration is not one of RSA-2048, RSA-3072, RSA-4096, ECDSA-P256, ECDSA-P384", algorithm)
}

// Verify checks that certPEM and keyPEM belong together, chain to ca, are valid at now, and carry
// cfg's subject, names and usages.
func Verify(certPEM, keyPEM []byte, ca *CA, cfg certutil.Config, now time.Time) error {
	certs, err := certutil.ParseCertsPEM(certPEM)
	if err != nil {
		return err
	}
	cert := certs[0]
	k, err := keyutil.ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return err
	}
	signer, ok := k.(crypto.Signer)
	if !ok || !publicKeysEqual(cert.PublicKey, signer.Public()) {
		return errors.New("the key does not belong to the certificate")
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now, KeyUsages: cfg.Usages}); err != nil {
		return err
	}
	if cert.Subject.CommonName != cfg.CommonName || !slices.Equal(cert.Subject.Organization, cfg.Organization) {
		return fmt.Errorf("subject %s is not CN=%s O=%v", cert.Subject, cfg.CommonName, cfg.Organization)
	}
	for _, name := range cfg.AltNames.DNSNames {
		if !slices.Contains(cert.DNSNames, name) {
			return fmt.Errorf("lacks the name %s", name)
		}
	}
	for _, ip := range cfg.AltNames.IPs {
		if !slices.ContainsFunc(cert.IPAddresses, ip.Equal) {
			return fmt.Errorf("lacks the address %s", ip)
		}
	}
	return nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

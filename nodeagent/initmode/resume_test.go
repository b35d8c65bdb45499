package initmode

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	certutil "k8s.io/client-go/util/cert"

	"github.com/pxejoin/pxejoin/internal/diskspec"
	"github.com/pxejoin/pxejoin/internal/pubkeypin"
	"github.com/pxejoin/pxejoin/nodeagent/nodefiles"
)

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newCA(t *testing.T) testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cert, err := certutil.NewSelfSignedCACert(certutil.Config{CommonName: "kubernetes"}, key)
	if err != nil {
		t.Fatal(err)
	}
	return testCA{cert, key}
}

// issue returns a kubelet client certificate (PEM) valid from notBefore to notAfter.
func (ca testCA) issue(t *testing.T, notBefore, notAfter time.Time) []byte {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "system:node:node-1", Organization: []string{"system:nodes"}},
		NotBefore: notBefore, NotAfter: notAfter, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return pemCert(der)
}

// nodeState writes kubelet.conf (CA ca) and, if cert is not nil, the client certificate into a new root.
func nodeState(t *testing.T, ca testCA, cert []byte) string {
	t.Helper()
	root := t.TempDir()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["default-cluster"] = &clientcmdapi.Cluster{Server: "https://10.0.0.2:6443", CertificateAuthorityData: pemCert(ca.cert.Raw)}
	cfg.AuthInfos["default-auth"] = &clientcmdapi.AuthInfo{ClientCertificate: nodefiles.KubeletClientCurrent, ClientKey: nodefiles.KubeletClientCurrent}
	cfg.Contexts["default-context"] = &clientcmdapi.Context{Cluster: "default-cluster", AuthInfo: "default-auth"}
	cfg.CurrentContext = "default-context"
	b, err := clientcmd.Write(*cfg)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{nodefiles.KubeletConf: b}
	if cert != nil {
		files[nodefiles.KubeletClientCurrent] = cert
	}
	for p, b := range files {
		if err := os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestCheckResume(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	ca, other := newCA(t), newCA(t)
	pin, otherPin := pubkeypin.Hash(ca.cert), pubkeypin.Hash(other.cert)
	valid := ca.issue(t, now.Add(-time.Hour), now.Add(365*24*time.Hour))
	for _, tc := range []struct {
		name  string
		root  string
		pins  []string
		want  string // words of the detail (resume) or of the error (join)
		ok    bool
		class string // the error's class, as the boot server reads it (diskspec.ResumeClass)
	}{
		{"first boot", t.TempDir(), []string{pin}, "no /etc/kubernetes/kubelet.conf on the disk: joining (first boot)", false, diskspec.ResumeNoCredentials},
		{"valid, pinned", nodeState(t, ca, valid), []string{otherPin, pin}, "system:node:node-1 valid until 2027-11-30T12:00:00Z; CA " + pin + " this cluster's", true, ""},
		{"valid, no pin", nodeState(t, ca, valid), nil, "not pinned", true, ""},
		{"another cluster", nodeState(t, ca, valid), []string{otherPin}, "credentials belong to another cluster (CA " + pin + " is not this cluster's): joining again", false, diskspec.ResumeOtherCluster},
		{"expired", nodeState(t, ca, ca.issue(t, now.Add(-48*time.Hour), now.Add(-time.Hour))), []string{pin}, "expired at 2026-11-30T11:00:00Z: joining again", false, diskspec.ResumeExpired},
		{"last minutes", nodeState(t, ca, ca.issue(t, now.Add(-48*time.Hour), now.Add(2*time.Minute))), []string{pin}, "expires at 2026-11-30T12:02:00Z, within 5m0s: joining again", false, diskspec.ResumeExpired},
		{"issued by another CA", nodeState(t, ca, other.issue(t, now.Add(-time.Hour), now.Add(time.Hour))), []string{pin}, "was not issued by kubelet.conf's CA", false, diskspec.ResumeInvalid},
		{"no certificate", nodeState(t, ca, nil), []string{pin}, "client certificate /var/lib/kubelet/pki/kubelet-client-current.pem is missing on the disk: joining again", false, diskspec.ResumeInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			detail, err := CheckResume(tc.root, tc.pins, now)
			got := detail
			if err != nil {
				got = err.Error()
			}
			if (err == nil) != tc.ok || !strings.Contains(got, tc.want) {
				t.Errorf("CheckResume = %q, %v; want ok=%v %q", detail, err, tc.ok, tc.want)
			}
			if err != nil && diskspec.ResumeClass(got) != tc.class {
				t.Errorf("CheckResume's %q classifies as %q, want %q", got, diskspec.ResumeClass(got), tc.class)
			}
		})
	}
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

package approver

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net"
	"net/netip"
	"net/url"
	"testing"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pxejoin/pxejoin/internal/bootstraptoken"
)

// facts is a fixed world for Decide.
type facts struct {
	tokens   map[string]string // live token id → node
	notFirst bool
	addrs    map[string][]netip.Addr // node → addresses
}

func (f facts) Token(id string) (string, bool)                       { n, ok := f.tokens[id]; return n, ok }
func (f facts) First(*certificatesv1.CertificateSigningRequest) bool { return !f.notFirst }
func (f facts) Addresses(node string) ([]netip.Addr, bool) {
	a, ok := f.addrs[node]
	return a, ok
}

var (
	ecKey, _  = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rsaKey, _ = rsa.GenerateKey(rand.Reader, 2048)
)

// csrPEM makes a PKCS#10 request for tmpl with key.
func csrPEM(t testing.TB, key crypto.Signer, tmpl x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func nodeSubj(name string) pkix.Name {
	return pkix.Name{CommonName: "system:node:" + name, Organization: []string{"system:nodes"}}
}

var (
	clientUsages  = []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth}
	servingUsages = []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageServerAuth}
)

func TestDecide(t *testing.T) {
	p := Policy{Group: bootstraptoken.PxejoinGroup, Domain: "rack1.example"}
	world := facts{
		tokens: map[string]string{"aaaaaa": "node-a", "bbbbbb": "node-b"},
		addrs:  map[string][]netip.Addr{"node-a": {netip.MustParseAddr("10.0.0.10")}, "node-b": {netip.MustParseAddr("10.0.0.11")}},
	}
	bootA := func(req []byte, usages ...certificatesv1.KeyUsage) *certificatesv1.CertificateSigningRequest {
		return &certificatesv1.CertificateSigningRequest{Spec: certificatesv1.CertificateSigningRequestSpec{
			SignerName: certificatesv1.KubeAPIServerClientKubeletSignerName, Request: req, Usages: usages,
			Username: "system:bootstrap:aaaaaa", Groups: []string{"system:bootstrappers", bootstraptoken.PxejoinGroup, "system:authenticated"}}}
	}
	servingA := func(req []byte, usages ...certificatesv1.KeyUsage) *certificatesv1.CertificateSigningRequest {
		return &certificatesv1.CertificateSigningRequest{Spec: certificatesv1.CertificateSigningRequestSpec{
			SignerName: certificatesv1.KubeletServingSignerName, Request: req, Usages: usages,
			Username: "system:node:node-a", Groups: []string{"system:nodes", "system:authenticated"}}}
	}
	with := func(csr *certificatesv1.CertificateSigningRequest, f func(*certificatesv1.CertificateSigningRequest)) *certificatesv1.CertificateSigningRequest {
		f(csr)
		return csr
	}
	ownA := csrPEM(t, ecKey, x509.CertificateRequest{Subject: nodeSubj("node-a")})
	servA := csrPEM(t, ecKey, x509.CertificateRequest{Subject: nodeSubj("node-a"), DNSNames: []string{"node-a", "node-a.rack1.example"},
		IPAddresses: []net.IP{net.ParseIP("10.0.0.10")}})
	tests := []struct {
		name   string
		csr    *certificatesv1.CertificateSigningRequest
		f      facts
		want   Verdict
		reason string
	}{
		{"own node, ECDSA", bootA(ownA, clientUsages...), world, Approve, ReasonMachineNode},
		{"own node, RSA with key encipherment", bootA(csrPEM(t, rsaKey, x509.CertificateRequest{Subject: nodeSubj("node-a")}),
			certificatesv1.UsageKeyEncipherment, certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth), world, Approve, ReasonMachineNode},
		{"another node's name", bootA(csrPEM(t, ecKey, x509.CertificateRequest{Subject: nodeSubj("node-b")}), clientUsages...), world, Deny, ReasonWrongNode},
		{"look-alike name", bootA(csrPEM(t, ecKey, x509.CertificateRequest{Subject: nodeSubj("node-a ")}), clientUsages...), world, Deny, ReasonWrongNode},
		{"extra organization", bootA(csrPEM(t, ecKey, x509.CertificateRequest{Subject: pkix.Name{CommonName: "system:node:node-a",
			Organization: []string{"system:nodes", "system:masters"}}}), clientUsages...), world, Deny, ReasonWrongSubject},
		{"no organization", bootA(csrPEM(t, ecKey, x509.CertificateRequest{Subject: pkix.Name{CommonName: "system:node:node-a"}}), clientUsages...), world, Deny, ReasonWrongSubject},
		{"DNS SAN", bootA(csrPEM(t, ecKey, x509.CertificateRequest{Subject: nodeSubj("node-a"), DNSNames: []string{"node-a"}}), clientUsages...), world, Deny, ReasonSANs},
		{"URI SAN", bootA(csrPEM(t, ecKey, x509.CertificateRequest{Subject: nodeSubj("node-a"), URIs: []*url.URL{{Scheme: "spiffe", Host: "x"}}}), clientUsages...), world, Deny, ReasonSANs},
		{"server auth usage", bootA(ownA, certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth, certificatesv1.UsageServerAuth), world, Deny, ReasonWrongUsages},
		{"key encipherment with ECDSA", bootA(ownA, certificatesv1.UsageKeyEncipherment, certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth), world, Deny, ReasonWrongUsages},
		{"client auth only", bootA(ownA, certificatesv1.UsageClientAuth), world, Deny, ReasonWrongUsages},
		{"second CSR of the token", bootA(ownA, clientUsages...), facts{tokens: world.tokens, notFirst: true}, Deny, ReasonNotFirst},
		{"token not live", bootA(ownA, clientUsages...), facts{}, Deny, ReasonTokenNotLive},
		{"garbage request", bootA([]byte("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"), clientUsages...), world, Deny, ReasonBadRequest},
		{"kubeadm's group: not ours", with(bootA(csrPEM(t, ecKey, x509.CertificateRequest{Subject: nodeSubj("node-b")}), clientUsages...),
			func(c *certificatesv1.CertificateSigningRequest) {
				c.Spec.Groups = []string{"system:bootstrappers", bootstraptoken.DefaultGroup}
			}), world, Ignore, ""},
		{"a node's own renewal: not ours", with(bootA(ownA, clientUsages...), func(c *certificatesv1.CertificateSigningRequest) {
			c.Spec.Username, c.Spec.Groups = "system:node:node-a", []string{"system:nodes"}
		}), world, Ignore, ""},
		{"another signer: not ours", with(bootA(ownA, clientUsages...), func(c *certificatesv1.CertificateSigningRequest) {
			c.Spec.SignerName = certificatesv1.KubeAPIServerClientSignerName
		}), world, Ignore, ""},
		{"already denied", with(bootA(ownA, clientUsages...), func(c *certificatesv1.CertificateSigningRequest) {
			c.Status.Conditions = []certificatesv1.CertificateSigningRequestCondition{{Type: certificatesv1.CertificateDenied, Status: corev1.ConditionTrue, LastUpdateTime: metav1.Now()}}
		}), world, Ignore, ""},

		{"serving: own address and names", servingA(servA, servingUsages...), world, Approve, ReasonMachineAddresses},
		{"serving: key encipherment with ECDSA", servingA(servA, certificatesv1.UsageKeyEncipherment, certificatesv1.UsageDigitalSignature, certificatesv1.UsageServerAuth), world, Deny, ReasonWrongUsages},
		{"serving: another machine's address", servingA(csrPEM(t, ecKey, x509.CertificateRequest{Subject: nodeSubj("node-a"),
			IPAddresses: []net.IP{net.ParseIP("10.0.0.11")}}), servingUsages...), world, Deny, ReasonForeignIP},
		{"serving: look-alike DNS", servingA(csrPEM(t, ecKey, x509.CertificateRequest{Subject: nodeSubj("node-a"),
			DNSNames: []string{"node-a.rack1.example.evil"}}), servingUsages...), world, Deny, ReasonForeignDNS},
		{"serving: another node's DNS", servingA(csrPEM(t, ecKey, x509.CertificateRequest{Subject: nodeSubj("node-a"),
			DNSNames: []string{"node-b"}}), servingUsages...), world, Deny, ReasonForeignDNS},
		{"serving: CN of another node", servingA(csrPEM(t, ecKey, x509.CertificateRequest{Subject: nodeSubj("node-b"),
			DNSNames: []string{"node-a"}}), servingUsages...), world, Deny, ReasonWrongNode},
		{"serving: email SAN", servingA(csrPEM(t, ecKey, x509.CertificateRequest{Subject: nodeSubj("node-a"),
			DNSNames: []string{"node-a"}, EmailAddresses: []string{"a@b"}}), servingUsages...), world, Deny, ReasonSANs},
		{"serving: no SANs", servingA(csrPEM(t, ecKey, x509.CertificateRequest{Subject: nodeSubj("node-a")}), servingUsages...), world, Deny, ReasonNoSANs},
		{"serving: client auth usage", servingA(servA, certificatesv1.UsageDigitalSignature, certificatesv1.UsageServerAuth, certificatesv1.UsageClientAuth), world, Deny, ReasonWrongUsages},
		{"serving: a node the boot server does not know", with(servingA(servA, servingUsages...), func(c *certificatesv1.CertificateSigningRequest) {
			c.Spec.Username = "system:node:control-plane"
		}), world, Ignore, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := p.Decide(tt.csr, tt.f)
			if d.Verdict != tt.want || d.Reason != tt.reason {
				t.Errorf("Decide = %s %q (%s), want %s %q", d.Verdict, d.Reason, d.Message, tt.want, tt.reason)
			}
			if d.Verdict != Ignore && d.Message == "" {
				t.Error("a decision without a message")
			}
		})
	}
}

func TestConditionReason(t *testing.T) {
	if got := conditionReason(ReasonWrongNode); got != "PxejoinWrongNode" {
		t.Errorf("conditionReason = %q", got)
	}
}

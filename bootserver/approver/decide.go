// Package approver approves the certificate signing requests of the machines the boot server
// bootstrapped, and only theirs: a kubelet client certificate only for the node name the machine's
// token was minted for, a kubelet serving certificate only for the addresses the boot server gave
// that machine. Anything else made with a pxejoin token is denied with the reason and the token
// revoked. CSRs it does not own (other tokens, nodes' own client renewals, other signers, nodes the
// boot server does not know) are left alone.
//
// Decide is the pure decision; Controller runs it on the CSR informer the token manager shares and
// writes the verdicts; SelfCheck asks the API at start whether anyone else would approve a pxejoin
// token's CSR, and whether the boot server may approve at all.
package approver

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	certificatesv1 "k8s.io/api/certificates/v1"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
)

// Verdict is what to do with a CSR.
type Verdict int

// Verdicts.
const (
	Ignore  Verdict = iota // not ours: leave it to others
	Approve                // ours and what the machine may have
	Deny                   // ours and not what the machine may have
)

func (v Verdict) String() string {
	return [...]string{"ignore", "approve", "deny"}[v]
}

// Reasons (the reason label of pxejoin_csr_decisions_total, and the CSR condition's reason after
// "Pxejoin").
const (
	ReasonMachineNode      = "machine-node"      // approved: the token's own node name
	ReasonMachineAddresses = "machine-addresses" // approved: the machine's own addresses and name
	ReasonBadRequest       = "bad-request"       // the request is not a valid PKCS#10 CSR
	ReasonTokenNotLive     = "token-not-live"    // the token is not a pxejoin boot server's, or is deleted or expired
	ReasonWrongNode        = "wrong-node"        // CN is not system:node:<the token's node>
	ReasonWrongSubject     = "wrong-subject"     // O is not [system:nodes], or the subject has more
	ReasonSANs             = "sans"              // a client certificate with SANs, or a serving one with email/URI SANs
	ReasonWrongUsages      = "wrong-usages"      // not the kubelet's usages
	ReasonNotFirst         = "not-first"         // the token already made a CSR
	ReasonForeignIP        = "foreign-ip"        // an IP SAN the boot server did not give this machine
	ReasonForeignDNS       = "foreign-dns"       // a DNS SAN that is not the node's name
	ReasonNoSANs           = "no-sans"           // a serving certificate naming nothing
)

// Decision is a verdict with its reason (a short label) and a message for the CSR's condition and
// Event (what was asked, what was allowed; never a secret).
type Decision struct {
	Verdict Verdict
	Reason  string
	Message string
}

// Facts is what the boot server knows that a decision needs beside the CSR.
type Facts interface {
	// Token returns the node name the token with id was minted for; live is false when no pxejoin
	// boot server of the cluster minted it, or it is deleted or expired.
	Token(id string) (node string, live bool)
	// First reports whether csr is the first CSR made by its requester (no earlier one, none approved).
	First(csr *certificatesv1.CertificateSigningRequest) bool
	// Addresses returns the addresses the boot server gave the machine named node (its DHCP
	// lease, or in proxy mode the address it fetched its join file from); known is false for a
	// node the boot server did not provision.
	Addresses(node string) (addrs []netip.Addr, known bool)
}

// Policy is what the approver is configured with.
type Policy struct {
	// Group is the extra group of the boot server's tokens (bootstraptoken.PxejoinGroup): the CSRs
	// of requesters in it are this approver's.
	Group string
	// Domain, if set, lets a serving certificate name <node>.<Domain> besides <node>.
	Domain string
}

const nodeUserPrefix = "system:node:"

// Owns reports whether the approver decides csr: a client CSR made with a token of the policy's
// group, or a serving CSR a node made for itself. Decide returns Ignore for the others.
func (p Policy) Owns(csr *certificatesv1.CertificateSigningRequest) bool {
	switch csr.Spec.SignerName {
	case certificatesv1.KubeAPIServerClientKubeletSignerName:
		return strings.HasPrefix(csr.Spec.Username, bootstrapapi.BootstrapUserPrefix) && slices.Contains(csr.Spec.Groups, p.Group)
	case certificatesv1.KubeletServingSignerName:
		return strings.HasPrefix(csr.Spec.Username, nodeUserPrefix) && slices.Contains(csr.Spec.Groups, "system:nodes")
	}
	return false
}

// Decide decides csr. It is pure: everything it knows of the world comes from f.
func (p Policy) Decide(csr *certificatesv1.CertificateSigningRequest, f Facts) Decision {
	if !p.Owns(csr) || decided(csr) {
		return Decision{Verdict: Ignore}
	}
	if csr.Spec.SignerName == certificatesv1.KubeletServingSignerName {
		return p.decideServing(csr, f)
	}
	return p.decideClient(csr, f)
}

func (p Policy) decideClient(csr *certificatesv1.CertificateSigningRequest, f Facts) Decision {
	id := strings.TrimPrefix(csr.Spec.Username, bootstrapapi.BootstrapUserPrefix)
	node, live := f.Token(id)
	if !live {
		return deny(ReasonTokenNotLive, "bootstrap token %s is not a live token of a pxejoin boot server (deleted, expired, or not minted by one): "+
			"it gets no node certificate; have the machine fetch a new join file", id)
	}
	req, d := parse(csr)
	if req == nil {
		return d
	}
	if want := nodeUserPrefix + node; req.Subject.CommonName != want {
		return deny(ReasonWrongNode, "bootstrap token %s was minted for node %q: it may ask for CN %q only, not %q", id, node, want, req.Subject.CommonName)
	}
	if d, ok := nodeSubject(req); !ok {
		return d
	}
	if len(req.DNSNames)+len(req.IPAddresses)+len(req.EmailAddresses)+len(req.URIs) > 0 {
		return deny(ReasonSANs, "a kubelet client certificate names no DNS, IP, email or URI")
	}
	if !usagesAre(csr.Spec.Usages, req, certificatesv1.UsageClientAuth) {
		return deny(ReasonWrongUsages, "usages %q are not a kubelet client certificate's (digital signature, client auth; key encipherment with RSA)", csr.Spec.Usages)
	}
	if !f.First(csr) {
		return deny(ReasonNotFirst, "bootstrap token %s already made a CSR: a token gets one certificate", id)
	}
	return Decision{Verdict: Approve, Reason: ReasonMachineNode, Message: fmt.Sprintf("node %q's own client certificate, asked with the token minted for it", node)}
}

func (p Policy) decideServing(csr *certificatesv1.CertificateSigningRequest, f Facts) Decision {
	node := strings.TrimPrefix(csr.Spec.Username, nodeUserPrefix)
	addrs, known := f.Addresses(node)
	if !known {
		return Decision{Verdict: Ignore}
	}
	req, d := parse(csr)
	if req == nil {
		return d
	}
	if req.Subject.CommonName != csr.Spec.Username {
		return deny(ReasonWrongNode, "node %q may ask for CN %q only, not %q", node, csr.Spec.Username, req.Subject.CommonName)
	}
	if d, ok := nodeSubject(req); !ok {
		return d
	}
	if len(req.EmailAddresses)+len(req.URIs) > 0 {
		return deny(ReasonSANs, "a kubelet serving certificate names DNS names and IP addresses only")
	}
	if len(req.DNSNames)+len(req.IPAddresses) == 0 {
		return deny(ReasonNoSANs, "a kubelet serving certificate must name the node's DNS name or address")
	}
	for _, ip := range req.IPAddresses {
		a, ok := netip.AddrFromSlice(ip)
		if !ok || !slices.Contains(addrs, a.Unmap()) {
			return deny(ReasonForeignIP, "node %q may name the addresses the boot server gave it (%s), not %s", node, addrList(addrs), ip)
		}
	}
	names := []string{node}
	if p.Domain != "" {
		names = append(names, node+"."+p.Domain)
	}
	for _, n := range req.DNSNames {
		if !slices.Contains(names, n) {
			return deny(ReasonForeignDNS, "node %q may name %s only, not %q", node, strings.Join(names, " or "), n)
		}
	}
	if !usagesAre(csr.Spec.Usages, req, certificatesv1.UsageServerAuth) {
		return deny(ReasonWrongUsages, "usages %q are not a kubelet serving certificate's (digital signature, server auth; key encipherment with RSA)", csr.Spec.Usages)
	}
	return Decision{Verdict: Approve, Reason: ReasonMachineAddresses, Message: fmt.Sprintf("node %q's own serving certificate, for its name and the addresses the boot server gave it", node)}
}

func deny(reason, format string, args ...any) Decision {
	return Decision{Verdict: Deny, Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// decided reports whether csr is approved or denied (or failed) already.
func decided(csr *certificatesv1.CertificateSigningRequest) bool {
	for _, c := range csr.Status.Conditions {
		if c.Type == certificatesv1.CertificateApproved || c.Type == certificatesv1.CertificateDenied || c.Type == certificatesv1.CertificateFailed {
			return true
		}
	}
	return false
}

// parse decodes the CSR's PEM request and checks its signature; on failure the decision denies.
func parse(csr *certificatesv1.CertificateSigningRequest) (*x509.CertificateRequest, Decision) {
	block, _ := pem.Decode(csr.Spec.Request)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, deny(ReasonBadRequest, "the request is not a PEM CERTIFICATE REQUEST")
	}
	req, err := x509.ParseCertificateRequest(block.Bytes)
	if err == nil {
		err = req.CheckSignature()
	}
	if err != nil {
		return nil, deny(ReasonBadRequest, "the request is not a valid certificate request: %v", err)
	}
	return req, Decision{}
}

// nodeSubject checks the subject beyond CN: O=[system:nodes] and nothing else.
func nodeSubject(req *x509.CertificateRequest) (Decision, bool) {
	s := req.Subject
	if !slices.Equal(s.Organization, []string{"system:nodes"}) || len(s.OrganizationalUnit)+len(s.Country)+len(s.Province)+
		len(s.Locality)+len(s.StreetAddress)+len(s.PostalCode) > 0 || s.SerialNumber != "" {
		return deny(ReasonWrongSubject, "the subject must be CN=system:node:<name>, O=system:nodes and nothing else, not %q", s.String()), false
	}
	return Decision{}, true
}

// usagesAre reports whether usages are exactly digital signature and auth, plus key encipherment
// for an RSA key (the kubelet's; x509's KeyEncipherment is RSA key transport only).
func usagesAre(usages []certificatesv1.KeyUsage, req *x509.CertificateRequest, auth certificatesv1.KeyUsage) bool {
	want := []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, auth}
	got := slices.Clone(usages)
	if _, rsaKey := req.PublicKey.(*rsa.PublicKey); rsaKey {
		got = slices.DeleteFunc(got, func(u certificatesv1.KeyUsage) bool { return u == certificatesv1.UsageKeyEncipherment })
	}
	slices.Sort(got)
	slices.Sort(want)
	return slices.Equal(got, want)
}

func addrList(addrs []netip.Addr) string {
	if len(addrs) == 0 {
		return "none"
	}
	s := make([]string, len(addrs))
	for i, a := range addrs {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

package approver

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	bolt "go.etcd.io/bbolt"
	authorizationv1 "k8s.io/api/authorization/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/certificate/csr"
	"sigs.k8s.io/yaml"

	"github.com/pxejoin/pxejoin/bootserver/tokens"
	"github.com/pxejoin/pxejoin/internal/bootstraptoken"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
	"github.com/pxejoin/pxejoin/lab/controlplane"
	"github.com/pxejoin/pxejoin/lab/eventually"
)

func TestMain(m *testing.M) { os.Exit(controlplane.Run(m)) }

// harness is a token manager and an approver against the shared control plane. The approver's
// client is the admin's impersonating a user bound to exactly deploy/rbac/approver.yaml's role.
type harness struct {
	cp       *controlplane.ControlPlane
	tokens   *tokens.Manager
	approver *Controller
	reg      *prometheus.Registry
	addrs    map[string][]netip.Addr
	// logs is what the token manager and the approver logged.
	logs *syncBuffer
}

// syncBuffer is a bytes.Buffer safe for concurrent use (a log handler's output).
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// approverUser is bound to the documented ClusterRole only.
const approverUser = "pxejoin-approver-test"

func newHarness(t testing.TB) *harness {
	t.Helper()
	cp := controlplane.Shared(t)
	ctx := context.Background()
	if err := EnsureBootstrapRBAC(ctx, cp.Admin(), bootstraptoken.PxejoinGroup, false); err != nil {
		t.Fatal(err)
	}
	client := clientAs(t, cp, approverUser, documentedRole(t))
	db, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	h := &harness{cp: cp, reg: prometheus.NewRegistry(), addrs: map[string][]netip.Addr{
		"node-a": {netip.MustParseAddr("10.0.0.10")}, "node-b": {netip.MustParseAddr("10.0.0.11")}}, logs: &syncBuffer{}}
	log := slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	admin := cp.AdminConfig()
	admin.QPS, admin.Burst = 50, 100
	h.tokens, err = tokens.New(tokens.Options{Client: kubernetes.NewForConfigOrDie(admin), DB: db, TTL: 15 * time.Minute, Groups: []string{bootstraptoken.PxejoinGroup}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	h.approver, err = New(Options{Client: client, Informers: informers.NewSharedInformerFactory(client, 0), Tokens: h.tokens,
		Policy: Policy{Group: bootstraptoken.PxejoinGroup}, Registerer: h.reg, Logger: log,
		Addresses: func(node string) ([]netip.Addr, bool) { a, ok := h.addrs[node]; return a, ok }})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.approver.SelfCheck(ctx); err != nil {
		t.Fatalf("self-check with the documented role: %v", err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{}, 2)
	go func() { _ = h.tokens.Run(runCtx); done <- struct{}{} }()
	go func() { _ = h.approver.Run(runCtx); done <- struct{}{} }()
	t.Cleanup(func() { cancel(); <-done; <-done })
	return h
}

// documentedRole reads the approver's ClusterRole from deploy/rbac/approver.yaml.
func documentedRole(t testing.TB) *rbacv1.ClusterRole { return roleFromYAML(t, ClusterRole) }

// roleFromYAML reads the ClusterRole named name from deploy/rbac/approver.yaml.
func roleFromYAML(t testing.TB, name string) *rbacv1.ClusterRole {
	t.Helper()
	b, err := os.ReadFile("../../deploy/rbac/approver.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range strings.Split(string(b), "\n---\n") {
		var role rbacv1.ClusterRole
		if err := yaml.UnmarshalStrict([]byte(doc), &role); err != nil {
			t.Fatal(err)
		}
		if role.Name == name {
			return &role
		}
	}
	t.Fatalf("deploy/rbac/approver.yaml has no ClusterRole %q", name)
	return nil
}

// clientAs binds role (renamed after user) to user and returns an admin client impersonating user.
func clientAs(t testing.TB, cp *controlplane.ControlPlane, user string, role *rbacv1.ClusterRole) kubernetes.Interface {
	t.Helper()
	ctx := context.Background()
	role = role.DeepCopy()
	role.Name = user
	rbac := cp.Admin().RbacV1()
	_ = rbac.ClusterRoles().Delete(ctx, user, metav1.DeleteOptions{})
	if _, err := rbac.ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err := rbac.ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: user},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: user},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	rc := cp.AdminConfig()
	rc.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: []string{"system:authenticated"}}
	rc.QPS, rc.Burst = 50, 100 // as the boot server's (server.LoadCluster)
	c := kubernetes.NewForConfigOrDie(rc)
	// RBAC reads bindings through an informer: wait until the role applies.
	r := role.Rules[0]
	ra := &authorizationv1.ResourceAttributes{Group: r.APIGroups[0], Resource: r.Resources[0], Verb: r.Verbs[0]}
	if len(r.ResourceNames) > 0 {
		ra.Name = r.ResourceNames[0]
	}
	eventually.True(t, user+"'s role applies", func() bool {
		got, err := cp.Admin().AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
			Spec: authorizationv1.SubjectAccessReviewSpec{User: user, Groups: []string{"system:authenticated"}, ResourceAttributes: ra}}, metav1.CreateOptions{})
		return err == nil && got.Status.Allowed
	})
	return c
}

// tokenClient is a client authenticating with a bootstrap token.
func tokenClient(cp *controlplane.ControlPlane, token string) kubernetes.Interface {
	return kubernetes.NewForConfigOrDie(&rest.Config{Host: "https://" + cp.Endpoint(), BearerToken: token,
		TLSClientConfig: rest.TLSClientConfig{CAFile: cp.CAFile()}})
}

// certClient is a client authenticating with a client certificate.
func certClient(t *testing.T, cp *controlplane.ControlPlane, certPEM []byte, key *ecdsa.PrivateKey) kubernetes.Interface {
	return kubernetes.NewForConfigOrDie(&rest.Config{Host: "https://" + cp.Endpoint(),
		TLSClientConfig: rest.TLSClientConfig{CAFile: cp.CAFile(), CertData: certPEM, KeyData: pemKey(t, key)}})
}

// request sends a CSR for subject and SANs with c and returns its name.
func request(t *testing.T, c kubernetes.Interface, signer string, subject pkix.Name, dns []string, ips []net.IP,
	usages ...certificatesv1.KeyUsage) (string, *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: subject, DNSNames: dns, IPAddresses: ips}, key)
	if err != nil {
		t.Fatal(err)
	}
	name, _, err := csr.RequestCertificate(c, pemBlock("CERTIFICATE REQUEST", der), "", signer, nil, usages, key)
	if err != nil {
		t.Fatalf("creating the CSR: %v", err)
	}
	return name, key
}

// outcome waits for the CSR's Approved or Denied condition and returns it.
func outcome(t *testing.T, cp *controlplane.ControlPlane, name string) certificatesv1.CertificateSigningRequestCondition {
	t.Helper()
	var got certificatesv1.CertificateSigningRequestCondition
	eventually.True(t, "CSR "+name+" approved or denied", func() bool {
		c, err := cp.Admin().CertificatesV1().CertificateSigningRequests().Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return false
		}
		for _, cond := range c.Status.Conditions {
			if cond.Type == certificatesv1.CertificateApproved || cond.Type == certificatesv1.CertificateDenied {
				got = cond
				return true
			}
		}
		return false
	})
	return got
}

// issued waits for the CSR's certificate.
func issued(t *testing.T, cp *controlplane.ControlPlane, name string) []byte {
	t.Helper()
	var cert []byte
	eventually.True(t, "CSR "+name+" issued", func() bool {
		c, err := cp.Admin().CertificatesV1().CertificateSigningRequests().Get(context.Background(), name, metav1.GetOptions{})
		cert = c.Status.Certificate
		return err == nil && len(cert) > 0
	})
	return cert
}

func tokenGone(t *testing.T, cp *controlplane.ControlPlane, tok string) {
	t.Helper()
	eventually.True(t, "token "+bootstraptoken.ID(tok)+" deleted", func() bool {
		_, err := cp.Admin().CoreV1().Secrets("kube-system").Get(context.Background(), "bootstrap-token-"+bootstraptoken.ID(tok), metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
}

var clientUsagesEC = []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth}

const (
	clientSigner  = certificatesv1.KubeAPIServerClientKubeletSignerName
	servingSigner = certificatesv1.KubeletServingSignerName
)

// TestStolenTokenCannotBecomeAnotherNode: node-a's token asking for node-b is denied (condition,
// Event, metric), gets no certificate and is revoked; node-b's token still works; node-a's next
// boot joins; all with kubeadm's auto-approve binding in place (the lab creates it), which the
// controller manager would use for a token of kubeadm's group: shown with one.
func TestStolenTokenCannotBecomeAnotherNode(t *testing.T) {
	h := newHarness(t)
	cp, ctx := h.cp, context.Background()
	if err := cp.SetAutoApprove(ctx, true); err != nil {
		t.Fatal(err)
	}
	macA, macB := hwaddr.MAC{0x52, 0x54, 0, 0, 0, 0xa}, hwaddr.MAC{0x52, 0x54, 0, 0, 0, 0xb}
	tokA, err := h.tokens.Token(ctx, macA, "node-a", 1, true)
	if err != nil {
		t.Fatal(err)
	}
	tokB, err := h.tokens.Token(ctx, macB, "node-b", 1, true)
	if err != nil {
		t.Fatal(err)
	}

	stolen, _ := request(t, tokenClient(cp, tokA), clientSigner, nodeSubj("node-b"), nil, nil, clientUsagesEC...)
	cond := outcome(t, cp, stolen)
	if cond.Type != certificatesv1.CertificateDenied || cond.Reason != "PxejoinWrongNode" || !strings.Contains(cond.Message, `"node-a"`) {
		t.Fatalf("node-a's token asking for node-b: %s %s %q, want Denied PxejoinWrongNode", cond.Type, cond.Reason, cond.Message)
	}
	tokenGone(t, cp, tokA)
	c, err := cp.Admin().CertificatesV1().CertificateSigningRequests().Get(ctx, stolen, metav1.GetOptions{})
	if err != nil || len(c.Status.Certificate) > 0 {
		t.Errorf("the denied CSR: %v, certificate %d bytes", err, len(c.Status.Certificate))
	}
	eventually.True(t, "an Event on the denied CSR", func() bool {
		evs, err := cp.Admin().CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("involvedObject.name", stolen).String()})
		return err == nil && len(evs.Items) == 1 && evs.Items[0].Reason == "PxejoinWrongNode"
	})
	if got := testutil.ToFloat64(h.approver.decisions.WithLabelValues(clientSigner, "deny", ReasonWrongNode)); got != 1 {
		t.Errorf("pxejoin_csr_decisions_total{deny,wrong-node} = %v", got)
	}

	// node-b's own join is not disturbed.
	nameB, _ := request(t, tokenClient(cp, tokB), clientSigner, nodeSubj("node-b"), nil, nil, clientUsagesEC...)
	if cond := outcome(t, cp, nameB); cond.Type != certificatesv1.CertificateApproved || cond.Reason != "PxejoinMachineNode" {
		t.Fatalf("node-b's own CSR: %s %s %q", cond.Type, cond.Reason, cond.Message)
	}
	issued(t, cp, nameB)
	tokenGone(t, cp, tokB)

	// node-a's next boot joins.
	tokA2, err := h.tokens.Token(ctx, macA, "node-a", 2, true)
	if err != nil {
		t.Fatal(err)
	}
	nameA, _ := request(t, tokenClient(cp, tokA2), clientSigner, nodeSubj("node-a"), nil, nil, clientUsagesEC...)
	if cond := outcome(t, cp, nameA); cond.Type != certificatesv1.CertificateApproved {
		t.Fatalf("node-a's own CSR: %s %s %q", cond.Type, cond.Reason, cond.Message)
	}
	issued(t, cp, nameA)
	tokenGone(t, cp, tokA2)

	// The same theft with a token of kubeadm's group: the controller manager approves it.
	// This is what the group change prevents.
	kubeadmTok, err := cp.CreateToken(ctx, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bootstraptoken.Delete(context.Background(), cp.Admin(), kubeadmTok) })
	theft, _ := request(t, tokenClient(cp, kubeadmTok), clientSigner, nodeSubj("node-b"), nil, nil, clientUsagesEC...)
	if cond := outcome(t, cp, theft); cond.Type != certificatesv1.CertificateApproved || strings.HasPrefix(cond.Reason, "Pxejoin") {
		t.Errorf("a kubeadm-group token asking for node-b: %s %s, want the controller manager's approval", cond.Type, cond.Reason)
	}
}

// TestSecondCSRDenied: a token gets one certificate; a second CSR (even for its own name) is
// denied and the token revoked.
func TestSecondCSRDenied(t *testing.T) {
	h := newHarness(t)
	cp, ctx := h.cp, context.Background()
	tok, err := h.tokens.Token(ctx, hwaddr.MAC{0x52, 0x54, 0, 0, 1, 0xa}, "node-c", 1, true)
	if err != nil {
		t.Fatal(err)
	}
	tc := tokenClient(cp, tok)
	first, _ := request(t, tc, clientSigner, nodeSubj("node-c"), nil, nil, clientUsagesEC...)
	second, _ := request(t, tc, clientSigner, nodeSubj("node-c"), nil, nil, clientUsagesEC...)
	if cond := outcome(t, cp, first); cond.Type != certificatesv1.CertificateApproved {
		t.Errorf("first CSR: %s %s", cond.Type, cond.Reason)
	}
	if cond := outcome(t, cp, second); cond.Type != certificatesv1.CertificateDenied || cond.Reason != "PxejoinNotFirst" {
		t.Errorf("second CSR: %s %s", cond.Type, cond.Reason)
	}
	tokenGone(t, cp, tok)
}

// TestRenewalAndServing: a node's own client renewal is the controller manager's to approve
// (pxejoin writes nothing); its serving CSRs are pxejoin's: its own address and name approved,
// another machine's address or a look-alike name denied.
func TestRenewalAndServing(t *testing.T) {
	h := newHarness(t)
	cp, ctx := h.cp, context.Background()
	tok, err := h.tokens.Token(ctx, hwaddr.MAC{0x52, 0x54, 0, 0, 2, 0xa}, "node-a", 1, true)
	if err != nil {
		t.Fatal(err)
	}
	name, key := request(t, tokenClient(cp, tok), clientSigner, nodeSubj("node-a"), nil, nil, clientUsagesEC...)
	nodeA := certClient(t, cp, issued(t, cp, name), key)

	renewal, _ := request(t, nodeA, clientSigner, nodeSubj("node-a"), nil, nil, clientUsagesEC...)
	if cond := outcome(t, cp, renewal); cond.Type != certificatesv1.CertificateApproved || strings.HasPrefix(cond.Reason, "Pxejoin") {
		t.Errorf("renewal: %s %s, want the controller manager's approval", cond.Type, cond.Reason)
	}
	before := testutil.CollectAndCount(h.approver.decisions)

	serving := []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageServerAuth}
	for _, tt := range []struct {
		name   string
		dns    []string
		ips    []net.IP
		want   certificatesv1.RequestConditionType
		reason string
	}{
		{"own address and name", []string{"node-a"}, []net.IP{net.ParseIP("10.0.0.10")}, certificatesv1.CertificateApproved, "PxejoinMachineAddresses"},
		{"another machine's address", []string{"node-a"}, []net.IP{net.ParseIP("10.0.0.11")}, certificatesv1.CertificateDenied, "PxejoinForeignIp"},
		{"look-alike name", []string{"node-a.evil.example"}, nil, certificatesv1.CertificateDenied, "PxejoinForeignDns"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			n, key := request(t, nodeA, servingSigner, nodeSubj("node-a"), tt.dns, tt.ips, serving...)
			cond := outcome(t, cp, n)
			if cond.Type != tt.want || cond.Reason != tt.reason {
				t.Fatalf("%s %s %q, want %s %s", cond.Type, cond.Reason, cond.Message, tt.want, tt.reason)
			}
			if tt.want == certificatesv1.CertificateApproved {
				cert, err := tls.X509KeyPair(issued(t, cp, n), pemKey(t, key))
				if err != nil {
					t.Fatal(err)
				}
				leaf, _ := x509.ParseCertificate(cert.Certificate[0])
				if _, err := leaf.Verify(x509.VerifyOptions{Roots: caPool(cp), DNSName: "node-a", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
					t.Errorf("the serving certificate does not verify for node-a: %v", err)
				}
			}
		})
	}
	if got := testutil.CollectAndCount(h.approver.decisions); got != before+3 {
		t.Errorf("decision series %d, want %d (the renewal is not pxejoin's)", got, before+3)
	}
}

// TestSelfCheck: a binding that auto-approves system:bootstrappers fails the self-check, naming
// it (warn: a metric instead); a boot server without approve on the signers fails it too.
func TestSelfCheck(t *testing.T) {
	h := newHarness(t)
	cp, ctx := h.cp, context.Background()
	const binding = "test-autoapprove-every-bootstrapper"
	_, err := cp.Admin().RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: binding},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "system:certificates.k8s.io:certificatesigningrequests:nodeclient"},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: "system:bootstrappers"}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	removed := false
	remove := func() {
		if !removed {
			removed = true
			_ = cp.Admin().RbacV1().ClusterRoleBindings().Delete(context.Background(), binding, metav1.DeleteOptions{})
		}
	}
	t.Cleanup(remove)
	var sc *SelfCheckError
	eventually.True(t, "the self-check fails", func() bool { return errors.As(h.approver.SelfCheck(ctx), &sc) })
	if !strings.Contains(sc.Error(), "ClusterRoleBinding "+binding) {
		t.Errorf("the error does not name the binding: %v", sc)
	}
	h.approver.opts.Warn = true
	if err := h.approver.SelfCheck(ctx); err != nil || testutil.ToFloat64(h.approver.selfCheck) != 1 {
		t.Errorf("warn: %v, gauge %v", err, testutil.ToFloat64(h.approver.selfCheck))
	}
	h.approver.opts.Warn = false
	remove()
	eventually.True(t, "the self-check passes again", func() bool { return h.approver.SelfCheck(ctx) == nil })

	// Without approve on the signers.
	role := documentedRole(t)
	var rules []rbacv1.PolicyRule
	for _, r := range role.Rules {
		if !strings.Contains(fmt.Sprint(r.Resources), "signers") {
			rules = append(rules, r)
		}
	}
	role.Rules = rules
	weak := clientAs(t, cp, "pxejoin-approver-test-noapprove", role)
	w, err := New(Options{Client: weak, Informers: informers.NewSharedInformerFactory(weak, 0), Tokens: h.tokens, Policy: Policy{Group: bootstraptoken.PxejoinGroup}})
	if err != nil {
		t.Fatal(err)
	}
	err = w.SelfCheck(ctx)
	if !errors.As(err, &sc) || !strings.Contains(err.Error(), "approve signers "+clientSigner) || !strings.Contains(err.Error(), ClusterRole) {
		t.Errorf("self-check without approve: %v", err)
	}
	// And the API refuses its approval (of a CSR nobody else decides: a serving CSR of the admin's).
	name, _ := request(t, cp.Admin(), servingSigner, nodeSubj("node-d"), []string{"node-d"}, nil,
		certificatesv1.UsageDigitalSignature, certificatesv1.UsageServerAuth)
	t.Cleanup(func() {
		_ = cp.Admin().CertificatesV1().CertificateSigningRequests().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	got, err := weak.CertificatesV1().CertificateSigningRequests().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.write(ctx, got, Decision{Verdict: Approve, Reason: ReasonMachineNode, Message: "test"}); !apierrors.IsForbidden(err) {
		t.Errorf("approving without approve on the signer: %v, want Forbidden", err)
	}
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func pemKey(t testing.TB, key *ecdsa.PrivateKey) []byte {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pemBlock("EC PRIVATE KEY", der)
}

func caPool(cp *controlplane.ControlPlane) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(cp.CA())
	return p
}

// TestBootstrapRBACWithDocumentedRole: the boot server creates and puts back its tokens' RBAC
// with exactly the ClusterRole pxejoin:token-rbac of deploy/rbac/approver.yaml, and a pxejoin
// token can then send its CSR.
func TestBootstrapRBACWithDocumentedRole(t *testing.T) {
	h := newHarness(t)
	cp, ctx := h.cp, context.Background()
	rbac := cp.Admin().RbacV1()
	_ = rbac.ClusterRoleBindings().Delete(ctx, NodeBootstrapperBinding, metav1.DeleteOptions{})
	_ = rbac.ClusterRoleBindings().Delete(ctx, GetNodesRole, metav1.DeleteOptions{})
	_ = rbac.ClusterRoles().Delete(ctx, GetNodesRole, metav1.DeleteOptions{})
	_ = rbac.RoleBindings("kube-system").Delete(ctx, JoinConfigRole, metav1.DeleteOptions{})
	_ = rbac.Roles("kube-system").Delete(ctx, JoinConfigRole, metav1.DeleteOptions{})
	_ = rbac.RoleBindings("kube-node-lease").Delete(ctx, NodeLeasesRole, metav1.DeleteOptions{})
	_ = rbac.Roles("kube-node-lease").Delete(ctx, NodeLeasesRole, metav1.DeleteOptions{})
	t.Cleanup(func() { _ = EnsureBootstrapRBAC(context.Background(), cp.Admin(), bootstraptoken.PxejoinGroup, false) })
	c := clientAs(t, cp, "pxejoin-token-rbac-test", roleFromYAML(t, "pxejoin:token-rbac"))
	if err := EnsureBootstrapRBAC(ctx, c, bootstraptoken.PxejoinGroup, false); err != nil {
		t.Fatalf("creating: %v", err)
	}
	if err := EnsureBootstrapRBAC(ctx, c, bootstraptoken.PxejoinGroup, false); err != nil {
		t.Fatalf("putting back: %v", err)
	}
	tok, err := h.tokens.Token(ctx, hwaddr.MAC{0x52, 0x54, 0, 0, 4, 0xa}, "node-e", 1, true)
	if err != nil {
		t.Fatal(err)
	}
	tc := tokenClient(cp, tok)
	eventually.True(t, "a pxejoin token may read kubelet-config, get Nodes and get node Leases", func() bool {
		_, err1 := tc.CoreV1().ConfigMaps("kube-system").Get(ctx, "kubelet-config", metav1.GetOptions{})
		_, err2 := tc.CoreV1().Nodes().Get(ctx, "node-e", metav1.GetOptions{})
		_, err3 := tc.CoordinationV1().Leases("kube-node-lease").Get(ctx, "node-e", metav1.GetOptions{})
		return err1 == nil && apierrors.IsNotFound(err2) && apierrors.IsNotFound(err3)
	})
	name, _ := request(t, tc, clientSigner, nodeSubj("node-e"), nil, nil, clientUsagesEC...)
	if cond := outcome(t, cp, name); cond.Type != certificatesv1.CertificateApproved {
		t.Errorf("node-e: %s %s", cond.Type, cond.Reason)
	}
}

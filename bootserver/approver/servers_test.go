package approver

import (
	"context"
	"crypto/x509/pkix"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	bolt "go.etcd.io/bbolt"
	authenticationv1 "k8s.io/api/authentication/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pxejoin/pxejoin/bootserver/tokens"
	"github.com/pxejoin/pxejoin/internal/bootstraptoken"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
	"github.com/pxejoin/pxejoin/lab/eventually"
)

// TestTokenOfAnotherBootServer: two boot servers share a cluster; server A mints tokens and its
// approver is not running; server B's approver approves the CSR of A's token for the node A
// minted it for (a name too long for a label, known from the Secret's annotation), and denies a
// theft with another A token (wrong node, not "not live") and revokes that token.
func TestTokenOfAnotherBootServer(t *testing.T) {
	b := newHarness(t) // server B: token manager and approver
	cp, ctx := b.cp, context.Background()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "a.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	a, err := tokens.New(tokens.Options{Client: cp.Admin(), DB: db, TTL: 15 * time.Minute, Groups: []string{bootstraptoken.PxejoinGroup}})
	if err != nil {
		t.Fatal(err)
	}

	long := strings.Repeat("n", 60) + ".rack-1.example.com" // 79 characters: no label holds it
	tokLong, err := a.Token(ctx, hwaddr.MAC{0x52, 0x54, 0, 0, 0xa, 1}, long, 1, true)
	if err != nil {
		t.Fatal(err)
	}
	name, _ := request(t, tokenClient(cp, tokLong), clientSigner, nodeSubj(long), nil, nil, clientUsagesEC...)
	if cond := outcome(t, cp, name); cond.Type != certificatesv1.CertificateApproved || cond.Reason != "PxejoinMachineNode" {
		t.Fatalf("server A's token asking for its own node, decided by server B: %s %s %q", cond.Type, cond.Reason, cond.Message)
	}
	issued(t, cp, name)
	tokenGone(t, cp, tokLong) // B's CSR watch deletes a used token whoever minted it

	tokA, err := a.Token(ctx, hwaddr.MAC{0x52, 0x54, 0, 0, 0xa, 2}, "node-a2", 1, true)
	if err != nil {
		t.Fatal(err)
	}
	stolen, _ := request(t, tokenClient(cp, tokA), clientSigner, nodeSubj("node-b2"), nil, nil, clientUsagesEC...)
	cond := outcome(t, cp, stolen)
	if cond.Type != certificatesv1.CertificateDenied || cond.Reason != "PxejoinWrongNode" || !strings.Contains(cond.Message, `"node-a2"`) {
		t.Fatalf("server A's token asking for another node, decided by server B: %s %s %q, want Denied PxejoinWrongNode", cond.Type, cond.Reason, cond.Message)
	}
	tokenGone(t, cp, tokA)
	if c, err := cp.Admin().CertificatesV1().CertificateSigningRequests().Get(ctx, stolen, metav1.GetOptions{}); err != nil || len(c.Status.Certificate) > 0 {
		t.Errorf("the denied CSR: %v, certificate %d bytes", err, len(c.Status.Certificate))
	}
	for _, tt := range []struct{ decision, reason string }{{"approve", ReasonMachineNode}, {"deny", ReasonWrongNode}} {
		if got := testutil.ToFloat64(b.approver.decisions.WithLabelValues(clientSigner, tt.decision, tt.reason)); got != 1 {
			t.Errorf("server B's pxejoin_csr_decisions_total{%s,%s} = %v, want 1", tt.decision, tt.reason, got)
		}
	}
}

// TestDecisionsCountedNoSecrets: every way the approver decides a token's CSR is counted in
// pxejoin_csr_decisions_total, once per CSR, and no token's secret appears in what it writes or
// logs (CSR conditions, Events, logs, metrics).
func TestDecisionsCountedNoSecrets(t *testing.T) {
	h := newHarness(t)
	cp, ctx := h.cp, context.Background()
	var secrets []string
	mint := func(i byte, node string) string {
		tok, err := h.tokens.Token(ctx, hwaddr.MAC{0x52, 0x54, 0, 0, 0xd, i}, node, 1, true)
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, strings.SplitN(tok, ".", 2)[1])
		return tok
	}
	// A token of pxejoin's group that no boot server minted (no labels): not live.
	foreign, err := bootstraptoken.Create(ctx, cp.Admin(), bootstraptoken.Options{TTL: 10 * time.Minute, Groups: []string{bootstraptoken.PxejoinGroup}})
	if err != nil {
		t.Fatal(err)
	}
	secrets = append(secrets, strings.SplitN(foreign, ".", 2)[1])
	eventually.True(t, "the foreign token authenticates", func() bool {
		_, err := tokenClient(cp, foreign).AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
		return err == nil
	})
	twice := mint(9, "count-twice")

	subj := func(node string, more ...string) pkix.Name {
		n := nodeSubj(node)
		n.Organization = append(n.Organization, more...)
		return n
	}
	cases := []struct {
		reason, tok string
		subject     pkix.Name
		dns         []string
		usages      []certificatesv1.KeyUsage
		want        certificatesv1.RequestConditionType
	}{
		{ReasonMachineNode, twice, nodeSubj("count-twice"), nil, clientUsagesEC, certificatesv1.CertificateApproved},
		{ReasonNotFirst, twice, nodeSubj("count-twice"), nil, clientUsagesEC, certificatesv1.CertificateDenied},
		{ReasonWrongNode, mint(1, "count-1"), nodeSubj("count-other"), nil, clientUsagesEC, certificatesv1.CertificateDenied},
		{ReasonWrongSubject, mint(2, "count-2"), subj("count-2", "system:masters"), nil, clientUsagesEC, certificatesv1.CertificateDenied},
		{ReasonSANs, mint(3, "count-3"), nodeSubj("count-3"), []string{"count-3"}, clientUsagesEC, certificatesv1.CertificateDenied},
		{ReasonWrongUsages, mint(4, "count-4"), nodeSubj("count-4"), nil,
			[]certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth, certificatesv1.UsageServerAuth}, certificatesv1.CertificateDenied},
		{ReasonTokenNotLive, foreign, nodeSubj("count-5"), nil, clientUsagesEC, certificatesv1.CertificateDenied},
	}
	// All sent before any is decided: an issued CSR's token is deleted, and the second CSR of
	// twice must authenticate.
	var names []string
	for _, c := range cases {
		name, _ := request(t, tokenClient(cp, c.tok), clientSigner, c.subject, c.dns, nil, c.usages...)
		names = append(names, name)
	}
	var conds []string
	for i, c := range cases {
		cond := outcome(t, cp, names[i])
		if cond.Type != c.want || cond.Reason != conditionReason(c.reason) {
			t.Errorf("%s: %s %s %q, want %s %s", c.reason, cond.Type, cond.Reason, cond.Message, c.want, conditionReason(c.reason))
		}
		conds = append(conds, cond.Message)
		verdict := map[certificatesv1.RequestConditionType]string{certificatesv1.CertificateApproved: "approve", certificatesv1.CertificateDenied: "deny"}[c.want]
		eventually.True(t, "pxejoin_csr_decisions_total{"+verdict+","+c.reason+"} = 1", func() bool {
			return testutil.ToFloat64(h.approver.decisions.WithLabelValues(clientSigner, verdict, c.reason)) == 1
		})
	}
	tokenGone(t, cp, foreign) // a denied token is revoked, whoever minted it
	if got := testutil.CollectAndCount(h.approver.decisions); got != len(cases) {
		t.Errorf("%d decision series, want %d", got, len(cases))
	}

	evs, err := cp.Admin().CoreV1().Events("default").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var written strings.Builder
	for _, e := range evs.Items {
		written.WriteString(e.Reason + " " + e.Message + "\n")
	}
	metrics, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for what, text := range map[string]string{"CSR conditions": strings.Join(conds, "\n"), "Events": written.String(), "logs": h.logs.String(), "metrics": fmt.Sprint(metrics)} {
		if text == "" && what != "metrics" {
			t.Errorf("no %s to look at", what)
		}
		for _, s := range secrets {
			if strings.Contains(text, s) {
				t.Errorf("a token secret appears in the %s", what)
			}
		}
	}
}

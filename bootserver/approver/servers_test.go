package approver

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	bolt "go.etcd.io/bbolt"
	certificatesv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pxejoin/pxejoin/bootserver/tokens"
	"github.com/pxejoin/pxejoin/internal/bootstraptoken"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
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

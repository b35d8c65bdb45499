package tokens

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	bolt "go.etcd.io/bbolt"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
	"github.com/pxejoin/pxejoin/lab/controlplane"
	"github.com/pxejoin/pxejoin/lab/eventually"
	"github.com/pxejoin/pxejoin/lab/testenv"
)

// server is a Manager with a state store of its own, as another boot server (or this one after a
// restart with a new store) has; run starts its watches.
func server(t *testing.T, c kubernetes.Interface, run bool) *Manager {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	m, err := New(Options{Client: c, DB: db, TTL: 15 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if run {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { _ = m.Run(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
		eventually.True(t, "the token watch syncs", m.shared.HasSynced)
	}
	return m
}

// TestTokensAcrossServers: a server finds another server's live token of a machine's boot by its
// labels and hands out the same token instead of minting; a new boot replaces it whoever minted
// it; a token used for an issued CSR is deleted by a server that did not mint it.
func TestTokensAcrossServers(t *testing.T) {
	testenv.RequireRoot(t)
	cp := controlplane.Shared(t)
	ctx := context.Background()
	c, _ := budgetedClient(t, cp, 50, 100)
	a, b := server(t, c, false), server(t, c, true)
	secretOf := func(tok string) error {
		_, err := c.CoreV1().Secrets("kube-system").Get(ctx, "bootstrap-token-"+strings.Split(tok, ".")[0], metav1.GetOptions{})
		return err
	}

	mac := hwaddr.MAC{0x52, 0x54, 0, 0x66, 0, 1}
	tokA, err := a.Token(ctx, mac, "across-1", 1, true)
	if err != nil {
		t.Fatal(err)
	}
	eventually.True(t, "server b sees server a's token", func() bool { return b.sharedHas(strings.Split(tokA, ".")[0]) })
	tokB, err := b.Token(ctx, mac, "across-1", 1, true)
	if err != nil || tokB != tokA {
		t.Fatalf("server b handed out another token for the same boot (%v)", err)
	}
	if n := testutil.ToFloat64(b.adopted); n != 1 || testutil.ToFloat64(b.minted) != 0 {
		t.Errorf("adopted %v minted %v, want 1 and 0", n, testutil.ToFloat64(b.minted))
	}
	tok2, err := b.Token(ctx, mac, "across-1", 2, true)
	if err != nil || tok2 == tokA {
		t.Fatalf("boot 2: %v", err)
	}
	if err := secretOf(tokA); !apierrors.IsNotFound(err) {
		t.Errorf("boot 1's token is still there after boot 2's was minted: %v", err)
	}

	// Server a mints and never watches; server b deletes the token once its CSR is issued.
	mac3 := hwaddr.MAC{0x52, 0x54, 0, 0x66, 0, 3}
	if err := joinOnce(ctx, cp, a, c, 3, mac3); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, "server b deletes server a's used token", func() bool {
		return testutil.ToFloat64(b.deleted.WithLabelValues(ReasonCSRIssued)) >= 1
	})
	for _, r := range a.Records() {
		if r.MAC == mac3 {
			if err := secretOf(r.ID + ".x"); !apierrors.IsNotFound(err) {
				t.Errorf("server a's used token is still there: %v", err)
			}
		}
	}
}

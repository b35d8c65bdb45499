package tokens

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	bolt "go.etcd.io/bbolt"
	certificatesv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
	"github.com/pxejoin/pxejoin/lab/eventually"
)

// The fake clientset only checks the manager's bookkeeping; the real control plane tests are in
// bootserver/server.
func newManager(t *testing.T) (*Manager, *fake.Clientset, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	c := fake.NewClientset()
	m, err := New(Options{Client: c, DB: db, TTL: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return m, c, path
}

func secrets(t *testing.T, c *fake.Clientset) int {
	l, err := c.CoreV1().Secrets("kube-system").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return len(l.Items)
}

func TestLifecycle(t *testing.T) {
	ctx := context.Background()
	m, c, path := newManager(t)
	mac := hwaddr.MAC{0x52, 0x54, 0, 0, 0, 1}
	tok1, err := m.Token(ctx, mac, "worker-1", 1, true)
	if err != nil {
		t.Fatal(err)
	}
	tok1b, _ := m.Token(ctx, mac, "worker-1", 1, true)
	if tok1 != tok1b || secrets(t, c) != 1 {
		t.Fatalf("the same boot must reuse its live token (%d secrets)", secrets(t, c))
	}
	tok2, _ := m.Token(ctx, mac, "worker-1", 2, true)
	if tok2 == tok1 || secrets(t, c) != 1 {
		t.Fatalf("a new boot must replace the token (%d secrets)", secrets(t, c))
	}
	other, _ := m.Token(ctx, hwaddr.MAC{0x52, 0x54, 0, 0, 0, 2}, "worker-2", 1, true)
	if secrets(t, c) != 2 {
		t.Fatal("each machine has its own token")
	}
	// The CSR made with worker-2's token is issued: a deleter deletes that token.
	id2, _, _ := strings.Cut(other, ".")
	m.csrSeen(ctx, &certificatesv1.CertificateSigningRequest{
		Spec:   certificatesv1.CertificateSigningRequestSpec{Username: "system:bootstrap:" + id2},
		Status: certificatesv1.CertificateSigningRequestStatus{Certificate: []byte("x")},
	})
	deleters, stop := context.WithCancel(ctx)
	defer stop()
	go m.deleteLoop(deleters)
	eventually.True(t, "the used token is deleted", func() bool { return len(m.Records()) == 1 })
	if secrets(t, c) != 1 {
		t.Fatalf("issued CSR: want 1 secret left, have %d", secrets(t, c))
	}
	if err := m.RevokeMAC(ctx, mac, ReasonNodeReady); err != nil {
		t.Fatal(err)
	}
	if secrets(t, c) != 0 || len(m.Records()) != 0 {
		t.Fatal("node-ready must delete the token")
	}
	// Nothing secret reached the state file.
	raw, _ := os.ReadFile(path)
	for _, tok := range []string{tok1, tok2, other} {
		_, sec, _ := strings.Cut(tok, ".")
		if bytes.Contains(raw, []byte(sec)) {
			t.Fatal("a token secret was written to the state store")
		}
	}
}

func TestRevokeNodeOnlyOlderTokens(t *testing.T) {
	ctx := context.Background()
	m, c, _ := newManager(t)
	if _, err := m.Token(ctx, hwaddr.MAC{0x52, 0x54, 0, 0, 0, 1}, "worker-1", 1, true); err != nil {
		t.Fatal(err)
	}
	// A Node of that name that existed before the token (a reinstall) must not delete it.
	_ = m.RevokeNode(ctx, "worker-1", time.Now().Add(-time.Hour), ReasonNodeRegistered)
	if secrets(t, c) != 1 {
		t.Fatal("a Node older than the token must not delete it")
	}
	_ = m.RevokeNode(ctx, "worker-1", time.Now().Add(time.Second), ReasonNodeRegistered)
	if secrets(t, c) != 0 {
		t.Fatal("a Node registered after the token must delete it")
	}
}

// TestMACLocksForgotten: the per-MAC locks of Token calls are forgotten once the calls return, so
// that MACs from the network do not pile up.
func TestMACLocksForgotten(t *testing.T) {
	ctx := context.Background()
	m, _, _ := newManager(t)
	for i := 0; i < 100; i++ {
		if _, err := m.Token(ctx, hwaddr.MAC{0x52, 0x54, 0, 0, 1, byte(i)}, "n", 1, true); err != nil {
			t.Fatal(err)
		}
	}
	m.mu.Lock()
	n := len(m.macLock)
	m.mu.Unlock()
	if n != 0 {
		t.Errorf("%d MAC locks kept after 100 machines' Token calls returned", n)
	}
}

// TestUnknownBudget: machines not in the inventory get at most MaxUnknown live tokens, minted at
// UnknownPerMinute; each refusal is a *LimitError with a wait and counted; inventory machines are
// never refused; a token deleted or a minute passed makes room again.
func TestUnknownBudget(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	db, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	c := fake.NewClientset()
	m, err := New(Options{Client: c, DB: db, TTL: 10 * time.Minute, MaxUnknown: 3, UnknownPerMinute: 12, // bursts of 2
		Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	unknown := func(i int) hwaddr.MAC { return hwaddr.MAC{0x52, 0x54, 0, 0, 2, byte(i)} }
	type step struct {
		name    string
		mac     hwaddr.MAC
		boot    int
		known   bool
		advance time.Duration // before the call
		refused string        // "": minted
	}
	for _, s := range []step{
		{"first stranger", unknown(1), 1, false, 0, ""},
		{"second stranger", unknown(2), 1, false, 0, ""},
		{"third stranger: burst spent", unknown(3), 1, false, 0, RefusedUnknownRate},
		{"an inventory machine meanwhile", hwaddr.MAC{0x52, 0x54, 0, 0, 0, 1}, 1, true, 0, ""},
		{"the same stranger's same boot: its live token", unknown(1), 1, false, 0, ""},
		{"third stranger, 5 s later", unknown(3), 1, false, 5 * time.Second, ""},
		{"fourth stranger: cap", unknown(4), 1, false, time.Minute, RefusedUnknownCap},
		{"a stranger's new boot replaces its own token", unknown(1), 2, false, 0, ""},
		{"more inventory machines", hwaddr.MAC{0x52, 0x54, 0, 0, 0, 2}, 1, true, 0, ""},
	} {
		now = now.Add(s.advance)
		tok, err := m.Token(ctx, s.mac, "n", s.boot, s.known)
		var le *LimitError
		switch {
		case s.refused == "" && err != nil:
			t.Fatalf("%s: %v", s.name, err)
		case s.refused != "" && !errors.As(err, &le):
			t.Fatalf("%s: %q, %v: want a refusal", s.name, tok, err)
		case s.refused != "" && (le.RetryAfter() < time.Second || !strings.Contains(le.Error(), "unknownMachines.")):
			t.Errorf("%s: %v, retry after %v", s.name, le, le.RetryAfter())
		}
	}
	unknownSecrets := 0
	for _, r := range m.Records() {
		if r.Unknown {
			unknownSecrets++
		}
	}
	if unknownSecrets != 3 || secrets(t, c) != 5 {
		t.Errorf("%d unknown machines' tokens, %d secrets: want 3 and 5", unknownSecrets, secrets(t, c))
	}
	for reason, want := range map[string]float64{RefusedUnknownRate: 1, RefusedUnknownCap: 1} {
		if got := testutil.ToFloat64(m.refused.WithLabelValues(reason)); got != want {
			t.Errorf("refused %s: %v, want %v", reason, got, want)
		}
	}
	// A stranger's token goes (its CSR was issued): the next stranger gets one.
	if err := m.RevokeMAC(ctx, unknown(2), ReasonCSRIssued); err != nil {
		t.Fatal(err)
	}
	now = now.Add(time.Minute)
	if _, err := m.Token(ctx, unknown(4), "n", 1, false); err != nil {
		t.Errorf("after a stranger's token went: %v", err)
	}
}

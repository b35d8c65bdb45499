package tokens

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	certificatesv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
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
	const mac = "52:54:00:00:00:01"
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
	other, _ := m.Token(ctx, "52:54:00:00:00:02", "worker-2", 1, true)
	if secrets(t, c) != 2 {
		t.Fatal("each machine has its own token")
	}
	// The CSR made with worker-2's token is issued: that token goes.
	id2, _, _ := strings.Cut(other, ".")
	m.csrSeen(ctx, &certificatesv1.CertificateSigningRequest{
		Spec:   certificatesv1.CertificateSigningRequestSpec{Username: "system:bootstrap:" + id2},
		Status: certificatesv1.CertificateSigningRequestStatus{Certificate: []byte("x")},
	})
	if secrets(t, c) != 1 || len(m.Records()) != 1 {
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
	if _, err := m.Token(ctx, "52:54:00:00:00:01", "worker-1", 1, true); err != nil {
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

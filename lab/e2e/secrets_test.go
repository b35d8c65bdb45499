package e2e

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
)

// TestMintedSecrets: the watch the VM joins use to learn the boot server's token secrets sees the
// tokens there before it started and those minted (and deleted) after, and no other Secret.
func TestMintedSecrets(t *testing.T) {
	secret := func(name, sec string, managed bool) *corev1.Secret {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: metav1.NamespaceSystem},
			Type: corev1.SecretTypeBootstrapToken, Data: map[string][]byte{bootstrapapi.BootstrapTokenSecretKey: []byte(sec)}}
		if managed {
			s.Labels = map[string]string{"app.kubernetes.io/managed-by": "pxejoin-bootserver"}
		}
		return s
	}
	c := fake.NewSimpleClientset(secret("bootstrap-token-aaaaaa", "0000000000000000", true))
	watching := make(chan struct{})
	var once sync.Once
	c.PrependWatchReactor("secrets", func(k8stesting.Action) (bool, watch.Interface, error) {
		once.Do(func() { close(watching) })
		return false, nil, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	seen := mintedSecrets(ctx, t, c)
	<-watching // the fake's watch sees only what happens after it started
	for _, s := range []*corev1.Secret{secret("bootstrap-token-bbbbbb", "1111111111111111", true), secret("bootstrap-token-cccccc", "2222222222222222", false)} {
		if _, err := c.CoreV1().Secrets(metav1.NamespaceSystem).Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.CoreV1().Secrets(metav1.NamespaceSystem).Delete(ctx, "bootstrap-token-bbbbbb", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	want := []string{"0000000000000000", "1111111111111111"}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for got := seen(); !slices.Equal(got, want); got = seen() {
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("secrets seen %q, want %q", got, want)
		}
	}
}

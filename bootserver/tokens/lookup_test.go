package tokens

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// TestRecordOf: another server's token Secret gives the node it was minted for (the annotation,
// else the label) and is live only when it is pxejoin's, names a node and has not expired.
func TestRecordOf(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	long := strings.Repeat("n", 60) + ".rack-1.example.com"
	mac := hwaddr.MAC{0x52, 0x54, 0, 0, 0, 1}
	secret := func(edit func(*corev1.Secret)) *corev1.Secret {
		s := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Labels: labels(mac, long, 3), Annotations: map[string]string{AnnotationNode: long}},
			Data: map[string][]byte{bootstrapapi.BootstrapTokenIDKey: []byte("abcdef"),
				bootstrapapi.BootstrapTokenExpirationKey: []byte(now.Add(time.Minute).Format(time.RFC3339))},
		}
		if edit != nil {
			edit(s)
		}
		return s
	}
	for _, tt := range []struct {
		name     string
		s        *corev1.Secret
		node     string
		wantLive bool
	}{
		{"annotated, name too long for a label", secret(nil), long, true},
		{"labelled only (minted before the annotation)", secret(func(s *corev1.Secret) {
			s.Annotations = nil
			s.Labels[LabelNode] = "node-a"
		}), "node-a", true},
		{"no node", secret(func(s *corev1.Secret) { s.Annotations = nil }), "", false},
		{"not pxejoin's", secret(func(s *corev1.Secret) { delete(s.Labels, LabelManagedBy) }), "", false},
		{"another token's Secret", secret(func(s *corev1.Secret) { s.Data[bootstrapapi.BootstrapTokenIDKey] = []byte("zzzzzz") }), "", false},
		{"expired", secret(func(s *corev1.Secret) {
			s.Data[bootstrapapi.BootstrapTokenExpirationKey] = []byte(now.Add(-time.Second).Format(time.RFC3339))
		}), long, false},
		{"unreadable expiry", secret(func(s *corev1.Secret) { s.Data[bootstrapapi.BootstrapTokenExpirationKey] = []byte("soon") }), "", false},
		{"being deleted", secret(func(s *corev1.Secret) { s.DeletionTimestamp = &metav1.Time{Time: now} }), "", false},
		{"none", nil, "", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r, live := recordOf(tt.s, "abcdef", now)
			if live != tt.wantLive || r.Node != tt.node {
				t.Fatalf("node %q live %v, want %q %v", r.Node, live, tt.node, tt.wantLive)
			}
			if live && (r.MAC != mac || r.Boot != 3 || r.ID != "abcdef") {
				t.Errorf("record %+v: want MAC %s, boot 3, id abcdef", r, mac)
			}
		})
	}
}

package tokens

import (
	"context"
	"encoding/hex"
	"fmt"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
	bootstraputil "k8s.io/cluster-bootstrap/token/util"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// Lookup returns the record of the token with id and whether it is live: a pxejoin token (minted by
// this manager or by another boot server sharing the cluster), not deleted and not past its expiry.
// The approver asks it which node a token was minted for.
//
// A token this manager did not mint is read from its Secret: the shared watch's copy or, when the
// watch has not seen it yet (a CSR can follow its token's minting by less than the watch's delay),
// the API's. err is an API failure other than NotFound: the caller should retry rather than take
// the token for dead.
func (m *Manager) Lookup(ctx context.Context, id string) (r Record, live bool, err error) {
	now := m.opts.Now()
	m.mu.Lock()
	p, mine := m.byID[id]
	_, gone := m.gone[id]
	m.mu.Unlock()
	switch {
	case mine:
		return *p, now.Before(p.Expires), nil
	case gone:
		return Record{}, false, nil
	}
	name := bootstraputil.BootstrapTokenSecretName(id)
	if obj, ok, _ := m.shared.GetIndexer().GetByKey(metav1.NamespaceSystem + "/" + name); ok {
		s, _ := obj.(*corev1.Secret)
		r, live := recordOf(s, id, now)
		return r, live, nil
	}
	s, err := m.opts.Client.CoreV1().Secrets(metav1.NamespaceSystem).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return Record{}, false, nil
	}
	if err != nil {
		return Record{}, false, fmt.Errorf("tokens: cannot read bootstrap token %s: %w", id, err)
	}
	r, live = recordOf(s, id, now)
	return r, live, nil
}

// recordOf reads the record of token id from its Secret, and whether the token is live: a pxejoin
// boot server's (labelled so), naming its node, and not expired. The node is the annotation every
// token is minted with; a Secret minted before the annotation existed gives its label, which holds
// names up to 63 characters.
func recordOf(s *corev1.Secret, id string, now time.Time) (Record, bool) {
	if s == nil || s.Labels[LabelManagedBy] != ManagedBy || string(s.Data[bootstrapapi.BootstrapTokenIDKey]) != id {
		return Record{}, false
	}
	r := Record{ID: id, Node: s.Annotations[AnnotationNode], Created: s.CreationTimestamp.Time}
	if r.Node == "" {
		r.Node = s.Labels[LabelNode]
	}
	if b, err := hex.DecodeString(s.Labels[LabelMAC]); err == nil && len(b) == len(r.MAC) {
		r.MAC = hwaddr.MAC(b)
	}
	r.Boot, _ = strconv.Atoi(s.Labels[LabelBoot])
	expires, err := time.Parse(time.RFC3339, string(s.Data[bootstrapapi.BootstrapTokenExpirationKey]))
	if err != nil || r.Node == "" || s.DeletionTimestamp != nil {
		return Record{}, false
	}
	r.Expires = expires
	return r, now.Before(expires)
}

// Reasons the approver deletes a token (labels of pxejoin_tokens_deleted_total).
const (
	// ReasonCSRDenied: a CSR made with the token was denied (it asked for another node's name, or
	// not in the kubelet's form, or was not the token's first): the token is revoked.
	ReasonCSRDenied = "csr-denied"
)

package tokens

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
	bootstraputil "k8s.io/cluster-bootstrap/token/util"

	"github.com/pxejoin/pxejoin/internal/bootstraptoken"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// Tokens across servers. Every token Secret a pxejoin boot server mints carries labels that say
// whose it is, so that any server finds, reuses or deletes a machine's token, not only the one
// that minted it (a restarted server, another server of the segment):
//
//	app.kubernetes.io/managed-by: pxejoin-bootserver
//	pxejoin.io/mac:  525400aabbcc   the machine
//	pxejoin.io/boot: 3              the minting server's boot number of the machine (bootserver/status)
//	pxejoin.io/node: worker-1       the node name, when it is a valid label value (≤ 63 characters)
//
// and the annotation pxejoin.io/node: the node name whatever its length (a node name may have 253
// characters), by which any server's approver knows which node a token was minted for (Lookup).
//
// The Manager watches these Secrets (one informer on kube-system, selected by the managed-by
// label; no API call on the join path). Token reuses a live token of the same machine and boot
// whoever minted it, and deletes the machine's other tokens; the CSR and Node watches delete a used
// token whoever minted it. The boot number is the minting server's; the cluster-wide count is
// Machine.status.boot (bootserver/statussync).
const (
	ManagedBy = "pxejoin-bootserver"
	LabelMAC  = "pxejoin.io/mac"
	LabelBoot = "pxejoin.io/boot"
	LabelNode = "pxejoin.io/node"
	// AnnotationNode is the node name a token was minted for (an annotation: labels hold 63 characters).
	AnnotationNode = "pxejoin.io/node"
)

// goneFor is how long a token deleted here is not taken for live though the informer still shows
// it (the watch is usually well under a second behind).
const goneFor = 2 * time.Minute

// Indexes of the shared informer.
const (
	byMACIndex  = "mac"
	byNodeIndex = "node"
)

// labels are the labels of a token Secret minted for mac's boot as node.
func labels(mac hwaddr.MAC, node string, boot int) map[string]string {
	l := map[string]string{LabelManagedBy: ManagedBy, LabelMAC: mac.Hex(), LabelBoot: fmt.Sprint(boot)}
	if len(validation.IsValidLabelValue(node)) == 0 && node != "" {
		l[LabelNode] = node
	}
	return l
}

// newShared makes the informer of every boot server's token Secrets; Run starts it.
func (m *Manager) newShared() error {
	f := informers.NewSharedInformerFactoryWithOptions(m.opts.Client, 10*time.Minute, informers.WithNamespace(metav1.NamespaceSystem),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = LabelManagedBy + "=" + ManagedBy }))
	m.shared = f.Core().V1().Secrets().Informer()
	return m.shared.AddIndexers(cache.Indexers{
		byMACIndex:  func(obj any) ([]string, error) { return labelOf(obj, LabelMAC), nil },
		byNodeIndex: func(obj any) ([]string, error) { return labelOf(obj, LabelNode), nil },
	})
}

func labelOf(obj any, key string) []string {
	if s, ok := obj.(*corev1.Secret); ok && s.Labels[key] != "" {
		return []string{s.Labels[key]}
	}
	return nil
}

// sharedBy returns the token Secrets the informer holds under an index value; none before it synced.
func (m *Manager) sharedBy(index, value string) []*corev1.Secret {
	if !m.shared.HasSynced() {
		return nil
	}
	objs, _ := m.shared.GetIndexer().ByIndex(index, value)
	out := make([]*corev1.Secret, 0, len(objs))
	for _, o := range objs {
		if s, ok := o.(*corev1.Secret); ok {
			out = append(out, s)
		}
	}
	return out
}

// sharedHas reports whether the informer holds the Secret of token id (minted by any boot server).
func (m *Manager) sharedHas(id string) bool {
	_, ok, _ := m.shared.GetIndexer().GetByKey(metav1.NamespaceSystem + "/" + bootstraputil.BootstrapTokenSecretName(id))
	return ok
}

// adopt looks among other servers' tokens of mac (those without a record here) for one of boot
// that is live; it takes it over (records it) and returns it. The others are returned as stale.
func (m *Manager) adopt(mac hwaddr.MAC, node string, boot int, known bool, now time.Time) (tok string, stale []string, err error) {
	for _, s := range m.sharedBy(byMACIndex, mac.Hex()) {
		id, secret := string(s.Data[bootstrapapi.BootstrapTokenIDKey]), string(s.Data[bootstrapapi.BootstrapTokenSecretKey])
		m.mu.Lock()
		_, mine := m.byID[id]
		_, gone := m.gone[id]
		m.mu.Unlock()
		if mine || gone || id == "" {
			continue
		}
		expires, perr := time.Parse(time.RFC3339, string(s.Data[bootstrapapi.BootstrapTokenExpirationKey]))
		if tok != "" || perr != nil || s.Labels[LabelBoot] != fmt.Sprint(boot) || expires.Sub(now) <= m.margin() ||
			!bootstraputil.IsValidBootstrapToken(id+"."+secret) {
			stale = append(stale, id)
			continue
		}
		r := &Record{ID: id, MAC: mac, Node: node, Boot: boot, Created: s.CreationTimestamp.Time, Expires: expires, Unknown: !known}
		if err := m.put(r); err != nil {
			return "", nil, fmt.Errorf("tokens: cannot record token %s: %w", id, err)
		}
		m.mu.Lock()
		m.byID[id], m.secrets[id] = r, secret
		m.mu.Unlock()
		m.adopted.Inc()
		m.log.Info("bootstrap token taken over from another boot server", "mac", mac, "node", node, "boot", boot, "token_id", id)
		tok = id + "." + secret
	}
	return tok, stale, nil
}

// deleteShared deletes the Secret of a token this manager has no record of (another server's).
func (m *Manager) deleteShared(ctx context.Context, id, reason string) error {
	if err := bootstraptoken.Delete(ctx, m.opts.Deletes, id); err != nil {
		return err
	}
	m.mu.Lock()
	m.gone[id] = m.opts.Now()
	m.mu.Unlock()
	m.deleted.WithLabelValues(reason).Inc()
	m.log.Info("bootstrap token of another boot server deleted", "token_id", id, "reason", reason)
	return nil
}

// sharedMintedBefore returns the ids of the tokens any server minted for node before registered.
func (m *Manager) sharedMintedBefore(node string, registered time.Time) []string {
	var ids []string
	for _, s := range m.sharedBy(byNodeIndex, node) {
		if !registered.Before(s.CreationTimestamp.Time) {
			ids = append(ids, string(s.Data[bootstrapapi.BootstrapTokenIDKey]))
		}
	}
	return ids
}

// Package etcdjoin adds a joining control-plane node to the cluster's stacked etcd as kubeadm does:
// find the members from the etcd mirror Pods' annotation, add this node as a learner (after removing a
// stale member of the same name, e.g. a diskless node that rebooted without its data), and once its
// etcd runs, promote it when it has caught up, then wait until every member is healthy.
package etcdjoin

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"path"
	"slices"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/pxejoin/pxejoin/nodeagent/controlplane/manifests"
	"github.com/pxejoin/pxejoin/nodeagent/nodefiles"
)

// AdvertiseClientURLsAnnotation is where kubeadm's etcd Pods say how to reach them.
const AdvertiseClientURLsAnnotation = "kubeadm.kubernetes.io/etcd.advertise-client-urls"

// retryInterval is how often a refused step (promote before the learner caught up, a member not yet
// healthy) is tried again.
const retryInterval = 500 * time.Millisecond

// Endpoints lists the etcd members' client URLs from the annotation on the etcd static Pods' mirror
// Pods in kube-system (component=etcd, tier=control-plane), as kubeadm's NewFromCluster does.
func Endpoints(ctx context.Context, c kubernetes.Interface) ([]string, error) {
	pods, err := c.CoreV1().Pods(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{LabelSelector: "component=etcd,tier=control-plane"})
	if err != nil {
		return nil, fmt.Errorf("cannot list the etcd Pods in kube-system: %w", err)
	}
	var eps []string
	for _, p := range pods.Items {
		v := p.Annotations[AdvertiseClientURLsAnnotation]
		if v == "" {
			return nil, fmt.Errorf("the etcd Pod %s lacks the annotation %s: was this cluster's etcd made by kubeadm?", p.Name, AdvertiseClientURLsAnnotation)
		}
		for _, u := range strings.Split(v, ",") {
			if u = strings.TrimSpace(u); u != "" && !slices.Contains(eps, u) {
				eps = append(eps, u)
			}
		}
	}
	if len(eps) == 0 {
		return nil, errors.New("no etcd Pods (component=etcd) in kube-system: the cluster's etcd is not a kubeadm stacked etcd; join with an external etcd in the ClusterConfiguration")
	}
	sort.Strings(eps)
	return eps, nil
}

// ClientTLS is the TLS configuration kubeadm's etcd client uses: the etcd CA and the API server's
// etcd client certificate, from certDir under root.
func ClientTLS(root nodefiles.Root, certDir string) (*tls.Config, error) {
	caPEM, err := root.Read(path.Join(certDir, "etcd/ca.crt"))
	if err != nil {
		return nil, fmt.Errorf("the etcd CA is missing: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("etcd/ca.crt holds no certificate")
	}
	cert, err := tls.LoadX509KeyPair(root.Join(path.Join(certDir, "apiserver-etcd-client.crt")), root.Join(path.Join(certDir, "apiserver-etcd-client.key")))
	if err != nil {
		return nil, fmt.Errorf("the etcd client certificate (run control-plane-prepare/certs first): %w", err)
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// Joiner adds one member.
type Joiner struct {
	Endpoints []string
	TLS       *tls.Config
	// Name, PeerURL: the new member.
	Name, PeerURL string
	// Timeout bounds each step (kubeadm's timeouts.etcdAPICall, 2 minutes by default).
	Timeout time.Duration
	Printf  func(string, ...any)
}

func (j *Joiner) client(endpoints []string) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{Endpoints: endpoints, TLS: j.TLS, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
}

// AddLearner removes a stale member of this name or peer URL, adds this node as a learner and
// returns the members for --initial-cluster (started members and this one).
func (j *Joiner) AddLearner(ctx context.Context) ([]manifests.Member, error) {
	c, err := j.client(j.Endpoints)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, j.Timeout)
	defer cancel()
	list, err := c.MemberList(ctx)
	if err != nil {
		return nil, fmt.Errorf("cannot list the etcd members at %v: %w", j.Endpoints, err)
	}
	for _, m := range list.Members {
		if m.Name == j.Name || slices.Contains(m.PeerURLs, j.PeerURL) {
			// This node's data directory is empty (preflight): a member of its name or address is a
			// previous life of it, and cannot come back.
			j.Printf("[etcd] Removing the stale etcd member %q (%x, %v): this node rejoins with an empty data directory", m.Name, m.ID, m.PeerURLs)
			if _, err := c.MemberRemove(ctx, m.ID); err != nil {
				return nil, fmt.Errorf("cannot remove the stale etcd member %q (%x): %w; remove it by hand (etcdctl member remove) and retry", m.Name, m.ID, err)
			}
		}
	}
	j.Printf("[etcd] Adding etcd member %s as a learner", j.PeerURL)
	resp, err := c.MemberAddAsLearner(ctx, []string{j.PeerURL})
	if err != nil {
		return nil, fmt.Errorf("cannot add this node to etcd as a learner: %w", err)
	}
	var members []manifests.Member
	for _, m := range resp.Members {
		switch {
		case m.ID == resp.Member.ID:
			members = append(members, manifests.Member{Name: j.Name, PeerURL: j.PeerURL})
		case m.Name != "": // not started yet: etcd would refuse it in --initial-cluster
			for _, u := range m.PeerURLs {
				members = append(members, manifests.Member{Name: m.Name, PeerURL: u})
			}
		}
	}
	j.Printf("[etcd] Announced new etcd member joining to the existing etcd cluster")
	return members, nil
}

// Promote waits until this member's learner has caught up (etcd refuses the promotion before),
// promotes it, and waits until every member answers its status. Retries as kubeadm does, within
// Timeout.
func (j *Joiner) Promote(ctx context.Context) error {
	c, err := j.client(j.Endpoints)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, j.Timeout)
	defer cancel()
	var id uint64
	var last error
	j.Printf("[etcd] Waiting for the new etcd member to join the cluster and catch up. This can take up to %v", j.Timeout)
	for {
		if id == 0 {
			if list, err := c.MemberList(ctx); err == nil {
				for _, m := range list.Members {
					if slices.Contains(m.PeerURLs, j.PeerURL) {
						id = m.ID
						if !m.IsLearner {
							j.Printf("[etcd] Member %x is already a voting member", id)
							return j.waitHealthy(ctx, c)
						}
					}
				}
				if id == 0 {
					return fmt.Errorf("no etcd member has the peer URL %s: run the phase etcd-join again", j.PeerURL)
				}
			} else {
				last = err
			}
		}
		if id != 0 {
			if _, err := c.MemberPromote(ctx, id); err == nil {
				j.Printf("[etcd] Promoted etcd member %x to a voting member", id)
				return j.waitHealthy(ctx, c)
			} else {
				last = err
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the new etcd member was not promoted within %v (last: %v): is its etcd running? see its log (crictl logs, or the kubelet's journal)", j.Timeout, last)
		case <-time.After(retryInterval):
		}
	}
}

// waitHealthy waits until every member answers a status request at its client URLs from the member
// list, as kubeadm's client does after Sync: the etcd Pods' annotations Endpoints came from may still
// name a member that is gone (the stale member of a node that rejoined at a new address, whose
// mirror Pod the kubelet has not replaced yet).
func (j *Joiner) waitHealthy(ctx context.Context, c *clientv3.Client) error {
	var last error
	for {
		n, err := j.unhealthy(ctx, c)
		if last = err; last == nil {
			j.Printf("[etcd] The etcd cluster is healthy (%d members answer)", n)
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the etcd cluster did not become healthy within %v (last: %v)", j.Timeout, last)
		case <-time.After(retryInterval):
		}
	}
}

// unhealthy returns the number of members, or the first member that does not answer.
func (j *Joiner) unhealthy(ctx context.Context, c *clientv3.Client) (int, error) {
	list, err := c.MemberList(ctx)
	if err != nil {
		return 0, fmt.Errorf("cannot list the etcd members: %w", err)
	}
	for _, m := range list.Members {
		if len(m.ClientURLs) == 0 {
			return 0, fmt.Errorf("member %x (%v) has not started", m.ID, m.PeerURLs)
		}
		for _, ep := range m.ClientURLs {
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := c.Status(sctx, ep)
			cancel()
			if err != nil {
				return 0, fmt.Errorf("member %q at %s: %w", m.Name, ep, err)
			}
		}
	}
	return len(list.Members), nil
}

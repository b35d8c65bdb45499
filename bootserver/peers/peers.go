// Package peers tells a boot server which servers of its segment are alive and at which URL: the
// iPXE script names them all so that a download in flight on a server that dies is retried from the
// next (bootserver/httpd's Script), and the pool's shards are divided among the live identities
// (bootserver/shards).
//
// Each server holds one presence Lease (coordination.k8s.io) of its own, named after its identity,
// with its URL in an annotation, renewed every RetryPeriod; a Lease not renewed within its duration
// is a dead server's, and a server that stops deletes its own so that the others take its shards at
// once. The list is read with the renewals and kept in memory: rendering a script or balancing the
// shards makes no API call. Presence Leases are separate from the shards' Leases (they say who is
// alive, not who owns what) and cost one write per server per RetryPeriod.
package peers

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Label marks presence Leases; its value is the segment's name prefix (config dhcp.ha.namePrefix)
// without its trailing '-' or '.'.
const Label = "pxejoin.io/presence"

// URLAnnotation holds a server's HTTP base URL on its presence Lease.
const URLAnnotation = "pxejoin.io/url"

// Options configure Peers.
type Options struct {
	// Client reads and writes Leases in Namespace.
	Client    kubernetes.Interface
	Namespace string
	// Prefix starts the Lease names and is the Label's value: the servers of one segment share it.
	Prefix string
	// Identity names this server; URL is its HTTP base URL.
	Identity, URL string
	// LeaseDuration is how long a presence holds without renewal; RetryPeriod how often it is
	// renewed and the others read.
	LeaseDuration, RetryPeriod time.Duration
	// MaxPeers bounds the servers listed (the rest are ignored, counted); default 16.
	MaxPeers int
	Logger   *slog.Logger
	// Registerer gets pxejoin_peers_live.
	Registerer prometheus.Registerer
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Peers keeps this server's presence and the list of live others.
type Peers struct {
	opts   Options
	log    *slog.Logger
	others atomic.Pointer[[]string]
	// servers is the live identities, this server's included, sorted; nil before the first list.
	servers atomic.Pointer[[]string]
	live    prometheus.Gauge
}

// New makes Peers; Run keeps them.
func New(opts Options) (*Peers, error) {
	if opts.Client == nil || opts.Namespace == "" || opts.Prefix == "" || opts.Identity == "" || opts.URL == "" {
		return nil, errors.New("peers: Client, Namespace, Prefix, Identity and URL are required")
	}
	if opts.LeaseDuration <= 0 || opts.RetryPeriod <= 0 {
		return nil, errors.New("peers: LeaseDuration and RetryPeriod must be positive")
	}
	if opts.MaxPeers <= 0 {
		opts.MaxPeers = 16
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	p := &Peers{opts: opts, log: opts.Logger}
	p.others.Store(&[]string{})
	p.live = prometheus.NewGauge(prometheus.GaugeOpts{Name: "pxejoin_peers_live",
		Help: "Other boot servers of this segment whose presence Lease is current (their URLs are in the iPXE scripts)."})
	if opts.Registerer != nil {
		if err := opts.Registerer.Register(p.live); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// Others returns the URLs of the other live servers, sorted (every server names them in the same
// order). It never calls the API.
func (p *Peers) Others() []string { return *p.others.Load() }

// Live returns the identities of the live servers, this one's included, sorted (every server sees
// the same order), or nil before the others were first read. It never calls the API; an API error
// keeps the servers seen last.
func (p *Peers) Live() []string {
	if l := p.servers.Load(); l != nil {
		return *l
	}
	return nil
}

// Run renews the presence and reads the others every RetryPeriod until ctx ends, then deletes the
// presence Lease; API errors are logged and retried (a server that cannot reach the API keeps naming
// the servers it saw last: a dead one among them costs a machine one failed download before the
// next is tried).
func (p *Peers) Run(ctx context.Context) error {
	t := time.NewTicker(p.opts.RetryPeriod)
	defer t.Stop()
	for {
		if err := p.Sync(ctx); err != nil && ctx.Err() == nil {
			p.log.Warn("boot server presence: cannot reach the API; the scripts keep naming the servers seen last", "err", err)
		}
		select {
		case <-ctx.Done():
			p.leave()
			return nil
		case <-t.C:
		}
	}
}

// leave deletes this server's presence Lease, so that the others count it out (and take its
// shards) at once rather than after LeaseDuration.
func (p *Peers) leave() {
	ctx, cancel := context.WithTimeout(context.Background(), p.opts.RetryPeriod)
	defer cancel()
	err := p.opts.Client.CoordinationV1().Leases(p.opts.Namespace).Delete(ctx, p.name(), metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		p.log.Warn("boot server presence: not deleted; the others count this server out after the Lease's duration", "err", err)
	}
}

// Sync renews this server's presence and reads the others once. It gives up after half the Lease's
// duration: a renewal later than that would leave the others too little margin anyway.
func (p *Peers) Sync(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, p.opts.LeaseDuration/2)
	defer cancel()
	err := p.renew(ctx)
	l, lerr := p.opts.Client.CoordinationV1().Leases(p.opts.Namespace).List(ctx, metav1.ListOptions{LabelSelector: Label + "=" + p.segment()})
	if lerr != nil {
		return errors.Join(err, lerr)
	}
	now := p.opts.Now()
	var others []string
	servers := []string{p.opts.Identity}
	for _, l := range l.Items {
		s := l.Spec
		if s.RenewTime == nil || s.LeaseDurationSeconds == nil || now.After(s.RenewTime.Add(time.Duration(*s.LeaseDurationSeconds)*time.Second)) {
			continue // a dead server's
		}
		if s.HolderIdentity != nil && *s.HolderIdentity != "" {
			servers = append(servers, *s.HolderIdentity)
		}
		if url := l.Annotations[URLAnnotation]; url != "" && url != p.opts.URL {
			others = append(others, url)
		}
	}
	slices.Sort(servers)
	servers = slices.Compact(servers)
	p.servers.Store(&servers)
	slices.Sort(others)
	others = slices.Compact(others)
	if len(others) > p.opts.MaxPeers {
		p.log.Warn("more live boot servers than peers are named in scripts", "live", len(others), "named", p.opts.MaxPeers)
		others = others[:p.opts.MaxPeers]
	}
	p.others.Store(&others)
	p.live.Set(float64(len(others)))
	return err
}

// renew creates or renews this server's presence Lease.
func (p *Peers) renew(ctx context.Context) error {
	leases := p.opts.Client.CoordinationV1().Leases(p.opts.Namespace)
	now := metav1.NewMicroTime(p.opts.Now())
	secs := int32(p.opts.LeaseDuration / time.Second)
	name := p.name()
	cur, err := leases.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		l := &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{Label: p.segment()},
				Annotations: map[string]string{URLAnnotation: p.opts.URL}},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: &p.opts.Identity, LeaseDurationSeconds: &secs, AcquireTime: &now, RenewTime: &now},
		}
		_, err = leases.Create(ctx, l, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	cur.Spec.HolderIdentity, cur.Spec.LeaseDurationSeconds, cur.Spec.RenewTime = &p.opts.Identity, &secs, &now
	if cur.Annotations == nil {
		cur.Annotations = map[string]string{}
	}
	cur.Annotations[URLAnnotation] = p.opts.URL
	_, err = leases.Update(ctx, cur, metav1.UpdateOptions{})
	return err
}

// name is the presence Lease's name: the prefix, "server-" and a hash of the identity (which may
// hold characters a name cannot).
func (p *Peers) name() string {
	h := fnv.New32a()
	h.Write([]byte(p.opts.Identity))
	return fmt.Sprintf("%sserver-%08x", p.opts.Prefix, h.Sum32())
}

// segment is the Label's value.
func (p *Peers) segment() string { return strings.TrimRight(p.opts.Prefix, "-.") }

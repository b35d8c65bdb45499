package approver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"

	"github.com/pxejoin/pxejoin/bootserver/tokens"
)

// Tokens is what the approver needs of the token manager (bootserver/tokens.Manager).
type Tokens interface {
	// Lookup returns the record of the token with id and whether it is live (minted by any boot
	// server of the cluster, not deleted, not expired); err is a failure to find out.
	Lookup(ctx context.Context, id string) (tokens.Record, bool, error)
	// RevokeID deletes the token with id.
	RevokeID(ctx context.Context, id, reason string) error
}

// Options configure a Controller.
type Options struct {
	// Client approves and denies CSRs, writes Events and asks the self-check's questions; it needs
	// the ClusterRole in deploy/rbac/approver.yaml and nothing else.
	Client kubernetes.Interface
	// Informers is the factory whose CSR informer the approver watches (the token manager's).
	Informers informers.SharedInformerFactory
	// Tokens says which node each token was minted for, and revokes the tokens of denied CSRs.
	Tokens Tokens
	// Addresses gives the addresses the boot server gave the machine named node; nil: no node is
	// known, so serving CSRs are left alone.
	Addresses func(node string) ([]netip.Addr, bool)
	// Policy is the token group and the node domain.
	Policy Policy
	// Warn makes SelfCheck log and export pxejoin_approval_selfcheck_failed instead of failing.
	Warn bool
	// Workers decide CSRs in parallel; default 4.
	Workers int
	// Logger; default discards.
	Logger *slog.Logger
	// Registerer gets pxejoin_csr_decisions_total and pxejoin_approval_selfcheck_failed.
	Registerer prometheus.Registerer
}

// Controller approves and denies the CSRs it owns (see Policy.Owns) as they appear.
type Controller struct {
	opts      Options
	log       *slog.Logger
	informer  cache.SharedIndexInformer
	queue     workqueue.TypedRateLimitingInterface[string]
	decisions *prometheus.CounterVec
	selfCheck prometheus.Gauge
	host      string

	mu sync.Mutex
	// firstSeen is the first CSR the informer delivered of each bootstrap requester: creation order
	// where creation timestamps (1 s) tie. Entries leave with their CSR.
	firstSeen map[string]string
}

// byRequester indexes CSRs by spec.username: the CSRs one token made.
const byRequester = "requester"

// New registers the approver's handlers and index on the CSR informer; Run decides.
func New(opts Options) (*Controller, error) {
	if opts.Client == nil || opts.Informers == nil || opts.Tokens == nil || opts.Policy.Group == "" {
		return nil, errors.New("approver: Client, Informers, Tokens and Policy.Group are required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Workers <= 0 {
		opts.Workers = 4
	}
	c := &Controller{opts: opts, log: opts.Logger,
		informer: opts.Informers.Certificates().V1().CertificateSigningRequests().Informer(),
		queue:    workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](), workqueue.TypedRateLimitingQueueConfig[string]{Name: "pxejoin-approver"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pxejoin_csr_decisions_total",
			Help: "CSRs the boot server approved or denied, by signer, decision and reason."}, []string{"signer", "decision", "reason"}),
		selfCheck: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pxejoin_approval_selfcheck_failed",
			Help: "1 when the start-up self-check found that another binding would approve pxejoin tokens' CSRs or that the boot server may not approve them (approval.selfCheck: warn)."}),
	}
	c.firstSeen = map[string]string{}
	c.host, _ = os.Hostname()
	if err := c.informer.AddIndexers(cache.Indexers{byRequester: func(obj any) ([]string, error) {
		if csr, ok := obj.(*certificatesv1.CertificateSigningRequest); ok {
			return []string{csr.Spec.Username}, nil
		}
		return nil, nil
	}}); err != nil {
		return nil, fmt.Errorf("approver: %w", err)
	}
	enqueue := func(obj any) {
		if csr, ok := obj.(*certificatesv1.CertificateSigningRequest); ok && opts.Policy.Owns(csr) && !decided(csr) {
			c.queue.Add(csr.Name)
		}
	}
	if _, err := c.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if csr, ok := obj.(*certificatesv1.CertificateSigningRequest); ok && strings.HasPrefix(csr.Spec.Username, bootstrapapi.BootstrapUserPrefix) {
				c.mu.Lock()
				if _, ok := c.firstSeen[csr.Spec.Username]; !ok {
					c.firstSeen[csr.Spec.Username] = csr.Name
				}
				c.mu.Unlock()
			}
			enqueue(obj)
		},
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if csr, ok := obj.(*certificatesv1.CertificateSigningRequest); ok {
				c.mu.Lock()
				if c.firstSeen[csr.Spec.Username] == csr.Name {
					delete(c.firstSeen, csr.Spec.Username)
				}
				c.mu.Unlock()
			}
		},
	}); err != nil {
		return nil, fmt.Errorf("approver: %w", err)
	}
	if r := opts.Registerer; r != nil {
		for _, m := range []prometheus.Collector{c.decisions, c.selfCheck} {
			if err := r.Register(m); err != nil {
				return nil, err
			}
		}
	}
	return c, nil
}

// Run starts the informers (if not yet), waits for the CSR cache, then decides queued CSRs until
// ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	defer c.queue.ShutDown()
	c.opts.Informers.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), c.informer.HasSynced) {
		return ctx.Err()
	}
	c.log.Info("approving the CSRs of pxejoin machines", "group", c.opts.Policy.Group, "workers", c.opts.Workers)
	done := make(chan struct{})
	for i := 0; i < c.opts.Workers; i++ {
		go func() {
			defer func() { done <- struct{}{} }()
			for c.next(ctx) {
			}
		}()
	}
	<-ctx.Done()
	c.queue.ShutDown()
	for i := 0; i < c.opts.Workers; i++ {
		<-done
	}
	return nil
}

// next decides one queued CSR; false once the queue is shut down.
func (c *Controller) next(ctx context.Context) bool {
	name, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(name)
	if err := c.handle(ctx, name); err != nil {
		if ctx.Err() == nil {
			c.log.Warn("cannot write a CSR decision; retrying", "csr", name, "err", err)
			c.queue.AddRateLimited(name)
		}
		return true
	}
	c.queue.Forget(name)
	return true
}

func (c *Controller) handle(ctx context.Context, name string) error {
	obj, ok, err := c.informer.GetIndexer().GetByKey(name)
	if err != nil || !ok {
		return err
	}
	csr := obj.(*certificatesv1.CertificateSigningRequest)
	f := &decisionFacts{Controller: c, ctx: ctx}
	d := c.opts.Policy.Decide(csr, f)
	if f.err != nil {
		return f.err // a token not known to be dead is not denied: retried
	}
	if d.Verdict == Ignore {
		return nil
	}
	if err := c.write(ctx, csr, d); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	}
	c.decisions.WithLabelValues(csr.Spec.SignerName, d.Verdict.String(), d.Reason).Inc()
	attrs := []any{"csr", csr.Name, "requester", csr.Spec.Username, "signer", csr.Spec.SignerName, "reason", d.Reason, "detail", d.Message}
	if d.Verdict == Approve {
		c.log.Info("CSR approved", attrs...)
		return nil
	}
	c.log.Warn("CSR denied", attrs...)
	c.event(ctx, csr, d)
	// The token is revoked after the denial is written, so that a retry decides for the same
	// reason. Should the revocation fail, the token still gets no certificate: its CSRs are no
	// longer its first.
	if id, ok := strings.CutPrefix(csr.Spec.Username, bootstrapapi.BootstrapUserPrefix); ok {
		if err := c.opts.Tokens.RevokeID(ctx, id, tokens.ReasonCSRDenied); err != nil {
			c.log.Error("cannot revoke the token of a denied CSR", "csr", csr.Name, "token_id", id, "err", err)
		}
	}
	return nil
}

// write adds the Approved or Denied condition.
func (c *Controller) write(ctx context.Context, csr *certificatesv1.CertificateSigningRequest, d Decision) error {
	csr = csr.DeepCopy()
	cond := certificatesv1.CertificateSigningRequestCondition{Type: certificatesv1.CertificateApproved, Status: corev1.ConditionTrue,
		Reason: conditionReason(d.Reason), Message: "pxejoin: " + d.Message, LastUpdateTime: metav1.Now()}
	if d.Verdict == Deny {
		cond.Type = certificatesv1.CertificateDenied
	}
	csr.Status.Conditions = append(csr.Status.Conditions, cond)
	_, err := c.opts.Client.CertificatesV1().CertificateSigningRequests().UpdateApproval(ctx, csr.Name, csr, metav1.UpdateOptions{})
	return err
}

// event records a denial on the CSR (kubectl describe csr shows it); a failure is only logged.
func (c *Controller) event(ctx context.Context, csr *certificatesv1.CertificateSigningRequest, d Decision) {
	now := metav1.Now()
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{GenerateName: csr.Name + ".", Namespace: metav1.NamespaceDefault},
		InvolvedObject: corev1.ObjectReference{Kind: "CertificateSigningRequest", APIVersion: certificatesv1.SchemeGroupVersion.String(),
			Name: csr.Name, UID: csr.UID, ResourceVersion: csr.ResourceVersion},
		Reason: conditionReason(d.Reason), Message: d.Message, Type: corev1.EventTypeWarning, Count: 1,
		FirstTimestamp: now, LastTimestamp: now, Source: corev1.EventSource{Component: "pxejoin-approver", Host: c.host},
		ReportingController: "pxejoin.io/approver", ReportingInstance: c.host,
	}
	if _, err := c.opts.Client.CoreV1().Events(metav1.NamespaceDefault).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		c.log.Warn("cannot record the denial as an Event", "csr", csr.Name, "err", err)
	}
}

// conditionReason turns a reason label into a condition reason: "wrong-node" → "PxejoinWrongNode".
func conditionReason(label string) string {
	var b strings.Builder
	b.WriteString("Pxejoin")
	for _, w := range strings.Split(label, "-") {
		if w != "" {
			b.WriteString(strings.ToUpper(w[:1]) + w[1:])
		}
	}
	return b.String()
}

// decisionFacts are the Facts of one decision: the Controller's, with the context of the token lookup and
// its failure.
type decisionFacts struct {
	*Controller
	ctx context.Context
	err error
}

// Token implements Facts with the token manager.
func (f *decisionFacts) Token(id string) (string, bool) {
	r, live, err := f.opts.Tokens.Lookup(f.ctx, id)
	if err != nil {
		f.err = err
	}
	return r.Node, live
}

// First implements Facts with the CSR cache: csr is first when its requester made no earlier CSR
// (by creation time; within the same second, the one the informer delivered first) and none of its
// CSRs is approved.
func (c *Controller) First(csr *certificatesv1.CertificateSigningRequest) bool {
	others, err := c.informer.GetIndexer().ByIndex(byRequester, csr.Spec.Username)
	if err != nil {
		return false
	}
	c.mu.Lock()
	seen := c.firstSeen[csr.Spec.Username]
	c.mu.Unlock()
	for _, obj := range others {
		o := obj.(*certificatesv1.CertificateSigningRequest)
		if o.Name == csr.Name {
			continue
		}
		if approved(o) || o.CreationTimestamp.Before(&csr.CreationTimestamp) ||
			(o.CreationTimestamp.Equal(&csr.CreationTimestamp) && seen != csr.Name) {
			return false
		}
	}
	return true
}

// Addresses implements Facts with Options.Addresses.
func (c *Controller) Addresses(node string) ([]netip.Addr, bool) {
	if c.opts.Addresses == nil {
		return nil, false
	}
	return c.opts.Addresses(node)
}

func approved(csr *certificatesv1.CertificateSigningRequest) bool {
	for _, c := range csr.Status.Conditions {
		if c.Type == certificatesv1.CertificateApproved {
			return true
		}
	}
	return false
}

package join

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/internal/bootstraptoken"
)

// Taking a Node name back (DESIGN.md, "First boot and later boots"). A diskless machine that power-cycles
// finds its Node still Ready: the node lifecycle controller marks it NotReady only after its grace period
// (40-50 s). kubeadm refuses to join over a Ready Node; the agent instead takes the name back, but only
// when both hold:
//
//  1. The boot server vouches for this machine's node name: the TLS bootstrap token is a pxejoin token
//     (group system:bootstrappers:pxejoin, read back with a SelfSubjectReview). The boot server mints
//     such a token for one MAC's node name and serves it only in that MAC's join file; its approver
//     issues a client certificate only for the node name the token was minted for, so a pxejoin token
//     for another name that got past this check would still get no credentials for this Node. A stock
//     kubeadm token (or a discovery file's own credentials) never takes over a Ready Node.
//  2. The old holder is gone: its Lease kube-node-lease/<name> is not being renewed. See leaseGone.
//
// Deviation from kubeadm: kubeadm refuses every Ready Node; this is a worker join's only (a control-plane
// node's name also names an etcd member, which this does not take back).

// renewFraction is the kubelet's nodeLeaseRenewIntervalFraction: it renews its Lease every
// leaseDurationSeconds × 0.25 (10 s for the default 40 s).
const renewFraction = 0.25

// leaseWindow is how long a Lease must have gone unrenewed for its holder to count as gone: two renew
// intervals (20 s for the default 40 s lease). A live kubelet writes its Lease every renew interval
// (plus ≤ 4 % jitter) plus the time of the update request itself, which its heartbeat client bounds to
// nodeStatusUpdateFrequency (10 s): a kubelet that can reach the API server does not stay silent for a
// whole extra interval. It is half the lease's own duration, after which the Lease is expired by
// definition.
func leaseWindow(l *coordinationv1.Lease) time.Duration {
	seconds := int32(40) // the kubelet's default nodeLeaseDurationSeconds
	if l.Spec.LeaseDurationSeconds != nil && *l.Spec.LeaseDurationSeconds > 0 {
		seconds = *l.Spec.LeaseDurationSeconds
	}
	return 2 * time.Duration(float64(seconds)*renewFraction*float64(time.Second))
}

// leasePoll is how often the Lease is read while watching for a renewal.
const leasePoll = 500 * time.Millisecond

// takeOver decides whether this join may take the name of a Ready Node, and reports phase takeover.
func (d *data) takeOver(ctx context.Context, c kubernetes.Interface) error {
	refused := fmt.Sprintf("a Node with name %q and status \"Ready\" already exists in the cluster. "+
		"You must delete the existing Node or change the name of this new joining Node (--node-name)", d.nodeName)
	if d.cfg.ControlPlane != nil {
		return errors.New(refused)
	}
	d.event(bootstatus.PhaseTakeover, bootstatus.StateStart, "", nil)
	fail := func(err error) error {
		d.event(bootstatus.PhaseTakeover, bootstatus.StateError, "", err)
		return err
	}
	if err := d.vouched(ctx, c); err != nil {
		return fail(fmt.Errorf("%s: %w", refused, err))
	}
	detail, err := d.leaseGone(ctx)
	if err != nil {
		return fail(fmt.Errorf("%s: %w", refused, err))
	}
	d.printf("[kubelet-start] Node %q reads Ready but %s", d.nodeName, detail)
	d.event(bootstatus.PhaseTakeover, bootstatus.StateDone, detail, nil)
	return nil
}

// vouched checks that the TLS bootstrap token is one a pxejoin boot server minted for a machine.
func (d *data) vouched(ctx context.Context, c kubernetes.Interface) error {
	const notPxejoin = "only a machine's token from a pxejoin boot server (group " + bootstraptoken.PxejoinGroup +
		") may take the name of a Node whose kubelet stopped"
	if d.disc == nil || d.disc.AuthInfo != nil {
		return errors.New("the join authenticates with the discovery file's credentials, not a bootstrap token: " + notPxejoin)
	}
	r, err := c.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("cannot read the token's groups (SelfSubjectReview: %v): %s", err, notPxejoin)
	}
	if !slices.Contains(r.Status.UserInfo.Groups, bootstraptoken.PxejoinGroup) {
		return errors.New("the bootstrap token is not a pxejoin machine token: " + notPxejoin)
	}
	return nil
}

// leaseGone proves the old holder of the name is gone, or says why it cannot: its Lease is not renewed.
//
// Clocks: the Lease's renewTime is written with the old kubelet's clock, and this machine has just
// booted (an initramfs, perhaps without a synchronized clock), so neither is compared with the other.
// Two measures are sound:
//   - the API server's own clock: when it last stored a change of the Lease (the time of its newest
//     managedFields entry, which the API server sets whenever a manager changes a field) against the
//     Date of the same response; both have one-second resolution, so one second is taken off.
//   - this machine's monotonic clock: the Lease is read again every leasePoll and its renewTime must
//     not change.
//
// The holder is gone once the Lease went unrenewed for leaseWindow by those measures added up: at once
// when the API server's clock already says so (a power-cycled machine's boot usually takes longer),
// else after watching the rest of the window. A renewal seen meanwhile means a live kubelet holds the
// name: never taken over.
func (d *data) leaseGone(ctx context.Context) (string, error) {
	cfg, err := d.bootstrapConfig(ctx)
	if err != nil {
		return "", err
	}
	date := &serverDate{}
	cfg.Wrap(date.wrap)
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return "", err
	}
	leases := c.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	first, err := leases.Get(ctx, d.nodeName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return "", fmt.Errorf("it has no Lease %s/%s, so nothing shows that its kubelet stopped", corev1.NamespaceNodeLease, d.nodeName)
	case apierrors.IsForbidden(err):
		return "", fmt.Errorf("the bootstrap token may not read Lease %s/%s (%v): the boot server grants it (Role pxejoin:get-node-leases; deploy/base/token-rbac.yaml)",
			corev1.NamespaceNodeLease, d.nodeName, err)
	case err != nil:
		return "", fmt.Errorf("cannot read Lease %s/%s: %w", corev1.NamespaceNodeLease, d.nodeName, err)
	}
	window := leaseWindow(first)
	age := date.since(lastWrite(first)) - time.Second
	if age < 0 {
		age = 0
	}
	if age < window {
		d.printf("[kubelet-start] Node %q reads Ready; its Lease was last renewed %s ago: watching it for %s to see whether its kubelet is alive",
			d.nodeName, seconds(age), seconds(window-age))
		start := time.Now()
		for {
			watched := time.Since(start)
			if age+watched >= window {
				age += watched
				break
			}
			select {
			case <-ctx.Done():
				return "", ctx.Err()
			case <-time.After(min(leasePoll, window-age-watched)):
			}
			l, err := leases.Get(ctx, d.nodeName, metav1.GetOptions{})
			if err != nil {
				return "", fmt.Errorf("cannot read Lease %s/%s: %w", corev1.NamespaceNodeLease, d.nodeName, err)
			}
			if !l.Spec.RenewTime.Equal(first.Spec.RenewTime) || !equalPtr(l.Spec.HolderIdentity, first.Spec.HolderIdentity) {
				return "", fmt.Errorf("its kubelet is alive: its Lease %s/%s was renewed while this join watched it (after %s); "+
					"another machine runs under this name: give this machine another node name in the boot server's inventory, or stop the other one",
					corev1.NamespaceNodeLease, d.nodeName, seconds(time.Since(start)))
			}
		}
	}
	return fmt.Sprintf("%s's lease last renewed %s ago; taking the name back", d.nodeName, seconds(age)), nil
}

// lastWrite is when the API server last stored a change of l (its newest managedFields entry), or the
// zero time when it does not say.
func lastWrite(l *coordinationv1.Lease) time.Time {
	var t time.Time
	for _, m := range l.ManagedFields {
		if m.Time != nil && m.Time.After(t) {
			t = m.Time.Time
		}
	}
	return t
}

func equalPtr(a, b *string) bool { return (a == nil) == (b == nil) && (a == nil || *a == *b) }

func seconds(d time.Duration) string { return fmt.Sprintf("%d s", int(d.Round(time.Second).Seconds())) }

// serverDate remembers the Date header of the API server's last response: its clock.
type serverDate struct {
	mu   sync.Mutex
	last time.Time
}

func (s *serverDate) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripper(func(r *http.Request) (*http.Response, error) {
		resp, err := rt.RoundTrip(r)
		if err == nil {
			if t, perr := http.ParseTime(resp.Header.Get("Date")); perr == nil {
				s.mu.Lock()
				s.last = t
				s.mu.Unlock()
			}
		}
		return resp, err
	})
}

// since is the API server's time since t by its last Date header; 0 when either is unknown.
func (s *serverDate) since(t time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.last.IsZero() || t.IsZero() || s.last.Before(t) {
		return 0
	}
	return s.last.Sub(t)
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

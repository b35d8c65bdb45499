package join_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"

	"github.com/pxejoin/pxejoin/bootserver/approver"
	"github.com/pxejoin/pxejoin/bootserver/tokens"
	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/internal/bootstraptoken"
	"github.com/pxejoin/pxejoin/lab/logbuf"
	"github.com/pxejoin/pxejoin/nodeagent/join"
)

// testLeaseSeconds is the node Leases' duration in these tests: the agent's window is two renew
// intervals of it (2 × 2 s), so a test waits seconds, not the default lease's 20 s.
const testLeaseSeconds = 8

// TestTakeover: a rebooted diskless machine finds its Node still Ready. With the boot server's token
// (group system:bootstrappers:pxejoin) and a Lease nobody renews it takes the Node back: the join
// completes, the same Node object stays, and phase takeover is reported done with the lease's age.
// A Lease the test renews throughout is a live kubelet: refused. A kubeadm-group token is refused
// whatever the Lease. (Before takeover.go every one of them was refused with kubeadm's message.)
func TestTakeover(t *testing.T) {
	needCP(t)
	ctx := ctxT(t, 4*time.Minute)
	if err := approver.EnsureBootstrapRBAC(ctx, cp.Admin(), bootstraptoken.PxejoinGroup, false); err != nil {
		t.Fatal(err)
	}

	t.Run("stale lease", func(t *testing.T) {
		const node = "takeover-stale"
		uid := readyNode(t, ctx, node)
		nodeLease(t, ctx, node)
		tok := pxejoinToken(t, ctx, node)
		evs, out, err := observedJoin(ctx, tok, node, t.TempDir())
		if err != nil {
			t.Fatalf("the join did not take the Node back: %v\n%s", err, out)
		}
		done := findEvent(evs, bootstatus.PhaseTakeover, bootstatus.StateDone)
		if done == nil || !strings.Contains(done.Detail, node+"'s lease last renewed") || !strings.Contains(done.Detail, "taking the name back") {
			t.Errorf("no takeover done event with the lease's age: %+v", evs)
		}
		n, err := cp.Admin().CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil || n.UID != uid {
			t.Errorf("the Node object should be reused (uid %s): %v %v", uid, n.UID, err)
		}
	})

	t.Run("lease renewed", func(t *testing.T) {
		const node = "takeover-live"
		readyNode(t, ctx, node)
		renew := nodeLease(t, ctx, node)
		rctx, stop := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { // a live kubelet: renews well within its renew interval (8 s × 0.25)
			defer wg.Done()
			for rctx.Err() == nil {
				renew()
				select {
				case <-rctx.Done():
				case <-time.After(500 * time.Millisecond):
				}
			}
		}()
		defer func() { stop(); wg.Wait() }()
		root := t.TempDir()
		evs, out, err := observedJoin(ctx, pxejoinToken(t, ctx, node), node, root)
		if err == nil || !strings.Contains(err.Error(), "its kubelet is alive") || !strings.Contains(err.Error(), `"Ready" already exists`) {
			t.Fatalf("a Node whose Lease is renewed must be refused, saying its kubelet is alive: %v\n%s", err, out)
		}
		if findEvent(evs, bootstatus.PhaseTakeover, bootstatus.StateError) == nil {
			t.Errorf("no takeover error event: %+v", evs)
		}
		assertNoCredentials(t, root)
	})

	t.Run("kubeadm token", func(t *testing.T) {
		const node = "takeover-kubeadm"
		readyNode(t, ctx, node)
		nodeLease(t, ctx, node)
		root := t.TempDir()
		_, out, err := observedJoin(ctx, token(t, time.Hour), node, root)
		if err == nil || !strings.Contains(err.Error(), "not a pxejoin machine token") {
			t.Fatalf("a kubeadm token must never take over a Ready Node: %v\n%s", err, out)
		}
		assertNoCredentials(t, root)
	})
}

// observedJoin joins node into root with tok and returns the events the join reported.
func observedJoin(ctx context.Context, tok, node, root string) ([]join.Event, string, error) {
	var mu sync.Mutex
	var evs []join.Event
	out := &logbuf.Buffer{}
	err := join.Run(ctx, benchConfig(tok, node), join.Options{Rootfs: root, Out: out, Observer: func(e join.Event) {
		mu.Lock()
		evs = append(evs, e)
		mu.Unlock()
	}})
	mu.Lock()
	defer mu.Unlock()
	return evs, out.String(), err
}

func findEvent(evs []join.Event, phase, state string) *join.Event {
	for i := range evs {
		if evs[i].Phase == phase && evs[i].State == state {
			return &evs[i]
		}
	}
	return nil
}

// readyNode creates a Node that reads Ready and returns its UID.
func readyNode(t *testing.T, ctx context.Context, name string) types.UID {
	t.Helper()
	nodes := cp.Admin().CoreV1().Nodes()
	n, err := nodes.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nodes.Delete(context.Background(), name, metav1.DeleteOptions{}) })
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error { // the node controllers touch a new Node too
		n, err := nodes.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue,
			LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now(), Reason: "KubeletReady"}}
		_, err = nodes.UpdateStatus(ctx, n, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n.UID
}

// nodeLease creates name's Lease as its kubelet does and returns a function renewing it.
func nodeLease(t *testing.T, ctx context.Context, name string) func() {
	t.Helper()
	leases := cp.Admin().CoordinationV1().Leases(corev1.NamespaceNodeLease)
	holder, seconds := name, int32(testLeaseSeconds)
	now := metav1.NewMicroTime(time.Now())
	if _, err := leases.Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &seconds, RenewTime: &now}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { leases.Delete(context.Background(), name, metav1.DeleteOptions{}) })
	return func() {
		_ = retry.RetryOnConflict(retry.DefaultRetry, func() error {
			l, err := leases.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			now := metav1.NewMicroTime(time.Now())
			l.Spec.RenewTime = &now
			_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
			return err
		})
	}
}

// pxejoinToken mints a machine token as the boot server does (its group, the node annotation) and
// approves the CSRs it sends, as the boot server's approver would for that node.
func pxejoinToken(t *testing.T, ctx context.Context, node string) string {
	t.Helper()
	tok, err := bootstraptoken.Create(ctx, cp.Admin(), bootstraptoken.Options{TTL: time.Hour, Description: "pxejoin takeover test",
		Groups: []string{bootstraptoken.PxejoinGroup}, Annotations: map[string]string{tokens.AnnotationNode: node}})
	if err != nil {
		t.Fatal(err)
	}
	actx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		csrs := cp.Admin().CertificatesV1().CertificateSigningRequests()
		for actx.Err() == nil {
			l, _ := csrs.List(actx, metav1.ListOptions{})
			for _, c := range l.Items {
				if c.Spec.Username != bootstraptoken.Username(tok) || len(c.Status.Conditions) > 0 {
					continue
				}
				c.Status.Conditions = append(c.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{
					Type: certificatesv1.CertificateApproved, Status: corev1.ConditionTrue, Reason: "TestApproved", Message: "the token's own node"})
				_, _ = csrs.UpdateApproval(actx, c.Name, &c, metav1.UpdateOptions{})
			}
			select {
			case <-actx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { stop(); wg.Wait() })
	return tok
}

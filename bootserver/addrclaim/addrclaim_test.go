package addrclaim

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/pxejoin/pxejoin/bootserver/machineapi"
	"github.com/pxejoin/pxejoin/deploy/crd"
	"github.com/pxejoin/pxejoin/lab/controlplane"
	"github.com/pxejoin/pxejoin/lab/eventually"
	"github.com/pxejoin/pxejoin/lab/testenv"
)

func TestMain(m *testing.M) { os.Exit(controlplane.Run(m)) }

var crdOnce sync.Once

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// env is the control plane with the Machine CRD and admin clients.
type env struct {
	cp  *controlplane.ControlPlane
	dyn dynamic.Interface
}

func setup(t *testing.T) env {
	t.Helper()
	testenv.RequireRoot(t)
	cp := controlplane.Shared(t)
	dyn, err := dynamic.NewForConfig(cp.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	crdOnce.Do(func() {
		if err := crd.Install(context.Background(), dyn, crd.Machines, "pxejoin-test"); err != nil {
			t.Fatal(err)
		}
	})
	return env{cp: cp, dyn: dyn}
}

// claimer makes a Claimer of server name over [start, end]; readOnly makes its clients fail the
// test on any request but a read.
func (e env) claimer(t *testing.T, name, start, end string, readOnly bool) (*Claimer, *prometheus.Registry) {
	t.Helper()
	rc := e.cp.AdminConfig()
	rc.QPS, rc.Burst = 200, 400
	if readOnly {
		rc.Wrap(func(rt http.RoundTripper) http.RoundTripper {
			return roundTripFunc(func(r *http.Request) (*http.Response, error) {
				if r.Method != http.MethodGet {
					t.Errorf("server %s wrote: %s %s", name, r.Method, r.URL.Path)
				}
				return rt.RoundTrip(r)
			})
		})
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	c, err := New(Options{Client: cs, Machines: dyn, Start: netip.MustParseAddr(start), End: netip.MustParseAddr(end),
		ServerName: name, Registerer: reg, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return c, reg
}

// machines creates n Machines named prefix-i and deletes them at the end of the test.
func (e env) machines(t *testing.T, prefix string, n int) []string {
	t.Helper()
	var names []string
	for i := range n {
		m := &machineapi.Machine{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%d", prefix, i)},
			Spec: machineapi.MachineSpec{MACs: []string{fmt.Sprintf("52:54:00:%02x:%02x:%02x", len(prefix), i>>8, i&0xff)}, Profile: "p"}}
		u, err := machineapi.ToUnstructured(m)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.dyn.Resource(machineapi.GVR).Create(context.Background(), u, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		names = append(names, m.Name)
	}
	t.Cleanup(func() {
		for _, name := range names {
			_ = e.dyn.Resource(machineapi.GVR).Delete(context.Background(), name, metav1.DeleteOptions{})
		}
	})
	return names
}

func (e env) status(t *testing.T, name string) string {
	t.Helper()
	u, err := e.dyn.Resource(machineapi.GVR).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := machineapi.FromUnstructured(u)
	if err != nil {
		t.Fatal(err)
	}
	return m.Status.ClaimedIPv4
}

// claims lists the IPAddresses this package made, by address.
func (e env) claims(t *testing.T) map[string]networkingv1.IPAddress {
	t.Helper()
	l, err := e.cp.Admin().NetworkingV1().IPAddresses().List(context.Background(),
		metav1.ListOptions{LabelSelector: networkingv1.LabelManagedBy + "=" + ManagedBy})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]networkingv1.IPAddress{}
	for _, a := range l.Items {
		out[a.Name] = a
	}
	return out
}

// TestRace: two servers claim addresses for the same 200 machines at once, in opposite orders,
// with a range barely larger than the fleet. Every machine ends with one address, the same from
// both servers and in its status, and no address belongs to two machines.
func TestRace(t *testing.T) {
	e := setup(t)
	const n = 200
	names := e.machines(t, "race", n)
	a, _ := e.claimer(t, "a", "10.77.0.10", "10.77.0.219", false) // 210 addresses
	b, _ := e.claimer(t, "b", "10.77.0.10", "10.77.0.219", false)
	got := [2][]netip.Addr{make([]netip.Addr, n), make([]netip.Addr, n)}
	var wg sync.WaitGroup
	for s, c := range []*Claimer{a, b} {
		for w := range 8 {
			wg.Go(func() {
				for i := w; i < n; i += 8 {
					j := i
					if s == 1 {
						j = n - 1 - i
					}
					ip, err := c.Claim(context.Background(), names[j])
					if err != nil {
						t.Errorf("server %d, %s: %v", s, names[j], err)
					}
					got[s][j] = ip
				}
			})
		}
	}
	wg.Wait()
	owner := map[netip.Addr]string{}
	objs := e.claims(t)
	for j, name := range names {
		ip := got[0][j]
		if got[1][j] != ip {
			t.Errorf("%s: server a answers %v, server b %v", name, ip, got[1][j])
		}
		if prev, ok := owner[ip]; ok {
			t.Errorf("%v given to %s and %s", ip, prev, name)
		}
		owner[ip] = name
		if st := e.status(t, name); st != ip.String() {
			t.Errorf("%s: status.claimedIPv4 %q, answered %v", name, st, ip)
		}
		if o, ok := objs[ip.String()]; !ok || o.Spec.ParentRef == nil || o.Spec.ParentRef.Name != name {
			t.Errorf("%s: IPAddress %v is %+v", name, ip, o)
		}
	}
	if len(objs) != n {
		t.Errorf("%d IPAddress claims for %d machines: lost races left objects behind", len(objs), n)
	}
	decided := func(c *Claimer, d string) float64 { return testutil.ToFloat64(c.decisions.WithLabelValues(d)) }
	for _, d := range []string{DecisionClaimed, DecisionConflict, DecisionLost, DecisionStatus} {
		t.Logf("%s: a %v, b %v", d, decided(a, d), decided(b, d))
	}
	if c := decided(a, DecisionClaimed) + decided(b, DecisionClaimed); c < n {
		t.Errorf("%v claims recorded for %d machines", c, n)
	}
}

// TestRestartedServerWritesNothing: a server started after a machine's claim was recorded answers
// it with the same address and makes no write.
func TestRestartedServerWritesNothing(t *testing.T) {
	e := setup(t)
	names := e.machines(t, "restart", 1)
	first, _ := e.claimer(t, "a", "10.77.1.10", "10.77.1.20", false)
	ip, err := first.Claim(context.Background(), names[0])
	if err != nil {
		t.Fatal(err)
	}
	again, _ := e.claimer(t, "a", "10.77.1.10", "10.77.1.20", true)
	got, err := again.Claim(context.Background(), names[0])
	if err != nil || got != ip {
		t.Fatalf("restarted server: %v, %v; want %v", got, err, ip)
	}
	if n := testutil.ToFloat64(again.decisions.WithLabelValues(DecisionStatus)); n != 1 {
		t.Errorf("status decisions %v, want 1", n)
	}
}

// TestOwnClaimsNoConflict: one server claiming for many machines never asks the API for an address
// it claimed itself (the machines' hashed starts collide with its own claims).
func TestOwnClaimsNoConflict(t *testing.T) {
	e := setup(t)
	names := e.machines(t, "own", 30)
	c, _ := e.claimer(t, "a", "10.77.9.1", "10.77.9.40", false)
	for _, name := range names {
		if _, err := c.Claim(context.Background(), name); err != nil {
			t.Fatal(err)
		}
	}
	if n := testutil.ToFloat64(c.decisions.WithLabelValues(DecisionConflict)); n != 0 {
		t.Errorf("%v conflicts with this server's own claims, want 0", n)
	}
	if n := testutil.ToFloat64(c.decisions.WithLabelValues(DecisionClaimed)); n != 30 {
		t.Errorf("%v claimed, want 30", n)
	}
}

// TestConflictAndDeletion: an address another machine holds is skipped; a claim goes with its
// Machine (kube-controller-manager's garbage collector, through the ownerReference), and the
// address is claimed again afterwards.
func TestConflictAndDeletion(t *testing.T) {
	e := setup(t)
	names := e.machines(t, "gc", 2)
	c, _ := e.claimer(t, "a", "10.77.2.10", "10.77.2.10", false) // one address
	ip, err := c.Claim(context.Background(), names[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Claim(context.Background(), names[1]); err == nil {
		t.Fatal("second machine got an address from a full range")
	}
	if err := e.dyn.Resource(machineapi.GVR).Delete(context.Background(), names[0], metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, "the claim deleted with its Machine", func() bool {
		_, err := e.cp.Admin().NetworkingV1().IPAddresses().Get(context.Background(), ip.String(), metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
	got, err := c.Claim(context.Background(), names[1])
	if err != nil || got != ip {
		t.Fatalf("after the delete: %v, %v; want %v", got, err, ip)
	}
}

// TestRepairLoopLeavesClaimsAlone: the apiserver's service-IP repair loop deletes an IPAddress
// labelled as its own whose parent is not a Service (a claim with the ipallocator.k8s.io label),
// and leaves the same claim with ManagedBy alone.
func TestRepairLoopLeavesClaimsAlone(t *testing.T) {
	e := setup(t)
	names := e.machines(t, "repair", 1)
	c, _ := e.claimer(t, "a", "10.77.3.10", "10.77.3.20", false)
	ip, err := c.Claim(context.Background(), names[0])
	if err != nil {
		t.Fatal(err)
	}
	ips := e.cp.Admin().NetworkingV1().IPAddresses()
	mine, err := ips.Get(context.Background(), ip.String(), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	control := &networkingv1.IPAddress{
		ObjectMeta: metav1.ObjectMeta{Name: "10.77.3.200", Labels: map[string]string{networkingv1.LabelManagedBy: "ipallocator.k8s.io"}},
		Spec:       *mine.Spec.DeepCopy(),
	}
	if _, err := ips.Create(context.Background(), control, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, "the repair loop deletes the claim labelled as its own", func() bool {
		_, err := ips.Get(context.Background(), control.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
	if _, err := ips.Get(context.Background(), ip.String(), metav1.GetOptions{}); err != nil {
		t.Fatalf("the claim: %v", err)
	}
}

// TestBusyPastMaxInFlight: past MaxInFlight running claims a claim fails at once with ErrBusy
// (counted), so that a burst of first boots cannot congest the API budget until none finishes
// (pure logic: the claim in flight blocks in a fake clientset).
func TestBusyPastMaxInFlight(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	dyn := dynamicfake.NewSimpleDynamicClient(runtime.NewScheme())
	dyn.PrependReactor("get", "machines", func(k8stesting.Action) (bool, runtime.Object, error) {
		entered <- struct{}{}
		<-release
		return true, nil, apierrors.NewNotFound(machineapi.GVR.GroupResource(), "m0")
	})
	c, err := New(Options{Client: kubefake.NewClientset(), Machines: dyn, Start: netip.MustParseAddr("10.0.0.1"),
		End: netip.MustParseAddr("10.0.0.9"), ServerName: "a", MaxInFlight: 1})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := c.Claim(context.Background(), "m0"); done <- err }()
	<-entered
	if _, err := c.Claim(context.Background(), "m1"); !errors.Is(err, ErrBusy) {
		t.Errorf("a second claim while one runs (MaxInFlight 1): %v, want ErrBusy", err)
	}
	if n := testutil.ToFloat64(c.decisions.WithLabelValues(DecisionBusy)); n != 1 {
		t.Errorf("busy decisions %v, want 1", n)
	}
	close(release)
	if err := <-done; err == nil {
		t.Error("the blocked claim of a missing Machine succeeded")
	}
	if _, err := c.Claim(context.Background(), "m1"); errors.Is(err, ErrBusy) {
		t.Error("a claim after the first finished is still busy")
	}
}

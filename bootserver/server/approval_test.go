package server

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pxejoin/pxejoin/bootserver/approver"
	"github.com/pxejoin/pxejoin/bootserver/config"
)

// TestServeRefusesWhenOthersApprove: with auto-approval bound to system:bootstrappers the boot
// server refuses to start (approval.selfCheck strict), naming the binding; with warn it starts
// and exports pxejoin_approval_selfcheck_failed 1.
func TestServeRefusesWhenOthersApprove(t *testing.T) {
	needControlPlane(t)
	ctx := context.Background()
	const binding = "test-server-autoapprove-every-bootstrapper"
	crbs := cp.Admin().RbacV1().ClusterRoleBindings()
	if _, err := crbs.Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: binding},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "system:certificates.k8s.io:certificatesigningrequests:nodeclient"},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: "system:bootstrappers"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = crbs.Delete(context.Background(), binding, metav1.DeleteOptions{})
		eventually(t, 30*time.Second, func() bool { return !bootstrappersAutoApproved(t) }) // the next tests need it gone
	})
	eventually(t, 30*time.Second, func() bool { return bootstrappersAutoApproved(t) })

	serve := func(mode string) (*Server, bool, error) {
		_, c := startFiles(t)
		c.Cluster.Kubeconfig = ""
		c.Approval.SelfCheck = mode
		ready := make(chan struct{})
		s, err := New(Options{Config: c, Logger: nopLogger(), Ready: func() { close(ready) },
			Cluster: &Cluster{Client: cp.Admin(), Endpoint: cp.Endpoint(), CAPins: []string{cp.CAPin()}}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		served := make(chan error, 1)
		go func() { served <- s.Serve(sctx) }()
		select {
		case err := <-served:
			return s, false, err
		case <-ready:
			cancel()
			return s, true, <-served
		case <-time.After(time.Minute):
			t.Fatal("Serve neither failed nor got ready in a minute")
		}
		return nil, false, nil
	}
	_, started, err := serve(config.SelfCheckStrict)
	var sc *approver.SelfCheckError
	if started || !errors.As(err, &sc) || !strings.Contains(err.Error(), "ClusterRoleBinding "+binding) {
		t.Errorf("strict: started %v, err %v; want a refusal naming %s", started, err, binding)
	}
	s, started, err := serve(config.SelfCheckWarn)
	if !started || err != nil {
		t.Fatalf("warn: started %v, err %v", started, err)
	}
	if v := gaugeValue(t, s, "pxejoin_approval_selfcheck_failed"); v != 1 {
		t.Errorf("warn: pxejoin_approval_selfcheck_failed %v, want 1", v)
	}
}

// bootstrappersAutoApproved asks whether any bootstrap token may create nodeclient CSRs.
func bootstrappersAutoApproved(t *testing.T) bool {
	got, err := cp.Admin().AuthorizationV1().SubjectAccessReviews().Create(context.Background(), &authorizationv1.SubjectAccessReview{
		Spec: authorizationv1.SubjectAccessReviewSpec{User: "system:bootstrap:zzzzzz", Groups: []string{"system:bootstrappers"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{Group: "certificates.k8s.io", Resource: "certificatesigningrequests", Subresource: "nodeclient", Verb: "create"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return got.Status.Allowed
}

func gaugeValue(t *testing.T, s *Server, name string) float64 {
	t.Helper()
	mfs, err := s.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

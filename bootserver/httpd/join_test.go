package httpd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"syscall"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/pxejoin/pxejoin/bootserver/inventory"
)

// TestJoinConfigTaints: a machine's taints are the join file's registerWithTaints (kubeadm's
// nodeRegistration.taints); none leaves the field unset.
func TestJoinConfigTaints(t *testing.T) {
	taints := []corev1.Taint{{Key: "pxejoin.io/new", Effect: corev1.TaintEffectNoSchedule}}
	jc := JoinConfig(inventory.Assignment{NodeName: "w1", Taints: taints}, "abcdef.0123456789abcdef", "10.0.0.2:6443", nil)
	if !slices.Equal(jc.NodeRegistration.Taints, taints) {
		t.Errorf("taints %v, want %v", jc.NodeRegistration.Taints, taints)
	}
	if jc := JoinConfig(inventory.Assignment{NodeName: "w1"}, "abcdef.0123456789abcdef", "10.0.0.2:6443", nil); jc.NodeRegistration.Taints != nil {
		t.Errorf("taints %v, want none", jc.NodeRegistration.Taints)
	}
}

func TestAPIUnreachable(t *testing.T) {
	gr := schema.GroupResource{Resource: "secrets"}
	refused := &url.Error{Op: "Post", URL: "https://10.0.0.1:6443/api/v1/namespaces/kube-system/secrets",
		Err: &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}}
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"connection refused", refused, true},
		{"wrapped by the token manager", fmt.Errorf("bootstraptoken: %w", refused), true},
		{"the mint's deadline", fmt.Errorf("client rate limiter Wait returned an error: %w", context.DeadlineExceeded), true},
		{"503", apierrors.NewServiceUnavailable("etcd is down"), true},
		{"429", apierrors.NewTooManyRequests("slow down", 3), true},
		{"504", apierrors.NewTimeoutError("took too long", 1), true},
		{"403: the boot server's RBAC", apierrors.NewForbidden(gr, "bootstrap-token-abcdef", errors.New("no")), false},
		{"409", apierrors.NewAlreadyExists(gr, "bootstrap-token-abcdef"), false},
		{"the local store", errors.New("tokens: cannot record token abcdef: database not open"), false},
	} {
		if got := apiUnreachable(tc.err); got != tc.want {
			t.Errorf("%s: apiUnreachable = %v, want %v", tc.name, got, tc.want)
		}
	}
}

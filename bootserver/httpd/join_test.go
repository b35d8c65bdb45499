package httpd

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"

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

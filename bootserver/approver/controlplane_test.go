package approver

import (
	"context"
	"os"
	"testing"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/pxejoin/pxejoin/internal/bootstraptoken"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
	"github.com/pxejoin/pxejoin/lab/eventually"
)

// TestControlPlaneTokenRBAC: with controlPlane, the boot server (holding only deploy/rbac's
// pxejoin:token-rbac) binds kubeadm's Role kubeadm:kubeadm-certs to its tokens' group, so a pxejoin
// token can read the kubeadm-certs Secret (and no other Secret), which it cannot without; the
// approver approves that machine's kubelet client CSR as a worker's.
func TestControlPlaneTokenRBAC(t *testing.T) {
	h := newHarness(t)
	cp, ctx := h.cp, context.Background()
	admin := cp.Admin()
	// What `kubeadm init phase upload-certs --upload-certs` leaves (lab/controlplane's kubeadm mode
	// has the real one; this package's shared control plane is the plain one).
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: KubeadmCertsRole, Namespace: "kube-system"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: []string{"kubeadm-certs"}, Verbs: []string{"get"}}}}
	if _, err := admin.RbacV1().Roles("kube-system").Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	for _, name := range []string{"kubeadm-certs", "not-for-tokens"} {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "kube-system"}, Data: map[string][]byte{"ca.crt": []byte("x")}}
		if _, err := admin.CoreV1().Secrets("kube-system").Create(ctx, s, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		ctx := context.Background()
		_ = admin.RbacV1().RoleBindings("kube-system").Delete(ctx, KubeadmCertsBinding, metav1.DeleteOptions{})
		_ = admin.RbacV1().Roles("kube-system").Delete(ctx, KubeadmCertsRole, metav1.DeleteOptions{})
		_ = admin.CoreV1().Secrets("kube-system").Delete(ctx, "kubeadm-certs", metav1.DeleteOptions{})
		_ = admin.CoreV1().Secrets("kube-system").Delete(ctx, "not-for-tokens", metav1.DeleteOptions{})
	})
	tok, err := h.tokens.Token(ctx, hwaddr.MAC{0x52, 0x54, 0, 0, 5, 0x1}, "node-cp", 1, true)
	if err != nil {
		t.Fatal(err)
	}
	tc := tokenClient(cp, tok)
	eventually.True(t, "the token authenticates", func() bool {
		_, err := tc.CoreV1().ConfigMaps("kube-system").Get(ctx, "kubelet-config", metav1.GetOptions{})
		return err == nil
	})
	if _, err := tc.CoreV1().Secrets("kube-system").Get(ctx, "kubeadm-certs", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("without controlPlane a pxejoin token reads kubeadm-certs: %v", err)
	}

	c := clientAs(t, cp, "pxejoin-token-rbac-cp-test", roleFromYAML(t, "pxejoin:token-rbac"))
	if err := EnsureBootstrapRBAC(ctx, c, bootstraptoken.PxejoinGroup, true); err != nil {
		t.Fatalf("with the documented role: %v", err)
	}
	eventually.True(t, "a pxejoin token reads kubeadm-certs", func() bool {
		_, err := tc.CoreV1().Secrets("kube-system").Get(ctx, "kubeadm-certs", metav1.GetOptions{})
		return err == nil
	})
	if _, err := tc.CoreV1().Secrets("kube-system").Get(ctx, "not-for-tokens", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("a pxejoin token reads another Secret: %v", err)
	}
	name, _ := request(t, tc, clientSigner, nodeSubj("node-cp"), nil, nil, clientUsagesEC...)
	if cond := outcome(t, cp, name); cond.Type != certificatesv1.CertificateApproved {
		t.Errorf("control-plane node's CSR: %s %s", cond.Type, cond.Reason)
	}

	// deploy/base's optional file is the same binding.
	b, err := os.ReadFile("../../deploy/base/control-plane-rbac.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var file rbacv1.RoleBinding
	if err := yaml.UnmarshalStrict(b, &file); err != nil {
		t.Fatal(err)
	}
	_, _, _, rbs := bootstrapRBAC(bootstraptoken.PxejoinGroup, true)
	want := rbs[len(rbs)-1]
	if file.Name != want.Name || file.Namespace != want.Namespace || !equality.Semantic.DeepEqual(file.RoleRef, want.RoleRef) ||
		!equality.Semantic.DeepEqual(file.Subjects, want.Subjects) {
		t.Errorf("deploy/base/control-plane-rbac.yaml = %+v, want %+v", file, want)
	}
}

package approver

import (
	"context"
	"fmt"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// The RBAC objects the boot server keeps for its machine tokens' group (approval.mode: pxejoin).
// kubeadm binds the same roles to its own group; pxejoin's group gets them and nothing more: no
// certificatesigningrequests/nodeclient, so the controller manager never approves these tokens' CSRs.
const (
	// NodeBootstrapperBinding binds system:node-bootstrapper (create, get, list, watch CSRs).
	NodeBootstrapperBinding = "pxejoin:node-bootstrapper"
	// GetNodesRole lets a joining machine check that no Node of its name exists (as kubeadm's join does).
	GetNodesRole = "pxejoin:get-nodes"
	// JoinConfigRole (a Role in kube-system) lets it read the kubelet-config and kubeadm-config ConfigMaps.
	JoinConfigRole = "pxejoin:join-config"
	// NodeLeasesRole (a Role in kube-node-lease) lets a rebooted diskless machine read the Lease of its
	// Node to prove the old kubelet gone before taking the name back (nodeagent/join takeover). RBAC
	// cannot name one Lease per token (resourceNames are per role, and every token shares the group), so
	// it is get on every node Lease: a Lease says which node holds it and when it renewed, no more than
	// get on Nodes already shows.
	NodeLeasesRole = "pxejoin:get-node-leases"
	// KubeadmCertsBinding (a RoleBinding in kube-system, with control-plane profiles only) binds
	// kubeadm's Role KubeadmCertsRole, which `kubeadm init phase upload-certs --upload-certs` creates
	// with the kubeadm-certs Secret and binds to kubeadm's token group only: a control-plane join reads
	// that Secret.
	KubeadmCertsBinding = "pxejoin:kubeadm-certs"
	// KubeadmCertsRole is kubeadm's Role letting its tokens get the kube-system/kubeadm-certs Secret.
	KubeadmCertsRole = "kubeadm:kubeadm-certs"
)

// bootstrapRBAC is what the tokens of group need to join; controlPlane adds what a control-plane join needs.
func bootstrapRBAC(group string, controlPlane bool) ([]rbacv1.ClusterRole, []rbacv1.ClusterRoleBinding, []rbacv1.Role, []rbacv1.RoleBinding) {
	subjects := []rbacv1.Subject{{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: group}}
	meta := func(name, ns string) metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app.kubernetes.io/managed-by": "pxejoin-bootserver"}}
	}
	crs := []rbacv1.ClusterRole{{ObjectMeta: meta(GetNodesRole, ""),
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get"}}}}}
	crbs := []rbacv1.ClusterRoleBinding{
		{ObjectMeta: meta(NodeBootstrapperBinding, ""), Subjects: subjects,
			RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "system:node-bootstrapper"}},
		{ObjectMeta: meta(GetNodesRole, ""), Subjects: subjects,
			RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: GetNodesRole}},
	}
	roles := []rbacv1.Role{
		{ObjectMeta: meta(JoinConfigRole, metav1.NamespaceSystem),
			Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"},
				ResourceNames: []string{"kubelet-config", "kubeadm-config"}, Verbs: []string{"get"}}}},
		{ObjectMeta: meta(NodeLeasesRole, corev1.NamespaceNodeLease),
			Rules: []rbacv1.PolicyRule{{APIGroups: []string{coordinationv1.GroupName}, Resources: []string{"leases"}, Verbs: []string{"get"}}}},
	}
	rbs := []rbacv1.RoleBinding{
		{ObjectMeta: meta(JoinConfigRole, metav1.NamespaceSystem), Subjects: subjects,
			RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: JoinConfigRole}},
		{ObjectMeta: meta(NodeLeasesRole, corev1.NamespaceNodeLease), Subjects: subjects,
			RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: NodeLeasesRole}},
	}
	if controlPlane {
		rbs = append(rbs, rbacv1.RoleBinding{ObjectMeta: meta(KubeadmCertsBinding, metav1.NamespaceSystem), Subjects: subjects,
			RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: KubeadmCertsRole}})
	}
	return crs, crbs, roles, rbs
}

// EnsureBootstrapRBAC creates (or puts back) the roles and bindings group's tokens need to join; with
// controlPlane (the configuration has a control-plane profile) also the binding that lets them read
// the kubeadm-certs Secret. The boot server needs to hold what it grants (or the bind verb on those
// roles).
func EnsureBootstrapRBAC(ctx context.Context, c kubernetes.Interface, group string, controlPlane bool) error {
	crs, crbs, roles, rbs := bootstrapRBAC(group, controlPlane)
	r := c.RbacV1()
	for _, o := range crs {
		if err := ensure(ctx, &o, r.ClusterRoles().Create, r.ClusterRoles().Get, r.ClusterRoles().Update,
			func(have, want *rbacv1.ClusterRole) { have.Rules = want.Rules },
			func(have, want *rbacv1.ClusterRole) bool { return equality.Semantic.DeepEqual(have.Rules, want.Rules) }); err != nil {
			return err
		}
	}
	for _, o := range crbs {
		if err := ensure(ctx, &o, r.ClusterRoleBindings().Create, r.ClusterRoleBindings().Get, r.ClusterRoleBindings().Update,
			func(have, want *rbacv1.ClusterRoleBinding) { have.Subjects = want.Subjects },
			func(have, want *rbacv1.ClusterRoleBinding) bool {
				return equality.Semantic.DeepEqual(have.Subjects, want.Subjects)
			}); err != nil {
			return err
		}
	}
	for _, o := range roles {
		rs := r.Roles(o.Namespace)
		if err := ensure(ctx, &o, rs.Create, rs.Get, rs.Update, func(have, want *rbacv1.Role) { have.Rules = want.Rules },
			func(have, want *rbacv1.Role) bool { return equality.Semantic.DeepEqual(have.Rules, want.Rules) }); err != nil {
			return err
		}
	}
	for _, o := range rbs {
		bindings := r.RoleBindings(o.Namespace)
		if err := ensure(ctx, &o, bindings.Create, bindings.Get, bindings.Update, func(have, want *rbacv1.RoleBinding) { have.Subjects = want.Subjects },
			func(have, want *rbacv1.RoleBinding) bool {
				return equality.Semantic.DeepEqual(have.Subjects, want.Subjects)
			}); err != nil {
			return err
		}
	}
	return nil
}

// ensure creates want when it is missing, or puts the existing object's content back to want's
// (set copies it; same says whether it already is). An object already as it should be is only read,
// so a boot server whose RBAC was created for it (deploy/base) needs no more than get on it.
func ensure[T interface{ GetName() string }](ctx context.Context, want T,
	create func(context.Context, T, metav1.CreateOptions) (T, error),
	get func(context.Context, string, metav1.GetOptions) (T, error),
	update func(context.Context, T, metav1.UpdateOptions) (T, error),
	set func(have, want T), same func(have, want T) bool) error {
	have, err := get(ctx, want.GetName(), metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = create(ctx, want, metav1.CreateOptions{})
	case err == nil && !same(have, want):
		set(have, want)
		_, err = update(ctx, have, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("cannot create the RBAC that machine tokens need to join (%s): %w: give the boot server's kubeconfig "+
			"the rights to manage roles and bindings, or create them yourself (deploy/base/token-rbac.yaml; control-plane-rbac.yaml with a control-plane profile) or set approval.mode: kubeadm", want.GetName(), err)
	}
	return nil
}

package approver

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	authorizationv1 "k8s.io/api/authorization/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
)

// ClusterRole is the name of the ClusterRole the approver needs (deploy/rbac/approver.yaml).
const ClusterRole = "pxejoin:approver"

// SelfCheck asks the API two things before the approver runs: whether a pxejoin bootstrap token
// could get its CSR approved by someone else (kube-controller-manager's approver approves a
// bootstrap token's CSR when the requester may create certificatesigningrequests/nodeclient), and
// whether the boot server may approve the kubelet signers itself. A failure names the binding to
// remove or the role to grant; with Options.Warn it is logged at error level and exported as
// pxejoin_approval_selfcheck_failed 1 instead, and SelfCheck returns nil.
func (c *Controller) SelfCheck(ctx context.Context) error {
	problems, err := c.check(ctx)
	if err != nil {
		return fmt.Errorf("approval self-check: %w: grant the boot server ClusterRole %s (deploy/rbac/approver.yaml), or set approval.mode: kubeadm", err, ClusterRole)
	}
	if len(problems) == 0 {
		c.selfCheck.Set(0)
		return nil
	}
	if !c.opts.Warn {
		return &SelfCheckError{Problems: problems}
	}
	c.selfCheck.Set(1)
	c.log.Error("machines' certificates are NOT bound to their node names: approval self-check: "+strings.Join(problems, "; "),
		"metric", "pxejoin_approval_selfcheck_failed")
	return nil
}

// SelfCheckError is the self-check's finding that another binding would approve pxejoin tokens'
// CSRs, or that the boot server may not approve them; each problem says what to do.
type SelfCheckError struct{ Problems []string }

func (e *SelfCheckError) Error() string {
	return "approval self-check: " + strings.Join(e.Problems, "; ") + " (or set approval.selfCheck: warn to start anyway)"
}

// check returns what is wrong, each with what to do; err when a question could not be asked.
func (c *Controller) check(ctx context.Context) (problems []string, err error) {
	groups := []string{bootstrapapi.BootstrapDefaultGroup, c.opts.Policy.Group, "system:authenticated"}
	sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User: bootstrapapi.BootstrapUserPrefix + "xxxxxx", Groups: groups,
		ResourceAttributes: &authorizationv1.ResourceAttributes{Group: certificatesv1.GroupName, Resource: "certificatesigningrequests",
			Subresource: "nodeclient", Verb: "create"},
	}}
	got, err := c.opts.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("cannot ask whether pxejoin tokens are auto-approved: %w", err)
	}
	if got.Status.Allowed {
		bindings, err := c.autoApproveBindings(ctx, groups)
		if err != nil || len(bindings) == 0 {
			bindings = []string{"(cannot tell which: look for a ClusterRoleBinding that grants create on certificatesigningrequests/nodeclient)"}
		}
		problems = append(problems, fmt.Sprintf("the controller manager would approve any node name for a pxejoin token, since %s grants create "+
			"on certificatesigningrequests/nodeclient to %s: remove it (kubectl delete clusterrolebinding NAME), or bind it to kubeadm's group %s only",
			strings.Join(bindings, ", "), strings.Join(groups, " or "), "system:bootstrappers:kubeadm:default-node-token"))
	}
	for _, signer := range []string{certificatesv1.KubeAPIServerClientKubeletSignerName, certificatesv1.KubeletServingSignerName} {
		for _, ra := range []authorizationv1.ResourceAttributes{
			{Group: certificatesv1.GroupName, Resource: "signers", Name: signer, Verb: "approve"},
			{Group: certificatesv1.GroupName, Resource: "certificatesigningrequests", Subresource: "approval", Verb: "update"},
		} {
			ssar := &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &ra}}
			got, err := c.opts.Client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, ssar, metav1.CreateOptions{})
			if err != nil {
				return nil, fmt.Errorf("cannot ask whether the boot server may approve: %w", err)
			}
			if !got.Status.Allowed {
				what := ra.Verb + " " + ra.Resource
				if ra.Subresource != "" {
					what += "/" + ra.Subresource
				}
				if ra.Name != "" {
					what += " " + ra.Name
				}
				problems = append(problems, fmt.Sprintf("the boot server may not %s: grant it ClusterRole %s (deploy/rbac/approver.yaml)", what, ClusterRole))
			}
		}
	}
	return slices.Compact(problems), nil
}

// autoApproveBindings names the ClusterRoleBindings that grant create on
// certificatesigningrequests/nodeclient to one of groups.
func (c *Controller) autoApproveBindings(ctx context.Context, groups []string) ([]string, error) {
	crbs, err := c.opts.Client.RbacV1().ClusterRoleBindings().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	var names []string
	var errs []error
	for _, b := range crbs.Items {
		if !slices.ContainsFunc(b.Subjects, func(s rbacv1.Subject) bool { return s.Kind == rbacv1.GroupKind && slices.Contains(groups, s.Name) }) {
			continue
		}
		role, err := c.opts.Client.RbacV1().ClusterRoles().Get(ctx, b.RoleRef.Name, metav1.GetOptions{})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if slices.ContainsFunc(role.Rules, grantsNodeClient) {
			names = append(names, "ClusterRoleBinding "+b.Name)
		}
	}
	return names, errors.Join(errs...)
}

func grantsNodeClient(r rbacv1.PolicyRule) bool {
	has := func(list []string, v ...string) bool {
		return slices.ContainsFunc(list, func(s string) bool { return slices.Contains(v, s) })
	}
	return has(r.APIGroups, certificatesv1.GroupName, "*") && has(r.Verbs, "create", "*") &&
		has(r.Resources, "certificatesigningrequests/nodeclient", "certificatesigningrequests/*", "*")
}

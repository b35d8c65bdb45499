package controlplane

import (
	"context"
	"fmt"
	"os"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
	kubeletv1beta1 "k8s.io/kubelet/config/v1beta1"
	"sigs.k8s.io/yaml"

	"github.com/pxejoin/pxejoin/internal/bootstraptoken"
)

// Names of the objects kubeadm init creates for joining.
const (
	AutoApproveBinding = "kubeadm:node-autoapprove-bootstrap"
	clusterInfoRole    = "kubeadm:bootstrap-signer-clusterinfo"
	getNodesRole       = "kubeadm:get-nodes"
)

// applyJoinObjects creates what `kubeadm init` leaves for workers: cluster-info and its anonymous
// access, the bootstrap RBAC bindings, and the kubelet-config and kubeadm-config ConfigMaps.
func (cp *ControlPlane) applyJoinObjects(ctx context.Context) error {
	caPEM, err := os.ReadFile(cp.CAFile())
	if err != nil {
		return err
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters[""] = &clientcmdapi.Cluster{Server: "https://" + cp.endpoint, CertificateAuthorityData: caPEM}
	kcBytes, err := clientcmd.Write(*kc)
	if err != nil {
		return err
	}
	kubelet := &kubeletv1beta1.KubeletConfiguration{
		TypeMeta:      metav1.TypeMeta{APIVersion: "kubelet.config.k8s.io/v1beta1", Kind: "KubeletConfiguration"},
		ClusterDNS:    []string{"10.96.0.10"},
		ClusterDomain: "cluster.local",
		CgroupDriver:  "cgroupfs",
		Authentication: kubeletv1beta1.KubeletAuthentication{
			X509:      kubeletv1beta1.KubeletX509Authentication{ClientCAFile: "/etc/kubernetes/pki/ca.crt"},
			Webhook:   kubeletv1beta1.KubeletWebhookAuthentication{Enabled: ptr(true)},
			Anonymous: kubeletv1beta1.KubeletAnonymousAuthentication{Enabled: ptr(false)},
		},
		Authorization:      kubeletv1beta1.KubeletAuthorization{Mode: kubeletv1beta1.KubeletAuthorizationModeWebhook},
		RotateCertificates: true,
		StaticPodPath:      "/etc/kubernetes/manifests",
		FailCgroupV1:       ptr(false),
	}
	kubeletYAML, err := yaml.Marshal(kubelet)
	if err != nil {
		return err
	}
	clusterConfig := fmt.Sprintf(`apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: %s
clusterName: kubernetes
controlPlaneEndpoint: %s
certificatesDir: /etc/kubernetes/pki
networking:
  dnsDomain: cluster.local
  serviceSubnet: 10.96.0.0/12
  podSubnet: 10.244.0.0/16
`, Version, cp.endpoint)

	c := cp.client
	objs := []func() error{
		func() error {
			_, err := c.CoreV1().ConfigMaps(metav1.NamespacePublic).Create(ctx, &corev1.ConfigMap{
				ObjectMeta: metav1.ObjectMeta{Name: bootstrapapi.ConfigMapClusterInfo},
				Data:       map[string]string{bootstrapapi.KubeConfigKey: string(kcBytes)},
			}, metav1.CreateOptions{})
			return err
		},
		func() error {
			// kubeadm grants anonymous "get" on cluster-info. pxejoin adds "list" and "watch" limited to the
			// same name so agents can watch for the token's signature instead of polling (the agent falls
			// back to polling where a cluster grants only "get").
			_, err := c.RbacV1().Roles(metav1.NamespacePublic).Create(ctx, &rbacv1.Role{
				ObjectMeta: metav1.ObjectMeta{Name: clusterInfoRole},
				Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"},
					ResourceNames: []string{bootstrapapi.ConfigMapClusterInfo}, Verbs: []string{"get", "list", "watch"}}},
			}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := c.RbacV1().RoleBindings(metav1.NamespacePublic).Create(ctx, &rbacv1.RoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: clusterInfoRole},
				RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: clusterInfoRole},
				Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "system:anonymous"}},
			}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := c.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
				ObjectMeta: metav1.ObjectMeta{Name: getNodesRole},
				Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get"}}},
			}, metav1.CreateOptions{})
			return err
		},
		func() error { return cp.bind(ctx, getNodesRole, getNodesRole, bootstraptoken.DefaultGroup) },
		func() error {
			return cp.bind(ctx, "kubeadm:kubelet-bootstrap", "system:node-bootstrapper", bootstraptoken.DefaultGroup)
		},
		func() error {
			return cp.bind(ctx, AutoApproveBinding, "system:certificates.k8s.io:certificatesigningrequests:nodeclient", bootstraptoken.DefaultGroup)
		},
		func() error {
			return cp.bind(ctx, "kubeadm:node-autoapprove-certificate-rotation", "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient", "system:nodes")
		},
		// kubeadm binds the group of its apiserver-kubelet-client certificate to cluster-admin; without
		// it the kubelets' webhook authorization refuses the apiserver (kubectl logs, exec, port-forward).
		func() error { return cp.bind(ctx, "kubeadm:cluster-admins", "cluster-admin", "kubeadm:cluster-admins") },
		func() error { return cp.readableBy(ctx, "kubeadm:kubelet-config", "kubelet-config") },
		func() error { return cp.readableBy(ctx, "kubeadm:nodes-kubeadm-config", "kubeadm-config") },
		func() error {
			_, err := c.CoreV1().ConfigMaps(metav1.NamespaceSystem).Create(ctx, &corev1.ConfigMap{
				ObjectMeta: metav1.ObjectMeta{Name: "kubelet-config"},
				Data:       map[string]string{"kubelet": string(kubeletYAML)},
			}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := c.CoreV1().ConfigMaps(metav1.NamespaceSystem).Create(ctx, &corev1.ConfigMap{
				ObjectMeta: metav1.ObjectMeta{Name: "kubeadm-config"},
				Data:       map[string]string{"ClusterConfiguration": clusterConfig},
			}, metav1.CreateOptions{})
			return err
		},
	}
	for _, f := range objs {
		if err := f(); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	return nil
}

func (cp *ControlPlane) bind(ctx context.Context, name, role, group string) error {
	_, err := cp.client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: group}},
	}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// readableBy lets nodes and bootstrapping nodes get one kube-system ConfigMap, as kubeadm's Roles do.
func (cp *ControlPlane) readableBy(ctx context.Context, name, configMap string) error {
	_, err := cp.client.RbacV1().Roles(metav1.NamespaceSystem).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"},
			ResourceNames: []string{configMap}, Verbs: []string{"get"}}},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	_, err = cp.client.RbacV1().RoleBindings(metav1.NamespaceSystem).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name},
		Subjects: []rbacv1.Subject{
			{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: "system:nodes"},
			{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: bootstraptoken.DefaultGroup},
		},
	}, metav1.CreateOptions{})
	return err
}

// SetAutoApprove creates or removes kubeadm's binding that auto-approves bootstrap CSRs.
func (cp *ControlPlane) SetAutoApprove(ctx context.Context, on bool) error {
	if on {
		return cp.bind(ctx, AutoApproveBinding, "system:certificates.k8s.io:certificatesigningrequests:nodeclient", bootstraptoken.DefaultGroup)
	}
	err := cp.client.RbacV1().ClusterRoleBindings().Delete(ctx, AutoApproveBinding, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// SetServerTLSBootstrap sets serverTLSBootstrap in the cluster's kubelet-config (kubelets joining
// afterwards ask for a serving certificate with a kubernetes.io/kubelet-serving CSR, which only an
// approver such as the boot server's approves: the controller manager does not).
func (cp *ControlPlane) SetServerTLSBootstrap(ctx context.Context, on bool) error {
	cms := cp.client.CoreV1().ConfigMaps(metav1.NamespaceSystem)
	cm, err := cms.Get(ctx, "kubelet-config", metav1.GetOptions{})
	if err != nil {
		return err
	}
	var kc kubeletv1beta1.KubeletConfiguration
	if err := yaml.Unmarshal([]byte(cm.Data["kubelet"]), &kc); err != nil {
		return err
	}
	kc.ServerTLSBootstrap = on
	b, err := yaml.Marshal(&kc)
	if err != nil {
		return err
	}
	cm.Data["kubelet"] = string(b)
	_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
	return err
}

// CreateToken creates a bootstrap token as `kubeadm token create` does.
func (cp *ControlPlane) CreateToken(ctx context.Context, ttl time.Duration) (string, error) {
	return bootstraptoken.Create(ctx, cp.client, bootstraptoken.Options{TTL: ttl, Description: "pxejoin test token"})
}

// WaitSigned waits until the bootstrap signer has signed cluster-info for the token.
func (cp *ControlPlane) WaitSigned(ctx context.Context, token string, limit time.Duration) error {
	key := bootstrapapi.JWSSignatureKeyPrefix + bootstraptoken.ID(token)
	return wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, limit, true, func(ctx context.Context) (bool, error) {
		cm, err := cp.client.CoreV1().ConfigMaps(metav1.NamespacePublic).Get(ctx, bootstrapapi.ConfigMapClusterInfo, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		_, ok := cm.Data[key]
		return ok, nil
	})
}

func ptr[T any](v T) *T { return &v }

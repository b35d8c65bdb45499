// Package joinconfig holds kubeadm's JoinConfiguration (kubeadm.k8s.io/v1beta4, v1beta3 read too): the
// file the boot server serves per machine and the agent's --config. Both binaries use this one copy.
//
// Deviation: the types are a field-for-field copy of kubeadm's public API rather than an import of
// k8s.io/kubernetes/cmd/kubeadm/app/apis, because k8s.io/kubernetes cannot be required as a module
// without replacing its 33 staging modules (see ../shared/notes/control-plane.md). The golden files in
// testdata/ pin the wire format.
package joinconfig

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Group, versions and kind of the configuration.
const (
	Group      = "kubeadm.k8s.io"
	V1beta4    = Group + "/v1beta4"
	V1beta3    = Group + "/v1beta3"
	Kind       = "JoinConfiguration"
	DefaultCRI = "unix:///var/run/containerd/containerd.sock"
)

// JoinConfiguration is kubeadm.k8s.io/v1beta4 JoinConfiguration.
type JoinConfiguration struct {
	metav1.TypeMeta `json:",inline"`

	// DryRun tells the join to write nothing and only print what it would do.
	DryRun bool `json:"dryRun,omitempty"`
	// NodeRegistration holds fields about registering the new node.
	NodeRegistration NodeRegistrationOptions `json:"nodeRegistration,omitempty"`
	// CACertPath is where the cluster CA is written on the node (default /etc/kubernetes/pki/ca.crt).
	CACertPath string `json:"caCertPath,omitempty"`
	// Discovery says how the node finds and trusts the control plane.
	Discovery Discovery `json:"discovery"`
	// ControlPlane, when set, makes the node a control-plane node.
	ControlPlane *JoinControlPlane `json:"controlPlane,omitempty"`
	// SkipPhases lists phases to skip, e.g. "kubelet-start/start".
	SkipPhases []string `json:"skipPhases,omitempty"`
	// Patches points at a directory of patches for components.
	Patches *Patches `json:"patches,omitempty"`
	// Timeouts of the join's steps.
	Timeouts *Timeouts `json:"timeouts,omitempty"`
}

// NodeRegistrationOptions is kubeadm's nodeRegistration.
type NodeRegistrationOptions struct {
	Name                  string         `json:"name,omitempty"`
	CRISocket             string         `json:"criSocket,omitempty"`
	Taints                []corev1.Taint `json:"taints"`
	KubeletExtraArgs      []Arg          `json:"kubeletExtraArgs,omitempty"`
	IgnorePreflightErrors []string       `json:"ignorePreflightErrors,omitempty"`
	ImagePullPolicy       string         `json:"imagePullPolicy,omitempty"`
	ImagePullSerial       *bool          `json:"imagePullSerial,omitempty"`
}

// Arg is one command-line argument, as v1beta4 lists them.
type Arg struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// Discovery is kubeadm's discovery section.
type Discovery struct {
	BootstrapToken    *BootstrapTokenDiscovery `json:"bootstrapToken,omitempty"`
	File              *FileDiscovery           `json:"file,omitempty"`
	TLSBootstrapToken string                   `json:"tlsBootstrapToken,omitempty"`
	// Timeout is v1beta3's discovery.timeout; v1beta4 moved it to timeouts.discovery. Read, never written.
	Timeout *metav1.Duration `json:"timeout,omitempty"`
}

// BootstrapTokenDiscovery is token-based discovery.
type BootstrapTokenDiscovery struct {
	Token                    string   `json:"token"`
	APIServerEndpoint        string   `json:"apiServerEndpoint,omitempty"`
	CACertHashes             []string `json:"caCertHashes,omitempty"`
	UnsafeSkipCAVerification bool     `json:"unsafeSkipCAVerification,omitempty"`
}

// FileDiscovery is discovery from a kubeconfig file or https URL.
type FileDiscovery struct {
	KubeConfigPath string `json:"kubeConfigPath"`
}

// JoinControlPlane is the control-plane part of a join.
type JoinControlPlane struct {
	LocalAPIEndpoint APIEndpoint `json:"localAPIEndpoint,omitempty"`
	CertificateKey   string      `json:"certificateKey,omitempty"`
}

// APIEndpoint is an advertise address and bind port.
type APIEndpoint struct {
	AdvertiseAddress string `json:"advertiseAddress,omitempty"`
	BindPort         int32  `json:"bindPort,omitempty"`
}

// Patches is kubeadm's patches section.
type Patches struct {
	Directory string `json:"directory,omitempty"`
}

// Timeouts is v1beta4's timeouts section.
type Timeouts struct {
	ControlPlaneComponentHealthCheck *metav1.Duration `json:"controlPlaneComponentHealthCheck,omitempty"`
	KubeletHealthCheck               *metav1.Duration `json:"kubeletHealthCheck,omitempty"`
	KubernetesAPICall                *metav1.Duration `json:"kubernetesAPICall,omitempty"`
	EtcdAPICall                      *metav1.Duration `json:"etcdAPICall,omitempty"`
	TLSBootstrap                     *metav1.Duration `json:"tlsBootstrap,omitempty"`
	Discovery                        *metav1.Duration `json:"discovery,omitempty"`
	UpgradeManifests                 *metav1.Duration `json:"upgradeManifests,omitempty"`
}

package joinconfig

import (
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// kubeadm's ClusterConfiguration defaults that a control-plane join needs.
const (
	DefaultCertificatesDir     = "/etc/kubernetes/pki"
	DefaultImageRepository     = "registry.k8s.io"
	DefaultServiceSubnet       = "10.96.0.0/12"
	DefaultDNSDomain           = "cluster.local"
	DefaultClusterName         = "kubernetes"
	DefaultEtcdDataDir         = "/var/lib/etcd"
	DefaultEncryptionAlgorithm = "RSA-2048"
	DefaultCertValidity        = 365 * 24 * time.Hour
	DefaultAPIServerBindPort   = 6443
)

// ClusterConfiguration is the part of kubeadm's ClusterConfiguration (v1beta4; v1beta3 read too) that a
// control-plane join reads from the kube-system/kubeadm-config ConfigMap. It is read leniently: fields
// the join does not use (dns, proxy, …) are ignored rather than refused, since kubeadm init wrote the
// document, not the operator of this join.
type ClusterConfiguration struct {
	metav1.TypeMeta `json:",inline"`

	Etcd                        Etcd             `json:"etcd,omitempty"`
	Networking                  Networking       `json:"networking,omitempty"`
	KubernetesVersion           string           `json:"kubernetesVersion,omitempty"`
	ControlPlaneEndpoint        string           `json:"controlPlaneEndpoint,omitempty"`
	APIServer                   APIServer        `json:"apiServer,omitempty"`
	ControllerManager           ControlPlaneComp `json:"controllerManager,omitempty"`
	Scheduler                   ControlPlaneComp `json:"scheduler,omitempty"`
	CertificatesDir             string           `json:"certificatesDir,omitempty"`
	ImageRepository             string           `json:"imageRepository,omitempty"`
	FeatureGates                map[string]bool  `json:"featureGates,omitempty"`
	ClusterName                 string           `json:"clusterName,omitempty"`
	EncryptionAlgorithm         string           `json:"encryptionAlgorithm,omitempty"`
	CertificateValidityPeriod   *metav1.Duration `json:"certificateValidityPeriod,omitempty"`
	CACertificateValidityPeriod *metav1.Duration `json:"caCertificateValidityPeriod,omitempty"`
}

// Etcd is kubeadm's etcd section: local (stacked) or external.
type Etcd struct {
	Local    *LocalEtcd    `json:"local,omitempty"`
	External *ExternalEtcd `json:"external,omitempty"`
}

// LocalEtcd is a stacked etcd member on every control-plane node.
type LocalEtcd struct {
	ImageRepository string   `json:"imageRepository,omitempty"`
	ImageTag        string   `json:"imageTag,omitempty"`
	DataDir         string   `json:"dataDir,omitempty"`
	ExtraArgs       Args     `json:"extraArgs,omitempty"`
	ExtraEnvs       []EnvVar `json:"extraEnvs,omitempty"`
	ServerCertSANs  []string `json:"serverCertSANs,omitempty"`
	PeerCertSANs    []string `json:"peerCertSANs,omitempty"`
}

// ExternalEtcd is an etcd cluster kubeadm does not manage.
type ExternalEtcd struct {
	Endpoints []string `json:"endpoints"`
	CAFile    string   `json:"caFile"`
	CertFile  string   `json:"certFile"`
	KeyFile   string   `json:"keyFile"`
}

// Networking is kubeadm's networking section.
type Networking struct {
	ServiceSubnet string `json:"serviceSubnet,omitempty"`
	PodSubnet     string `json:"podSubnet,omitempty"`
	DNSDomain     string `json:"dnsDomain,omitempty"`
}

// ControlPlaneComp is the extra settings of a control-plane component.
type ControlPlaneComp struct {
	ExtraArgs    Args          `json:"extraArgs,omitempty"`
	ExtraVolumes []HostPathMnt `json:"extraVolumes,omitempty"`
	ExtraEnvs    []EnvVar      `json:"extraEnvs,omitempty"`
}

// APIServer is the kube-apiserver's section.
type APIServer struct {
	ControlPlaneComp `json:",inline"`
	CertSANs         []string `json:"certSANs,omitempty"`
}

// HostPathMnt is an extra host path mounted into a component's pod.
type HostPathMnt struct {
	Name      string `json:"name"`
	HostPath  string `json:"hostPath"`
	MountPath string `json:"mountPath"`
	ReadOnly  bool   `json:"readOnly,omitempty"`
	PathType  string `json:"pathType,omitempty"`
}

// EnvVar is an extra environment variable of a component.
type EnvVar struct {
	Name  string `json:"name"`
	Value string `json:"value,omitempty"`
}

// Args is a list of command-line arguments: v1beta4 writes a list of {name, value}, v1beta3 a map
// (read in name order).
type Args []Arg

// UnmarshalJSON reads either form.
func (a *Args) UnmarshalJSON(b []byte) error {
	var list []Arg
	if err := json.Unmarshal(b, &list); err == nil {
		*a = list
		return nil
	}
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("extraArgs must be a list of {name, value} (v1beta4) or a map (v1beta3): %w", err)
	}
	*a = nil
	for _, k := range slices.Sorted(maps.Keys(m)) {
		*a = append(*a, Arg{Name: k, Value: m[k]})
	}
	return nil
}

// ParseClusterConfiguration reads the ClusterConfiguration kubeadm init keeps in kube-system/kubeadm-config
// (key "ClusterConfiguration") and fills in kubeadm's defaults.
func ParseClusterConfiguration(data []byte) (*ClusterConfiguration, error) {
	c := &ClusterConfiguration{}
	if err := yaml.Unmarshal(data, c); err != nil {
		return nil, fmt.Errorf("the ClusterConfiguration does not parse: %w", err)
	}
	if c.Kind != "" && c.Kind != "ClusterConfiguration" {
		return nil, fmt.Errorf("expected a ClusterConfiguration, found kind %s", c.Kind)
	}
	if c.APIVersion != "" && c.APIVersion != V1beta4 && c.APIVersion != V1beta3 {
		return nil, fmt.Errorf("ClusterConfiguration apiVersion %q is not supported: %s or %s", c.APIVersion, V1beta4, V1beta3)
	}
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.CertificatesDir, DefaultCertificatesDir)
	def(&c.ImageRepository, DefaultImageRepository)
	def(&c.Networking.ServiceSubnet, DefaultServiceSubnet)
	def(&c.Networking.DNSDomain, DefaultDNSDomain)
	def(&c.ClusterName, DefaultClusterName)
	def(&c.EncryptionAlgorithm, DefaultEncryptionAlgorithm)
	if c.Etcd.External == nil {
		if c.Etcd.Local == nil {
			c.Etcd.Local = &LocalEtcd{}
		}
		def(&c.Etcd.Local.DataDir, DefaultEtcdDataDir)
	}
	return c, nil
}

// CertValidity is certificateValidityPeriod, one year by default.
func (c *ClusterConfiguration) CertValidity() time.Duration {
	if c.CertificateValidityPeriod != nil && c.CertificateValidityPeriod.Duration > 0 {
		return c.CertificateValidityPeriod.Duration
	}
	return DefaultCertValidity
}

// ControlPlaneEndpointHostPort splits controlPlaneEndpoint; the port defaults to bindPort, as kubeadm's
// GetControlPlaneEndpoint does.
func (c *ClusterConfiguration) ControlPlaneEndpointHostPort(bindPort int32) (string, int, error) {
	ep := c.ControlPlaneEndpoint
	if ep == "" {
		return "", 0, fmt.Errorf("the cluster has no controlPlaneEndpoint")
	}
	host, port, err := net.SplitHostPort(ep)
	if err != nil {
		// No port: the whole value is the host.
		return strings.Trim(ep, "[]"), int(bindPort), nil
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 {
		return "", 0, fmt.Errorf("controlPlaneEndpoint %q has an invalid port", ep)
	}
	return host, p, nil
}

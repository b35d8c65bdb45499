package joinconfig

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// kubeadm's default timeouts (v1beta4).
const (
	DefaultDiscoveryTimeout    = 5 * time.Minute
	DefaultTLSBootstrapTimeout = 5 * time.Minute
	DefaultAPICallTimeout      = 1 * time.Minute
	DefaultKubeletHealthCheck  = 4 * time.Minute
	DefaultCACertPath          = "/etc/kubernetes/pki/ca.crt"
)

// v1beta3 spells kubeletExtraArgs as a map; everything else we read is the same shape.
type v1beta3NodeRegistration struct {
	KubeletExtraArgs map[string]string `json:"kubeletExtraArgs,omitempty"`
}

// Parse reads a JoinConfiguration from YAML or JSON. A multi-document file may hold other kinds (an
// InitConfiguration, a KubeletConfiguration); the JoinConfiguration document is taken. v1beta3 is
// converted to v1beta4.
func Parse(data []byte) (*JoinConfiguration, error) {
	var found *JoinConfiguration
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for i := 0; ; i++ {
		doc, err := r.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("document %d cannot be read: %w", i+1, err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			i--
			continue
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			return nil, fmt.Errorf("document %d is not valid YAML: %w", i+1, err)
		}
		if tm.Kind != Kind {
			continue
		}
		if found != nil {
			return nil, fmt.Errorf("more than one %s in the file: keep one", Kind)
		}
		c, err := parseOne(doc, tm)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		found = c
	}
	if found == nil {
		return nil, fmt.Errorf("no %s found: the file needs a document with apiVersion %s and kind %s", Kind, V1beta4, Kind)
	}
	return found, nil
}

func parseOne(doc []byte, tm metav1.TypeMeta) (*JoinConfiguration, error) {
	c := &JoinConfiguration{}
	switch tm.APIVersion {
	case V1beta4:
		if err := yaml.UnmarshalStrict(doc, c); err != nil {
			return nil, fmt.Errorf("invalid %s %s: %w", V1beta4, Kind, err)
		}
		if c.Discovery.Timeout != nil {
			return nil, fmt.Errorf("invalid %s %s: discovery.timeout moved to timeouts.discovery in v1beta4", V1beta4, Kind)
		}
	case V1beta3:
		// v1beta3: kubeletExtraArgs is a map and discovery.timeout exists; no timeouts section.
		var raw map[string]any
		if err := yaml.Unmarshal(doc, &raw); err != nil {
			return nil, err
		}
		var nr struct {
			NodeRegistration v1beta3NodeRegistration `json:"nodeRegistration"`
		}
		if err := yaml.Unmarshal(doc, &nr); err != nil {
			return nil, fmt.Errorf("invalid %s %s: %w", V1beta3, Kind, err)
		}
		if m, ok := raw["nodeRegistration"].(map[string]any); ok {
			delete(m, "kubeletExtraArgs")
		}
		if _, ok := raw["timeouts"]; ok {
			return nil, fmt.Errorf("invalid %s %s: timeouts exists only in v1beta4", V1beta3, Kind)
		}
		stripped, err := yaml.Marshal(raw)
		if err != nil {
			return nil, err
		}
		if err := yaml.UnmarshalStrict(stripped, c); err != nil {
			return nil, fmt.Errorf("invalid %s %s: %w", V1beta3, Kind, err)
		}
		for _, k := range slices.Sorted(maps.Keys(nr.NodeRegistration.KubeletExtraArgs)) {
			c.NodeRegistration.KubeletExtraArgs = append(c.NodeRegistration.KubeletExtraArgs, Arg{Name: k, Value: nr.NodeRegistration.KubeletExtraArgs[k]})
		}
		if c.Discovery.Timeout != nil {
			if c.Timeouts == nil {
				c.Timeouts = &Timeouts{}
			}
			c.Timeouts.Discovery = c.Discovery.Timeout
			c.Discovery.Timeout = nil
		}
		c.APIVersion = V1beta4
	default:
		return nil, fmt.Errorf("%s with apiVersion %q is not supported: use %s (or %s)", Kind, tm.APIVersion, V1beta4, V1beta3)
	}
	return c, nil
}

// Load reads a JoinConfiguration from a file.
func Load(path string) (*JoinConfiguration, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read the config file: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Marshal writes c as v1beta4 YAML.
func Marshal(c *JoinConfiguration) ([]byte, error) {
	out := *c
	out.APIVersion, out.Kind = V1beta4, Kind
	return yaml.Marshal(&out)
}

// Defaults returns kubeadm's `config print join-defaults` values.
func Defaults() *JoinConfiguration {
	d := func(t time.Duration) *metav1.Duration { return &metav1.Duration{Duration: t} }
	return &JoinConfiguration{
		TypeMeta:   metav1.TypeMeta{APIVersion: V1beta4, Kind: Kind},
		CACertPath: DefaultCACertPath,
		NodeRegistration: NodeRegistrationOptions{
			CRISocket:       DefaultCRI,
			ImagePullPolicy: "IfNotPresent",
			Taints:          nil,
		},
		Discovery: Discovery{
			BootstrapToken: &BootstrapTokenDiscovery{
				Token:                    "abcdef.0123456789abcdef",
				APIServerEndpoint:        "kube-apiserver:6443",
				UnsafeSkipCAVerification: true,
			},
			TLSBootstrapToken: "abcdef.0123456789abcdef",
		},
		Timeouts: &Timeouts{
			ControlPlaneComponentHealthCheck: d(4 * time.Minute),
			KubeletHealthCheck:               d(DefaultKubeletHealthCheck),
			KubernetesAPICall:                d(DefaultAPICallTimeout),
			EtcdAPICall:                      d(2 * time.Minute),
			TLSBootstrap:                     d(DefaultTLSBootstrapTimeout),
			Discovery:                        d(DefaultDiscoveryTimeout),
			UpgradeManifests:                 d(5 * time.Minute),
		},
	}
}

// Timeout returns the named timeout or its default.
func (c *JoinConfiguration) Timeout(pick func(*Timeouts) *metav1.Duration, def time.Duration) time.Duration {
	if c.Timeouts != nil {
		if v := pick(c.Timeouts); v != nil && v.Duration > 0 {
			return v.Duration
		}
	}
	return def
}

// DiscoveryTimeout is timeouts.discovery, 5m by default.
func (c *JoinConfiguration) DiscoveryTimeout() time.Duration {
	return c.Timeout(func(t *Timeouts) *metav1.Duration { return t.Discovery }, DefaultDiscoveryTimeout)
}

// TLSBootstrapTimeout is timeouts.tlsBootstrap, 5m by default.
func (c *JoinConfiguration) TLSBootstrapTimeout() time.Duration {
	return c.Timeout(func(t *Timeouts) *metav1.Duration { return t.TLSBootstrap }, DefaultTLSBootstrapTimeout)
}

// APICallTimeout is timeouts.kubernetesAPICall, 1m by default.
func (c *JoinConfiguration) APICallTimeout() time.Duration {
	return c.Timeout(func(t *Timeouts) *metav1.Duration { return t.KubernetesAPICall }, DefaultAPICallTimeout)
}

// KubeletHealthCheckTimeout is timeouts.kubeletHealthCheck, 4m by default.
func (c *JoinConfiguration) KubeletHealthCheckTimeout() time.Duration {
	return c.Timeout(func(t *Timeouts) *metav1.Duration { return t.KubeletHealthCheck }, DefaultKubeletHealthCheck)
}

// Redacted returns a copy with every token and key replaced, for printing.
func (c *JoinConfiguration) Redacted() *JoinConfiguration {
	out := *c
	if bt := c.Discovery.BootstrapToken; bt != nil {
		cp := *bt
		cp.Token = RedactToken(cp.Token)
		out.Discovery.BootstrapToken = &cp
	}
	out.Discovery.TLSBootstrapToken = RedactToken(c.Discovery.TLSBootstrapToken)
	if c.ControlPlane != nil {
		cp := *c.ControlPlane
		if cp.CertificateKey != "" {
			cp.CertificateKey = "<redacted>"
		}
		out.ControlPlane = &cp
	}
	return &out
}

// RedactToken keeps a bootstrap token's public id and hides its secret: "abcdef.<redacted>".
func RedactToken(tok string) string {
	if tok == "" {
		return ""
	}
	id, _, ok := strings.Cut(tok, ".")
	if !ok || len(id) != 6 {
		return "<redacted>"
	}
	return id + ".<redacted>"
}

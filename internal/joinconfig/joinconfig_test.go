package joinconfig

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite golden files")

func TestParse(t *testing.T) {
	cases := []struct {
		name    string
		in      string
		wantErr string
		check   func(t *testing.T, c *JoinConfiguration)
	}{
		{name: "v1beta4", in: `apiVersion: kubeadm.k8s.io/v1beta4
kind: JoinConfiguration
discovery:
  bootstrapToken:
    token: abcdef.0123456789abcdef
    apiServerEndpoint: 10.0.0.1:6443
    caCertHashes: ["sha256:00"]
  tlsBootstrapToken: abcdef.0123456789abcdef
nodeRegistration:
  name: n1
  kubeletExtraArgs:
  - {name: node-labels, value: a=b}
  taints:
  - {key: k, value: v, effect: NoSchedule}
skipPhases: [kubelet-start/start]
timeouts:
  tlsBootstrap: 30s
`, check: func(t *testing.T, c *JoinConfiguration) {
			if c.Discovery.BootstrapToken.APIServerEndpoint != "10.0.0.1:6443" || c.NodeRegistration.Name != "n1" {
				t.Fatalf("%+v", c)
			}
			if c.TLSBootstrapTimeout() != 30*time.Second || c.DiscoveryTimeout() != DefaultDiscoveryTimeout {
				t.Fatalf("timeouts %v %v", c.TLSBootstrapTimeout(), c.DiscoveryTimeout())
			}
			if len(c.NodeRegistration.Taints) != 1 || c.NodeRegistration.KubeletExtraArgs[0].Value != "a=b" {
				t.Fatalf("%+v", c.NodeRegistration)
			}
		}},
		{name: "v1beta3 converted", in: `apiVersion: kubeadm.k8s.io/v1beta3
kind: JoinConfiguration
discovery:
  bootstrapToken:
    token: abcdef.0123456789abcdef
    apiServerEndpoint: 10.0.0.1:6443
    unsafeSkipCAVerification: true
  timeout: 1m
nodeRegistration:
  kubeletExtraArgs:
    b: "2"
    a: "1"
`, check: func(t *testing.T, c *JoinConfiguration) {
			if c.APIVersion != V1beta4 || c.DiscoveryTimeout() != time.Minute || c.Discovery.Timeout != nil {
				t.Fatalf("not converted: %+v", c)
			}
			if got := c.NodeRegistration.KubeletExtraArgs; len(got) != 2 || got[0].Name != "a" || got[1].Name != "b" {
				t.Fatalf("extra args %+v", got)
			}
		}},
		{name: "multi-document picks JoinConfiguration", in: "apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\n---\napiVersion: kubeadm.k8s.io/v1beta4\nkind: JoinConfiguration\nnodeRegistration: {name: x}\n",
			check: func(t *testing.T, c *JoinConfiguration) {
				if c.NodeRegistration.Name != "x" {
					t.Fatal(c.NodeRegistration.Name)
				}
			}},
		{name: "unknown field", in: "apiVersion: kubeadm.k8s.io/v1beta4\nkind: JoinConfiguration\nnodeRegistraton: {}\n", wantErr: "unknown field"},
		{name: "old version", in: "apiVersion: kubeadm.k8s.io/v1beta2\nkind: JoinConfiguration\n", wantErr: "not supported"},
		{name: "no join config", in: "apiVersion: v1\nkind: ConfigMap\n", wantErr: "no JoinConfiguration"},
		{name: "v1beta4 with v1beta3 timeout", in: "apiVersion: kubeadm.k8s.io/v1beta4\nkind: JoinConfiguration\ndiscovery: {timeout: 1m}\n", wantErr: "timeouts.discovery"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

// TestDefaultsGolden pins `config print join-defaults` and checks it parses back.
func TestDefaultsGolden(t *testing.T) {
	b, err := Marshal(Defaults())
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "join-defaults.yaml")
	if *update {
		os.WriteFile(golden, b, 0o644)
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != string(want) {
		t.Fatalf("join-defaults changed (run with -update if intended):\n%s", b)
	}
	if _, err := Parse(b); err != nil {
		t.Fatal(err)
	}
}

func TestRedacted(t *testing.T) {
	c := Defaults()
	c.ControlPlane = &JoinControlPlane{CertificateKey: "deadbeef"}
	b, _ := Marshal(c.Redacted())
	for _, secret := range []string{"0123456789abcdef", "deadbeef"} {
		if strings.Contains(string(b), secret) {
			t.Fatalf("redacted config holds %q", secret)
		}
	}
	if !strings.Contains(string(b), "abcdef.<redacted>") {
		t.Fatal("token id should stay visible")
	}
	if c.Discovery.BootstrapToken.Token != "abcdef.0123456789abcdef" {
		t.Fatal("Redacted changed the original")
	}
}

package joinconfig

import (
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite golden files")

// parseCases are TestParse's table and FuzzParse's seeds.
var parseCases = []struct {
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
	{name: "separators with comments, CRLF, a leading one and empty documents",
		in: "---\r\n--- # init\r\napiVersion: kubeadm.k8s.io/v1beta4\r\nkind: InitConfiguration\r\n---\r\n---   # join\r\napiVersion: kubeadm.k8s.io/v1beta4\r\nkind: JoinConfiguration\r\nnodeRegistration: {name: x}\r\n",
		check: func(t *testing.T, c *JoinConfiguration) {
			if c.NodeRegistration.Name != "x" {
				t.Fatal(c.NodeRegistration.Name)
			}
		}},
	// A split on "\n---" dropped the rest of the separator line: here, a second JoinConfiguration.
	{name: "content after a separator", in: "apiVersion: kubeadm.k8s.io/v1beta4\nkind: JoinConfiguration\nnodeRegistration: {name: a}\n--- {apiVersion: kubeadm.k8s.io/v1beta4, kind: JoinConfiguration, nodeRegistration: {name: b}}\n",
		wantErr: "separator"},
	{name: "a value that starts with dashes", in: "apiVersion: kubeadm.k8s.io/v1beta4\nkind: JoinConfiguration\nnodeRegistration:\n  name: x\n  taints:\n  - key: k\n    value: |\n      ---x\n    effect: NoSchedule\n",
		check: func(t *testing.T, c *JoinConfiguration) {
			if len(c.NodeRegistration.Taints) != 1 || c.NodeRegistration.Taints[0].Value != "---x\n" {
				t.Fatalf("%+v", c.NodeRegistration.Taints)
			}
		}},
}

func TestParse(t *testing.T) {
	for _, tc := range parseCases {
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

// FuzzParse feeds Parse what a boot server (or anyone on the boot network) could send: it must
// not panic, and what it accepts must survive Marshal and Parse unchanged.
func FuzzParse(f *testing.F) {
	for _, tc := range parseCases {
		f.Add([]byte(tc.in))
	}
	golden, err := os.ReadFile(filepath.Join("testdata", "join-defaults.yaml"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(golden)
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := Parse(in)
		if err != nil {
			return
		}
		out, err := Marshal(c)
		if err != nil {
			t.Fatalf("Marshal of a parsed config: %v", err)
		}
		again, err := Parse(out)
		if err != nil {
			t.Fatalf("Parse of a marshalled config: %v\n%s", err, out)
		}
		if !reflect.DeepEqual(c, again) {
			t.Fatalf("round trip changed the config:\n%+v\n%+v", c, again)
		}
	})
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

package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// TestFlagsToConfig: kubeadm's rules for building a JoinConfiguration from flags.
func TestFlagsToConfig(t *testing.T) {
	const tok, tok2 = "abcdef.0123456789abcdef", "ghijkl.0123456789abcdef"
	cases := []struct {
		name    string
		args    []string
		wantErr string
		check   func(t *testing.T, f *joinFlags, c string)
	}{
		{name: "--token sets both tokens", args: []string{"10.0.0.1:6443", "--token", tok, "--discovery-token-ca-cert-hash", "sha256:aa", "--discovery-token-ca-cert-hash", "sha256:bb"},
			check: func(t *testing.T, _ *joinFlags, c string) {
				for _, w := range []string{"token: " + tok, "tlsBootstrapToken: " + tok, "apiServerEndpoint: 10.0.0.1:6443", "- sha256:aa", "- sha256:bb"} {
					if !strings.Contains(c, w) {
						t.Errorf("config lacks %q:\n%s", w, c)
					}
				}
			}},
		{name: "specific tokens win over --token", args: []string{"h:1", "--token", tok, "--tls-bootstrap-token", tok2},
			check: func(t *testing.T, _ *joinFlags, c string) {
				if !strings.Contains(c, "tlsBootstrapToken: "+tok2) || !strings.Contains(c, "token: "+tok) {
					t.Errorf("%s", c)
				}
			}},
		{name: "discovery file", args: []string{"--discovery-file", "/x.conf", "--tls-bootstrap-token", tok},
			check: func(t *testing.T, _ *joinFlags, c string) {
				if !strings.Contains(c, "kubeConfigPath: /x.conf") || strings.Contains(c, "bootstrapToken:") {
					t.Errorf("%s", c)
				}
			}},
		{name: "control plane flags parsed", args: []string{"h:1", "--control-plane", "--certificate-key", "ab", "--apiserver-advertise-address", "10.0.0.2"},
			check: func(t *testing.T, _ *joinFlags, c string) {
				if !strings.Contains(c, "advertiseAddress: 10.0.0.2") || !strings.Contains(c, "bindPort: 6443") {
					t.Errorf("%s", c)
				}
			}},
		{name: "two endpoints", args: []string{"a:1", "b:2"}, wantErr: "at most one argument"},
		{name: "config mixed with endpoint", args: []string{"a:1", "--config", "/c.yaml"}, wantErr: "can not mix '--config' with arguments [api-server-endpoint]"},
		{name: "config with allowed flags", args: []string{"--config", "/nonexistent.yaml", "--dry-run", "--skip-phases", "preflight"}, wantErr: "cannot read the config file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := &joinFlags{}
			fs := pflag.NewFlagSet("join", pflag.ContinueOnError)
			f.register(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			cfg, err := f.config(fs, fs.Args())
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			b, _ := marshal(cfg)
			tc.check(t, f, string(b))
		})
	}
}

func TestPhaseCommands(t *testing.T) {
	var out bytes.Buffer
	if code := Main(context.Background(), []string{"join", "phase", "kubelet-start", "--help"}, &out, &out); code != 0 {
		t.Fatal(out.String())
	}
	for _, sub := range []string{"config", "tls-bootstrap", "start"} {
		if !strings.Contains(out.String(), sub) {
			t.Errorf("join phase kubelet-start lacks sub-phase %s:\n%s", sub, out.String())
		}
	}
	out.Reset()
	if code := Main(context.Background(), []string{"join", "h:1", "--token", "abcdef.0123456789abcdef", "--discovery-token-unsafe-skip-ca-verification", "--skip-phases", "kubelet-start/nope"}, &out, &out); code == 0 ||
		!strings.Contains(out.String(), `unknown phase "kubelet-start/nope"`) {
		t.Fatalf("unknown skip phase should be refused: %s", out.String())
	}
}

// TestJoinHelp: `join --help` lists the phases in kubeadm's order and form; the older names still work
// with `join phase` but are not listed.
func TestJoinHelp(t *testing.T) {
	var out bytes.Buffer
	if code := Main(context.Background(), []string{"join", "--help"}, &out, &out); code != 0 {
		t.Fatal(out.String())
	}
	help := out.String()
	last := 0
	for _, line := range []string{"preflight ", "control-plane-prepare ", "  /download-certs ", "  /certs ", "  /kubeconfig ", "  /control-plane ",
		"kubelet-start ", "  /config ", "  /tls-bootstrap ", "  /start ", "etcd-join ", "kubelet-wait-bootstrap ", "control-plane-join ", "  /mark-control-plane ", "wait-control-plane "} {
		i := strings.Index(help[last:], "\n"+line)
		if i < 0 {
			t.Fatalf("help lacks %q after offset %d:\n%s", line, last, help)
		}
		last += i + 1
	}
	if strings.Contains(help, "update-status") || strings.Contains(help, "/etcd ") {
		t.Errorf("help lists an older phase name:\n%s", help)
	}
	out.Reset()
	if code := Main(context.Background(), []string{"join", "phase", "control-plane-join", "update-status"}, &out, &out); code != 0 || !strings.Contains(out.String(), "deprecated") {
		t.Errorf("join phase control-plane-join update-status: %d %s", code, out.String())
	}
	out.Reset()
	if code := Main(context.Background(), []string{"join", "phase", "control-plane-join", "etcd", "--help"}, &out, &out); code != 0 {
		t.Errorf("join phase control-plane-join etcd: %d %s", code, out.String())
	}
}

// TestControlPlaneConfigFile: --config's controlPlane section gives what --control-plane,
// --certificate-key and --apiserver-* give on the command line.
func TestControlPlaneConfigFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "join.yaml")
	os.WriteFile(p, []byte(`apiVersion: kubeadm.k8s.io/v1beta4
kind: JoinConfiguration
discovery:
  bootstrapToken: {token: abcdef.0123456789abcdef, apiServerEndpoint: "10.0.0.1:6443", unsafeSkipCAVerification: true}
controlPlane:
  certificateKey: "00ff"
  localAPIEndpoint: {advertiseAddress: 10.0.0.12, bindPort: 7443}
`), 0o600)
	f := &joinFlags{}
	fs := pflag.NewFlagSet("join", pflag.ContinueOnError)
	f.register(fs)
	if err := fs.Parse([]string{"--config", p}); err != nil {
		t.Fatal(err)
	}
	cfg, err := f.config(fs, nil)
	if err != nil {
		t.Fatal(err)
	}
	cp := cfg.ControlPlane
	if cp == nil || cp.CertificateKey != "00ff" || cp.LocalAPIEndpoint.AdvertiseAddress != "10.0.0.12" || cp.LocalAPIEndpoint.BindPort != 7443 {
		t.Fatalf("controlPlane %+v", cp)
	}
}

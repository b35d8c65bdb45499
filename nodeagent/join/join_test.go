package join_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pxejoin/pxejoin/internal/pubkeypin"
	"github.com/pxejoin/pxejoin/lab/logbuf"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	certutil "k8s.io/client-go/util/cert"
)

// TestDiscoveryAndJoin covers token discovery's outcomes end to end against the real control plane.
func TestDiscoveryAndJoin(t *testing.T) {
	needCP(t)
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherCA, err := certutil.NewSelfSignedCACert(certutil.Config{CommonName: "not-the-cluster"}, otherKey)
	if err != nil {
		t.Fatal(err)
	}
	wrongPin := pubkeypin.Hash(otherCA)
	cases := []struct {
		name    string
		args    func(tok string) []string
		tok     func(tok string) string
		ok      bool
		wantOut string
	}{
		{name: "pin matches", args: func(string) []string { return []string{"--discovery-token-ca-cert-hash", cp.CAPin()} }, ok: true, wantOut: "token with CA pin"},
		{name: "second of two pins matches", args: func(string) []string {
			return []string{"--discovery-token-ca-cert-hash", wrongPin, "--discovery-token-ca-cert-hash", cp.CAPin()}
		}, ok: true, wantOut: "This node has joined the cluster"},
		{name: "wrong pin", args: func(string) []string { return []string{"--discovery-token-ca-cert-hash", wrongPin} },
			wantOut: "none of the given CA certificate hashes matches"},
		{name: "no pin and no unsafe flag", args: func(string) []string { return nil },
			wantOut: "--discovery-token-unsafe-skip-ca-verification"},
		{name: "unsafe skip", args: func(string) []string { return []string{"--discovery-token-unsafe-skip-ca-verification"} },
			ok: true, wantOut: "CA verification is SKIPPED"},
		{name: "wrong token secret", args: func(string) []string { return []string{"--discovery-token-ca-cert-hash", cp.CAPin()} },
			tok: func(tok string) string { return tok[:7] + "0000000000000000" }, wantOut: "does not verify"},
		{name: "malformed pin", args: func(string) []string { return []string{"--discovery-token-ca-cert-hash", "sha256:zz"} },
			wantOut: "not 64 hex digits"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tok := token(t, time.Hour)
			use := tok
			if tc.tok != nil {
				use = tc.tok(tok)
			}
			rootfs := t.TempDir()
			node := fmt.Sprintf("disc-%d", i)
			out := &logbuf.Buffer{}
			code := agent(t, ctxT(t, 2*time.Minute), out, joinArgs(use, node, rootfs, tc.args(tok)...)...)
			if (code == 0) != tc.ok {
				t.Fatalf("exit code %d, want success=%v", code, tc.ok)
			}
			if !strings.Contains(out.String(), tc.wantOut) {
				t.Fatalf("output lacks %q", tc.wantOut)
			}
			if strings.Contains(out.String(), strings.SplitN(tok, ".", 2)[1]) {
				t.Fatal("the token's secret appears in the output")
			}
			if tc.ok {
				assertJoined(t, rootfs, node)
			} else {
				assertNoCredentials(t, rootfs)
			}
		})
	}
}

// TestExpiredToken: once the token cleaner removed an expired token, discovery finds no signature and
// fails when its timeout ends, saying what to do.
func TestExpiredToken(t *testing.T) {
	needCP(t)
	tok := token(t, 2*time.Second)
	ctx := ctxT(t, 2*time.Minute)
	// Wait until the token cleaner has deleted it.
	for {
		_, err := cp.Admin().CoreV1().Secrets("kube-system").Get(ctx, "bootstrap-token-"+tok[:6], metav1GetOptions)
		if err != nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	rootfs := t.TempDir()
	cfg := writeConfig(t, tok, "expired", cp.CAPin(), "discovery: 4s")
	out := &logbuf.Buffer{}
	if code := agent(t, ctx, out, "join", "--config", cfg, "--rootfs", rootfs); code == 0 {
		t.Fatal("joined with an expired token")
	}
	if !strings.Contains(out.String(), "expired") || !strings.Contains(out.String(), "kubeadm token create") {
		t.Fatal("the error should say the token may be expired and how to make one")
	}
	assertNoCredentials(t, rootfs)
}

// writeConfig writes a v1beta4 JoinConfiguration with the given timeouts lines.
func writeConfig(t *testing.T, tok, node, pin string, timeouts ...string) string {
	t.Helper()
	var tl string
	if len(timeouts) > 0 {
		tl = "timeouts:\n  " + strings.Join(timeouts, "\n  ") + "\n"
	}
	body := fmt.Sprintf(`apiVersion: kubeadm.k8s.io/v1beta4
kind: JoinConfiguration
discovery:
  bootstrapToken:
    token: %s
    apiServerEndpoint: %s
    caCertHashes: [%q]
  tlsBootstrapToken: %s
nodeRegistration:
  name: %s
  kubeletExtraArgs:
  - name: node-labels
    value: rack=r1
skipPhases: [kubelet-start/start]
%s`, tok, cp.Endpoint(), pin, tok, node, tl)
	p := filepath.Join(t.TempDir(), "join.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConfigFile joins with --config (v1beta4) and checks the flags file carries its extra args; mixing
// --config with discovery flags is refused as kubeadm refuses it.
func TestConfigFile(t *testing.T) {
	needCP(t)
	tok := token(t, time.Hour)
	rootfs := t.TempDir()
	cfg := writeConfig(t, tok, "cfg-node", cp.CAPin())
	out := &logbuf.Buffer{}
	if code := agent(t, ctxT(t, 2*time.Minute), out, "join", "--config", cfg, "--rootfs", rootfs); code != 0 {
		t.Fatal("join --config failed")
	}
	assertJoined(t, rootfs, "cfg-node")
	flags, _ := os.ReadFile(filepath.Join(rootfs, "var/lib/kubelet/kubeadm-flags.env"))
	for _, want := range []string{"--node-labels=rack=r1", "--container-runtime-endpoint=unix:///var/run/containerd/containerd.sock", "--hostname-override=cfg-node"} {
		if !strings.Contains(string(flags), want) {
			t.Errorf("kubeadm-flags.env lacks %q: %s", want, flags)
		}
	}
	out = &logbuf.Buffer{}
	if code := agent(t, ctxT(t, time.Minute), out, "join", "--config", cfg, "--token", tok); code == 0 || !strings.Contains(out.String(), "can not mix '--config'") {
		t.Fatal("mixing --config with --token should be refused")
	}
}

// TestControlPlaneRefused: a control-plane join whose advertise address is not an address fails at
// once, before discovery, saying which flag to fix; the certificate key is not shown.
func TestControlPlaneRefused(t *testing.T) {
	out := &logbuf.Buffer{}
	code := agent(t, context.Background(), out, "join", "127.0.0.1:1", "--token", "abcdef.0123456789abcdef",
		"--discovery-token-unsafe-skip-ca-verification", "--control-plane", "--certificate-key", "00ff00ff00ff", "--apiserver-advertise-address", "cp-2")
	if code == 0 || !strings.Contains(out.String(), "pass --apiserver-advertise-address") || strings.Contains(out.String(), "[discovery]") {
		t.Fatalf("--control-plane with a host name as advertise address should be refused at once: %s", out.String())
	}
	if strings.Contains(out.String(), "0123456789abcdef") || strings.Contains(out.String(), "00ff00ff00ff") {
		t.Fatal("token secret or certificate key in output")
	}
}

var metav1GetOptions = metav1.GetOptions{}

// TestPhaseCSREarly: the CSR goes out during kubelet-start/config only when tls-bootstrap runs in the
// same invocation (the phase table's Early), and tls-bootstrap alone sends it itself.
func TestPhaseCSREarly(t *testing.T) {
	needCP(t)
	if err := cp.SetAutoApprove(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	const (
		sending = "[kubelet-start] Sending the certificate signing request"
		config  = "[kubelet-start] Writing kubelet configuration"
	)
	tok := token(t, time.Hour)
	ctx := ctxT(t, 2*time.Minute)
	run := func(node, rootfs string, phase ...string) string {
		t.Helper()
		out := &logbuf.Buffer{}
		args := append(append([]string{"join", "phase"}, phase...), cp.Endpoint(), "--token", tok,
			"--discovery-token-ca-cert-hash", cp.CAPin(), "--node-name", node, "--rootfs", rootfs, "--skip-phases", "kubelet-start/start")
		if code := agent(t, ctx, out, args...); code != 0 {
			t.Fatalf("join phase %v failed", phase)
		}
		return out.String()
	}
	// The whole kubelet-start: the CSR before config writes its files.
	rootfs := t.TempDir()
	out := run("early-csr", rootfs, "kubelet-start")
	if s, c := strings.Index(out, sending), strings.Index(out, config); s < 0 || c < 0 || s > c {
		t.Errorf("join phase kubelet-start: the CSR (at %d) should go out before config writes (at %d)", s, c)
	}
	assertJoined(t, rootfs, "early-csr")
	// config alone sends nothing; tls-bootstrap then sends and awaits it.
	rootfs = t.TempDir()
	if out := run("split-csr", rootfs, "kubelet-start", "config"); strings.Contains(out, sending) {
		t.Errorf("join phase kubelet-start config sent a CSR:\n%s", out)
	}
	if out := run("split-csr", rootfs, "kubelet-start", "tls-bootstrap"); !strings.Contains(out, sending) {
		t.Errorf("join phase kubelet-start tls-bootstrap sent no CSR:\n%s", out)
	}
	assertJoined(t, rootfs, "split-csr")
}

package join_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/pxejoin/pxejoin/internal/bootstraptoken"
	"github.com/pxejoin/pxejoin/lab/controlplane"
	"github.com/pxejoin/pxejoin/lab/logbuf"
	"github.com/pxejoin/pxejoin/nodeagent/cli"
	"github.com/pxejoin/pxejoin/nodeagent/nodefiles"
)

// cp is the real control plane every integration test in this package joins (set by needCP).
var cp *controlplane.ControlPlane

func TestMain(m *testing.M) {
	code := controlplane.Run(m)
	if agentDir != "" {
		os.RemoveAll(agentDir)
	}
	os.Exit(code)
}

// needCP skips under -short and fails when the control plane is not there.
func needCP(t testing.TB) {
	t.Helper()
	cp = controlplane.Shared(t)
}

var (
	agentOnce sync.Once
	agentDir  string
	agentErr  error
)

// agentBin builds nodeagent once per test binary, for tests that run it as a process.
func agentBin(t testing.TB) string {
	t.Helper()
	agentOnce.Do(func() {
		if agentDir, agentErr = os.MkdirTemp("", "pxejoin-agent-"); agentErr != nil {
			return
		}
		out, err := exec.Command("go", "build", "-o", agentDir, "github.com/pxejoin/pxejoin/nodeagent").CombinedOutput()
		if err != nil {
			agentErr = fmt.Errorf("cannot build nodeagent: %v\n%s", err, out)
		}
	})
	if agentErr != nil {
		t.Fatal(agentErr)
	}
	return filepath.Join(agentDir, "nodeagent")
}

// token is a new bootstrap token of the shared control plane.
func token(t testing.TB, ttl time.Duration) string {
	t.Helper()
	tok, err := cp.CreateToken(context.Background(), ttl)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// agent runs `nodeagent <args>` in-process and returns its output and exit code.
func agent(t *testing.T, ctx context.Context, out *logbuf.Buffer, args ...string) int {
	t.Helper()
	code := cli.Main(ctx, args, out, out)
	shown := slices.Clone(args)
	for i := range shown {
		if i > 0 && shown[i-1] == "--certificate-key" {
			shown[i] = "<redacted>"
		}
	}
	t.Logf("nodeagent %s → %d\n%s", bootstraptoken.Scrub(strings.Join(shown, " ")), code, out.String())
	return code
}

// joinArgs are the flags of a worker join into rootfs.
func joinArgs(tok, node, rootfs string, extra ...string) []string {
	return append([]string{"join", cp.Endpoint(), "--token", tok, "--node-name", node, "--rootfs", rootfs,
		"--skip-phases", "kubelet-start/start"}, extra...)
}

// assertJoined checks the files a worker needs and that the issued identity works as a node's.
func assertJoined(t *testing.T, rootfs, node string) *x509.Certificate {
	t.Helper()
	root := nodefiles.Root(rootfs)
	for _, f := range []struct {
		path string
		mode os.FileMode
	}{{nodefiles.KubeletConf, 0o600}, {"/etc/kubernetes/pki/ca.crt", 0o644}, {nodefiles.KubeletConfig, 0o644}, {nodefiles.KubeletFlags, 0o644}} {
		fi, err := os.Stat(root.Join(f.path))
		if err != nil {
			t.Fatalf("missing %s: %v", f.path, err)
		}
		if fi.Mode().Perm() != f.mode {
			t.Errorf("%s has mode %04o, want %04o", f.path, fi.Mode().Perm(), f.mode)
		}
	}
	pemPath := root.Join(nodefiles.KubeletClientCurrent)
	fi, err := os.Stat(pemPath)
	if err != nil {
		t.Fatalf("kubelet-client-current.pem: %v", err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("kubelet client pem has mode %04o, want 0600", fi.Mode().Perm())
	}
	if target, err := os.Readlink(pemPath); err != nil || filepath.IsAbs(target) {
		t.Errorf("kubelet-client-current.pem should be a relative symlink, got %q (%v)", target, err)
	}
	data, _ := os.ReadFile(pemPath)
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatal("no certificate in the kubelet client pem")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cp.CA())
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("the issued certificate does not verify against the cluster CA: %v", err)
	}
	if cert.Subject.CommonName != "system:node:"+node {
		t.Fatalf("certificate CN = %q", cert.Subject.CommonName)
	}
	// kubelet.conf points inside the node's root; read it with the pem paths rebased under rootfs.
	kc, err := clientcmd.LoadFromFile(root.Join(nodefiles.KubeletConf))
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range kc.AuthInfos {
		a.ClientCertificate, a.ClientKey = pemPath, pemPath
	}
	rc, err := clientcmd.NewDefaultClientConfig(*kc, nil).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	c := kubernetes.NewForConfigOrDie(rc)
	_, err = c.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatalf("the node's credentials cannot read its own Node (want 200 or 404): %v", err)
	}
	if _, err := c.CoreV1().Secrets("kube-system").List(context.Background(), metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("the node's credentials should be forbidden to list secrets, got %v", err)
	}
	if _, err := os.Stat(root.Join(nodefiles.BootstrapKey)); !os.IsNotExist(err) {
		t.Errorf("the bootstrap key copy should be removed once the pem holds the key")
	}
	return cert
}

// assertNoCredentials checks that a failed join left no kubelet credentials behind.
func assertNoCredentials(t *testing.T, rootfs string) {
	t.Helper()
	root := nodefiles.Root(rootfs)
	for _, p := range []string{nodefiles.KubeletConf, nodefiles.KubeletClientCurrent} {
		if root.Exists(p) {
			t.Errorf("%s exists after a failed join", p)
		}
	}
	filepath.Walk(rootfs, func(p string, fi os.FileInfo, err error) error {
		if err == nil && strings.Contains(fi.Name(), "pxejoin-tmp") {
			t.Errorf("temporary file left behind: %s", p)
		}
		return nil
	})
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

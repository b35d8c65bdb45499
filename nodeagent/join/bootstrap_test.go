package join_test

import (
	"context"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/client-go/util/retry"

	"github.com/pxejoin/pxejoin/internal/joinconfig"
	"github.com/pxejoin/pxejoin/lab/logbuf"
	"github.com/pxejoin/pxejoin/nodeagent/join"
	"github.com/pxejoin/pxejoin/nodeagent/nodefiles"
)

var approveLine = regexp.MustCompile(`kubectl certificate approve (node-csr-[A-Za-z0-9_-]+)`)

func approve(t *testing.T, name string) {
	t.Helper()
	ctx := context.Background()
	csr, err := cp.Admin().CertificatesV1().CertificateSigningRequests().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	csr.Status.Conditions = append(csr.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{
		Type: certificatesv1.CertificateApproved, Status: corev1.ConditionTrue, Reason: "TestApproved", Message: "approved by the test",
	})
	if _, err := cp.Admin().CertificatesV1().CertificateSigningRequests().UpdateApproval(ctx, name, csr, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestManualApprovalAndKeyReuse: with kubeadm's auto-approval removed, the agent says it waits for an
// administrator and times out with the approve command; a re-run reuses the kept key, so the same CSR
// is found, and once the test approves it the join completes. Then a join waits while the test approves.
func TestManualApprovalAndKeyReuse(t *testing.T) {
	needCP(t)
	ctx := ctxT(t, 3*time.Minute)
	if err := cp.SetAutoApprove(ctx, false); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cp.SetAutoApprove(context.Background(), true) })
	tok := token(t, time.Hour)
	rootfs := t.TempDir()
	cfg := writeConfig(t, tok, "manual-1", cp.CAPin(), "tlsBootstrap: 6s")

	out := &logbuf.Buffer{}
	if code := agent(t, ctx, out, "join", "--config", cfg, "--rootfs", rootfs); code == 0 {
		t.Fatal("joined although nothing approves CSRs")
	}
	m := approveLine.FindStringSubmatch(out.String())
	if m == nil || !strings.Contains(out.String(), "timed out waiting for the certificate signing request") {
		t.Fatal("the agent should show the approve command and time out clearly")
	}
	csrName := m[1]
	assertNoCredentials(t, rootfs)
	key1, err := os.ReadFile(filepath.Join(rootfs, nodefiles.BootstrapKey))
	if err != nil {
		t.Fatalf("the key should be kept for a re-run: %v", err)
	}
	if fi, _ := os.Stat(filepath.Join(rootfs, nodefiles.BootstrapKey)); fi.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %04o", fi.Mode().Perm())
	}

	approve(t, csrName)
	out = &logbuf.Buffer{}
	if code := agent(t, ctx, out, "join", "--config", cfg, "--rootfs", rootfs); code != 0 {
		t.Fatal("re-run after approval failed")
	}
	if !strings.Contains(out.String(), "Reusing the node's key") || !strings.Contains(out.String(), csrName) {
		t.Fatal("the re-run should reuse the key and so the same CSR")
	}
	assertJoined(t, rootfs, "manual-1")
	pemData, _ := os.ReadFile(filepath.Join(rootfs, nodefiles.KubeletClientCurrent))
	if !strings.Contains(string(pemData), strings.TrimSpace(string(key1))) {
		t.Fatal("the kubelet pem should hold the kept key")
	}

	// A join that waits while an administrator approves.
	tok2 := token(t, time.Hour)
	rootfs2 := t.TempDir()
	cfg2 := writeConfig(t, tok2, "manual-2", cp.CAPin(), "tlsBootstrap: 90s")
	out2 := &logbuf.Buffer{}
	done := make(chan int, 1)
	go func() { done <- agent(t, ctx, out2, "join", "--config", cfg2, "--rootfs", rootfs2) }()
	var name string
	for name == "" {
		select {
		case code := <-done:
			t.Fatalf("join ended (%d) before approval", code)
		case <-time.After(200 * time.Millisecond):
		}
		if m := approveLine.FindStringSubmatch(out2.String()); m != nil {
			name = m[1]
		}
	}
	approve(t, name)
	if code := <-done; code != 0 {
		t.Fatal("join did not complete after approval")
	}
	assertJoined(t, rootfs2, "manual-2")
}

// TestExistingNode: a Ready Node of the same name is refused, a NotReady one is taken over.
func TestExistingNode(t *testing.T) {
	needCP(t)
	ctx := ctxT(t, 2*time.Minute)
	mk := func(name string, ready corev1.ConditionStatus) {
		if _, err := cp.Admin().CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cp.Admin().CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
		// The node controllers touch a new Node too (taints): re-read on conflict.
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			n, err := cp.Admin().CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: ready, LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now(), Reason: "Test"}}
			_, err = cp.Admin().CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	mk("dup-ready", corev1.ConditionTrue)
	mk("dup-notready", corev1.ConditionFalse)

	rootfs := t.TempDir()
	out := &logbuf.Buffer{}
	if code := agent(t, ctx, out, joinArgs(token(t, time.Hour), "dup-ready", rootfs, "--discovery-token-ca-cert-hash", cp.CAPin())...); code == 0 {
		t.Fatal("joined over a Ready node")
	}
	if !strings.Contains(out.String(), `a Node with name "dup-ready" and status "Ready" already exists`) {
		t.Fatal("missing kubeadm's duplicate-node message")
	}
	assertNoCredentials(t, rootfs)

	rootfs = t.TempDir()
	out = &logbuf.Buffer{}
	if code := agent(t, ctx, out, joinArgs(token(t, time.Hour), "dup-notready", rootfs, "--discovery-token-ca-cert-hash", cp.CAPin())...); code != 0 {
		t.Fatal("a NotReady node should be replaced")
	}
	assertJoined(t, rootfs, "dup-notready") // its credentials GET the existing Node: 200
}

// TestDryRun reads from the cluster but writes nothing and creates no CSR.
func TestDryRun(t *testing.T) {
	needCP(t)
	ctx := ctxT(t, time.Minute)
	before, err := cp.Admin().CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rootfs := t.TempDir()
	tok := token(t, time.Hour)
	out := &logbuf.Buffer{}
	if code := agent(t, ctx, out, joinArgs(tok, "dry-node", rootfs, "--discovery-token-ca-cert-hash", cp.CAPin(), "--dry-run")...); code != 0 {
		t.Fatal("dry run failed")
	}
	entries, _ := os.ReadDir(rootfs)
	if len(entries) != 0 {
		t.Fatalf("dry run wrote %d entries under the root", len(entries))
	}
	after, _ := cp.Admin().CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	if len(after.Items) != len(before.Items) {
		t.Fatal("dry run created a CSR")
	}
	for _, want := range []string{"Would write file /var/lib/kubelet/config.yaml", "Would create the certificate signing request", "contents withheld"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("dry-run output lacks %q", want)
		}
	}
	if strings.Contains(out.String(), "PRIVATE KEY") || strings.Contains(out.String(), tok[7:]) {
		t.Fatal("dry run printed a secret")
	}
}

// TestAPIServerRestart: the API server is down when the join starts and comes back; the join completes
// within its discovery timeout.
func TestAPIServerRestart(t *testing.T) {
	needCP(t)
	ctx := ctxT(t, 3*time.Minute)
	tok := token(t, time.Hour)
	if err := cp.WaitSigned(ctx, tok, time.Minute); err != nil {
		t.Fatal(err)
	}
	cp.StopAPIServer()
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			cp.StartAPIServer(context.Background())
		}
	})
	rootfs := t.TempDir()
	out := &logbuf.Buffer{}
	done := make(chan int, 1)
	go func() {
		done <- agent(t, ctx, out, joinArgs(tok, "restart-node", rootfs, "--discovery-token-ca-cert-hash", cp.CAPin())...)
	}()
	for !strings.Contains(out.String(), "cannot reach the API server") {
		select {
		case code := <-done:
			t.Fatalf("join ended (%d) while the API server was down", code)
		case <-time.After(100 * time.Millisecond):
		}
	}
	if err := cp.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	restarted = true
	if code := <-done; code != 0 {
		t.Fatal("join did not complete after the API server came back")
	}
	assertJoined(t, rootfs, "restart-node")
}

// discoveryKubeconfig is a kubeconfig with the cluster and no credentials.
func discoveryKubeconfig(t *testing.T) []byte {
	t.Helper()
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cp.CA().Raw})
	kc := clientcmdapi.NewConfig()
	kc.Clusters["kubernetes"] = &clientcmdapi.Cluster{Server: "https://" + cp.Endpoint(), CertificateAuthorityData: caPEM}
	kc.Contexts["c"] = &clientcmdapi.Context{Cluster: "kubernetes"}
	kc.CurrentContext = "c"
	b, err := clientcmd.Write(*kc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestFileDiscovery: a local kubeconfig and an https URL (its server's CA trusted through SSL_CERT_FILE)
// work with the TLS bootstrap token; plain http is refused. The https case runs the real binary so
// SSL_CERT_FILE is read fresh.
func TestFileDiscovery(t *testing.T) {
	needCP(t)
	kc := discoveryKubeconfig(t)
	path := filepath.Join(t.TempDir(), "discovery.conf")
	if err := os.WriteFile(path, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 2*time.Minute)
	rootfs := t.TempDir()
	out := &logbuf.Buffer{}
	if code := agent(t, ctx, out, "join", "--discovery-file", path, "--tls-bootstrap-token", token(t, time.Hour),
		"--node-name", "file-node", "--rootfs", rootfs, "--skip-phases", "kubelet-start/start"); code != 0 {
		t.Fatal("file discovery failed")
	}
	assertJoined(t, rootfs, "file-node")

	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(kc) }))
	defer srv.Close()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644)
	run := func(url string, env ...string) (string, error) {
		rootfs := t.TempDir()
		cmd := exec.CommandContext(ctx, agentBin(t), "join", "--discovery-file", url, "--tls-bootstrap-token", token(t, time.Hour),
			"--node-name", "https-node", "--rootfs", rootfs, "--skip-phases", "kubelet-start/start")
		cmd.Env = append(os.Environ(), env...)
		b, err := cmd.CombinedOutput()
		t.Logf("%s → %v\n%s", url, err, b)
		if err == nil {
			assertJoined(t, rootfs, "https-node")
		} else {
			assertNoCredentials(t, rootfs)
		}
		return string(b), err
	}
	if _, err := run(srv.URL+"/discovery.conf", "SSL_CERT_FILE="+caFile); err != nil {
		t.Fatal("https discovery with a trusted CA failed")
	}
	if out, err := run(srv.URL+"/discovery.conf", "SSL_CERT_FILE=/dev/null"); err == nil || !strings.Contains(out, "certificate") {
		t.Fatal("https discovery must verify the server against the host's CA bundle")
	}
	if out, err := run(strings.Replace(srv.URL, "https://", "http://", 1) + "/discovery.conf"); err == nil || !strings.Contains(out, "refusing the discovery file") {
		t.Fatal("http:// discovery must be refused")
	}
}

// TestConfigFailsAfterCSRSent: the config phase sends the CSR ahead, then fails (a broken
// KubeletConfiguration patch): nothing but the bootstrap key is left, and the re-run reuses that key,
// so the same CSR (already issued) completes the join.
func TestConfigFailsAfterCSRSent(t *testing.T) {
	needCP(t)
	ctx := ctxT(t, 2*time.Minute)
	tok := token(t, time.Hour)
	rootfs := t.TempDir()
	patches := t.TempDir()
	if err := os.WriteFile(filepath.Join(patches, "kubeletconfiguration.yaml"), []byte("{not: [yaml"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := &logbuf.Buffer{}
	if code := agent(t, ctx, out, joinArgs(tok, "ahead-1", rootfs, "--discovery-token-ca-cert-hash", cp.CAPin(), "--patches", patches)...); code == 0 {
		t.Fatal("joined with a broken patch")
	}
	sent := regexp.MustCompile(`Sending the certificate signing request (\S+)`).FindStringSubmatch(out.String())
	if sent == nil {
		t.Fatalf("the config phase did not send the CSR ahead:\n%s", out.String())
	}
	assertNoCredentials(t, rootfs)
	if _, err := os.Stat(filepath.Join(rootfs, nodefiles.BootstrapKey)); err != nil {
		t.Fatalf("the key should be kept for a re-run: %v", err)
	}
	os.Remove(filepath.Join(patches, "kubeletconfiguration.yaml"))
	out = &logbuf.Buffer{}
	if code := agent(t, ctx, out, joinArgs(tok, "ahead-1", rootfs, "--discovery-token-ca-cert-hash", cp.CAPin(), "--patches", patches)...); code != 0 {
		t.Fatalf("re-run failed:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "Reusing the node's key") || !strings.Contains(out.String(), sent[1]) {
		t.Fatalf("the re-run should reuse the key and so CSR %s:\n%s", sent[1], out.String())
	}
	assertJoined(t, rootfs, "ahead-1")
}

// TestRegisterNode: with Options.RegisterNode (the initramfs's join), the Node exists right after the
// join, created with the node's own credentials, carrying the labels and taints the kubelet would
// register; a second join of the same NotReady node finds it and goes on.
func TestRegisterNode(t *testing.T) {
	needCP(t)
	ctx := ctxT(t, 2*time.Minute)
	cfg := benchConfig(token(t, time.Hour), "registered-1")
	cfg.NodeRegistration.Taints = []corev1.Taint{{Key: "dedicated", Value: "gpu", Effect: corev1.TaintEffectNoSchedule}}
	cfg.NodeRegistration.KubeletExtraArgs = []joinconfig.Arg{{Name: "node-labels", Value: "rack=r1,pxejoin.io/pool=a"}}
	for round := 1; round <= 2; round++ {
		out := &logbuf.Buffer{}
		if err := join.Run(ctx, cfg, join.Options{Rootfs: t.TempDir(), Out: out, RegisterNode: true}); err != nil {
			t.Fatalf("round %d: %v\n%s", round, err, out.String())
		}
		if round == 1 && !strings.Contains(out.String(), `Registered Node "registered-1"`) {
			t.Fatalf("no registration line:\n%s", out.String())
		}
	}
	n, err := cp.Admin().CoreV1().Nodes().Get(ctx, "registered-1", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the Node was not registered: %v", err)
	}
	if n.Labels["rack"] != "r1" || n.Labels["pxejoin.io/pool"] != "a" || n.Labels[corev1.LabelHostname] != "registered-1" {
		t.Errorf("labels %v", n.Labels)
	}
	// The node lifecycle controller may have added node.kubernetes.io/not-ready meanwhile.
	found := false
	for _, tn := range n.Spec.Taints {
		found = found || (tn.Key == "dedicated" && tn.Value == "gpu" && tn.Effect == corev1.TaintEffectNoSchedule)
	}
	if !found {
		t.Errorf("taints %v lack dedicated=gpu:NoSchedule", n.Spec.Taints)
	}
	if n.Annotations["volumes.kubernetes.io/controller-managed-attach-detach"] != "true" {
		t.Errorf("annotations %v", n.Annotations)
	}
}

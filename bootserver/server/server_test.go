package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/certificate/csr"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/bootserver/leases"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
	"github.com/pxejoin/pxejoin/internal/joinconfig"
	"github.com/pxejoin/pxejoin/lab/controlplane"
	"github.com/pxejoin/pxejoin/lab/logbuf"
	"github.com/pxejoin/pxejoin/lab/netlab"
	"github.com/pxejoin/pxejoin/lab/testenv"
)

// cp is the package's one control plane, started by TestMain unless -short (set by needControlPlane).
var cp *controlplane.ControlPlane

func TestMain(m *testing.M) { os.Exit(controlplane.Run(m)) }

// needControlPlane skips under -short and fails without root or the control plane.
func needControlPlane(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t)
	cp = controlplane.Shared(t)
}

// TestEndToEnd runs the whole server (full DHCP, TFTP, HTTP, token watch) in a namespace against the
// real control plane; a client namespace fetches its script, the iPXE binary over TFTP and its join
// file with curl; the token authenticates, a CSR made with it is issued, and the server then
// deletes the token. No log line, page or metric holds the secret.
func TestEndToEnd(t *testing.T) {
	needControlPlane(t)
	srvNS, cliNS := netlab.New(t, "bses"), netlab.New(t, "bsec")
	netlab.Veth(t, srvNS, "eth0", "10.80.50.1/24", cliNS, "eth0", "10.80.50.2/24")
	mac := strings.TrimSpace(string(cliNS.MustExec(t, "cat", "/sys/class/net/eth0/address")))

	dir := t.TempDir()
	for _, f := range []string{"vmlinuz", "initramfs.cpio.gz"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("test "+f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	yaml := fmt.Sprintf(`interface: eth0
listen: {http: ":8080", tftp: ":69"}
dhcp: {mode: full, pool: {start: 10.80.50.100, end: 10.80.50.200}}
tftp: {root: /usr/lib/ipxe}
cluster: {kubeconfig: %s, tokenTTL: 15m}
stateDir: %s/state
profiles:
  worker:
    kernel: %s/vmlinuz
    initrds: [%s/initramfs.cpio.gz]
    cmdline: console=ttyS0 pxejoin.url={{.JoinURL}} pxejoin.status={{.StatusURL}}
machines:
  - mac: %s
    name: e2e-worker-1
    labels: {rack: r7}
`, cp.AdminKubeconfig(), dir, dir, dir, mac)
	cfg, err := config.Parse("e2e.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	logs := &logbuf.Buffer{}
	ready := make(chan struct{})
	srv, err := New(Options{
		Config:  cfg,
		Logger:  slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		InNetns: srvNS.Do,
		Ready:   func() { close(ready) },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	select {
	case <-ready:
	case err := <-served:
		t.Fatalf("Serve: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("not ready in 30 s")
	}
	if srv.URL() != "http://10.80.50.1:8080" {
		t.Errorf("URL %s", srv.URL())
	}
	curl := func(args ...string) string {
		return string(cliNS.MustExec(t, "curl", append([]string{"-sS", "--fail", "--max-time", "30"}, args...)...))
	}
	script := curl(srv.URL() + "/boot/" + mac + ".ipxe")
	if !strings.Contains(script, "kernel http://10.80.50.1:8080/files/"+mac+"/worker/vmlinuz initrd=initramfs.cpio.gz") {
		t.Fatalf("script:\n%s", script)
	}
	// TFTP: the iPXE binary, byte for byte.
	want, _ := os.ReadFile("/usr/lib/ipxe/undionly.kpxe")
	sum := sha256.Sum256(want)
	got := strings.Fields(string(cliNS.MustExec(t, "sh", "-c", "curl -sS --fail --max-time 30 tftp://10.80.50.1/undionly.kpxe | sha256sum")))[0]
	if got != hex.EncodeToString(sum[:]) {
		t.Errorf("TFTP download differs")
	}

	// A join file goes only to the address holding the machine's lease: the client's address is
	// static here, so its lease is committed as DHCP would.
	hw, _ := hwaddr.Parse(mac)
	if code := strings.TrimSpace(string(cliNS.MustExec(t, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "30", srv.URL()+"/join/"+mac))); code != "403" {
		t.Errorf("a join file without the lease: HTTP %s, want 403", code)
	}
	if err := srv.leases.Commit(leases.Lease{MAC: hw, IP: netip.MustParseAddr("10.80.50.2"), Expiry: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	join := curl(srv.URL() + "/join/" + mac)
	jc, err := joinconfig.Parse([]byte(join))
	if err != nil {
		t.Fatal(err)
	}
	bt := jc.Discovery.BootstrapToken
	if bt.APIServerEndpoint != cp.Endpoint() || len(bt.CACertHashes) != 1 || bt.CACertHashes[0] != cp.CAPin() {
		t.Errorf("discovery %s %v, want %s %s", bt.APIServerEndpoint, bt.CACertHashes, cp.Endpoint(), cp.CAPin())
	}
	if jc.NodeRegistration.Name != "e2e-worker-1" || jc.Discovery.TLSBootstrapToken != bt.Token {
		t.Errorf("nodeRegistration %+v", jc.NodeRegistration)
	}
	tok := bt.Token
	id, secret, _ := strings.Cut(tok, ".")
	if code := strings.TrimSpace(string(cliNS.MustExec(t, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "30", srv.URL()+"/join/"+mac))); code != "409" {
		t.Errorf("a second fetch within the boot: HTTP %s, want 409 (once per boot)", code)
	}

	// The token authenticates as system:bootstrap:<id>.
	rc := &rest.Config{Host: "https://" + cp.Endpoint(), BearerToken: tok, TLSClientConfig: rest.TLSClientConfig{CAFile: cp.CAFile()}}
	tc := kubernetes.NewForConfigOrDie(rc)
	tctx, tcancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer tcancel()
	ssr, err := tc.AuthenticationV1().SelfSubjectReviews().Create(tctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("the token does not authenticate: %v", err)
	}
	if u := ssr.Status.UserInfo.Username; u != "system:bootstrap:"+id {
		t.Errorf("user %q", u)
	}
	sec, err := cp.Admin().CoreV1().Secrets("kube-system").Get(tctx, "bootstrap-token-"+id, metav1.GetOptions{})
	if err != nil || !strings.Contains(string(sec.Data["description"]), mac) {
		t.Errorf("token Secret: %v, description %q", err, sec.Data["description"])
	}

	// A CSR made with the token is issued; the server deletes the token.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csrPEM, err := certRequest(key, "e2e-worker-1")
	if err != nil {
		t.Fatal(err)
	}
	name, uid, err := csr.RequestCertificate(tc, csrPEM, "", certificatesv1.KubeAPIServerClientKubeletSignerName,
		nil, []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth}, key)
	if err != nil {
		t.Fatalf("CSR: %v", err)
	}
	if _, err := csr.WaitForCertificate(tctx, cp.Admin(), name, uid); err != nil {
		t.Fatalf("CSR never issued: %v", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := cp.Admin().CoreV1().Secrets("kube-system").Get(tctx, "bootstrap-token-"+id, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the token was not deleted after its CSR was issued (last error %v)", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The deletion is logged right after the API call returns: give the line a moment.
	for i := 0; i < 50 && !strings.Contains(logs.String(), "reason=csr-issued"); i++ {
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "reason=csr-issued") {
		t.Error("the log does not say why the token was deleted")
	}

	// No secret anywhere but the join file.
	outputs := map[string]string{
		"logs":     logs.String(),
		"machines": curl(srv.URL() + "/machines"),
		"page":     curl(srv.URL() + "/"),
		"metrics":  curl(srv.URL() + "/metrics"),
	}
	for what, out := range outputs {
		if strings.Contains(out, secret) {
			t.Errorf("the token secret appears in %s", what)
		}
	}
	for _, m := range []string{`pxejoin_tokens_minted_total 1`, `pxejoin_tokens_deleted_total{reason="csr-issued"} 1`, `pxejoin_http_requests_total{code="200",kind="join"} 1`,
		`pxejoin_join_refused_total{reason="already-served"} 1`, `pxejoin_join_refused_total{reason="not-lease-holder"} 1`,
		`pxejoin_csr_decisions_total{decision="approve",reason="machine-node",signer="kubernetes.io/kube-apiserver-client-kubelet"} 1`} {
		if !strings.Contains(outputs["metrics"], m) {
			t.Errorf("metrics lack %s", m)
		}
	}
	if !strings.Contains(outputs["machines"], `"phase": "join-file"`) {
		t.Errorf("timeline lacks the join file:\n%s", outputs["machines"])
	}

	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
}

func certRequest(key *ecdsa.PrivateKey, node string) ([]byte, error) {
	return csrPEMFor(key, pkix.Name{CommonName: "system:node:" + node, Organization: []string{"system:nodes"}})
}

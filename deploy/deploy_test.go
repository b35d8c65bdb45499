// Package deploy holds the kustomize tree that runs pxejoin in a cluster (base: CRDs, namespace,
// ServiceAccount, RBAC, API Priority and Fairness; segment: the boot server's DaemonSet; overlays: one
// per boot network segment). Its tests check the tree against a real kube-apiserver and run the boot
// server with exactly the RBAC it grants.
package deploy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/bootserver/server"
	"github.com/pxejoin/pxejoin/internal/joinconfig"
	"github.com/pxejoin/pxejoin/lab/controlplane"
	"github.com/pxejoin/pxejoin/lab/eventually"
	"github.com/pxejoin/pxejoin/lab/logbuf"
	"github.com/pxejoin/pxejoin/lab/testenv"
	"github.com/pxejoin/pxejoin/nodeagent/join"
)

func TestMain(m *testing.M) { os.Exit(controlplane.Run(m)) }

const (
	namespace      = "pxejoin-system"
	serviceAccount = "pxejoin-bootserver"
)

// kubectl runs the control plane's kubectl as cluster admin with stdin and returns its output.
func kubectl(t *testing.T, cp *controlplane.ControlPlane, stdin []byte, args ...string) []byte {
	t.Helper()
	bin := filepath.Join(testenv.RequireK8s(t), "kubectl")
	cmd := exec.Command(bin, append([]string{"--kubeconfig", cp.AdminKubeconfig()}, args...)...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return out
}

// applyBase applies deploy/base for real (server-side), as an operator would.
func applyBase(t *testing.T, cp *controlplane.ControlPlane) {
	t.Helper()
	base := kubectl(t, cp, nil, "kustomize", "base")
	kubectl(t, cp, base, "apply", "--server-side", "--field-manager=pxejoin-deploy-test", "-f", "-")
}

// TestKustomizeServerDryRun: every kustomization builds, and the apiserver accepts every object
// (schema, CRD structure, RBAC references, APF objects) in a server-side dry run.
func TestKustomizeServerDryRun(t *testing.T) {
	testenv.RequireRoot(t)
	cp := controlplane.Shared(t)
	applyBase(t, cp) // the namespace must exist for a dry run of what goes into it
	for _, dir := range []string{"base", "overlays/rack1"} {
		objs := kubectl(t, cp, nil, "kustomize", dir)
		out := kubectl(t, cp, objs, "apply", "--server-side", "--dry-run=server", "--field-manager=pxejoin-deploy-test", "-f", "-")
		t.Logf("%s:\n%s", dir, out)
	}
	ds := string(kubectl(t, cp, nil, "kustomize", "overlays/rack1"))
	for _, want := range []string{"name: pxejoin-bootserver-rack1", "pxejoin.io/segment: rack1", "hostNetwork: true",
		"- NET_BIND_SERVICE", "- NET_RAW", "path: /healthz"} {
		if !strings.Contains(ds, want) {
			t.Errorf("overlays/rack1 lacks %q", want)
		}
	}
	if strings.Contains(ds, "NET_ADMIN") || strings.Contains(ds, "SEGMENT") {
		t.Error("overlays/rack1 grants NET_ADMIN or keeps the SEGMENT placeholder")
	}
}

// access is one thing the boot server must (or must not) be allowed.
type access struct {
	verb, group, resource, sub, ns, name string
}

func (a access) String() string {
	r := a.resource
	if a.sub != "" {
		r += "/" + a.sub
	}
	if a.group != "" {
		r += "." + a.group
	}
	return fmt.Sprintf("%s %s %s/%s", a.verb, r, a.ns, a.name)
}

// needs is everything the boot server (tokens, inventory, status writer, CSR approver, leases) does
// with the API; denied is a sample of what it must not be able to do.
var needs = []access{
	{"get", "pxejoin.io", "machines", "", "", ""},
	{"list", "pxejoin.io", "machines", "", "", ""},
	{"watch", "pxejoin.io", "machines", "", "", ""},
	{"patch", "pxejoin.io", "machines", "status", "", "m1"},
	{"create", "", "secrets", "", "kube-system", ""},
	{"delete", "", "secrets", "", "kube-system", "bootstrap-token-abcdef"},
	{"get", "", "secrets", "", "kube-system", "bootstrap-token-abcdef"},
	{"list", "", "secrets", "", "kube-system", ""},
	{"watch", "", "secrets", "", "kube-system", ""},
	{"get", "certificates.k8s.io", "certificatesigningrequests", "", "", "csr-1"},
	{"list", "certificates.k8s.io", "certificatesigningrequests", "", "", ""},
	{"watch", "certificates.k8s.io", "certificatesigningrequests", "", "", ""},
	{"update", "certificates.k8s.io", "certificatesigningrequests", "approval", "", "csr-1"},
	{"approve", "certificates.k8s.io", "signers", "", "", "kubernetes.io/kube-apiserver-client-kubelet"},
	{"approve", "certificates.k8s.io", "signers", "", "", "kubernetes.io/kubelet-serving"},
	{"create", "", "events", "", "default", ""},
	{"create", "events.k8s.io", "events", "", "default", ""},
	{"get", "", "configmaps", "", "kube-public", "cluster-info"},
	{"get", "", "configmaps", "", "kube-system", "kubelet-config"},
	{"get", "", "configmaps", "", "kube-system", "kubeadm-config"},
	{"get", "", "nodes", "", "", "n1"},
	{"list", "", "nodes", "", "", ""},
	{"watch", "", "nodes", "", "", ""},
	{"create", "authorization.k8s.io", "subjectaccessreviews", "", "", ""},
	{"create", "networking.k8s.io", "ipaddresses", "", "", ""},
	{"get", "networking.k8s.io", "ipaddresses", "", "", "10.0.0.200"},
	{"delete", "networking.k8s.io", "ipaddresses", "", "", "10.0.0.200"},
	{"get", "coordination.k8s.io", "leases", "", namespace, "shard-0"},
	{"create", "coordination.k8s.io", "leases", "", namespace, ""},
	{"update", "coordination.k8s.io", "leases", "", namespace, "shard-0"},
	{"delete", "coordination.k8s.io", "leases", "", namespace, "pxejoin-dhcp-default-server-0"},
	{"get", "", "configmaps", "", namespace, "pxejoin-dhcp-default-0"},
	{"create", "", "configmaps", "", namespace, ""},
	{"update", "", "configmaps", "", namespace, "pxejoin-dhcp-default-0"},
}

var denied = []access{
	{"get", "", "secrets", "", "default", "x"},
	{"create", "", "secrets", "", namespace, ""},
	{"get", "", "configmaps", "", "kube-system", "extension-apiserver-authentication"},
	{"delete", "", "nodes", "", "", "n1"},
	{"update", "", "nodes", "", "", "n1"},
	{"create", "pxejoin.io", "machines", "", "", ""},
	{"delete", "pxejoin.io", "machines", "", "", "m1"},
	{"update", "pxejoin.io", "machines", "", "", "m1"},
	{"delete", "certificates.k8s.io", "certificatesigningrequests", "", "", "csr-1"},
	{"approve", "certificates.k8s.io", "signers", "", "", "kubernetes.io/kube-apiserver-client"},
	{"create", "", "pods", "", namespace, ""},
	{"update", "networking.k8s.io", "ipaddresses", "", "", "10.0.0.200"},
	{"create", "coordination.k8s.io", "leases", "", "kube-system", ""},
}

// serviceAccountConfig returns a rest config (and a kubeconfig file holding it) for a fresh token of
// the boot server's ServiceAccount, as a pod of the DaemonSet would have.
func serviceAccountConfig(t *testing.T, cp *controlplane.ControlPlane) *rest.Config {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tr, err := cp.Admin().CoreV1().ServiceAccounts(namespace).CreateToken(ctx, serviceAccount,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr(int64(3600))}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest for %s/%s: %v", namespace, serviceAccount, err)
	}
	ca, err := os.ReadFile(cp.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["c"] = &clientcmdapi.Cluster{Server: "https://" + cp.Endpoint(), CertificateAuthorityData: ca}
	kc.AuthInfos["sa"] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	kc.Contexts["sa"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "sa"}
	kc.CurrentContext = "sa"
	path := filepath.Join(t.TempDir(), "bootserver.kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	return rc
}

func ptr[T any](v T) *T { return &v }

// TestRBAC: the ServiceAccount's own token may do everything the boot server does, and not the
// sample of what it must not.
func TestRBAC(t *testing.T) {
	testenv.RequireRoot(t)
	cp := controlplane.Shared(t)
	applyBase(t, cp)
	c := kubernetes.NewForConfigOrDie(serviceAccountConfig(t, cp))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	allowed := func(a access) bool {
		r, err := c.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: a.verb, Group: a.group, Resource: a.resource, Subresource: a.sub, Namespace: a.ns, Name: a.name}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("SelfSubjectAccessReview %s: %v", a, err)
		}
		return r.Status.Allowed
	}
	for _, a := range needs {
		if !allowed(a) {
			t.Errorf("the boot server may not %s: add it to deploy/base/rbac.yaml", a)
		}
	}
	for _, a := range denied {
		if allowed(a) {
			t.Errorf("the boot server may %s, which it never needs", a)
		}
	}
}

// TestBootServerWithDeployedRBAC runs the boot server as the DaemonSet's pod would: with a token of
// its ServiceAccount bound to deploy/base's RBAC and nothing else, the endpoint and CA pin taken from
// kube-public/cluster-info (the in-cluster path, server.ClusterFromInfo) although the client dials
// the apiserver by another name. A machine's join file then works with the real agent join, and the
// server deletes the token once the CSR is issued (watching CSRs, deleting Secrets). Any verb
// missing from deploy/ fails it: the mint, the watch or the deletion, or a "forbidden" in the log.
func TestBootServerWithDeployedRBAC(t *testing.T) {
	testenv.RequireRoot(t)
	cp := controlplane.Shared(t)
	applyBase(t, cp)
	rc := serviceAccountConfig(t, cp)
	// A pod dials the in-cluster service address; here "localhost" stands for it (the serving
	// certificate names both). Machines must get cluster-info's 127.0.0.1 endpoint all the same.
	_, port, _ := net.SplitHostPort(cp.Endpoint())
	rc.Host = "https://localhost:" + port
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cl, err := server.ClusterFromInfo(ctx, rc, "")
	if err != nil {
		t.Fatal(err)
	}
	if cl.Endpoint != cp.Endpoint() || len(cl.CAPins) != 1 || cl.CAPins[0] != cp.CAPin() {
		t.Fatalf("cluster from cluster-info: endpoint %s pins %v; want %s %s", cl.Endpoint, cl.CAPins, cp.Endpoint(), cp.CAPin())
	}

	dir := t.TempDir()
	for _, f := range []string{"vmlinuz", "initramfs.cpio.gz"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("test "+f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	const mac, node = "52:54:00:de:91:01", "deploy-worker-1"
	cfg, err := config.Parse("deploy.yaml", fmt.Appendf(nil, `serverURL: http://%s
listen: {http: "%s"}
dhcp: {mode: "off"}
tftp: {disabled: true}
stateDir: %s/state
profiles:
  worker:
    kernel: %s/vmlinuz
    initrds: [%s/initramfs.cpio.gz]
    cmdline: console=ttyS0
machines:
  - {mac: "%s", name: %s, profile: worker}
`, addr, addr, dir, dir, dir, mac, node))
	if err != nil {
		t.Fatal(err)
	}
	logs := &logbuf.Buffer{}
	ready := make(chan struct{})
	srv, err := server.New(server.Options{Config: cfg, Cluster: cl, Ready: func() { close(ready) },
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	select {
	case <-ready:
	case err := <-served:
		t.Fatalf("Serve: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("not ready in 30 s")
	}
	// The watch must have synced (list/watch on CSRs and Nodes), or no token is ever deleted.
	eventually.True(t, "the boot server watches CSRs and Nodes", func() bool {
		return strings.Contains(logs.String(), "watching CSRs and Nodes")
	})

	resp, err := http.Get(srv.URL() + "/join/" + mac)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("join file: %s: %s\nlog:\n%s", resp.Status, body, logs.String())
	}
	jc, err := joinconfig.Parse(body)
	if err != nil {
		t.Fatal(err)
	}
	if bt := jc.Discovery.BootstrapToken; bt.APIServerEndpoint != cp.Endpoint() {
		t.Errorf("join file's endpoint %s, want cluster-info's %s", bt.APIServerEndpoint, cp.Endpoint())
	}
	jc.SkipPhases = append(jc.SkipPhases, "kubelet-start/start")
	root := filepath.Join(dir, "root")
	jctx, jcancel := context.WithTimeout(ctx, 2*time.Minute)
	defer jcancel()
	if err := join.Run(jctx, jc, join.Options{Rootfs: root}); err != nil {
		t.Fatalf("join with the boot server's join file: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "etc/kubernetes/kubelet.conf")); err != nil {
		t.Fatal(err)
	}
	id, _, _ := strings.Cut(jc.Discovery.TLSBootstrapToken, ".")
	eventually.True(t, "the boot server deletes the token once its CSR is issued", func() bool {
		_, err := cp.Admin().CoreV1().Secrets("kube-system").Get(ctx, "bootstrap-token-"+id, metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
	if strings.Contains(strings.ToLower(logs.String()), "forbidden") {
		t.Errorf("the boot server was refused something:\n%s", logs.String())
	}
	cancel()
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

package server

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/bootserver/machineapi"
	"github.com/pxejoin/pxejoin/bootserver/status"
	"github.com/pxejoin/pxejoin/bootserver/tokens"
	"github.com/pxejoin/pxejoin/deploy/crd"
	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/internal/diskspec"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
	labeventually "github.com/pxejoin/pxejoin/lab/eventually"
)

// TestInstalledMachineResumes runs the real boot server against the real apiserver: a persistent
// machine whose agent reported its disk installed and its node ready boots again; its script is
// served and no token Secret is minted for it (the old code minted one ahead of every inventory
// machine's join file). When its agent then says it cannot resume (expired credentials) and asks
// for a join file, a token is minted, the re-join is counted by reason, and Machine.status shows
// the install.
func TestInstalledMachineResumes(t *testing.T) {
	needControlPlane(t)
	dyn, err := dynamic.NewForConfig(cp.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := crd.Install(ctx, dyn, crd.Machines, "pxejoin-test"); err != nil {
		t.Fatal(err)
	}
	mac, name := hwaddr.MAC{0x52, 0x54, 0, 0x5f, 0, 0x21}, "srv-persistent-1"
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": machineapi.GVK.GroupVersion().String(), "kind": machineapi.Kind, "metadata": map[string]any{"name": name},
		"spec": map[string]any{"macs": []any{mac.String()}, "profile": config.QuickProfile},
	}}
	if _, err := dyn.Resource(machineapi.GVR).Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer dyn.Resource(machineapi.GVR).Delete(ctx, name, metav1.DeleteOptions{})

	_, c := startFiles(t)
	c.Cluster.Kubeconfig = ""
	p := c.Profiles[config.QuickProfile]
	p.Disk = &diskspec.Spec{MinSizeGiB: 10}
	c.Profiles[config.QuickProfile] = p
	c.Machines = append(c.Machines, config.Machine{MAC: mac, Name: name, Profile: config.QuickProfile})
	s, err := New(Options{Config: c, Logger: nopLogger(),
		Cluster: &Cluster{Client: cp.Admin(), Config: cp.AdminConfig(), Endpoint: cp.Endpoint(), CAPins: []string{cp.CAPin()}}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sctx, cancel := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- s.Serve(sctx) }()
	defer func() { cancel(); <-served }()

	do := func(method, path, body string) *httptest.ResponseRecorder {
		t.Helper()
		rec := httptest.NewRecorder()
		s.http.ServeHTTP(rec, httptest.NewRequest(method, path, bytes.NewBufferString(body)))
		if rec.Code != http.StatusOK && rec.Code != http.StatusNoContent {
			t.Fatalf("%s %s: %d %s", method, path, rec.Code, rec.Body)
		}
		return rec
	}
	secrets := func() int {
		t.Helper()
		l, err := cp.Admin().CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{LabelSelector: tokens.LabelMAC + "=" + mac.Hex()})
		if err != nil {
			t.Fatal(err)
		}
		n := len(l.Items)
		for _, r := range s.tokens.Records() {
			if r.MAC == mac {
				n++
			}
		}
		return n
	}
	// Boot 1, as the agent reported it: the disk installed, no credentials yet, joined, ready.
	s.status.Record(mac, status.Event{Event: evt(status.PhaseScript, bootstatus.StateDone), Source: status.SourceHTTP, StartsBoot: true})
	do("POST", "/status/"+mac.String(), `[{"phase":"disk","state":"done","detail":"installed /dev/vda: /dev/vda was blank"},`+
		`{"phase":"resume","state":"skipped","detail":"no credentials: no /etc/kubernetes/kubelet.conf on the disk: joining (first boot)"},{"phase":"node-ready","state":"done"}]`)
	if m, _ := s.status.Get(mac); !m.Install.Installed || m.Install.InstalledBoot != 1 {
		t.Fatalf("not installed: %+v", m.Install)
	}

	// Boot 2: the script, and no token.
	script := do("GET", "/boot/"+mac.String()+".ipxe", "").Body.String()
	if !bytes.Contains([]byte(script), []byte("pxejoin.disk=auto pxejoin.disk.minsize=10 pxejoin.disk.policy=install pxejoin.cahash="+cp.CAPin())) {
		t.Errorf("script without the disk:\n%s", script)
	}
	if got := counterValue(t, s, "pxejoin_script_resume_total", ""); got != 1 {
		t.Fatalf("the script was not served as a resume (%v): a token may be minted ahead", got)
	}
	if n := secrets(); n != 0 {
		t.Fatalf("%d tokens minted for an installed machine that resumes", n)
	}

	// Its credentials expired: the agent says so and asks for a join file, which mints a token.
	do("POST", "/status/"+mac.String(), `[{"phase":"resume","state":"skipped","detail":"credentials expired: the kubelet's client certificate expired at 2026-11-30T11:00:00Z: joining again"}]`)
	do("GET", "/join/"+mac.String(), "")
	if n := secrets(); n != 2 { // the Secret and this server's record of it
		t.Errorf("re-join: %d tokens (Secrets and records), want the one", n)
	}
	if got := counterValue(t, s, "pxejoin_rejoins_total", status.RejoinExpired); got != 1 {
		t.Errorf("re-joins for expired credentials: %v", got)
	}
	labeventually.True(t, "Machine.status.install shows the install and the re-join", func() bool {
		got, err := dyn.Resource(machineapi.GVR).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false
		}
		installed, _, _ := unstructured.NestedBool(got.Object, "status", "install", "installed")
		reason, _, _ := unstructured.NestedString(got.Object, "status", "install", "rejoinReason")
		return installed && reason == "credentials expired: the kubelet's client certificate expired at 2026-11-30T11:00:00Z: joining again"
	})
}

// counterValue is the value of counter name (with label reason, if given) in s's registry.
func counterValue(t *testing.T, s *Server, name, reason string) float64 {
	t.Helper()
	mfs, err := s.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if reason == "" || (len(m.GetLabel()) == 1 && m.GetLabel()[0].GetValue() == reason) {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no metric %s{%s}", name, reason)
	return 0
}

// TestReimageAnnotates: with the Machine inventory, a re-image request is put on the Machine as
// its pxejoin.io/reimage annotation (real apiserver), where every boot server sees it; with a
// file inventory nothing is written to the API.
func TestReimageAnnotates(t *testing.T) {
	needControlPlane(t)
	dyn, err := dynamic.NewForConfig(cp.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := crd.Install(ctx, dyn, crd.Machines, "pxejoin-test"); err != nil {
		t.Fatal(err)
	}
	name := "srv-reimage-1"
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": machineapi.GVK.GroupVersion().String(), "kind": machineapi.Kind, "metadata": map[string]any{"name": name},
		"spec": map[string]any{"macs": []any{"52:54:00:5f:00:31"}, "profile": "worker"},
	}}
	if _, err := dyn.Resource(machineapi.GVR).Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer dyn.Resource(machineapi.GVR).Delete(ctx, name, metav1.DeleteOptions{})
	cl := &Cluster{Dynamic: dyn}
	if f := (&Server{cfg: &config.Config{Inventory: config.Inventory{Source: config.InventoryFile}}}).reimageFunc(cl); f != nil {
		t.Error("a file inventory annotates Machines")
	}
	reimage := (&Server{cfg: &config.Config{Inventory: config.Inventory{Source: config.InventoryKubernetes}}}).reimageFunc(cl)
	if err := reimage(ctx, name, "2026-11-30T15:00:00Z"); err != nil {
		t.Fatal(err)
	}
	got, err := dyn.Resource(machineapi.GVR).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if a := got.GetAnnotations()[machineapi.AnnotationReimage]; a != "2026-11-30T15:00:00Z" {
		t.Errorf("annotation %q", a)
	}
	if err := reimage(ctx, "srv-reimage-none", "x"); err == nil {
		t.Error("a missing Machine must fail")
	}
}

package server

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/bootserver/machineapi"
	"github.com/pxejoin/pxejoin/deploy/crd"
	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
	labeventually "github.com/pxejoin/pxejoin/lab/eventually"
)

// TestStatusToMachine: with a cluster, an inventory machine's script and join file requests reach
// its Machine's status (boot 1, the phases, servedBy) through the server's status writer.
func TestStatusToMachine(t *testing.T) {
	needControlPlane(t)
	dyn, err := dynamic.NewForConfig(cp.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := crd.Install(context.Background(), dyn, crd.Machines, "pxejoin-test"); err != nil {
		t.Fatal(err)
	}
	mac, name := hwaddr.MAC{0x52, 0x54, 0, 0x5f, 0, 1}, "srv-status-1"
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": machineapi.GVK.GroupVersion().String(), "kind": machineapi.Kind, "metadata": map[string]any{"name": name},
		"spec": map[string]any{"macs": []any{mac.String()}, "profile": config.QuickProfile},
	}}
	if _, err := dyn.Resource(machineapi.GVR).Create(context.Background(), obj, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer dyn.Resource(machineapi.GVR).Delete(context.Background(), name, metav1.DeleteOptions{})

	_, c := startFiles(t)
	c.Cluster.Kubeconfig = "" // the cluster is Options.Cluster
	c.Machines = append(c.Machines, config.Machine{MAC: mac, Name: name, Profile: config.QuickProfile})
	c.API.ServerName = "rack-9"
	s, err := New(Options{Config: c, Logger: nopLogger(),
		Cluster: &Cluster{Client: cp.Admin(), Config: cp.AdminConfig(), Endpoint: cp.Endpoint(), CAPins: []string{cp.CAPin()}}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx) }()
	defer func() { cancel(); <-served }()

	for _, path := range []string{"/boot/" + mac.String() + ".ipxe", "/join/" + mac.String()} {
		rec := httptest.NewRecorder()
		s.http.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		if rec.Code != http.StatusOK {
			t.Fatalf("GET %s: %d %s", path, rec.Code, rec.Body)
		}
	}
	labeventually.True(t, "the join file reaches Machine.status", func() bool {
		got, err := dyn.Resource(machineapi.GVR).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return false
		}
		phase, _, _ := unstructured.NestedString(got.Object, "status", "phase")
		boot, _, _ := unstructured.NestedInt64(got.Object, "status", "boot")
		by, _, _ := unstructured.NestedString(got.Object, "status", "servedBy")
		return phase == bootstatus.PhaseJoinFile && boot == 1 && by == "rack-9"
	})
}

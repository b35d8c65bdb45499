package e2e

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"

	"github.com/pxejoin/pxejoin/bootserver/machineapi"
	"github.com/pxejoin/pxejoin/deploy/crd"
	"github.com/pxejoin/pxejoin/lab/eventually"
	"github.com/pxejoin/pxejoin/lab/labenv"
	"github.com/pxejoin/pxejoin/lab/testenv"
	"github.com/pxejoin/pxejoin/lab/vm"
)

// TestMachineInventoryJoin boots a VM through a boot server whose inventory is a Machine object
// (inventory.source: kubernetes): the VM becomes a Ready node, and the Machine's status, as
// `kubectl get pxm` prints it, carries its boot's timeline.
func TestMachineInventoryJoin(t *testing.T) {
	extended(t)
	needRoot(t)
	img := image(t)
	n := labNet(t)
	ctx := ctxFor(t, durationEnv("PXEJOIN_JOIN_TIMEOUT", 15*time.Minute))
	cp, _ := startControlPlane(ctx, t, n)
	dyn, err := dynamic.NewForConfig(cp.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := crd.Install(ctx, dyn, crd.Machines, "pxejoin-test"); err != nil {
		t.Fatal(err)
	}
	node, mac := "vm-machine", n.MAC(1)
	m := &machineapi.Machine{Spec: machineapi.MachineSpec{MACs: []string{mac.String()}, Profile: "node", Labels: map[string]string{"rack": "r1"}}}
	m.APIVersion, m.Kind, m.Name = machineapi.GVK.GroupVersion().String(), machineapi.Kind, node
	u, err := machineapi.ToUnstructured(m)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dyn.Resource(machineapi.GVR).Create(ctx, u, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := cp.SetAutoApprove(ctx, false); err != nil {
		t.Fatal(err)
	}
	rb := &labenv.BootServer{Bin: bootserverBin(t), NS: n.NS, Interface: n.Bridge, Addr: n.BridgeAddr, Dir: t.TempDir(),
		Kubeconfig: cp.AdminKubeconfig(), Image: img, FromAPI: true}
	if err := rb.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rb.Stop)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("bootserver log:\n%s", rb.LogTail(80))
		}
	})
	v := startVM(t, n, node, mac, vm.BIOS, 2048)

	// The Node registers and becomes Ready, with the Machine's label.
	var nd *corev1.Node
	if !eventually.Within(12*time.Minute, func() bool {
		nd, err = cp.Admin().CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false
		}
		for _, c := range nd.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				return true
			}
		}
		return false
	}) {
		t.Fatalf("node %s not Ready %s after qemu started: %v", node, time.Since(v.Started).Round(time.Second), err)
	}
	t.Logf("node %s Ready %.1fs after qemu started", node, time.Since(v.Started).Seconds())
	if nd.Labels["rack"] != "r1" {
		t.Errorf("the Node lacks the Machine's label rack=r1: %v", nd.Labels)
	}

	// The Machine's status carries the boot: its phases, the node, boot 1.
	var st machineapi.MachineStatus
	if !eventually.Within(2*time.Minute, func() bool {
		got, err := dyn.Resource(machineapi.GVR).Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false
		}
		mm, err := machineapi.FromUnstructured(got)
		if err != nil {
			return false
		}
		st = mm.Status
		return st.Boot == 1 && st.NodeRef != nil && st.NodeRef.Name == node && hasPhase(st, "node-ready")
	}) {
		t.Fatalf("Machine %s status did not show the boot: %+v", node, st)
	}
	var names []string
	for _, p := range st.Phases {
		names = append(names, p.Name+"="+p.State)
	}
	t.Logf("Machine %s status: phase %s, boot %d, %d phases: %s", node, st.Phase, st.Boot, len(st.Phases), strings.Join(names, " "))

	// kubectl get pxm is the fleet view.
	out, err := exec.CommandContext(ctx, testenv.K8sBinDir()+"/kubectl", "--kubeconfig", cp.AdminKubeconfig(), "get", "pxm").CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl get pxm: %v\n%s", err, out)
	}
	t.Logf("kubectl get pxm:\n%s", out)
	if !strings.Contains(string(out), node) || !strings.Contains(string(out), st.Phase) {
		t.Errorf("kubectl get pxm does not show %s in phase %s", node, st.Phase)
	}
}

func hasPhase(st machineapi.MachineStatus, name string) bool {
	for _, p := range st.Phases {
		if p.Name == name && p.State == "done" {
			return true
		}
	}
	return false
}

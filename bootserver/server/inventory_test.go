package server

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"github.com/prometheus/client_golang/prometheus/testutil"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/bootserver/machineapi"
	"github.com/pxejoin/pxejoin/deploy/crd"
	"github.com/pxejoin/pxejoin/internal/joinconfig"
	labeventually "github.com/pxejoin/pxejoin/lab/eventually"
	"github.com/pxejoin/pxejoin/lab/netlab"
)

// apiInventory is a boot server whose inventory is the cluster's Machines, in a namespace, with
// a DHCP client beside it.
type apiInventory struct {
	srv  *Server
	dyn  dynamic.Interface
	cli  *netlab.NS
	conn *net.UDPConn
	xid  uint32
}

// startAPIInventory installs the CRD and runs a server (dhcp mode full or proxy) with
// inventory.source kubernetes on subnet 10.80.<n>.0/24.
func startAPIInventory(t *testing.T, mode string, n int) *apiInventory {
	t.Helper()
	needControlPlane(t)
	dyn := dynamic.NewForConfigOrDie(cp.AdminConfig())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := crd.Install(ctx, dyn, crd.Machines, "pxejoin-test"); err != nil {
		t.Fatal(err)
	}
	srvNS, cliNS := netlab.New(t, fmt.Sprintf("bsi%d", n)), netlab.New(t, fmt.Sprintf("bci%d", n))
	netlab.Veth(t, srvNS, "eth0", fmt.Sprintf("10.80.%d.1/24", n), cliNS, "eth0", fmt.Sprintf("10.80.%d.2/24", n))
	dir := t.TempDir()
	for _, f := range []string{"vmlinuz", "initrd.img"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(f), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pool := ""
	if mode == config.DHCPFull {
		pool = fmt.Sprintf(", pool: {start: 10.80.%d.100, end: 10.80.%d.200}", n, n)
	}
	cfg, err := config.Parse("inventory.yaml", []byte(fmt.Sprintf(`interface: eth0
listen: {http: ":8080"}
dhcp: {mode: %[3]s%[4]s}
tftp: {disabled: true}
cluster: {kubeconfig: %[2]s}
inventory: {source: kubernetes}
segment: rack-%[5]d
stateDir: %[1]s/state
profiles:
  worker: {kernel: %[1]s/vmlinuz, initrds: [%[1]s/initrd.img]}
`, dir, cp.AdminKubeconfig(), mode, pool, n)))
	if err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	s, err := New(Options{Config: cfg, Logger: nopLogger(), InNetns: srvNS.Do, Ready: func() { close(ready) }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx) }()
	t.Cleanup(func() { stop(); <-served; s.Close() })
	select {
	case <-ready:
	case err := <-served:
		t.Fatalf("Serve: %v", err)
	}
	a := &apiInventory{srv: s, dyn: dyn, cli: cliNS}
	if err := cliNS.Do(func() (err error) { a.conn, err = server4.NewIPv4UDPConn("eth0", &net.UDPAddr{Port: 68}); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.conn.Close() })
	return a
}

// discover sends iPXE's DISCOVER from mac and returns the server's OFFER, or nil when none came
// within a second.
func (a *apiInventory) discover(t *testing.T, mac string) *dhcpv4.DHCPv4 {
	t.Helper()
	hw, err := net.ParseMAC(mac)
	if err != nil {
		t.Fatal(err)
	}
	a.xid++
	var xid dhcpv4.TransactionID
	xid[0], xid[1], xid[2], xid[3] = byte(a.xid>>24), byte(a.xid>>16), byte(a.xid>>8), byte(a.xid)
	m, err := dhcpv4.NewDiscovery(hw, dhcpv4.WithTransactionID(xid), dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
		dhcpv4.WithOption(dhcpv4.OptUserClass("iPXE")))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.conn.WriteTo(m.ToBytes(), &net.UDPAddr{IP: net.IPv4bcast, Port: 67}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1500)
	deadline := time.Now().Add(time.Second)
	for {
		_ = a.conn.SetReadDeadline(deadline)
		n, _, err := a.conn.ReadFrom(buf)
		if err != nil {
			return nil
		}
		r, err := dhcpv4.FromBytes(buf[:n])
		if err == nil && r.TransactionID == xid && r.OpCode == dhcpv4.OpcodeBootReply {
			return r
		}
	}
}

// apply creates or changes a Machine (server-side apply, as kubectl apply --server-side does).
func (a *apiInventory) apply(t *testing.T, name string, spec map[string]any) {
	t.Helper()
	u := &unstructured.Unstructured{Object: map[string]any{"spec": spec}}
	u.SetGroupVersionKind(machineapi.GVK)
	u.SetName(name)
	data, _ := u.MarshalJSON()
	force := true
	if _, err := a.dyn.Resource(machineapi.GVR).Patch(context.Background(), name, types.ApplyPatchType, data,
		metav1.PatchOptions{FieldManager: "pxejoin-test", Force: &force}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.dyn.Resource(machineapi.GVR).Delete(context.Background(), name, metav1.DeleteOptions{}) })
}

func (a *apiInventory) delete(t *testing.T, name string) {
	t.Helper()
	if err := a.dyn.Resource(machineapi.GVR).Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
}

// conflict returns a Machine's Conflict condition (nil if it has none).
func (a *apiInventory) conflict(t *testing.T, name string) *metav1.Condition {
	t.Helper()
	u, err := a.dyn.Resource(machineapi.GVR).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := machineapi.FromUnstructured(u)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range m.Status.Conditions {
		if c.Type == machineapi.ConditionConflict {
			return &m.Status.Conditions[i]
		}
	}
	return nil
}

func (a *apiInventory) dropped(reason string) float64 {
	return testutil.ToFloat64(a.srv.dhcp.Metrics().Dropped.WithLabelValues(reason))
}

// bootFile is the boot file an offer names ("" for none).
func bootFile(r *dhcpv4.DHCPv4) string {
	if r == nil {
		return ""
	}
	if f := r.BootFileNameOption(); f != "" {
		return f
	}
	return r.BootFileName
}

// TestInventoryFromAPI: Machine edits reach a running proxy-mode server without a restart. A new
// Machine's MAC gets an offer; disabled, it gets silence; deleted, silence; a MAC claimed by two
// Machines gets silence and both Machines get Conflict=True naming the other, cleared (False) when
// one lets the MAC go; a Machine of another segment is not answered.
func TestInventoryFromAPI(t *testing.T) {
	a := startAPIInventory(t, config.DHCPProxy, 54)
	const mac1, mac2 = "52:54:00:54:00:01", "52:54:00:54:00:02"
	answered := func(mac string) bool { return bootFile(a.discover(t, mac)) != "" }

	a.apply(t, "inv-1", map[string]any{"profile": "worker", "macs": []any{mac1}, "segment": "rack-54"})
	labeventually.True(t, "a new Machine's DISCOVER is answered", func() bool { return answered(mac1) })

	before := a.dropped("silenced")
	a.apply(t, "inv-1", map[string]any{"profile": "worker", "macs": []any{mac1}, "segment": "rack-54", "disabled": true})
	labeventually.True(t, "a disabled Machine gets silence", func() bool { return !answered(mac1) && a.dropped("silenced") > before })

	a.apply(t, "inv-1", map[string]any{"profile": "worker", "macs": []any{mac1}})
	labeventually.True(t, "enabled again (no segment: any server), it is answered", func() bool { return answered(mac1) })

	a.apply(t, "inv-2", map[string]any{"profile": "worker", "macs": []any{mac2, mac1}})
	labeventually.True(t, "a MAC claimed twice gets silence", func() bool { return !answered(mac1) && !answered(mac2) })
	labeventually.True(t, "both Machines get Conflict=True naming the other", func() bool {
		c1, c2 := a.conflict(t, "inv-1"), a.conflict(t, "inv-2")
		return c1 != nil && c2 != nil && c1.Status == metav1.ConditionTrue && c2.Status == metav1.ConditionTrue &&
			strings.Contains(c1.Message, "Machine inv-2") && strings.Contains(c2.Message, "Machine inv-1")
	})
	metrics, _ := a.cli.Exec("curl", "-sS", "--max-time", "10", a.srv.URL()+"/metrics")
	if !strings.Contains(string(metrics), `pxejoin_inventory_machines{state="conflict"} 2`) {
		t.Errorf("/metrics does not count 2 Machines in conflict:\n%s", metrics)
	}

	a.apply(t, "inv-2", map[string]any{"profile": "worker", "macs": []any{mac2}})
	labeventually.True(t, "resolved, both are answered", func() bool { return answered(mac1) && answered(mac2) })
	labeventually.True(t, "resolved, Conflict is False on both", func() bool {
		c1, c2 := a.conflict(t, "inv-1"), a.conflict(t, "inv-2")
		return c1 != nil && c2 != nil && c1.Status == metav1.ConditionFalse && c2.Status == metav1.ConditionFalse
	})

	a.delete(t, "inv-2")
	labeventually.True(t, "a deleted Machine gets silence", func() bool { return !answered(mac2) })

	a.apply(t, "inv-2", map[string]any{"profile": "worker", "macs": []any{mac2}, "segment": "rack-other"})
	if !answered(mac1) || answered(mac2) {
		t.Error("a Machine of another segment is answered, or the first Machine is no longer")
	}
}

// TestInventoryReservation: in full mode a Machine's spec.ipv4 is the address it is offered (here
// outside the dynamic range), and a changed reservation is offered without a restart.
func TestInventoryReservation(t *testing.T) {
	a := startAPIInventory(t, config.DHCPFull, 55)
	const mac = "52:54:00:55:00:01"
	a.apply(t, "res-1", map[string]any{"profile": "worker", "macs": []any{mac}, "ipv4": "10.80.55.50"})
	labeventually.True(t, "the reserved address is offered", func() bool {
		r := a.discover(t, mac)
		return r != nil && r.YourIPAddr.String() == "10.80.55.50" && bootFile(r) != ""
	})
	a.apply(t, "res-1", map[string]any{"profile": "worker", "macs": []any{mac}, "ipv4": "10.80.55.51"})
	labeventually.True(t, "the new reservation is offered", func() bool {
		r := a.discover(t, mac)
		return r != nil && r.YourIPAddr.String() == "10.80.55.51"
	})
	before := a.dropped("silenced")
	a.apply(t, "res-1", map[string]any{"profile": "worker", "macs": []any{mac}, "ipv4": "10.80.55.51", "disabled": true})
	labeventually.True(t, "disabled, it gets no address either", func() bool { return a.discover(t, mac) == nil && a.dropped("silenced") > before })
}

// TestInventoryAPIOutage: with kube-apiserver stopped, known Machines keep getting offers and
// scripts from the last snapshot, a join file is answered 503 with Retry-After and a body saying
// the API is out of reach (counted), and once it is back the join file comes and edits made after
// it arrive.
func TestInventoryAPIOutage(t *testing.T) {
	a := startAPIInventory(t, config.DHCPProxy, 56)
	var macs []string
	for i := range 20 {
		mac := fmt.Sprintf("52:54:00:56:00:%02x", i)
		macs = append(macs, mac)
		a.apply(t, fmt.Sprintf("outage-%d", i), map[string]any{"profile": "worker", "macs": []any{mac}})
	}
	labeventually.True(t, "every Machine is answered", func() bool { return bootFile(a.discover(t, macs[len(macs)-1])) != "" })

	cp.StopAPIServer()
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			_ = cp.StartAPIServer(context.Background())
		}
	})
	for i, mac := range macs {
		if bootFile(a.discover(t, mac)) == "" {
			t.Fatalf("machine %d got no offer with the apiserver stopped", i)
		}
		out, err := a.cli.Exec("curl", "-sS", "--fail", "--max-time", "10", a.srv.URL()+"/boot/"+mac+".ipxe")
		if err != nil || !strings.Contains(string(out), "/worker/vmlinuz") {
			t.Fatalf("machine %d's script with the apiserver stopped: %v\n%s", i, err, out)
		}
	}
	out, err := a.cli.Exec("curl", "-sS", "-i", "--max-time", "60", a.srv.URL()+"/join/"+macs[0])
	if err != nil {
		t.Fatalf("join file with the apiserver stopped: %v\n%s", err, out)
	}
	if !strings.HasPrefix(string(out), "HTTP/1.1 503") || !strings.Contains(string(out), "\nRetry-After: 10\r\n") ||
		!strings.Contains(string(out), "cannot reach the cluster's API server") {
		t.Errorf("join file with the apiserver stopped: want 503, Retry-After and what to check, got\n%s", out)
	}
	metrics, _ := a.cli.Exec("curl", "-sS", "--max-time", "10", a.srv.URL()+"/metrics")
	if !strings.Contains(string(metrics), `pxejoin_join_unavailable_total{reason="api-unreachable"} 1`) {
		t.Errorf("the 503 is not counted:\n%s", grepLines(string(metrics), "pxejoin_join_"))
	}
	restarted = true
	if err := cp.StartAPIServer(context.Background()); err != nil {
		t.Fatal(err)
	}
	labeventually.True(t, "the join file comes once the apiserver is back", func() bool {
		out, err := a.cli.Exec("curl", "-sS", "--fail", "--max-time", "30", a.srv.URL()+"/join/"+macs[0])
		if err != nil {
			return false
		}
		jc, err := joinconfig.Parse(out)
		return err == nil && jc.Discovery.TLSBootstrapToken != ""
	})
	a.apply(t, "outage-new", map[string]any{"profile": "worker", "macs": []any{"52:54:00:56:01:00"}})
	labeventually.True(t, "a Machine created after the outage is answered", func() bool { return bootFile(a.discover(t, "52:54:00:56:01:00")) != "" })
}

// TestInventoryWithoutCRD: a cluster without the Machine CRD stops the server at start with what
// to run.
func TestInventoryWithoutCRD(t *testing.T) {
	needControlPlane(t)
	dyn := dynamic.NewForConfigOrDie(cp.AdminConfig())
	crds := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	ctx := context.Background()
	if err := dyn.Resource(crds).Delete(ctx, "machines.pxejoin.io", metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	labeventually.True(t, "the CRD is gone", func() bool {
		_, err := dyn.Resource(machineapi.GVR).List(ctx, metav1.ListOptions{Limit: 1})
		return apierrors.IsNotFound(err)
	})
	dir := t.TempDir()
	for _, f := range []string{"vmlinuz", "initrd.img"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(f), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := config.Parse("nocrd.yaml", []byte(fmt.Sprintf(`serverURL: http://127.0.0.1:8080
dhcp: {mode: "off"}
tftp: {disabled: true}
cluster: {kubeconfig: %[2]s}
inventory: {source: kubernetes}
stateDir: %[1]s/state
profiles:
  worker: {kernel: %[1]s/vmlinuz, initrds: [%[1]s/initrd.img]}
`, dir, cp.AdminKubeconfig())))
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Options{Config: cfg, Logger: nopLogger()})
	if err == nil {
		s.Close()
		t.Fatal("the server started without the Machine CRD")
	}
	if !strings.Contains(err.Error(), "kubectl apply -f deploy/crd/") || !strings.Contains(err.Error(), "machines.pxejoin.io") {
		t.Errorf("the error does not say what to do: %v", err)
	}
}

// TestInventoryTwoSegments: two servers on two segments share one inventory; each answers its own
// segment's Machines and those without a segment, and not the other's.
func TestInventoryTwoSegments(t *testing.T) {
	a, b := startAPIInventory(t, config.DHCPProxy, 57), startAPIInventory(t, config.DHCPProxy, 58)
	const macA, macB, macAny = "52:54:00:57:00:01", "52:54:00:58:00:01", "52:54:00:59:00:01"
	a.apply(t, "seg-a", map[string]any{"profile": "worker", "macs": []any{macA}, "segment": "rack-57"})
	a.apply(t, "seg-b", map[string]any{"profile": "worker", "macs": []any{macB}, "segment": "rack-58"})
	a.apply(t, "seg-any", map[string]any{"profile": "worker", "macs": []any{macAny}})
	answered := func(s *apiInventory, mac string) bool { return bootFile(s.discover(t, mac)) != "" }
	labeventually.True(t, "each server answers its own segment's Machine and the one without a segment", func() bool {
		return answered(a, macA) && answered(a, macAny) && answered(b, macB) && answered(b, macAny)
	})
	if answered(a, macB) || answered(b, macA) {
		t.Error("a server answered the other segment's Machine")
	}
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

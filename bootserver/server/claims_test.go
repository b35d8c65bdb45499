package server

import (
	"context"
	"fmt"
	"net"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"

	"github.com/pxejoin/pxejoin/bootserver/addrclaim"
	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/bootserver/machineapi"
	"github.com/pxejoin/pxejoin/deploy/crd"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
	labeventually "github.com/pxejoin/pxejoin/lab/eventually"
	"github.com/pxejoin/pxejoin/lab/netlab"
)

// startHA runs a server with dhcp.ha (identity id, address 10.80.56.<host>) and address claims
// 10.80.56.20-10.80.56.40 over the cluster's Machines, on a link of its own to a DHCP client: two
// of them are two servers of one segment, each seen by its own client.
func startHA(t *testing.T, id string, host int) *apiInventory {
	t.Helper()
	needControlPlane(t)
	dyn := dynamic.NewForConfigOrDie(cp.AdminConfig())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := crd.Install(ctx, dyn, crd.Machines, "pxejoin-test"); err != nil {
		t.Fatal(err)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: config.DefaultHANamespace}}
	if _, err := cp.Admin().CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	srvNS, cliNS := netlab.New(t, "bsh"+id), netlab.New(t, "bch"+id)
	netlab.Veth(t, srvNS, "eth0", fmt.Sprintf("10.80.56.%d/24", host), cliNS, "eth0", "10.80.56.2/24")
	dir := t.TempDir()
	for _, f := range []string{"vmlinuz", "initrd.img"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(f), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := config.Parse("ha.yaml", []byte(fmt.Sprintf(`interface: eth0
listen: {http: ":8080"}
dhcp:
  mode: full
  pool: {start: 10.80.56.100, end: 10.80.56.200}
  ha: {identity: %[3]s, claims: {start: 10.80.56.20, end: 10.80.56.40}}
tftp: {disabled: true}
cluster: {kubeconfig: %[2]s}
api: {serverName: %[3]s}
inventory: {source: kubernetes}
segment: ha
stateDir: %[1]s/state
profiles:
  worker: {kernel: %[1]s/vmlinuz, initrds: [%[1]s/initrd.img], cmdline: "pxejoin.url={{.JoinURL}}"}
`, dir, cp.AdminKubeconfig(), id)))
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

// decisions is the server's pxejoin_addrclaim_decisions_total{decision=d}.
func (a *apiInventory) decisions(d string) float64 {
	mfs, _ := a.srv.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "pxejoin_addrclaim_decisions_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == d {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// TestClaimsTwoServers: a Machine without spec.ipv4 gets one address from the claims range on its
// first DISCOVER to server a, recorded in its status; server b offers the same address without
// claiming anything (it reads the status), and each server's iPXE script names the other's images.
func TestClaimsTwoServers(t *testing.T) {
	a, b := startHA(t, "a", 1), startHA(t, "b", 3)
	const mac = "52:54:00:56:00:01"
	a.apply(t, "ha-1", map[string]any{"profile": "worker", "macs": []any{mac}})
	var ip string
	hw, _ := hwaddr.Parse(mac)
	labeventually.True(t, "server a offers a claimed address", func() bool {
		// Until its informer has the Machine, a's pool answers the MAC as a stranger's.
		if asg, ok := a.srv.inv.Current().Lookup(hw, ""); !ok || !asg.Known {
			return false
		}
		r := a.discover(t, mac)
		if r == nil {
			return false
		}
		ip = r.YourIPAddr.String()
		return true
	})
	if addr, err := netip.ParseAddr(ip); err != nil || !a.srv.claims.Contains(addr) {
		t.Fatalf("server a offered %s, outside the claims range", ip)
	}
	if st := claimedOf(t, a, "ha-1"); st != ip {
		t.Fatalf("status.claimedIPv4 %q, offered %s", st, ip)
	}
	labeventually.True(t, "server b offers the same address", func() bool {
		r := b.discover(t, mac)
		return r != nil && r.YourIPAddr.String() == ip
	})
	if n := b.decisions(addrclaim.DecisionClaimed) + b.decisions(addrclaim.DecisionLost); n != 0 {
		t.Errorf("server b claimed (%v) although the Machine's status had the address", n)
	}
	if b.decisions(addrclaim.DecisionStatus) == 0 {
		t.Error("server b's answers are not counted as taken from the status")
	}
	labeventually.True(t, "a's script names b's images", func() bool {
		w := httptest.NewRecorder()
		a.srv.http.ServeHTTP(w, httptest.NewRequest("GET", "/boot/"+mac+".ipxe", nil))
		body := w.Body.String()
		return strings.Contains(body, "kernel http://10.80.56.3:8080/files/"+mac) && strings.Contains(body, "pxejoin.url=http://10.80.56.3:8080/join/"+mac)
	})
}

func claimedOf(t *testing.T, a *apiInventory, name string) string {
	t.Helper()
	u, err := a.dyn.Resource(machineapi.GVR).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := machineapi.FromUnstructured(u)
	if err != nil {
		t.Fatal(err)
	}
	return m.Status.ClaimedIPv4
}

package controlplane

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pxejoin/pxejoin/lab/labenv"
	"github.com/pxejoin/pxejoin/lab/testenv"
)

// shared is the test binary's control plane, started by Run.
var shared struct {
	cp  *ControlPlane
	err error
}

// Run is TestMain for a package whose tests share one real control plane: unless -short, it
// starts the control plane, runs the tests, stops it and returns m.Run's code. A control plane that
// cannot start fails the tests that call Shared, with the reason.
//
//	func TestMain(m *testing.M) { os.Exit(controlplane.Run(m)) }
func Run(m *testing.M) int {
	flag.Parse()
	if testing.Short() {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "pxejoin-cp-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	shared.cp, shared.err = Start(ctx, Options{StateDir: dir})
	cancel()
	code := m.Run()
	if shared.cp != nil {
		shared.cp.Stop()
	}
	os.RemoveAll(dir)
	return code
}

// Shared returns the control plane Run started. It skips the test under -short and fails it when
// the binaries are missing or the control plane did not start.
func Shared(t testing.TB) *ControlPlane {
	t.Helper()
	testenv.RequireK8s(t)
	if shared.err != nil {
		t.Fatalf("the control plane did not start: %v", shared.err)
	}
	if shared.cp == nil {
		t.Fatal("no control plane: the package's TestMain must run controlplane.Run")
	}
	return shared.cp
}

// RequireKubeadm is RequireRoot and RequireK8s for the Kubeadm mode (it binds to a bridge in a network
// namespace), and fails when kubeadm, kube-scheduler, etcd or etcdctl is missing from the binaries'
// directory, which it returns.
func RequireKubeadm(t testing.TB) string {
	t.Helper()
	testenv.RequireRoot(t)
	dir := testenv.RequireK8s(t)
	for _, name := range []string{"kubeadm", "kube-scheduler", "etcd", "etcdctl"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Fatalf("%s is not in %s: run make k8s (or make test), or set PXEJOIN_K8S_BIN", name, dir)
		}
	}
	return dir
}

// StartKubeadm starts a kubeadm-shaped control plane for one test, bound to the bridge of a new lab
// network (labenv.NewNet; nodes join by attaching to its Bridge in its NS), and stops both when the test
// ends. A control-plane join changes etcd's membership (and a stopped second member costs the first its
// quorum), so each joining test gets its own.
func StartKubeadm(t testing.TB) (*ControlPlane, *labenv.Net) {
	t.Helper()
	return StartKubeadmWith(t, Options{})
}

// StartKubeadmWith is StartKubeadm with opts (StateDir, Address, NetNS, Kubeadm and Logf are set here).
func StartKubeadmWith(t testing.TB, opts Options) (*ControlPlane, *labenv.Net) {
	t.Helper()
	RequireKubeadm(t)
	n, err := labenv.NewNet("cpk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	opts.StateDir, opts.Address, opts.NetNS, opts.Kubeadm, opts.Logf = t.TempDir(), n.BridgeAddr, n.NS.Name, true, t.Logf
	cp, err := Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cp.Stop)
	return cp, n
}

// Package testenv is the tests' one skip policy. Under -short, a test skips what needs root, network
// namespaces, the control plane or a VM; without -short those tests run, and anything they need that
// is missing (root, a tool, a file, the control-plane binaries) fails the test with what to do: run
// make deps (or make test, which runs it). Nothing is skipped silently.
package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// K8sVersion is the Kubernetes version of the control-plane binaries the tests run (the Makefile's
// K8S_VERSION).
const K8sVersion = "v1.37.2"

// RequireRoot skips under -short and fails unless the test runs as root: it creates network
// namespaces, taps or bridges.
func RequireRoot(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("needs root and network namespaces; runs without -short")
	}
	if os.Geteuid() != 0 {
		t.Fatal("needs root (network namespaces): run make test as root, or go test -short to skip it")
	}
}

// RequireVM skips under -short and fails unless the test can boot QEMU VMs (root, qemu).
func RequireVM(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a VM; runs without -short")
	}
	RequireRoot(t)
	RequireTool(t, "qemu-system-x86_64")
}

// RequireTool returns the path of an installed program, and fails the test when it is missing.
func RequireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed: run make deps", name)
	}
	return p
}

// RequireFile fails the test when path (a firmware, a kernel) is missing.
func RequireFile(t testing.TB, path string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("%v: run make deps", err)
	}
}

// K8sBinDir is where the control-plane binaries are: $PXEJOIN_K8S_BIN (the Makefile sets it), else
// the cache lab/build-k8s.sh fills.
func K8sBinDir() string {
	if d := os.Getenv("PXEJOIN_K8S_BIN"); d != "" {
		return d
	}
	cache := os.Getenv("PXEJOIN_CACHE")
	if cache == "" {
		cache = "/var/cache/pxejoin"
	}
	return filepath.Join(cache, "k8s", K8sVersion)
}

// RequireK8s skips under -short and fails when the control-plane binaries are missing; it returns
// their directory.
func RequireK8s(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("needs the control plane; runs without -short")
	}
	dir := K8sBinDir()
	for _, name := range []string{"kube-apiserver", "kube-controller-manager"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Fatalf("%s is not in %s: run make deps k8s (or make test), or set PXEJOIN_K8S_BIN", name, dir)
		}
	}
	RequireTool(t, "etcd")
	return dir
}

package main

import (
	"os"
	"path/filepath"
	"testing"
)

// TestServeBadKubeconfig: an empty kubeconfig is a configuration error (exit 1 with a message), not
// a panic (exit 2) in the start-up cleanup.
func TestServeBadKubeconfig(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"vmlinuz", "initrd.img", "empty.conf"} {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	code := serveCmd([]string{"--dhcp-mode", "off", "--server-url", "http://127.0.0.1:8080", "--http-addr", "127.0.0.1:0",
		"--tftp-root", dir, "--state-dir", filepath.Join(dir, "state"), "--kernel", filepath.Join(dir, "vmlinuz"),
		"--initrd", filepath.Join(dir, "initrd.img"), "--kubeconfig", filepath.Join(dir, "empty.conf")})
	if code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
}

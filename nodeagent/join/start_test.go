package join_test

import (
	"strings"
	"testing"
	"time"

	"github.com/pxejoin/pxejoin/lab/logbuf"
	"github.com/pxejoin/pxejoin/nodeagent/kubeletstart"
)

// TestKubeletStartRefusals: kubelet-start/start refuses, before writing anything, to start the host's
// kubelet for files going under another root, and where no systemd runs it says how to go on instead of failing obscurely.
func TestKubeletStartRefusals(t *testing.T) {
	needCP(t)
	ctx := ctxT(t, 2*time.Minute)
	rootfs := t.TempDir()
	out := &logbuf.Buffer{}
	args := []string{"join", cp.Endpoint(), "--token", token(t, time.Hour), "--node-name", "start-rootfs", "--rootfs", rootfs,
		"--discovery-token-ca-cert-hash", cp.CAPin(), "--ignore-preflight-errors", "Port-10250,CRI"}
	if code := agent(t, ctx, out, args...); code == 0 || !strings.Contains(out.String(), "add --skip-phases kubelet-start/start") {
		t.Fatal("starting the host's kubelet for another root should be refused with the fix")
	}
	// Refused before anything was written.
	assertNoCredentials(t, rootfs)

	if kubeletstart.SystemdRunning() {
		return // the no-systemd message cannot be seen on a host that runs systemd
	}
	out = &logbuf.Buffer{}
	if code := agent(t, ctx, out, "join", "phase", "kubelet-start", "start", "--node-name", "start-host",
		"--discovery-token-unsafe-skip-ca-verification", "--token", "abcdef.0123456789abcdef", cp.Endpoint()); code == 0 ||
		!strings.Contains(out.String(), "systemd is not running on this host") {
		t.Fatal("without systemd the start phase should say so")
	}
}

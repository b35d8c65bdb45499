package e2e

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"

	"github.com/pxejoin/pxejoin/lab/controlplane"
)

// podImage is the one image a lab node holds without a registry: the image's own pause
// (images/pause), imported at boot by pause-import.service.
const podImage = "registry.k8s.io/pause:3.10"

// runPod proves the joined node runs workloads, not only that it reports Ready: a pod bound to node
// gets a sandbox (containerd, runc), an address from the image's CNI config, a projected service
// account token (the kubelet's node credentials at work) and a running container; a command runs in
// it as kubectl exec runs one (apiserver → kubelet → containerd's streaming server); deleting it
// tears all that down again. It returns the pod's IP.
func runPod(ctx context.Context, t *testing.T, cp *controlplane.ControlPlane, node string) net.IP {
	t.Helper()
	cs := cp.Admin()
	// A pod stuck in ContainerCreating (a CNI plugin that does not run, an image not imported) stays
	// so: fail in minutes, not at the join's timeout.
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	pods := cs.CoreV1().Pods(metav1.NamespaceDefault)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "probe-" + node},
		Spec: corev1.PodSpec{
			NodeName:      node,
			RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{
				Name: "probe", Image: podImage, ImagePullPolicy: corev1.PullNever,
			}},
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
		},
	}
	mountNodeUsr(pod, true)
	var created *corev1.Pod
	for {
		// The default service account appears a few seconds after the control plane starts.
		var err error
		if created, err = pods.Create(ctx, pod, metav1.CreateOptions{}); err == nil {
			break
		}
		if !apierrors.IsForbidden(err) || ctx.Err() != nil {
			t.Fatalf("create pod on %s: %v", node, err)
		}
		time.Sleep(time.Second)
	}
	start := time.Now()
	var ip net.IP
	for ip == nil {
		p, err := pods.Get(ctx, created.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("pod on %s: %v", node, err)
		}
		switch p.Status.Phase {
		case corev1.PodRunning:
			if ip = net.ParseIP(p.Status.PodIP); ip == nil {
				t.Fatalf("pod on %s runs without an IP (%q)", node, p.Status.PodIP)
			}
		case corev1.PodFailed, corev1.PodSucceeded:
			t.Fatalf("pod on %s ended: %s", node, podState(p))
		}
		if ip == nil {
			select {
			case <-ctx.Done():
				t.Fatalf("pod on %s not running: %s (events: %s)", node, podState(p), podEvents(cs, created.Name))
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
	t.Logf("pod %s on %s running with IP %s, %.1fs after it was created", created.Name, node, ip, time.Since(start).Seconds())
	// The pause image has one binary; the node's own /usr lends the pod a cat.
	out, err := execIn(ctx, cp.AdminConfig(), created.Name, "/usr/bin/cat", "/etc/hostname")
	if err != nil {
		t.Fatalf("exec in pod on %s: %v (output %q)", node, err, out)
	}
	if strings.TrimSpace(out) != created.Name {
		t.Errorf("exec in pod on %s: cat /etc/hostname printed %q, want the pod's name %q", node, out, created.Name)
	}
	if err := pods.Delete(ctx, created.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete pod on %s: %v", node, err)
	}
	// The kubelet confirms the teardown (CNI DEL, sandbox removed) by letting the object go.
	for {
		if _, err := pods.Get(ctx, created.Name, metav1.GetOptions{}); apierrors.IsNotFound(err) {
			return ip
		}
		select {
		case <-ctx.Done():
			t.Fatalf("pod on %s not deleted: %v", node, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// podState describes why a pod is where it is.
func podState(p *corev1.Pod) string {
	s := string(p.Status.Phase)
	for _, c := range p.Status.ContainerStatuses {
		switch {
		case c.State.Waiting != nil:
			s += fmt.Sprintf("; %s waiting: %s %s", c.Name, c.State.Waiting.Reason, c.State.Waiting.Message)
		case c.State.Terminated != nil:
			s += fmt.Sprintf("; %s terminated: %s, exit code %d %s", c.Name, c.State.Terminated.Reason,
				c.State.Terminated.ExitCode, c.State.Terminated.Message)
		}
	}
	return s
}

// podEvents lists the events of pod name, for a failure message.
func podEvents(cs kubernetes.Interface, name string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	evs, err := cs.CoreV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
	if err != nil {
		return err.Error()
	}
	s := ""
	for _, e := range evs.Items {
		s += fmt.Sprintf("\n  %s %s: %s", e.Type, e.Reason, e.Message)
	}
	return s
}

// nodeShell runs script with /usr/bin/sh on node itself (runNodeShell) and fails the test unless it
// exits 0. It returns the script's output.
func nodeShell(ctx context.Context, t *testing.T, cs kubernetes.Interface, node, name, script string) string {
	t.Helper()
	out, err := runNodeShell(ctx, cs, node, name, script)
	if err != nil {
		t.Fatalf("node shell on %s: %v; output:\n%s", node, err, out)
	}
	return out
}

// runNodeShell runs script with /usr/bin/sh on node itself, as a privileged host-network pod: the
// pause image brings no shell, so the node's own /usr (with /lib and /lib64, Debian's merged-usr
// layout) is mounted into it, and the node's CNI config and plugin directories at their places. It returns the
// pod's log, and an error unless the script exited 0.
func runNodeShell(ctx context.Context, cs kubernetes.Interface, node, name, script string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	privileged, root := true, int64(0) // the pause image runs as 65535 otherwise
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			NodeName: node, HostNetwork: true, RestartPolicy: corev1.RestartPolicyNever,
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers: []corev1.Container{{
				Name: "sh", Image: podImage, ImagePullPolicy: corev1.PullNever,
				Command:         []string{"/usr/bin/sh", "-c", script},
				SecurityContext: &corev1.SecurityContext{Privileged: &privileged, RunAsUser: &root},
			}},
		},
	}
	mountNodeUsr(pod, false)
	for _, m := range []struct{ name, dir string }{{"cni", "/etc/cni/net.d"}, {"cnibin", "/opt/cni/bin"}} {
		hostMount(pod, m.name, m.dir, m.dir, false)
	}
	pods := cs.CoreV1().Pods(metav1.NamespaceDefault)
	if _, err := pods.Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return "", err
	}
	defer pods.Delete(context.Background(), name, metav1.DeleteOptions{})
	for {
		p, err := pods.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return "", err
		}
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			// As kubectl logs: the apiserver fetches it from the node's kubelet, which must accept
			// the apiserver's client certificate and authorize it.
			logs, err := pods.GetLogs(name, &corev1.PodLogOptions{}).DoRaw(ctx)
			if err != nil {
				return "", fmt.Errorf("%s; its log cannot be read through the apiserver: %v", podState(p), err)
			}
			if p.Status.Phase == corev1.PodFailed {
				return string(logs), fmt.Errorf("%s", podState(p))
			}
			return string(logs), nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("did not end: %s (events: %s)", podState(p), podEvents(cs, name))
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// mountNodeUsr lends pod's first container the node's programs: the pause image has none but
// /pause, so the node's /usr is mounted, with /lib and /lib64 (Debian's merged-usr layout) for the
// dynamic loader and libc.
func mountNodeUsr(pod *corev1.Pod, readOnly bool) {
	for _, m := range []struct{ name, host, path string }{
		{"usr", "/usr", "/usr"}, {"lib", "/usr/lib", "/lib"}, {"lib64", "/usr/lib64", "/lib64"},
	} {
		hostMount(pod, m.name, m.host, m.path, readOnly)
	}
}

// hostMount mounts the node's directory host at path in pod's first container.
func hostMount(pod *corev1.Pod, name, host, path string, readOnly bool) {
	pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: name,
		VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: host}}})
	pod.Spec.Containers[0].VolumeMounts = append(pod.Spec.Containers[0].VolumeMounts,
		corev1.VolumeMount{Name: name, MountPath: path, ReadOnly: readOnly})
}

// execIn runs a command in pod's first container as kubectl exec does (WebSocket, falling back to
// SPDY) and returns what it printed on stdout and stderr.
func execIn(ctx context.Context, cfg *rest.Config, pod string, command ...string) (string, error) {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return "", err
	}
	req := cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(metav1.NamespaceDefault).Name(pod).
		SubResource("exec").VersionedParams(&corev1.PodExecOptions{Command: command, Stdout: true, Stderr: true},
		scheme.ParameterCodec)
	ws, err := remotecommand.NewWebSocketExecutor(cfg, "GET", req.URL().String())
	if err != nil {
		return "", err
	}
	spdy, err := remotecommand.NewSPDYExecutor(cfg, "POST", req.URL())
	if err != nil {
		return "", err
	}
	exec, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	if err != nil {
		return "", err
	}
	var out strings.Builder
	err = exec.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &out, Stderr: &out})
	return out.String(), err
}

// addonConf is what a CNI add-on's installer drops on a node: its own plugin binary in /opt/cni/bin
// (here a copy of the bridge plugin under another name) and its config in /etc/cni/net.d, named as
// Weave Net names its own (10-weave.conflist sorts after the image's old 10-pxejoin.conflist).
const (
	addonConfName = "10-weave.conflist"
	addonConf     = `{"cniVersion": "1.0.0", "name": "addon", "plugins": [
  {"type": "addon-bridge", "bridge": "addon0", "isGateway": true, "ipMasq": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.99.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "loopback"}]}`
)

// checkAddonTakesOver installs an add-on on node as its DaemonSet would and checks that the next pod
// is wired by it: the image's own CNI config must give way to the cluster's add-on. It first checks
// that the node shell it uses reports a failing script, with its log read through the apiserver.
func checkAddonTakesOver(ctx context.Context, t *testing.T, cp *controlplane.ControlPlane, node string) {
	t.Helper()
	cs := cp.Admin()
	if out, err := runNodeShell(ctx, cs, node, "fails-"+node, "echo a message for the log >&2; exit 3"); err == nil ||
		!strings.Contains(out, "a message for the log") {
		t.Fatalf("a node shell that exits 3 gave error %v, log %q", err, out)
	}
	out := nodeShell(ctx, t, cs, node, "addon-install-"+node, "set -e; cp /usr/lib/cni/bridge /opt/cni/bin/addon-bridge\n"+
		"cat > /etc/cni/net.d/"+addonConfName+" <<'EOF'\n"+addonConf+"\nEOF\nls /etc/cni/net.d")
	t.Logf("CNI configs on %s after the add-on's install: %s", node, strings.Join(strings.Fields(out), " "))
	_, addonNet, _ := net.ParseCIDR("10.99.0.0/16")
	if ip := runPod(ctx, t, cp, node); !addonNet.Contains(ip) {
		t.Errorf("with an add-on's config installed, a pod on %s got %s, outside the add-on's %s", node, ip, addonNet)
	}
}

package e2e

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// podImage is the one image a lab node holds without a registry: the image's own pause
// (images/pause), imported at boot by pause-import.service.
const podImage = "registry.k8s.io/pause:3.10"

// runPod proves the joined node runs workloads, not only that it reports Ready: a pod bound to node
// gets a sandbox (containerd, runc), an address from the image's CNI config, a projected service
// account token (the kubelet's node credentials at work) and a running container; deleting it tears
// all that down again. It returns the pod's IP.
func runPod(ctx context.Context, t *testing.T, cs kubernetes.Interface, node string) net.IP {
	t.Helper()
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
			s += fmt.Sprintf("; %s terminated: %s %s", c.Name, c.State.Terminated.Reason, c.State.Terminated.Message)
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

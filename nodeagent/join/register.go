package join

import (
	"context"
	"runtime"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// registerNode creates the Node with the node's new credentials, as the kubelet's own registration
// would (its name, the default labels, --node-labels from kubeletExtraArgs, nodeRegistration.taints,
// controller-managed attach/detach). Only for Options.RegisterNode: a diskless node's kubelet starts
// tens of seconds after the join (after switch_root), and a kubelet that finds no Node of its own when
// it starts gives up on CSINode setup for ~2 minutes and stays NotReady meanwhile. The kubelet then
// finds its Node "previously registered" and fills in its status. Failure only warns: the kubelet
// registers the node itself.
func (d *data) registerNode(ctx context.Context) {
	cfg := &rest.Config{Host: d.disc.Server, TLSClientConfig: rest.TLSClientConfig{CAData: d.disc.CAData, CertData: d.certPEM, KeyData: d.keyPEM},
		Timeout: d.cfg.APICallTimeout(), UserAgent: "pxejoin-nodeagent"}
	c, err := kubernetes.NewForConfig(cfg)
	if err == nil {
		_, err = c.CoreV1().Nodes().Create(ctx, d.nodeObject(), metav1.CreateOptions{})
	}
	switch {
	case err == nil:
		d.printf("[kubelet-start] Registered Node %q for the kubelet", d.nodeName)
	case apierrors.IsAlreadyExists(err):
	default:
		d.printf("[kubelet-start] WARNING: could not register Node %q ahead of the kubelet (%v); the kubelet will", d.nodeName, err)
	}
}

// nodeObject is the Node the kubelet would register.
func (d *data) nodeObject() *corev1.Node {
	labels := map[string]string{
		corev1.LabelHostname:   d.nodeName,
		corev1.LabelOSStable:   runtime.GOOS,
		corev1.LabelArchStable: runtime.GOARCH,
	}
	for _, a := range d.cfg.NodeRegistration.KubeletExtraArgs {
		if a.Name != "node-labels" {
			continue
		}
		for _, kv := range strings.Split(a.Value, ",") {
			if k, v, ok := strings.Cut(strings.TrimSpace(kv), "="); ok && k != "" {
				labels[k] = v
			}
		}
	}
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: d.nodeName, Labels: labels,
			Annotations: map[string]string{"volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
	}
	n.Spec.Taints = append([]corev1.Taint(nil), d.cfg.NodeRegistration.Taints...)
	return n
}

package join

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/yaml"

	"github.com/pxejoin/pxejoin/internal/joinconfig"
	"github.com/pxejoin/pxejoin/nodeagent/controlplane/kubeconfig"
	"github.com/pxejoin/pxejoin/nodeagent/controlplane/manifests"
	"github.com/pxejoin/pxejoin/nodeagent/etcdjoin"
	"github.com/pxejoin/pxejoin/nodeagent/nodefiles"
)

// adminConfig is admin.conf's rest config (kubeadm's data.Client() on a control-plane join).
func (d *data) adminConfig() (*rest.Config, error) {
	p := d.root.Join(kubeconfig.Dir + "/" + kubeconfig.Admin)
	cfg, err := clientcmd.BuildConfigFromFlags("", p)
	if err != nil {
		return nil, fmt.Errorf("cannot use %s (%v): run the phase control-plane-prepare/kubeconfig first", kubeconfig.Dir+"/"+kubeconfig.Admin, err)
	}
	cfg.Timeout, cfg.UserAgent = d.cfg.APICallTimeout(), "pxejoin-nodeagent"
	return cfg, nil
}

func (d *data) adminClient() (kubernetes.Interface, error) {
	cfg, err := d.adminConfig()
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}

// runControlPlaneManifests writes the static Pods of kube-apiserver, kube-controller-manager and
// kube-scheduler, with the --patches for each applied.
func runControlPlaneManifests(ctx context.Context, d *data) error {
	cc, err := d.clusterConfig(ctx)
	if err != nil {
		return err
	}
	in, err := d.manifestInput(cc)
	if err != nil {
		return err
	}
	d.printf("[control-plane] Using manifest folder %q", manifests.Dir)
	var files []nodefiles.File
	for _, c := range manifests.Components {
		d.printf("[control-plane] Creating static Pod manifest for %q", c)
		pod, err := manifests.Pod(c, in)
		if err != nil {
			return err
		}
		f, err := d.manifestFile(c, pod)
		if err != nil {
			return err
		}
		files = append(files, f)
	}
	return d.write(files...)
}

func (d *data) manifestInput(cc *joinconfig.ClusterConfiguration) (manifests.Input, error) {
	ip, port, err := d.localEndpoint()
	if err != nil {
		return manifests.Input{}, err
	}
	return manifests.Input{Cluster: cc, NodeName: d.nodeName, AdvertiseAddress: ip, BindPort: port,
		PullPolicy: corev1.PullPolicy(d.cfg.NodeRegistration.ImagePullPolicy), Exists: d.root.Exists}, nil
}

// manifestFile renders pod as kubeadm writes static Pods (YAML, 0600), with --patches for it applied.
func (d *data) manifestFile(component string, pod *corev1.Pod) (nodefiles.File, error) {
	b, err := yaml.Marshal(pod)
	if err != nil {
		return nodefiles.File{}, err
	}
	if dir := d.patchesDir(); dir != "" {
		if b, err = applyPatches(dir, component, b, d.printf); err != nil {
			return nodefiles.File{}, err
		}
	}
	return nodefiles.File{Path: path.Join(manifests.Dir, component+".yaml"), Data: b, Mode: 0o600}, nil
}

// runEtcdJoin adds this node to the stacked etcd: a learner first, then etcd.yaml for the kubelet to
// start, then the promotion once it caught up (kubeadm's CreateStackedEtcdStaticPodManifestFile). A
// re-run after the member was added (its data directory is no longer empty) only promotes.
func runEtcdJoin(ctx context.Context, d *data) error {
	cc, err := d.clusterConfig(ctx)
	if err != nil {
		return err
	}
	if cc.Etcd.External != nil {
		d.printf("[etcd-join] Using external etcd - no local stacked instance added")
		return nil
	}
	in, err := d.manifestInput(cc)
	if err != nil {
		return err
	}
	ip := in.AdvertiseAddress.String()
	if d.dryRun() {
		d.printf("[dryrun] Would add %s as an etcd learner at https://%s, write %s/etcd.yaml and promote the member", d.nodeName, net.JoinHostPort(ip, "2380"), manifests.Dir)
		return nil
	}
	dataDir := d.root.Join(cc.Etcd.Local.DataDir)
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return fmt.Errorf("cannot create the etcd data directory: %w", err)
	}
	admin, err := d.adminClient()
	if err != nil {
		return err
	}
	eps, err := etcdjoin.Endpoints(ctx, admin)
	if err != nil {
		return err
	}
	tlsCfg, err := etcdjoin.ClientTLS(d.root, cc.CertificatesDir)
	if err != nil {
		return err
	}
	j := &etcdjoin.Joiner{Endpoints: eps, TLS: tlsCfg, Name: d.nodeName,
		PeerURL: "https://" + net.JoinHostPort(ip, "2380"),
		Timeout: d.cfg.Timeout(func(t *joinconfig.Timeouts) *metav1.Duration { return t.EtcdAPICall }, 2*time.Minute),
		Printf:  d.printf}
	if entries, _ := os.ReadDir(dataDir); len(entries) > 0 && d.root.Exists(path.Join(manifests.Dir, "etcd.yaml")) {
		d.printf("[etcd-join] %s already holds this member's data: only promoting it", cc.Etcd.Local.DataDir)
		return j.Promote(ctx)
	}
	members, err := j.AddLearner(ctx)
	if err != nil {
		return err
	}
	f, err := d.manifestFile("etcd", manifests.Etcd(in, members))
	if err != nil {
		return err
	}
	d.printf("[etcd] Creating static Pod manifest for %q", "etcd")
	if err := d.write(f); err != nil {
		return err
	}
	return j.Promote(ctx)
}

// runKubeletWaitBootstrap waits until the kubelet, started by kubelet-start and talking to this node's
// own API server, has registered the Node.
func runKubeletWaitBootstrap(ctx context.Context, d *data) error {
	if d.dryRun() {
		d.printf("[dryrun] Would wait for the kubelet to register Node %q", d.nodeName)
		return nil
	}
	d.printf("[kubelet-wait-bootstrap] Waiting for the kubelet to register Node %q (up to %s)", d.nodeName, d.cfg.KubeletHealthCheckTimeout())
	ctx, cancel := context.WithTimeout(ctx, d.cfg.KubeletHealthCheckTimeout())
	defer cancel()
	return d.waitNode(ctx)
}

// runMarkControlPlane labels the Node as a control-plane node and sets nodeRegistration.taints (by
// default node-role.kubernetes.io/control-plane:NoSchedule), as kubeadm's MarkControlPlane does.
func runMarkControlPlane(ctx context.Context, d *data) error {
	taints := d.cfg.NodeRegistration.Taints
	if d.dryRun() {
		d.printf("[dryrun] Would mark node %s as a control-plane", d.nodeName)
		return nil
	}
	c, err := d.adminClient()
	if err != nil {
		return err
	}
	d.printf("[mark-control-plane] Marking the node %s as control-plane by adding the labels: [%s %s]", d.nodeName, labelControlPlane, labelExcludeFromELB)
	if len(taints) > 0 {
		d.printf("[mark-control-plane] Marking the node %s as control-plane by adding the taints %v", d.nodeName, taintStrings(taints))
	}
	// The kubelet may not have registered yet when this phase runs alone: wait for the Node as kubeadm does.
	var lastErr error
	err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, d.cfg.KubeletHealthCheckTimeout(), true, func(ctx context.Context) (bool, error) {
		lastErr = retry.RetryOnConflict(retry.DefaultRetry, func() error {
			n, err := c.CoreV1().Nodes().Get(ctx, d.nodeName, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if markNode(n, taints) {
				_, err = c.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
			}
			return err
		})
		return lastErr == nil, nil
	})
	if err != nil {
		if apierrors.IsNotFound(lastErr) {
			return fmt.Errorf("error applying control-plane label and taints: Node %q was not registered in time: see `journalctl -u kubelet`", d.nodeName)
		}
		return fmt.Errorf("error applying control-plane label and taints: %v", lastErr)
	}
	return nil
}

// markNode adds the control-plane labels and taints to n; it reports whether n changed.
func markNode(n *corev1.Node, taints []corev1.Taint) bool {
	changed := false
	if n.Labels == nil {
		n.Labels = map[string]string{}
	}
	for _, l := range []string{labelControlPlane, labelExcludeFromELB} {
		if v, ok := n.Labels[l]; !ok || v != "" {
			n.Labels[l], changed = "", true
		}
	}
	for _, t := range taints {
		if !slices.ContainsFunc(n.Spec.Taints, func(have corev1.Taint) bool { return have.MatchTaint(&t) }) {
			n.Spec.Taints, changed = append(n.Spec.Taints, t), true
		}
	}
	return changed
}

func taintStrings(ts []corev1.Taint) []string {
	var out []string
	for _, t := range ts {
		out = append(out, t.ToString())
	}
	return out
}

// runWaitControlPlane waits until this node's API server answers /readyz.
func runWaitControlPlane(ctx context.Context, d *data) error {
	if d.dryRun() {
		d.printf("[dryrun] Would wait for the API server on this node to be ready")
		return nil
	}
	cfg, err := d.adminConfig()
	if err != nil {
		return err
	}
	local, err := d.localURL()
	if err != nil {
		return err
	}
	cfg.Host = local
	tr, err := rest.TransportFor(cfg)
	if err != nil {
		return err
	}
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	timeout := d.cfg.Timeout(func(t *joinconfig.Timeouts) *metav1.Duration { return t.ControlPlaneComponentHealthCheck }, 4*time.Minute)
	d.printf("[wait-control-plane] Waiting for the API server at %s to be ready (up to %s)", local, timeout)
	var last string
	err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, local+"/readyz", nil)
		resp, err := hc.Do(req)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		resp.Body.Close()
		last = resp.Status
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		return fmt.Errorf("the API server at %s did not become ready in %s (last: %s): see its log (crictl logs, or the kubelet's journal)", local, timeout, last)
	}
	d.printf("[wait-control-plane] The API server at %s is ready", local)
	return nil
}

package join

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/internal/joinconfig"
)

// Phase is one step of a join, named as kubeadm names it. A phase either runs itself or its
// sub-phases, in order.
type Phase struct {
	Name  string
	Short string
	Run   func(ctx context.Context, d *data) error
	// Phases are the sub-phases, addressed as "parent/child".
	Phases []Phase
	// ControlPlaneOnly phases do nothing on a worker join.
	ControlPlaneOnly bool
	// Early starts this phase's slow work in the background at the start of the phase named by
	// EarlyIn, when both run in one invocation, so that the work overlaps the phases in between.
	// Run must then await what Early started, and do it all itself when Early did not run.
	Early   func(ctx context.Context, d *data) error
	EarlyIn string
}

// Phases is kubeadm v1.37's join workflow; kubelet-start gains config / tls-bootstrap / start because the
// agent does the TLS bootstrap itself. On a control-plane join kubelet-start/start only starts the
// kubelet: kubelet-wait-bootstrap waits for it after etcd-join, as in kubeadm (the kubelet runs the
// static pods, and etcd must know the new member before its pod starts).
var Phases = []Phase{
	{Name: "preflight", Short: "Run join pre-flight checks", Run: runPreflight},
	{Name: "control-plane-prepare", Short: "Prepare the machine for serving a control plane", ControlPlaneOnly: true, Phases: []Phase{
		{Name: "download-certs", Short: "Download certificates shared among control-plane nodes from the kubeadm-certs Secret", Run: runDownloadCerts},
		{Name: "certs", Short: "Generate the certificates for the new control plane components", Run: runCerts},
		{Name: "kubeconfig", Short: "Generate the kubeconfig for the new control plane components", Run: runKubeconfigs},
		{Name: "control-plane", Short: "Generate the manifests for the new control plane components", Run: runControlPlaneManifests},
	}},
	{Name: "kubelet-start", Short: "Write kubelet settings, certificates and (re)start the kubelet", Phases: []Phase{
		{Name: "config", Short: "Write config.yaml, kubeadm-flags.env and the cluster CA", Run: runKubeletConfig},
		// config sends the CSR as soon as the node may join, so that its approval and signing
		// overlap the rest of config; tls-bootstrap then only waits for it.
		{Name: "tls-bootstrap", Short: "Get the kubelet's client certificate with a CSR and write kubelet.conf", Run: runTLSBootstrap,
			Early: startCSR, EarlyIn: "kubelet-start/config"},
		{Name: "start", Short: "Start the kubelet through systemd and wait for the Node", Run: runKubeletStart},
	}},
	{Name: "etcd-join", Short: "Join etcd for control plane nodes", ControlPlaneOnly: true, Run: runEtcdJoin},
	{Name: "kubelet-wait-bootstrap", Short: "Wait for the kubelet to bootstrap itself", ControlPlaneOnly: true, Run: runKubeletWaitBootstrap},
	{Name: "control-plane-join", Short: "Join a machine as a control plane instance", ControlPlaneOnly: true, Phases: []Phase{
		{Name: "mark-control-plane", Short: "Mark a node as a control-plane", Run: runMarkControlPlane},
	}},
	{Name: "wait-control-plane", Short: "Wait for the control plane to start", ControlPlaneOnly: true, Run: runWaitControlPlane},
}

// PhaseAliases are the older phase names (kubeadm before v1.31 and v1.35) that --skip-phases and
// `join phase` still take: the phase they now mean, or "" for control-plane-join/update-status, which
// kubeadm dropped (the ClusterStatus it updated is gone) and which does nothing.
var PhaseAliases = map[string]string{
	"control-plane-join/etcd":          "etcd-join",
	"control-plane-join/update-status": "",
}

// deprecatedUpdateStatus is what `join phase control-plane-join update-status` says.
const deprecatedUpdateStatus = "[control-plane-join] The phase update-status is deprecated and does nothing: kubeadm removed it with the ClusterStatus in the kubeadm-config ConfigMap"

// PhaseNames lists every phase and sub-phase ("kubelet-start", "kubelet-start/config", …).
func PhaseNames() []string {
	var names []string
	walkPhases(Phases, func(full string, _ Phase) { names = append(names, full) })
	return names
}

// Run joins the node: every phase in order, except skipped ones.
func Run(ctx context.Context, cfg *joinconfig.JoinConfiguration, opts Options) error {
	d, err := prepare(cfg, opts)
	if err != nil {
		return err
	}
	defer d.finish()
	if err := d.run(ctx, Phases, ""); err != nil {
		return err
	}
	d.finish()
	d.printSummary()
	return nil
}

// RunPhase runs one phase (and its sub-phases), e.g. "kubelet-start" or "kubelet-start/config".
func RunPhase(ctx context.Context, cfg *joinconfig.JoinConfiguration, opts Options, name string) error {
	name = strings.ReplaceAll(strings.TrimSpace(name), " ", "/")
	if target, ok := PhaseAliases[name]; ok {
		if target == "" {
			if opts.Out != nil {
				fmt.Fprintln(opts.Out, deprecatedUpdateStatus)
			}
			return nil
		}
		name = target
	}
	if _, _, ok := findPhase(Phases, name); !ok {
		return fmt.Errorf("unknown phase %q: one of %s", name, strings.Join(PhaseNames(), ", "))
	}
	d, err := prepare(cfg, opts)
	if err != nil {
		return err
	}
	defer d.finish()
	return d.run(ctx, Phases, name)
}

// run runs the phase named only (every phase when only is ""), its sub-phases and the Early parts of
// the phases it includes.
func (d *data) run(ctx context.Context, table []Phase, only string) error {
	d.table, d.plan = table, map[string]bool{}
	walkPhases(table, func(full string, p Phase) {
		d.plan[full] = (only == "" || full == only || strings.HasPrefix(full, only+"/")) &&
			!d.skipped(full) && !(p.ControlPlaneOnly && d.cfg.ControlPlane == nil)
	})
	if only == "" {
		for _, p := range table {
			if err := d.runPhase(ctx, p, ""); err != nil {
				return err
			}
		}
		return nil
	}
	p, parent, _ := findPhase(table, only)
	return d.runPhase(ctx, p, parent)
}

// walkPhases calls f for every phase and sub-phase, in order, with its full name.
func walkPhases(ps []Phase, f func(full string, p Phase)) {
	var walk func(prefix string, ps []Phase)
	walk = func(prefix string, ps []Phase) {
		for _, p := range ps {
			f(prefix+p.Name, p)
			walk(prefix+p.Name+"/", p.Phases)
		}
	}
	walk("", ps)
}

func findPhase(table []Phase, name string) (Phase, string, bool) {
	ps, parent := table, ""
	parts := strings.Split(name, "/")
	for i, part := range parts {
		found := false
		for _, p := range ps {
			if p.Name == part {
				if i == len(parts)-1 {
					return p, parent, true
				}
				ps, parent, found = p.Phases, parent+p.Name+"/", true
				break
			}
		}
		if !found {
			return Phase{}, "", false
		}
	}
	return Phase{}, "", false
}

func prepare(cfg *joinconfig.JoinConfiguration, opts Options) (*data, error) {
	// kubeadm's defaulting: the TLS bootstrap token is the discovery token unless given.
	if cfg.Discovery.TLSBootstrapToken == "" && cfg.Discovery.BootstrapToken != nil {
		cp := *cfg
		cp.Discovery.TLSBootstrapToken = cfg.Discovery.BootstrapToken.Token
		cfg = &cp
	}
	// kubeadm's defaulting: a control-plane node is tainted control-plane:NoSchedule unless
	// nodeRegistration.taints is set (an empty list: no taints).
	if cfg.ControlPlane != nil && cfg.NodeRegistration.Taints == nil {
		cp := *cfg
		cp.NodeRegistration.Taints = []corev1.Taint{controlPlaneTaint}
		cfg = &cp
	}
	if err := Validate(cfg); err != nil {
		return nil, err
	}
	d, err := newData(cfg, opts)
	if err != nil {
		return nil, err
	}
	if errs := validation.IsDNS1123Subdomain(d.nodeName); len(errs) > 0 {
		return nil, fmt.Errorf("the node name %q is not a valid Kubernetes node name (%s): pass --node-name with a lower-case DNS name", d.nodeName, strings.Join(errs, "; "))
	}
	// Checked before anything is written: starting this host's kubelet for files under another root
	// would run it without them.
	if filepath.Clean(string(d.root)) != "/" && !d.skipped("kubelet-start/start") && !d.dryRun() {
		return nil, fmt.Errorf("kubelet-start/start would start this host's kubelet, but the files go under --rootfs %s: add --skip-phases kubelet-start/start", d.root)
	}
	if cfg.ControlPlane != nil {
		if _, _, err := d.localEndpoint(); err != nil {
			return nil, err
		}
	}
	for s := range d.skip {
		if _, _, ok := findPhase(Phases, s); !ok && s != "all" {
			return nil, fmt.Errorf("--skip-phases names unknown phase %q: one of %s", s, strings.Join(PhaseNames(), ", "))
		}
	}
	return d, nil
}

func (d *data) skipped(full string) bool {
	if d.skip["all"] {
		return true
	}
	for p := full; ; {
		if d.skip[p] {
			return true
		}
		i := strings.LastIndex(p, "/")
		if i < 0 {
			return false
		}
		p = p[:i]
	}
}

func (d *data) runPhase(ctx context.Context, p Phase, parent string) error {
	full := parent + p.Name
	if d.skipped(full) {
		d.event(full, bootstatus.StateSkipped, "", nil)
		return nil
	}
	if p.ControlPlaneOnly && d.cfg.ControlPlane == nil {
		return nil
	}
	d.event(full, bootstatus.StateStart, "", nil)
	if err := d.runEarly(ctx, full); err != nil {
		d.event(full, bootstatus.StateError, "", err)
		return fmt.Errorf("error execution phase %s: %w", full, err)
	}
	if p.Run != nil {
		if err := p.Run(ctx, d); err != nil {
			d.event(full, bootstatus.StateError, "", err)
			return fmt.Errorf("error execution phase %s: %w", full, err)
		}
	}
	for _, sub := range p.Phases {
		if err := d.runPhase(ctx, sub, full+"/"); err != nil {
			d.event(full, bootstatus.StateError, "", err)
			return err
		}
	}
	d.event(full, bootstatus.StateDone, d.detail(full), nil)
	return nil
}

// runEarly runs the Early parts that the phases in this invocation start in phase full.
func (d *data) runEarly(ctx context.Context, full string) error {
	var err error
	walkPhases(d.table, func(name string, p Phase) {
		if err == nil && p.Early != nil && p.EarlyIn == full && d.plan[name] && d.plan[full] {
			err = p.Early(ctx, d)
		}
	})
	return err
}

func (d *data) detail(phase string) string {
	if phase == "kubelet-start/tls-bootstrap" && d.csrName != "" {
		return "csr " + d.csrName + " issued"
	}
	return ""
}

func (d *data) printSummary() {
	if d.dryRun() {
		d.printf("[dryrun] Finished dry-running the join: nothing was written and no CSR was created")
		return
	}
	if d.cfg.ControlPlane != nil {
		etcd := "* A new etcd member was added to the local/stacked etcd cluster.\n"
		if d.cluster != nil && d.cluster.Etcd.External != nil {
			etcd = ""
		}
		d.printf("\nThis node has joined the cluster and a new control plane instance was created:\n\n" +
			"* Certificate signing request was sent to apiserver and approval was received.\n" +
			"* The Kubelet was informed of the new secure connection details.\n" +
			"* Control plane label and taint were applied to the new node.\n" +
			"* The Kubernetes control plane instances scaled up.\n" + etcd +
			"\nTo start administering your cluster from this node, you need to run the following as a regular user:\n\n" +
			"\tmkdir -p $HOME/.kube\n" +
			"\tsudo cp -i /etc/kubernetes/admin.conf $HOME/.kube/config\n" +
			"\tsudo chown $(id -u):$(id -g) $HOME/.kube/config\n\n" +
			"Run 'kubectl get nodes' to see this node join the cluster.")
		return
	}
	d.printf("\nThis node has joined the cluster:\n" +
		"* Certificate signing request was sent to apiserver and a response was received.\n" +
		"* The Kubelet was informed of the new secure connection details.\n\n" +
		"Run 'kubectl get nodes' on the control-plane to see this node join the cluster.")
}

// Validate checks a JoinConfiguration the way kubeadm does before running any phase.
func Validate(cfg *joinconfig.JoinConfiguration) error {
	if cp := cfg.ControlPlane; cp != nil && cp.LocalAPIEndpoint.BindPort < 0 {
		return fmt.Errorf("--apiserver-bind-port %d is not a port: pass 1-65535 (default 6443)", cp.LocalAPIEndpoint.BindPort)
	}
	disc := cfg.Discovery
	switch {
	case disc.BootstrapToken != nil && disc.File != nil:
		return errors.New("discovery.bootstrapToken and discovery.file are mutually exclusive: use either a token (with the API server endpoint) or --discovery-file")
	case disc.BootstrapToken == nil && disc.File == nil:
		return errors.New("no discovery method: pass the API server endpoint with --token and --discovery-token-ca-cert-hash, or --discovery-file")
	case disc.File != nil && disc.File.KubeConfigPath == "":
		return errors.New("discovery.file.kubeConfigPath is empty: pass --discovery-file PATH-or-https-URL")
	case disc.BootstrapToken != nil:
		bt := disc.BootstrapToken
		if bt.Token == "" {
			return errors.New("token discovery needs a token: pass --token or --discovery-token")
		}
		if bt.APIServerEndpoint == "" {
			return errors.New("token discovery needs the API server endpoint: pass it as the first argument (host:port)")
		}
		if len(bt.CACertHashes) == 0 && !bt.UnsafeSkipCAVerification {
			return errors.New("using token-based discovery without a CA pin is unsafe: pass --discovery-token-ca-cert-hash sha256:<hash> " +
				"(set discovery.bootstrapToken.caCertHashes), or accept the risk with --discovery-token-unsafe-skip-ca-verification")
		}
		if disc.TLSBootstrapToken == "" {
			return errors.New("no TLS bootstrap token: pass --token (or --tls-bootstrap-token)")
		}
	}
	return nil
}

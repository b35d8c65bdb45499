package join

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/pxejoin/pxejoin/internal/joinconfig"
)

func TestSkipped(t *testing.T) {
	cases := []struct {
		skip  []string
		phase string
		want  bool
	}{
		{nil, "kubelet-start/start", false},
		{[]string{"kubelet-start/start"}, "kubelet-start/start", true},
		{[]string{"kubelet-start/start"}, "kubelet-start/config", false},
		{[]string{"kubelet-start"}, "kubelet-start/tls-bootstrap", true},
		{[]string{"preflight,kubelet-start/start"}, "preflight", true},
		{[]string{"all"}, "preflight", true},
	}
	for _, tc := range cases {
		d, err := newData(&joinconfig.JoinConfiguration{SkipPhases: tc.skip, NodeRegistration: joinconfig.NodeRegistrationOptions{Name: "n"}}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if got := d.skipped(tc.phase); got != tc.want {
			t.Errorf("skip %v, phase %s: got %v", tc.skip, tc.phase, got)
		}
	}
}

func TestPhaseNames(t *testing.T) {
	got := strings.Join(PhaseNames(), " ")
	want := "preflight control-plane-prepare control-plane-prepare/download-certs control-plane-prepare/certs control-plane-prepare/kubeconfig control-plane-prepare/control-plane kubelet-start kubelet-start/config kubelet-start/tls-bootstrap kubelet-start/start etcd-join kubelet-wait-bootstrap control-plane-join control-plane-join/mark-control-plane wait-control-plane"
	if got != want {
		t.Fatalf("phases:\n%s\nwant\n%s", got, want)
	}
}

func TestKubeletFlags(t *testing.T) {
	cfg := &joinconfig.JoinConfiguration{NodeRegistration: joinconfig.NodeRegistrationOptions{
		Name: "worker-1", CRISocket: "unix:///run/crio/crio.sock",
		Taints:           []corev1.Taint{{Key: "dedicated", Value: "gpu", Effect: corev1.TaintEffectNoSchedule}, {Key: "x", Effect: corev1.TaintEffectNoExecute}},
		KubeletExtraArgs: []joinconfig.Arg{{Name: "node-labels", Value: "rack=r1"}, {Name: "container-runtime-endpoint", Value: "unix:///override.sock"}},
	}}
	d, err := newData(cfg, Options{Rootfs: "/mnt/root"})
	if err != nil {
		t.Fatal(err)
	}
	got := d.kubeletFlags()
	want := `KUBELET_KUBEADM_ARGS="--container-runtime-endpoint=unix:///override.sock --hostname-override=worker-1 --node-labels=rack=r1 --register-with-taints=dedicated=gpu:NoSchedule,x:NoExecute"` + "\n"
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}

func TestPatches(t *testing.T) {
	base := []byte("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nmaxPods: 110\nclusterDNS: [10.96.0.10]\n")
	cases := []struct {
		files   map[string]string
		want    []string
		wantErr string
	}{
		{map[string]string{"kubeletconfiguration.yaml": "maxPods: 50\n"}, []string{"maxPods: 50", "10.96.0.10"}, ""},
		{map[string]string{"kubeletconfiguration+merge.json": `{"clusterDNS":["1.1.1.1"]}`}, []string{"1.1.1.1", "maxPods: 110"}, ""},
		{map[string]string{"kubeletconfiguration+json.yaml": "- op: replace\n  path: /maxPods\n  value: 7\n"}, []string{"maxPods: 7"}, ""},
		{map[string]string{"kube-apiserver.yaml": "spec: {}\n", "kubeletconfiguration1.yaml": "maxPods: 1\n", "kubeletconfiguration2.yaml": "maxPods: 2\n"}, []string{"maxPods: 2"}, ""},
		{map[string]string{"kubeletconfiguration+json.yaml": "- op: remove\n  path: /nope\n"}, nil, "applying patch"},
	}
	for i, tc := range cases {
		dir := t.TempDir()
		for n, b := range tc.files {
			os.WriteFile(filepath.Join(dir, n), []byte(b), 0o644)
		}
		got, err := applyPatches(dir, "kubeletconfiguration", base, func(string, ...any) {})
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("case %d: err = %v", i, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		for _, w := range tc.want {
			if !strings.Contains(string(got), w) {
				t.Errorf("case %d: result lacks %q:\n%s", i, w, got)
			}
		}
	}
}

func TestValidate(t *testing.T) {
	bt := &joinconfig.BootstrapTokenDiscovery{Token: "abcdef.0123456789abcdef", APIServerEndpoint: "h:1", CACertHashes: []string{"sha256:x"}}
	cases := []struct {
		name string
		cfg  joinconfig.JoinConfiguration
		err  string
	}{
		{"ok", joinconfig.JoinConfiguration{Discovery: joinconfig.Discovery{BootstrapToken: bt, TLSBootstrapToken: "abcdef.0123456789abcdef"}}, ""},
		{"both methods", joinconfig.JoinConfiguration{Discovery: joinconfig.Discovery{BootstrapToken: bt, File: &joinconfig.FileDiscovery{KubeConfigPath: "x"}}}, "mutually exclusive"},
		{"none", joinconfig.JoinConfiguration{}, "no discovery method"},
		{"no tls token", joinconfig.JoinConfiguration{Discovery: joinconfig.Discovery{File: &joinconfig.FileDiscovery{KubeConfigPath: "x"}}}, ""},
		{"control plane", joinconfig.JoinConfiguration{Discovery: joinconfig.Discovery{BootstrapToken: bt, TLSBootstrapToken: "abcdef.0123456789abcdef"},
			ControlPlane: &joinconfig.JoinControlPlane{CertificateKey: "00"}}, ""},
		{"bad bind port", joinconfig.JoinConfiguration{Discovery: joinconfig.Discovery{BootstrapToken: bt, TLSBootstrapToken: "abcdef.0123456789abcdef"},
			ControlPlane: &joinconfig.JoinControlPlane{LocalAPIEndpoint: joinconfig.APIEndpoint{BindPort: -1}}}, "not a port"},
	}
	for _, tc := range cases {
		err := Validate(&tc.cfg)
		if (tc.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.err)
		}
	}
}

func TestTLSBootstrapTokenDefaultsToDiscoveryToken(t *testing.T) {
	cfg := &joinconfig.JoinConfiguration{NodeRegistration: joinconfig.NodeRegistrationOptions{Name: "n"}, Discovery: joinconfig.Discovery{
		BootstrapToken: &joinconfig.BootstrapTokenDiscovery{Token: "abcdef.0123456789abcdef", APIServerEndpoint: "h:1", UnsafeSkipCAVerification: true}}}
	d, err := prepare(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if d.cfg.Discovery.TLSBootstrapToken != "abcdef.0123456789abcdef" {
		t.Fatal("tlsBootstrapToken not defaulted")
	}
	if cfg.Discovery.TLSBootstrapToken != "" {
		t.Fatal("the caller's config was changed")
	}
}

// recordingTable is Phases with each Run and Early replaced by one that appends its name to *log.
func recordingTable(ps []Phase, prefix string, log *[]string) []Phase {
	out := make([]Phase, len(ps))
	for i, p := range ps {
		full := prefix + p.Name
		if p.Run != nil {
			p.Run = func(context.Context, *data) error { *log = append(*log, full); return nil }
		}
		if p.Early != nil {
			p.Early = func(context.Context, *data) error { *log = append(*log, "early "+full); return nil }
		}
		p.Phases = recordingTable(p.Phases, full+"/", log)
		out[i] = p
	}
	return out
}

// TestPhasePlan checks which phases an invocation runs, and that tls-bootstrap's CSR goes out
// during config only when both run.
func TestPhasePlan(t *testing.T) {
	const (
		config = "kubelet-start/config"
		tls    = "kubelet-start/tls-bootstrap"
		start  = "kubelet-start/start"
		early  = "early " + tls
	)
	cases := []struct {
		name string
		only string // join phase <only>; "" is the whole join
		skip []string
		want []string
	}{
		{"whole join", "", nil, []string{"preflight", early, config, tls, start}},
		{"skip the CSR's phase", "", []string{tls}, []string{"preflight", config, start}},
		{"skip the phase that sends it early", "", []string{config}, []string{"preflight", tls, start}},
		{"skip kubelet-start", "", []string{"kubelet-start"}, []string{"preflight"}},
		{"skip all", "", []string{"all"}, nil},
		{"phase kubelet-start", "kubelet-start", nil, []string{early, config, tls, start}},
		{"phase kubelet-start without tls-bootstrap", "kubelet-start", []string{tls}, []string{config, start}},
		{"phase config alone", config, nil, []string{config}},
		{"phase tls-bootstrap alone", tls, nil, []string{tls}},
		{"phase start alone", start, nil, []string{start}},
		{"phase preflight", "preflight", nil, []string{"preflight"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d, err := newData(&joinconfig.JoinConfiguration{SkipPhases: tc.skip, NodeRegistration: joinconfig.NodeRegistrationOptions{Name: "n"}}, Options{})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			if err := d.run(context.Background(), recordingTable(Phases, "", &got), tc.only); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("ran %q, want %q", got, tc.want)
			}
		})
	}
}

// TestControlPlanePhasePlan: a control-plane join runs kubeadm v1.37's phases in its order; the older
// names skip what they now mean.
func TestControlPlanePhasePlan(t *testing.T) {
	cases := []struct {
		name    string
		only    string
		skip    []string
		want    []string
		wantErr string
	}{
		{"whole join", "", nil, []string{"preflight", "control-plane-prepare/download-certs", "control-plane-prepare/certs", "control-plane-prepare/kubeconfig", "control-plane-prepare/control-plane",
			"early kubelet-start/tls-bootstrap", "kubelet-start/config", "kubelet-start/tls-bootstrap", "kubelet-start/start",
			"etcd-join", "kubelet-wait-bootstrap", "control-plane-join/mark-control-plane", "wait-control-plane"}, ""},
		{"older names skip", "", []string{"control-plane-join/etcd", "control-plane-join/update-status", "kubelet-start", "preflight"},
			[]string{"control-plane-prepare/download-certs", "control-plane-prepare/certs", "control-plane-prepare/kubeconfig", "control-plane-prepare/control-plane",
				"kubelet-wait-bootstrap", "control-plane-join/mark-control-plane", "wait-control-plane"}, ""},
		{"control-plane-join/etcd is etcd-join", "", []string{"control-plane-join/etcd"}, []string{"preflight", "control-plane-prepare/download-certs", "control-plane-prepare/certs",
			"control-plane-prepare/kubeconfig", "control-plane-prepare/control-plane", "early kubelet-start/tls-bootstrap", "kubelet-start/config", "kubelet-start/tls-bootstrap",
			"kubelet-start/start", "kubelet-wait-bootstrap", "control-plane-join/mark-control-plane", "wait-control-plane"}, ""},
		{"one phase", "control-plane-prepare/certs", nil, []string{"control-plane-prepare/certs"}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d, err := newData(&joinconfig.JoinConfiguration{SkipPhases: tc.skip, NodeRegistration: joinconfig.NodeRegistrationOptions{Name: "n"},
				ControlPlane: &joinconfig.JoinControlPlane{}}, Options{})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			err = d.run(context.Background(), recordingTable(Phases, "", &got), tc.only)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || len(got) > 0 {
					t.Fatalf("err = %v (ran %q), want %q before any phase", err, got, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("ran %q\nwant %q", got, tc.want)
			}
		})
	}
}

// TestUpdateStatusDeprecated: `join phase control-plane-join update-status` does nothing and says so.
func TestUpdateStatusDeprecated(t *testing.T) {
	var out strings.Builder
	if err := RunPhase(context.Background(), &joinconfig.JoinConfiguration{}, Options{Out: &out}, "control-plane-join/update-status"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "deprecated and does nothing") {
		t.Fatalf("output %q", out.String())
	}
}

func TestMarkNode(t *testing.T) {
	n := &corev1.Node{}
	n.Labels = map[string]string{"a": "b"}
	n.Spec.Taints = []corev1.Taint{{Key: "x", Effect: corev1.TaintEffectNoExecute}}
	if !markNode(n, []corev1.Taint{controlPlaneTaint}) {
		t.Fatal("nothing changed")
	}
	if _, ok := n.Labels[labelControlPlane]; !ok || n.Labels[labelExcludeFromELB] != "" || n.Labels["a"] != "b" {
		t.Errorf("labels %v", n.Labels)
	}
	if len(n.Spec.Taints) != 2 || n.Spec.Taints[1].Key != "node-role.kubernetes.io/control-plane" || n.Spec.Taints[1].Effect != corev1.TaintEffectNoSchedule {
		t.Errorf("taints %v", n.Spec.Taints)
	}
	if markNode(n, []corev1.Taint{controlPlaneTaint}) {
		t.Error("a marked node changed again")
	}
	m := &corev1.Node{}
	markNode(m, nil)
	if len(m.Spec.Taints) != 0 {
		t.Errorf("taints %v with nodeRegistration.taints: []", m.Spec.Taints)
	}
}

// TestControlPlaneTaintDefault: kubeadm's defaulting taints a control-plane node unless
// nodeRegistration.taints is set, and an empty list means no taint.
func TestControlPlaneTaintDefault(t *testing.T) {
	base := joinconfig.JoinConfiguration{NodeRegistration: joinconfig.NodeRegistrationOptions{Name: "n"}, Discovery: joinconfig.Discovery{
		BootstrapToken: &joinconfig.BootstrapTokenDiscovery{Token: "abcdef.0123456789abcdef", APIServerEndpoint: "h:1", UnsafeSkipCAVerification: true}},
		ControlPlane: &joinconfig.JoinControlPlane{LocalAPIEndpoint: joinconfig.APIEndpoint{AdvertiseAddress: "10.0.0.12"}}}
	d, err := prepare(&base, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got := d.cfg.NodeRegistration.Taints; len(got) != 1 || got[0] != controlPlaneTaint {
		t.Errorf("default taints %v", got)
	}
	if !strings.Contains(d.kubeletFlags(), "--register-with-taints=node-role.kubernetes.io/control-plane:NoSchedule") {
		t.Errorf("kubeadm-flags.env: %s", d.kubeletFlags())
	}
	none := base
	none.NodeRegistration.Taints = []corev1.Taint{}
	if d, _ = prepare(&none, Options{}); len(d.cfg.NodeRegistration.Taints) != 0 {
		t.Errorf("taints %v with an empty list", d.cfg.NodeRegistration.Taints)
	}
	bad := base
	bad.ControlPlane = &joinconfig.JoinControlPlane{LocalAPIEndpoint: joinconfig.APIEndpoint{AdvertiseAddress: "cp-2"}}
	if _, err := prepare(&bad, Options{}); err == nil || !strings.Contains(err.Error(), "--apiserver-advertise-address") {
		t.Errorf("a host name as advertise address: %v", err)
	}
}

// TestPodPatches: --patches for a control-plane component merge into its static Pod by the Pod's
// strategic merge keys (containers by name), as kubeadm's patches do.
func TestPodPatches(t *testing.T) {
	base := []byte(`apiVersion: v1
kind: Pod
metadata: {name: kube-apiserver, namespace: kube-system}
spec:
  containers:
  - name: kube-apiserver
    image: registry.k8s.io/kube-apiserver:v1.37.2
    command: [kube-apiserver, --secure-port=6443]
`)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "kube-apiserver0.yaml"), []byte("spec:\n  containers:\n  - name: kube-apiserver\n    resources: {requests: {cpu: 500m}}\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "kube-apiserver1+json.yaml"), []byte("- op: add\n  path: /spec/containers/0/command/-\n  value: --v=2\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "kube-scheduler.yaml"), []byte("metadata: {labels: {x: y}}\n"), 0o644)
	got, err := applyPatches(dir, "kube-apiserver", base, func(string, ...any) {})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"cpu: 500m", "- --v=2", "image: registry.k8s.io/kube-apiserver:v1.37.2", "- --secure-port=6443"} {
		if !strings.Contains(string(got), w) {
			t.Errorf("patched Pod lacks %q:\n%s", w, got)
		}
	}
	if strings.Contains(string(got), "x: y") {
		t.Errorf("kube-scheduler's patch applied to kube-apiserver:\n%s", got)
	}
}

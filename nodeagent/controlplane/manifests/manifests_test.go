package manifests

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/pxejoin/pxejoin/internal/joinconfig"
	"github.com/pxejoin/pxejoin/lab/controlplane"
	"github.com/pxejoin/pxejoin/lab/kubeadmoracle"
)

// testdata/*.yaml are what the real kubeadm v1.37.2 wrote for testdata/cluster.yaml and node cp-2 at
// 10.0.0.12:6443 (an InitConfiguration with that localAPIEndpoint and name, then
// `kubeadm --rootfs DIR init phase control-plane all --config /kubeadm.yaml` and `... init phase etcd local`).

func input(t *testing.T) Input {
	t.Helper()
	raw, err := os.ReadFile("testdata/cluster.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cc, err := joinconfig.ParseClusterConfiguration(raw)
	if err != nil {
		t.Fatal(err)
	}
	return Input{Cluster: cc, NodeName: "cp-2", AdvertiseAddress: net.ParseIP("10.0.0.12"), BindPort: 6443}
}

// kubeadmPod reads one of kubeadm's manifests through the same Pod type, so that both sides are
// rendered alike.
func kubeadmPod(t *testing.T, name string) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", name+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var p corev1.Pod
	if err := yaml.UnmarshalStrict(raw, &p); err != nil {
		t.Fatal(err)
	}
	return render(t, &p)
}

func render(t *testing.T, p *corev1.Pod) string {
	t.Helper()
	b, err := yaml.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// diffLines reports the lines only one side has (enough to see a flag, probe or volume that differs).
func diffLines(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var out []string
	for _, l := range w {
		if !slices.Contains(g, l) {
			out = append(out, "- "+l)
		}
	}
	for _, l := range g {
		if !slices.Contains(w, l) {
			out = append(out, "+ "+l)
		}
	}
	return strings.Join(out, "\n")
}

// TestSameAsKubeadm: each control-plane Pod is the one kubeadm renders, field for field.
func TestSameAsKubeadm(t *testing.T) {
	in := input(t)
	for _, c := range Components {
		t.Run(c, func(t *testing.T) {
			p, err := Pod(c, in)
			if err != nil {
				t.Fatal(err)
			}
			want, got := kubeadmPod(t, c), render(t, p)
			if want != got {
				t.Errorf("differs from kubeadm's (- kubeadm, + ours):\n%s\n\nours:\n%s", diffLines(want, got), got)
			}
		})
	}
	t.Run("etcd", func(t *testing.T) {
		// kubeadm's init renders the first member; a joining member differs only in its state flag and
		// in listing the other members.
		p := Etcd(in, []Member{{Name: "cp-2", PeerURL: "https://10.0.0.12:2380"}})
		c := &p.Spec.Containers[0]
		i := slices.Index(c.Command, "--initial-cluster-state=existing")
		if i < 0 {
			t.Fatalf("a joining member needs --initial-cluster-state=existing: %q", c.Command)
		}
		c.Command = slices.Delete(c.Command, i, i+1)
		want, got := kubeadmPod(t, "etcd"), render(t, p)
		if want != got {
			t.Errorf("differs from kubeadm's (- kubeadm, + ours):\n%s", diffLines(want, got))
		}
	})
}

// TestCADirsAndProbeHost: the distribution's CA directories are mounted only where they exist, and a
// component's probe follows its bind address.
func TestCADirsAndProbeHost(t *testing.T) {
	in := input(t)
	in.Exists = func(p string) bool { return p == "/etc/ca-certificates" }
	p, err := Pod("kube-apiserver", in)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, v := range p.Spec.Volumes {
		names = append(names, v.Name)
	}
	if !slices.Equal(names, []string{"audit", "ca-certs", "etc-ca-certificates", "k8s-certs"}) {
		t.Errorf("volumes %v", names)
	}
	in.Cluster.Scheduler.ExtraArgs = joinconfig.Args{{Name: "bind-address", Value: "10.0.0.12"}}
	p, _ = Pod("kube-scheduler", in)
	if h := p.Spec.Containers[0].LivenessProbe.HTTPGet.Host; h != "10.0.0.12" {
		t.Errorf("scheduler probe host %q", h)
	}
	in.Cluster.KubernetesVersion = ""
	if _, err := Pod("kube-scheduler", in); err == nil || !strings.Contains(err.Error(), "kubernetesVersion") {
		t.Errorf("no kubernetesVersion: %v", err)
	}
}

// TestSameAsKubeadmOracle: the same comparison against the kubeadm binary of this checkout's control
// plane (lab/kubeadmoracle), so a kubeadm upgrade shows here without regenerating testdata.
func TestSameAsKubeadmOracle(t *testing.T) {
	bin := controlplane.RequireKubeadm(t)
	raw, err := os.ReadFile("testdata/cluster.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	oracle, err := kubeadmoracle.Manifests(ctx, filepath.Join(bin, "kubeadm"), raw, kubeadmoracle.Node{Name: "cp-2", AdvertiseAddress: "10.0.0.12"})
	if err != nil {
		t.Fatal(err)
	}
	in := input(t)
	for _, c := range append(slices.Clone(Components), "etcd") {
		var p *corev1.Pod
		if c == "etcd" {
			p = Etcd(in, []Member{{Name: "cp-2", PeerURL: "https://10.0.0.12:2380"}})
			cmd := &p.Spec.Containers[0].Command
			*cmd = slices.DeleteFunc(*cmd, func(a string) bool { return a == "--initial-cluster-state=existing" })
		} else if p, err = Pod(c, in); err != nil {
			t.Fatal(err)
		}
		var want corev1.Pod
		if err := yaml.UnmarshalStrict(oracle[c+".yaml"], &want); err != nil {
			t.Fatalf("%s: %v", c, err)
		}
		if w, g := render(t, &want), render(t, p); w != g {
			t.Errorf("%s differs from kubeadm's (- kubeadm, + ours):\n%s", c, diffLines(w, g))
		}
	}
}

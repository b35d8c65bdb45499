// Package manifests renders the static Pod manifests of a control-plane node (kube-apiserver,
// kube-controller-manager, kube-scheduler, etcd) from the cluster's ClusterConfiguration, as kubeadm
// v1.37's controlplane and etcd phases do: the same flags, probes, ports and volumes.
//
// Differences from kubeadm, on purpose:
//   - kubeadm copies HTTP_PROXY/HTTPS_PROXY/NO_PROXY from its own environment into every container;
//     the agent does not (in the initramfs or a unit its environment is not the operator's).
//     Set them with extraEnvs.
//   - The startup probe's failureThreshold is kubeadm's default (4 minutes of 10 s periods) rather than
//     computed from the InitConfiguration's timeouts, which a join does not have.
package manifests

import (
	"fmt"
	"maps"
	"net"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/pxejoin/pxejoin/internal/joinconfig"
)

// Dir is where the kubelet reads static Pod manifests.
const Dir = "/etc/kubernetes/manifests"

// DefaultEtcdImageTag is kubeadm v1.37's etcd image tag.
const DefaultEtcdImageTag = "3.7.0-0"

// Components kubeadm makes on every control-plane node, in its order.
var Components = []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler"}

// Input is what the manifests depend on besides the ClusterConfiguration.
type Input struct {
	Cluster          *joinconfig.ClusterConfiguration
	NodeName         string
	AdvertiseAddress net.IP
	BindPort         int32
	// PullPolicy is nodeRegistration.imagePullPolicy (IfNotPresent by default).
	PullPolicy corev1.PullPolicy
	// Exists tells whether a host path exists on the node; kubeadm mounts the distribution's CA
	// directories only where they exist.
	Exists func(hostPath string) bool
}

// kubeadm's CA directories, mounted read-only into the API server and controller manager when present.
var caDirs = []struct{ name, path string }{
	{"etc-ca-certificates", "/etc/ca-certificates"},
	{"etc-pki", "/etc/pki"},
	{"usr-local-share-ca-certificates", "/usr/local/share/ca-certificates"},
	{"usr-share-ca-certificates", "/usr/share/ca-certificates"},
}

// Pod renders one control-plane component's static Pod.
func Pod(component string, in Input) (*corev1.Pod, error) {
	cc := in.Cluster
	if cc.KubernetesVersion == "" {
		return nil, fmt.Errorf("the cluster's ClusterConfiguration has no kubernetesVersion: the images of the control-plane components cannot be named")
	}
	pki := cc.CertificatesDir
	vols := []volume{
		{name: "ca-certs", host: "/etc/ssl/certs", mount: "/etc/ssl/certs", ro: true, typ: corev1.HostPathDirectoryOrCreate},
		{name: "k8s-certs", host: pki, mount: pki, ro: true, typ: corev1.HostPathDirectoryOrCreate},
	}
	for _, d := range caDirs {
		if in.Exists != nil && in.Exists(d.path) {
			vols = append(vols, volume{name: d.name, host: d.path, mount: d.path, ro: true, typ: corev1.HostPathDirectoryOrCreate})
		}
	}
	var (
		args      map[string]string
		extra     joinconfig.ControlPlaneComp
		port      int32
		probeHost = "127.0.0.1"
		cpu       string
		readiness = true
		livePath  = "/livez"
	)
	switch component {
	case "kube-apiserver":
		args = apiserverArgs(in)
		extra = cc.APIServer.ControlPlaneComp
		port, probeHost, cpu = in.BindPort, in.AdvertiseAddress.String(), "250m"
		if ext := cc.Etcd.External; ext != nil {
			for _, f := range []string{ext.CAFile, ext.CertFile, ext.KeyFile} {
				if f != "" && !strings.HasPrefix(f, pki+"/") {
					dir := path.Dir(f)
					vols = append(vols, volume{name: "etcd-certs-" + strconv.Itoa(len(vols)), host: dir, mount: dir, ro: true, typ: corev1.HostPathDirectoryOrCreate})
				}
			}
		}
	case "kube-controller-manager":
		args = controllerManagerArgs(cc)
		extra = cc.ControllerManager
		port, cpu, readiness, livePath = 10257, "200m", false, "/healthz"
		conf := "/etc/kubernetes/controller-manager.conf"
		vols = append(vols, volume{name: "kubeconfig", host: conf, mount: conf, ro: true, typ: corev1.HostPathFileOrCreate})
	case "kube-scheduler":
		args = schedulerArgs()
		extra = cc.Scheduler
		port, cpu = 10259, "100m"
		conf := "/etc/kubernetes/scheduler.conf"
		vols = []volume{{name: "kubeconfig", host: conf, mount: conf, ro: true, typ: corev1.HostPathFileOrCreate}}
	default:
		return nil, fmt.Errorf("unknown control-plane component %q", component)
	}
	for _, v := range extra.ExtraVolumes {
		typ := corev1.HostPathType(v.PathType)
		vols = append(vols, volume{name: v.Name, host: v.HostPath, mount: v.MountPath, ro: v.ReadOnly, typ: typ})
	}
	if component != "kube-apiserver" {
		// kubeadm probes the address the component binds, and leaves the host out (the pod's IP,
		// which is the node's) when it binds every address.
		if a, ok := lastArg(extra.ExtraArgs, "bind-address"); ok {
			if ip := net.ParseIP(a); ip != nil && ip.IsUnspecified() {
				probeHost = ""
			} else {
				probeHost = a
			}
		}
	}
	command := append([]string{component}, argList(args, extra.ExtraArgs)...)
	scheme := corev1.URISchemeHTTPS
	c := corev1.Container{
		Name:            component,
		Image:           image(cc, component),
		ImagePullPolicy: pullPolicy(in.PullPolicy),
		Command:         command,
		Env:             envs(extra.ExtraEnvs),
		Ports:           []corev1.ContainerPort{{Name: "probe-port", ContainerPort: port, Protocol: corev1.ProtocolTCP}},
		Resources:       corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu)}},
		LivenessProbe:   probe(probeHost, livePath, scheme, 8, 10, 10),
		StartupProbe:    probe(probeHost, livePath, scheme, 24, 10, 10),
	}
	if readiness {
		c.ReadinessProbe = probe(probeHost, "/readyz", scheme, 3, 0, 1)
	}
	pod := staticPod(component, c, vols)
	if component == "kube-apiserver" {
		pod.Annotations = map[string]string{"kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint": net.JoinHostPort(in.AdvertiseAddress.String(), strconv.Itoa(int(in.BindPort)))}
	}
	return pod, nil
}

func apiserverArgs(in Input) map[string]string {
	cc := in.Cluster
	pki := cc.CertificatesDir
	a := map[string]string{
		"advertise-address":                  in.AdvertiseAddress.String(),
		"allow-privileged":                   "true",
		"authorization-mode":                 "Node,RBAC",
		"client-ca-file":                     pki + "/ca.crt",
		"enable-admission-plugins":           "NodeRestriction",
		"enable-bootstrap-token-auth":        "true",
		"kubelet-client-certificate":         pki + "/apiserver-kubelet-client.crt",
		"kubelet-client-key":                 pki + "/apiserver-kubelet-client.key",
		"kubelet-preferred-address-types":    "InternalIP,ExternalIP,Hostname",
		"proxy-client-cert-file":             pki + "/front-proxy-client.crt",
		"proxy-client-key-file":              pki + "/front-proxy-client.key",
		"requestheader-allowed-names":        "front-proxy-client",
		"requestheader-client-ca-file":       pki + "/front-proxy-ca.crt",
		"requestheader-extra-headers-prefix": "X-Remote-Extra-",
		"requestheader-group-headers":        "X-Remote-Group",
		"requestheader-username-headers":     "X-Remote-User",
		"secure-port":                        strconv.Itoa(int(in.BindPort)),
		"service-account-issuer":             "https://kubernetes.default.svc." + cc.Networking.DNSDomain,
		"service-account-key-file":           pki + "/sa.pub",
		"service-account-signing-key-file":   pki + "/sa.key",
		"service-cluster-ip-range":           cc.Networking.ServiceSubnet,
		"tls-cert-file":                      pki + "/apiserver.crt",
		"tls-private-key-file":               pki + "/apiserver.key",
	}
	if ext := cc.Etcd.External; ext != nil {
		a["etcd-servers"] = strings.Join(ext.Endpoints, ",")
		for k, v := range map[string]string{"etcd-cafile": ext.CAFile, "etcd-certfile": ext.CertFile, "etcd-keyfile": ext.KeyFile} {
			if v != "" {
				a[k] = v
			}
		}
	} else {
		a["etcd-servers"] = "https://127.0.0.1:2379"
		a["etcd-cafile"] = pki + "/etcd/ca.crt"
		a["etcd-certfile"] = pki + "/apiserver-etcd-client.crt"
		a["etcd-keyfile"] = pki + "/apiserver-etcd-client.key"
	}
	return a
}

func controllerManagerArgs(cc *joinconfig.ClusterConfiguration) map[string]string {
	pki, conf := cc.CertificatesDir, "/etc/kubernetes/controller-manager.conf"
	a := map[string]string{
		"authentication-kubeconfig":        conf,
		"authorization-kubeconfig":         conf,
		"bind-address":                     "127.0.0.1",
		"client-ca-file":                   pki + "/ca.crt",
		"cluster-name":                     cc.ClusterName,
		"cluster-signing-cert-file":        pki + "/ca.crt",
		"cluster-signing-key-file":         pki + "/ca.key",
		"controllers":                      "*,bootstrapsigner,tokencleaner",
		"kubeconfig":                       conf,
		"leader-elect":                     "true",
		"requestheader-client-ca-file":     pki + "/front-proxy-ca.crt",
		"root-ca-file":                     pki + "/ca.crt",
		"service-account-private-key-file": pki + "/sa.key",
		"use-service-account-credentials":  "true",
	}
	if cc.Networking.PodSubnet != "" {
		a["allocate-node-cidrs"] = "true"
		a["cluster-cidr"] = cc.Networking.PodSubnet
	}
	if cc.Networking.ServiceSubnet != "" {
		a["service-cluster-ip-range"] = cc.Networking.ServiceSubnet
	}
	return a
}

func schedulerArgs() map[string]string {
	conf := "/etc/kubernetes/scheduler.conf"
	return map[string]string{
		"authentication-kubeconfig": conf,
		"authorization-kubeconfig":  conf,
		"bind-address":              "127.0.0.1",
		"kubeconfig":                conf,
		"leader-elect":              "true",
	}
}

// Member is an etcd cluster member, for --initial-cluster.
type Member struct {
	Name    string
	PeerURL string
}

// Etcd renders the stacked etcd member's static Pod as kubeadm's etcd phase does for a joining
// member: --initial-cluster lists members (this one included), and the state is "existing".
func Etcd(in Input, members []Member) *corev1.Pod {
	cc, local := in.Cluster, in.Cluster.Etcd.Local
	pki := cc.CertificatesDir + "/etcd"
	ip := in.AdvertiseAddress.String()
	clientURL := "https://" + net.JoinHostPort(ip, "2379")
	peerURL := "https://" + net.JoinHostPort(ip, "2380")
	loop := "127.0.0.1"
	if in.AdvertiseAddress.To4() == nil {
		loop = "::1"
	}
	var initial []string
	for _, m := range members {
		initial = append(initial, m.Name+"="+m.PeerURL)
	}
	a := map[string]string{
		"advertise-client-urls":          clientURL,
		"cert-file":                      pki + "/server.crt",
		"client-cert-auth":               "true",
		"data-dir":                       local.DataDir,
		"feature-gates":                  "InitialCorruptCheck=true",
		"initial-advertise-peer-urls":    peerURL,
		"initial-cluster":                strings.Join(initial, ","),
		"initial-cluster-state":          "existing",
		"key-file":                       pki + "/server.key",
		"listen-client-urls":             "https://" + net.JoinHostPort(loop, "2379") + "," + clientURL,
		"listen-metrics-urls":            "http://" + net.JoinHostPort(loop, "2381"),
		"listen-peer-urls":               peerURL,
		"name":                           in.NodeName,
		"peer-cert-file":                 pki + "/peer.crt",
		"peer-client-cert-auth":          "true",
		"peer-key-file":                  pki + "/peer.key",
		"peer-trusted-ca-file":           pki + "/ca.crt",
		"snapshot-count":                 "10000",
		"trusted-ca-file":                pki + "/ca.crt",
		"watch-progress-notify-interval": "5s",
	}
	repo, tag := cc.ImageRepository, DefaultEtcdImageTag
	if local.ImageRepository != "" {
		repo = local.ImageRepository
	}
	if local.ImageTag != "" {
		tag = local.ImageTag
	}
	scheme := corev1.URISchemeHTTP
	c := corev1.Container{
		Name:            "etcd",
		Image:           repo + "/etcd:" + tag,
		ImagePullPolicy: pullPolicy(in.PullPolicy),
		Command:         append([]string{"etcd"}, argList(a, local.ExtraArgs)...),
		Env:             envs(local.ExtraEnvs),
		Ports:           []corev1.ContainerPort{{Name: "probe-port", ContainerPort: 2381, Protocol: corev1.ProtocolTCP}},
		Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
			corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("100Mi")}},
		LivenessProbe:  probe(loop, "/livez", scheme, 8, 10, 10),
		ReadinessProbe: probe(loop, "/readyz", scheme, 3, 0, 1),
		StartupProbe:   probe(loop, "/readyz", scheme, 24, 10, 10),
		VolumeMounts: []corev1.VolumeMount{
			{Name: "etcd-data", MountPath: local.DataDir},
			{Name: "etcd-certs", MountPath: pki},
		},
	}
	dirOrCreate := corev1.HostPathDirectoryOrCreate
	pod := staticPod("etcd", c, nil)
	pod.Spec.Volumes = []corev1.Volume{
		{Name: "etcd-certs", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: pki, Type: &dirOrCreate}}},
		{Name: "etcd-data", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: local.DataDir, Type: &dirOrCreate}}},
	}
	pod.Annotations = map[string]string{"kubeadm.kubernetes.io/etcd.advertise-client-urls": clientURL}
	return pod
}

type volume struct {
	name, host, mount string
	ro                bool
	typ               corev1.HostPathType
}

// staticPod wraps c as kubeadm's ComponentPod does; volumes are sorted by name, as kubeadm's maps are.
func staticPod(name string, c corev1.Container, vols []volume) *corev1.Pod {
	sort.SliceStable(vols, func(i, j int) bool { return vols[i].name < vols[j].name })
	for _, v := range vols {
		c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: v.name, MountPath: v.mount, ReadOnly: v.ro})
	}
	priority := int32(2000001000)
	pod := &corev1.Pod{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: metav1.NamespaceSystem,
			Labels: map[string]string{"component": name, "tier": "control-plane"}},
		Spec: corev1.PodSpec{
			Containers:        []corev1.Container{c},
			HostNetwork:       true,
			Priority:          &priority,
			PriorityClassName: "system-node-critical",
			SecurityContext:   &corev1.PodSecurityContext{SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}},
		},
	}
	for _, v := range vols {
		typ := v.typ
		pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: v.name,
			VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: v.host, Type: &typ}}})
	}
	return pod
}

func probe(host, path string, scheme corev1.URIScheme, failures, delay, period int32) *corev1.Probe {
	return &corev1.Probe{
		ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
			Host: host, Path: path, Port: intstr.FromString("probe-port"), Scheme: scheme}},
		InitialDelaySeconds: delay,
		TimeoutSeconds:      15,
		PeriodSeconds:       period,
		FailureThreshold:    failures,
	}
}

// argList renders defaults as sorted --name=value flags, leaving out those extraArgs name, then
// extraArgs in their order, as kubeadm's ArgumentsToCommand does (an extra argument given twice stays
// repeated).
func argList(defaults map[string]string, extra joinconfig.Args) []string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(defaults)) {
		if !slices.ContainsFunc(extra, func(a joinconfig.Arg) bool { return a.Name == k }) {
			out = append(out, "--"+k+"="+defaults[k])
		}
	}
	for _, a := range extra {
		out = append(out, "--"+a.Name+"="+a.Value)
	}
	return out
}

func lastArg(args joinconfig.Args, name string) (string, bool) {
	for i := len(args) - 1; i >= 0; i-- {
		if args[i].Name == name {
			return args[i].Value, true
		}
	}
	return "", false
}

func envs(extra []joinconfig.EnvVar) []corev1.EnvVar {
	var out []corev1.EnvVar
	for _, e := range extra {
		out = append(out, corev1.EnvVar{Name: e.Name, Value: e.Value})
	}
	return out
}

func pullPolicy(p corev1.PullPolicy) corev1.PullPolicy {
	if p == "" {
		return corev1.PullIfNotPresent
	}
	return p
}

// image is imageRepository/component:kubernetesVersion, as kubeadm's GetKubernetesImage.
func image(cc *joinconfig.ClusterConfiguration, component string) string {
	return cc.ImageRepository + "/" + component + ":" + strings.ReplaceAll(cc.KubernetesVersion, "+", "_")
}

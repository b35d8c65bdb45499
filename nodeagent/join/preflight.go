package join

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path"
	"strconv"
	"strings"

	"github.com/pxejoin/pxejoin/internal/joinconfig"
	"github.com/pxejoin/pxejoin/nodeagent/controlplane/certs"
	"github.com/pxejoin/pxejoin/nodeagent/controlplane/manifests"
	"github.com/pxejoin/pxejoin/nodeagent/nodefiles"
)

// check is one pre-flight check; Name is what --ignore-preflight-errors takes (kubeadm's names).
type check struct {
	Name string
	// HostOnly limits the check to joins that will start the kubelet on this host.
	HostOnly bool
	Run      func(d *data) error
}

var checks = []check{
	{Name: "IsPrivilegedUser", Run: func(d *data) error {
		if os.Geteuid() != 0 {
			return fmt.Errorf("user is not running as root")
		}
		return nil
	}},
	{Name: "FileAvailable--etc-kubernetes-kubelet.conf", Run: fileAvailable(nodefiles.KubeletConf)},
	{Name: "FileAvailable--etc-kubernetes-bootstrap-kubelet.conf", Run: fileAvailable(nodefiles.BootstrapKubeletConf)},
	{Name: "FileAvailable--etc-kubernetes-pki-ca.crt", Run: func(d *data) error {
		p := d.cfg.CACertPath
		if p == "" {
			p = joinconfig.DefaultCACertPath
		}
		// Deviation from kubeadm: a CA left by an unfinished join (no kubelet.conf yet) does not block a
		// re-run; kubelet-start/config then refuses it unless it is the cluster's CA.
		if !d.root.Exists(nodefiles.KubeletConf) {
			return nil
		}
		return fileAvailable(p)(d)
	}},
	{Name: "Port-10250", HostOnly: true, Run: func(d *data) error {
		l, err := net.Listen("tcp", ":10250")
		if err != nil {
			return fmt.Errorf("port 10250 is in use (the kubelet needs it): stop what listens there")
		}
		return l.Close()
	}},
	{Name: "CRI", HostOnly: true, Run: func(d *data) error {
		sock := d.cfg.NodeRegistration.CRISocket
		if sock == "" {
			sock = joinconfig.DefaultCRI
		}
		path := strings.TrimPrefix(sock, "unix://")
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("container runtime socket %s is missing: start containerd, or pass --cri-socket", sock)
		}
		return nil
	}},
}

// controlPlaneChecks run on a control-plane join, after the cluster's ClusterConfiguration was read.
func controlPlaneChecks(d *data) []check {
	cs := []check{
		{Name: "Port-" + strconv.Itoa(int(d.bindPort)), HostOnly: true, Run: portFree(int(d.bindPort), "kube-apiserver")},
		{Name: "Port-10257", HostOnly: true, Run: portFree(10257, "kube-controller-manager")},
		{Name: "Port-10259", HostOnly: true, Run: portFree(10259, "kube-scheduler")},
	}
	for _, c := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd"} {
		p := path.Join(manifests.Dir, c+".yaml")
		cs = append(cs, check{Name: "FileAvailable-" + strings.ReplaceAll(p, "/", "-"), Run: fileAvailable(p)})
	}
	if local := d.cluster.Etcd.Local; local != nil {
		cs = append(cs,
			check{Name: "Port-2379", HostOnly: true, Run: portFree(2379, "etcd")},
			check{Name: "Port-2380", HostOnly: true, Run: portFree(2380, "etcd")},
			check{Name: "DirAvailable-" + strings.ReplaceAll(local.DataDir, "/", "-"), Run: dirAvailable(local.DataDir)})
	}
	return cs
}

func portFree(port int, who string) func(d *data) error {
	return func(d *data) error {
		l, err := net.Listen("tcp", ":"+strconv.Itoa(port))
		if err != nil {
			return fmt.Errorf("port %d is in use (%s needs it): stop what listens there", port, who)
		}
		return l.Close()
	}
}

// dirAvailable: the directory is missing or empty.
func dirAvailable(p string) func(d *data) error {
	return func(d *data) error {
		entries, err := os.ReadDir(d.root.Join(p))
		if err == nil && len(entries) > 0 {
			return fmt.Errorf("%s is not empty: it holds another etcd member's data; remove it (kubeadm reset) before joining", p)
		}
		return nil
	}
}

func fileAvailable(p string) func(d *data) error {
	return func(d *data) error {
		if d.root.Exists(p) {
			return fmt.Errorf("%s already exists", p)
		}
		return nil
	}
}

// runPreflight runs the checks; failures not listed in --ignore-preflight-errors stop the join.
func runPreflight(ctx context.Context, d *data) error {
	d.printf("[preflight] Running pre-flight checks")
	all := checks
	if d.cfg.ControlPlane != nil {
		d.printf("[preflight] Running pre-flight checks before initializing the new control plane instance")
		cc, err := d.clusterConfig(ctx)
		if err != nil {
			return err
		}
		if cc.ControlPlaneEndpoint == "" {
			return errors.New(stableEndpointMessage)
		}
		if d.cfg.ControlPlane.CertificateKey == "" {
			for _, p := range certs.Shared(cc) {
				if p != "" && !d.root.Exists(p) {
					return fmt.Errorf("%s is missing: without --certificate-key the certificates shared by control-plane nodes must be on this node; "+
						"pass the key `kubeadm init phase upload-certs --upload-certs` printed, or copy them from a control-plane node", p)
				}
			}
		}
		all = append(append([]check{}, checks...), controlPlaneChecks(d)...)
	}
	hostStart := !d.skipped("kubelet-start/start") && !d.dryRun()
	var fatal []string
	for _, c := range all {
		if c.HostOnly && !hostStart {
			continue
		}
		err := c.Run(d)
		if err == nil {
			continue
		}
		if d.ignored["all"] || d.ignored[strings.ToLower(c.Name)] {
			d.printf("\t[WARNING %s]: %v", c.Name, err)
			continue
		}
		fatal = append(fatal, fmt.Sprintf("\t[ERROR %s]: %v", c.Name, err))
	}
	if len(fatal) > 0 {
		return fmt.Errorf("[preflight] Some fatal errors occurred:\n%s\n[preflight] If you know what you are doing, you can make a check non-fatal with `--ignore-preflight-errors=...`",
			strings.Join(fatal, "\n"))
	}
	return nil
}

package server

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	certutil "k8s.io/client-go/util/cert"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/internal/pubkeypin"
)

// Cluster is what the boot server needs of the cluster: a client, the endpoint machines dial and
// the CA pins they check.
type Cluster struct {
	Client kubernetes.Interface
	// Config is the client's configuration: the boot server makes its budgeted clients from it
	// (clients). Nil: Client does everything, at its own rate, and status is not written to the API.
	Config   *rest.Config
	Endpoint string
	CAPins   []string
	// Dynamic reads and writes custom resources (Machines); may be nil when inventory.source is file.
	Dynamic dynamic.Interface
}

// clients are the boot server's API clients. Each has a rate limiter of its own (client-go limits
// per client), sized by the config's api section, so that no kind of request waits behind another:
// token deletions keep up with a burst of creations, status writes never delay a join file.
type clients struct {
	read, tokenCreates, tokenDeletes kubernetes.Interface
	// status writes Machine.status; nil without Cluster.Config.
	status dynamic.Interface
}

// clients makes the budgeted clients from cl.Config.
func (cl *Cluster) clients(api config.API) (clients, error) {
	if cl.Config == nil {
		return clients{read: cl.Client, tokenCreates: cl.Client, tokenDeletes: cl.Client}, nil
	}
	var c clients
	var err error
	for _, k := range []struct {
		b config.Budget
		c *kubernetes.Interface
	}{{api.Budget, &c.read}, {api.TokenCreates, &c.tokenCreates}, {api.TokenDeletes, &c.tokenDeletes}} {
		if *k.c, err = kubernetes.NewForConfig(budgeted(cl.Config, k.b)); err != nil {
			return c, err
		}
	}
	c.status, err = dynamic.NewForConfig(budgeted(cl.Config, api.StatusWrites))
	return c, err
}

// budgeted is a copy of rc with a rate limiter of its own for b.
func budgeted(rc *rest.Config, b config.Budget) *rest.Config {
	rc = rest.CopyConfig(rc)
	rc.QPS, rc.Burst, rc.RateLimiter = b.QPS, b.Burst, nil
	return rc
}

// kubeconfigHint ends every error about the kubeconfig: what to do next.
const kubeconfigHint = "point cluster.kubeconfig (--kubeconfig) at a kubeconfig allowed to manage bootstrap tokens, " +
	"such as kubeadm's /etc/kubernetes/admin.conf, or leave it out to boot machines without join files"

// LoadCluster reads a kubeconfig; endpoint, if set, overrides the kubeconfig's server. The CA pins
// are taken from the kubeconfig's cluster CA (every certificate in it). Errors say what to fix.
func LoadCluster(kubeconfig, endpoint string) (*Cluster, error) {
	kc, err := clientcmd.LoadFromFile(kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w: %s", kubeconfig, err, kubeconfigHint)
	}
	if len(kc.Clusters) == 0 {
		return nil, fmt.Errorf("kubeconfig %s names no cluster (is it empty?): %s", kubeconfig, kubeconfigHint)
	}
	rc, err := clientcmd.NewDefaultClientConfig(*kc, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w: %s", kubeconfig, err, kubeconfigHint)
	}
	pins, err := caPins(rc)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	if endpoint == "" {
		u, err := url.Parse(rc.Host)
		if err != nil || u.Host == "" {
			return nil, fmt.Errorf("kubeconfig %s: server %q is not a URL: set it to the API server's https://host:port", kubeconfig, rc.Host)
		}
		endpoint = u.Host
		if u.Port() == "" {
			endpoint = net.JoinHostPort(u.Hostname(), "443")
		}
	}
	rc.UserAgent = "pxejoin-bootserver"
	// client-go's default (5 requests/s, bursts of 10) would make a rack that boots at once wait on
	// the boot server: a token minted, a CSR approved and a token deleted per machine.
	// kube-controller-manager's own default is 20/s, bursts of 30.
	rc.QPS, rc.Burst = 50, 100
	c, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	return &Cluster{Client: c, Config: rc, Dynamic: dyn, Endpoint: endpoint, CAPins: pins}, nil
}

func caPins(rc *rest.Config) ([]string, error) {
	data := rc.TLSClientConfig.CAData
	if len(data) == 0 && rc.TLSClientConfig.CAFile != "" {
		b, err := os.ReadFile(rc.TLSClientConfig.CAFile)
		if err != nil {
			return nil, fmt.Errorf("cluster CA: %w: make the file readable by the boot server, or embed it as certificate-authority-data", err)
		}
		data = b
	}
	if len(data) == 0 {
		return nil, errors.New("the cluster has no certificate-authority-data: machines pin the cluster's CA and the pin is derived from it; " +
			"use a kubeconfig that holds the cluster's CA (kubeadm's admin.conf does)")
	}
	certs, err := certutil.ParseCertsPEM(data)
	if err != nil {
		return nil, fmt.Errorf("cluster CA: %w: use a kubeconfig that holds the cluster's CA (kubeadm's admin.conf does)", err)
	}
	var pins []string
	for _, cert := range certs {
		pins = append(pins, pubkeypin.Hash(cert))
	}
	return pins, nil
}

package server

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/url"
	"os"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/pxejoin/pxejoin/internal/pubkeypin"
)

// Cluster is what the boot server needs of the cluster: a client, the endpoint machines dial and
// the CA pins they check.
type Cluster struct {
	Client   kubernetes.Interface
	Endpoint string
	CAPins   []string
}

// LoadCluster reads a kubeconfig; endpoint, if set, overrides the kubeconfig's server. The CA pins
// are taken from the kubeconfig's cluster CA (every certificate in it).
func LoadCluster(kubeconfig, endpoint string) (*Cluster, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	pins, err := caPins(rc)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	if endpoint == "" {
		u, err := url.Parse(rc.Host)
		if err != nil || u.Host == "" {
			return nil, fmt.Errorf("kubeconfig %s: server %q is not a URL", kubeconfig, rc.Host)
		}
		endpoint = u.Host
		if u.Port() == "" {
			endpoint = net.JoinHostPort(u.Hostname(), "443")
		}
	}
	rc.UserAgent = "pxejoin-bootserver"
	c, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	return &Cluster{Client: c, Endpoint: endpoint, CAPins: pins}, nil
}

func caPins(rc *rest.Config) ([]string, error) {
	data := rc.TLSClientConfig.CAData
	if len(data) == 0 && rc.TLSClientConfig.CAFile != "" {
		b, err := os.ReadFile(rc.TLSClientConfig.CAFile)
		if err != nil {
			return nil, fmt.Errorf("cluster CA: %w", err)
		}
		data = b
	}
	if len(data) == 0 {
		return nil, fmt.Errorf("the cluster has no certificate-authority(-data): the CA pin machines check cannot be derived")
	}
	var pins []string
	for {
		var blk *pem.Block
		blk, data = pem.Decode(data)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("cluster CA: %w", err)
		}
		pins = append(pins, pubkeypin.Hash(cert))
	}
	if len(pins) == 0 {
		return nil, fmt.Errorf("the cluster CA holds no PEM certificate")
	}
	return pins, nil
}

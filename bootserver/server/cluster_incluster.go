package server

import (
	"context"
	"fmt"
	"net"
	"net/url"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
)

// clusterInfoHint ends every error about kube-public/cluster-info: what to do next.
const clusterInfoHint = "kubeadm init creates it (kubeadm init phase bootstrap-token recreates it); " +
	"or set cluster.apiServerEndpoint and cluster.kubeconfig instead"

// LoadInCluster connects with the pod's ServiceAccount (rest.InClusterConfig) and takes what machines
// need from kube-public/cluster-info (ClusterFromInfo). endpoint, if set, overrides cluster-info's.
func LoadInCluster(ctx context.Context, endpoint string) (*Cluster, error) {
	rc, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("in-cluster credentials: %w: mount the pod's ServiceAccount token "+
			"(automountServiceAccountToken: true, as deploy/segment does), or set cluster.kubeconfig", err)
	}
	return ClusterFromInfo(ctx, rc, endpoint)
}

// ClusterFromInfo connects with rc and takes the endpoint machines dial and their CA pins from
// kube-public/cluster-info, which their discovery reads too: never from rc's host, which in a pod is
// the in-cluster service address (10.96.0.1:443) that a machine on the boot network cannot reach,
// and whose CA would be another's if the API is fronted. endpoint, if set, overrides cluster-info's.
func ClusterFromInfo(ctx context.Context, rc *rest.Config, endpoint string) (*Cluster, error) {
	rc = rest.CopyConfig(rc)
	rc.UserAgent = "pxejoin-bootserver"
	c, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("cluster client: %w", err)
	}
	cm, err := c.CoreV1().ConfigMaps(metav1.NamespacePublic).Get(ctx, bootstrapapi.ConfigMapClusterInfo, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading kube-public/cluster-info: %w: the boot server needs get on it (deploy/base/rbac.yaml), "+
			"and the cluster needs it: %s", err, clusterInfoHint)
	}
	kc, err := clientcmd.Load([]byte(cm.Data[bootstrapapi.KubeConfigKey]))
	if err != nil || len(kc.Clusters) != 1 {
		return nil, fmt.Errorf("kube-public/cluster-info: its %q is not a kubeconfig with one cluster: %s", bootstrapapi.KubeConfigKey, clusterInfoHint)
	}
	var server string
	var caData []byte
	for _, cl := range kc.Clusters {
		server, caData = cl.Server, cl.CertificateAuthorityData
	}
	pins, err := caPins(&rest.Config{TLSClientConfig: rest.TLSClientConfig{CAData: caData}})
	if err != nil {
		return nil, fmt.Errorf("kube-public/cluster-info: %w", err)
	}
	if endpoint == "" {
		if endpoint, err = hostPort(server); err != nil {
			return nil, fmt.Errorf("kube-public/cluster-info: %w", err)
		}
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("cluster client: %w", err)
	}
	return &Cluster{Client: c, Config: rc, Dynamic: dyn, Endpoint: endpoint, CAPins: pins}, nil
}

// hostPort is the host:port of an https:// server URL (port 443 when it names none).
func hostPort(server string) (string, error) {
	u, err := url.Parse(server)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("server %q is not a URL: set it to the API server's https://host:port", server)
	}
	if u.Port() == "" {
		return net.JoinHostPort(u.Hostname(), "443"), nil
	}
	return u.Host, nil
}

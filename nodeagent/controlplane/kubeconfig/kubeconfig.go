// Package kubeconfig writes the kubeconfig files of a joining control-plane node as kubeadm does:
// admin.conf (through the controlPlaneEndpoint), controller-manager.conf and scheduler.conf (through
// this node's own API server), each with a client certificate signed by the cluster CA and embedded.
// kubelet.conf comes from the TLS bootstrap; super-admin.conf is written by kubeadm init only.
package kubeconfig

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"path"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	certutil "k8s.io/client-go/util/cert"

	"github.com/pxejoin/pxejoin/nodeagent/controlplane/certs"
	"github.com/pxejoin/pxejoin/nodeagent/nodefiles"
)

// Dir is where kubeadm keeps kubeconfig files.
const Dir = "/etc/kubernetes"

// File names kubeadm uses.
const (
	Admin             = "admin.conf"
	ControllerManager = "controller-manager.conf"
	Scheduler         = "scheduler.conf"
)

// Spec is one kubeconfig file: its name, the server it points at and the client it authenticates as.
type Spec struct {
	File       string
	Server     string
	ClientName string
	Orgs       []string
}

// JoinSpecs are the kubeconfigs kubeadm writes on a joining control-plane node: admin.conf through
// controlPlaneURL, the controller manager's and scheduler's through localURL (this node's API server).
func JoinSpecs(controlPlaneURL, localURL string) []Spec {
	return []Spec{
		{File: Admin, Server: controlPlaneURL, ClientName: "kubernetes-admin", Orgs: []string{"kubeadm:cluster-admins"}},
		{File: ControllerManager, Server: localURL, ClientName: "system:kube-controller-manager"},
		{File: Scheduler, Server: localURL, ClientName: "system:kube-scheduler"},
	}
}

// Ensure returns the kubeconfig file for spec: the one already at Dir/spec.File when it points at the
// same server, trusts ca and carries a client certificate from ca that is still valid, otherwise a new
// one with a new key. reused says which.
func Ensure(root nodefiles.Root, spec Spec, clusterName string, ca *certs.CA, algorithm string, validity time.Duration, now time.Time) (f nodefiles.File, reused bool, err error) {
	p := path.Join(Dir, spec.File)
	cfg := certutil.Config{CommonName: spec.ClientName, Organization: spec.Orgs, Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	caPEM, err := certutil.EncodeCertificates(ca.Cert)
	if err != nil {
		return nodefiles.File{}, false, err
	}
	if old, err := root.Read(p); err == nil && valid(old, spec, caPEM, ca, cfg, now) {
		return nodefiles.File{Path: p, Data: old, Mode: 0o600, Secret: true}, true, nil
	}
	issued, err := certs.Issue(ca, cfg, algorithm, validity, now)
	if err != nil {
		return nodefiles.File{}, false, err
	}
	data, err := Build(spec, clusterName, caPEM, issued.CertPEM, issued.KeyPEM)
	if err != nil {
		return nodefiles.File{}, false, err
	}
	return nodefiles.File{Path: p, Data: data, Mode: 0o600, Secret: true}, false, nil
}

// Build renders a kubeconfig as kubeadm's CreateWithCerts does: cluster clusterName, user
// spec.ClientName, context "<user>@<cluster>", everything embedded.
func Build(spec Spec, clusterName string, caPEM, certPEM, keyPEM []byte) ([]byte, error) {
	ctx := fmt.Sprintf("%s@%s", spec.ClientName, clusterName)
	c := clientcmdapi.NewConfig()
	c.Clusters[clusterName] = &clientcmdapi.Cluster{Server: spec.Server, CertificateAuthorityData: caPEM}
	c.AuthInfos[spec.ClientName] = &clientcmdapi.AuthInfo{ClientCertificateData: certPEM, ClientKeyData: keyPEM}
	c.Contexts[ctx] = &clientcmdapi.Context{Cluster: clusterName, AuthInfo: spec.ClientName}
	c.CurrentContext = ctx
	return clientcmd.Write(*c)
}

func valid(data []byte, spec Spec, caPEM []byte, ca *certs.CA, cfg certutil.Config, now time.Time) bool {
	c, err := clientcmd.Load(data)
	if err != nil {
		return false
	}
	cur, ok := c.Contexts[c.CurrentContext]
	if !ok {
		return false
	}
	cl, user := c.Clusters[cur.Cluster], c.AuthInfos[cur.AuthInfo]
	if cl == nil || user == nil || cl.Server != spec.Server || !bytes.Equal(bytes.TrimSpace(cl.CertificateAuthorityData), bytes.TrimSpace(caPEM)) {
		return false
	}
	return certs.Verify(user.ClientCertificateData, user.ClientKeyData, ca, cfg, now) == nil
}

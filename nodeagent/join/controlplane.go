package join

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/pxejoin/pxejoin/internal/joinconfig"
	"github.com/pxejoin/pxejoin/nodeagent/controlplane/certs"
	"github.com/pxejoin/pxejoin/nodeagent/controlplane/kubeconfig"
	"github.com/pxejoin/pxejoin/nodeagent/nodefiles"
)

// kubeadmConfigMap holds the cluster's ClusterConfiguration; kubeadm's RBAC lets bootstrap tokens read it.
const kubeadmConfigMap = "kubeadm-config"

// stableEndpointMessage is kubeadm's refusal for a cluster without a controlPlaneEndpoint.
const stableEndpointMessage = `unable to add a new control plane instance to a cluster that doesn't have a stable controlPlaneEndpoint address

Please ensure that:
* The cluster has a stable controlPlaneEndpoint address.
* The certificates that must be shared among control plane instances are provided.
`

// clusterConfig reads the cluster's ClusterConfiguration once, with the bootstrap credentials, or
// with admin.conf when an earlier run wrote it and this one does not: the phases after kubelet-start
// run later, on their own (a PXE-booted node's pxejoin-control-plane.service), when the bootstrap
// token may be gone (the boot server deletes it once the node's CSR is issued).
func (d *data) clusterConfig(ctx context.Context) (*joinconfig.ClusterConfiguration, error) {
	if d.cluster != nil {
		return d.cluster, nil
	}
	var c kubernetes.Interface
	var err error
	if _, statErr := os.Stat(d.root.Join(kubeconfig.Dir + "/" + kubeconfig.Admin)); statErr == nil && !d.plan["control-plane-prepare/kubeconfig"] {
		c, err = d.adminClient()
	} else {
		c, err = d.bootstrapClient(ctx)
	}
	if err != nil {
		return nil, err
	}
	cm, err := c.CoreV1().ConfigMaps(metav1.NamespaceSystem).Get(ctx, kubeadmConfigMap, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("cannot read the cluster's configuration (ConfigMap kube-system/%s): %w; kubeadm init creates it, with a Role letting bootstrap tokens read it", kubeadmConfigMap, err)
	}
	raw, ok := cm.Data["ClusterConfiguration"]
	if !ok {
		return nil, fmt.Errorf("the ConfigMap kube-system/%s has no ClusterConfiguration key: was the cluster made by kubeadm init?", kubeadmConfigMap)
	}
	cc, err := joinconfig.ParseClusterConfiguration([]byte(raw))
	if err != nil {
		return nil, fmt.Errorf("kube-system/%s: %w", kubeadmConfigMap, err)
	}
	d.cluster = cc
	return cc, nil
}

// localEndpoint is this node's API server: --apiserver-advertise-address (or the address of the
// interface with the default route, as kubeadm picks it) and --apiserver-bind-port.
func (d *data) localEndpoint() (net.IP, int32, error) {
	if d.advertise != nil {
		return d.advertise, d.bindPort, nil
	}
	ep := d.cfg.ControlPlane.LocalAPIEndpoint
	d.bindPort = ep.BindPort
	if d.bindPort == 0 {
		d.bindPort = joinconfig.DefaultAPIServerBindPort
	}
	if ep.AdvertiseAddress != "" {
		ip := net.ParseIP(ep.AdvertiseAddress)
		if ip == nil || ip.IsUnspecified() {
			return nil, 0, fmt.Errorf("the advertise address %q is not an IP address: pass --apiserver-advertise-address (controlPlane.localAPIEndpoint.advertiseAddress) with this node's address", ep.AdvertiseAddress)
		}
		d.advertise = ip
		return ip, d.bindPort, nil
	}
	ip, err := defaultRouteAddress()
	if err != nil {
		return nil, 0, fmt.Errorf("cannot choose the API server's advertise address (%v): pass --apiserver-advertise-address", err)
	}
	d.advertise = ip
	return ip, d.bindPort, nil
}

// defaultRouteAddress is the source address the kernel picks towards the default route. Connecting a
// UDP socket sends nothing.
func defaultRouteAddress() (net.IP, error) {
	c, err := net.Dial("udp4", "192.0.2.1:9") // TEST-NET-1: only the route lookup matters
	if err != nil {
		return nil, errors.New("this host has no default route")
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).IP, nil
}

func (d *data) localURL() (string, error) {
	ip, port, err := d.localEndpoint()
	if err != nil {
		return "", err
	}
	return "https://" + net.JoinHostPort(ip.String(), strconv.Itoa(int(port))), nil
}

// runDownloadCerts writes the shared CAs and keys from the kubeadm-certs Secret. Everything is
// decrypted and checked before the first file is written.
func runDownloadCerts(ctx context.Context, d *data) error {
	if d.cfg.ControlPlane.CertificateKey == "" {
		d.printf("[download-certs] Skipping: no certificate key (the shared certificates must already be on this node)")
		return nil
	}
	cc, err := d.clusterConfig(ctx)
	if err != nil {
		return err
	}
	c, err := d.bootstrapClient(ctx)
	if err != nil {
		return err
	}
	d.printf("[download-certs] Downloading the certificates in Secret %q in the %q Namespace", certs.SecretName, metav1.NamespaceSystem)
	secret, err := c.CoreV1().Secrets(metav1.NamespaceSystem).Get(ctx, certs.SecretName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return fmt.Errorf("error downloading the secret: %s", certs.MissingSecretMessage)
	case apierrors.IsForbidden(err):
		return fmt.Errorf("error downloading the secret: the bootstrap token may not read kube-system/%s (%v): `kubeadm init phase upload-certs --upload-certs` makes the Role kubeadm:kubeadm-certs for it", certs.SecretName, err)
	case err != nil:
		return fmt.Errorf("error downloading the secret: %w", err)
	}
	files, err := certs.Decrypt(secret, d.cfg.ControlPlane.CertificateKey, cc)
	if err != nil {
		return fmt.Errorf("error decoding secret data with provided key: %w", err)
	}
	return d.write(files...)
}

// runCerts makes this node's leaf certificates, signed by the shared CAs; ones already on the node
// are kept when they verify. Deviation from kubeadm, which stops at a certificate on disk that does not
// verify (another CA, missing names): the agent replaces it, since a diskless or re-imaged node that
// rejoins carries nothing worth keeping and the shared CAs were just downloaded.
func runCerts(ctx context.Context, d *data) error {
	cc, err := d.clusterConfig(ctx)
	if err != nil {
		return err
	}
	ip, _, err := d.localEndpoint()
	if err != nil {
		return err
	}
	d.printf("[certs] Using certificateDir folder %q", cc.CertificatesDir)
	leaves, err := certs.Leaves(cc, certs.Node{Name: d.nodeName, AdvertiseAddress: ip})
	if err != nil {
		return err
	}
	cas := map[string]*certs.CA{}
	now := time.Now()
	var files []nodefiles.File
	for _, l := range leaves {
		ca := cas[l.CA]
		if ca == nil {
			if ca, err = certs.LoadCA(d.root, cc.CertificatesDir, l.CA); err != nil {
				return err
			}
			cas[l.CA] = ca
		}
		issued, err := certs.Ensure(d.root, cc.CertificatesDir, l.Base, ca, l.Config, cc.EncryptionAlgorithm, cc.CertValidity(), now)
		if err != nil {
			return err
		}
		if issued.Reused {
			d.printf("[certs] Using the existing %q certificate and key", l.Name)
			continue
		}
		d.printf("[certs] Generating %q certificate and key", l.Name)
		if len(l.Config.AltNames.DNSNames)+len(l.Config.AltNames.IPs) > 0 {
			d.printf("[certs] %s serving cert is signed for DNS names %v and IPs %v", l.Name, l.Config.AltNames.DNSNames, l.Config.AltNames.IPs)
		}
		files = append(files,
			nodefiles.File{Path: path.Join(cc.CertificatesDir, l.Base+".key"), Data: issued.KeyPEM, Mode: 0o600, Secret: true},
			nodefiles.File{Path: path.Join(cc.CertificatesDir, l.Base+".crt"), Data: issued.CertPEM, Mode: 0o644})
	}
	d.printf("[certs] Valid certificates and keys now exist in %q", cc.CertificatesDir)
	return d.write(files...)
}

// runKubeconfigs writes admin.conf, controller-manager.conf and scheduler.conf.
func runKubeconfigs(ctx context.Context, d *data) error {
	cc, err := d.clusterConfig(ctx)
	if err != nil {
		return err
	}
	local, err := d.localURL()
	if err != nil {
		return err
	}
	_, port, _ := d.localEndpoint()
	host, cpPort, err := cc.ControlPlaneEndpointHostPort(port)
	if err != nil {
		return errors.New(stableEndpointMessage)
	}
	ca, err := certs.LoadCA(d.root, cc.CertificatesDir, "ca")
	if err != nil {
		return err
	}
	d.printf("[kubeconfig] Generating kubeconfig files")
	d.printf("[kubeconfig] Using kubeconfig folder %q", kubeconfig.Dir)
	var files []nodefiles.File
	now := time.Now()
	for _, spec := range kubeconfig.JoinSpecs("https://"+net.JoinHostPort(host, strconv.Itoa(cpPort)), local) {
		f, reused, err := kubeconfig.Ensure(d.root, spec, cc.ClusterName, ca, cc.EncryptionAlgorithm, cc.CertValidity(), now)
		if err != nil {
			return err
		}
		if reused {
			d.printf("[kubeconfig] Using existing kubeconfig file: %q", f.Path)
			continue
		}
		d.printf("[kubeconfig] Writing %q kubeconfig file", spec.File)
		files = append(files, f)
	}
	return d.write(files...)
}

// controlPlaneTaint is the taint a control-plane node gets unless nodeRegistration.taints is set.
var controlPlaneTaint = corev1.Taint{Key: "node-role.kubernetes.io/control-plane", Effect: corev1.TaintEffectNoSchedule}

// Labels a control-plane node carries.
const (
	labelControlPlane   = "node-role.kubernetes.io/control-plane"
	labelExcludeFromELB = "node.kubernetes.io/exclude-from-external-load-balancers"
)

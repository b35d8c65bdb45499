package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pxejoin/pxejoin/internal/netns"
	"github.com/pxejoin/pxejoin/lab/controlplane"
	"github.com/pxejoin/pxejoin/lab/eventually"
	"github.com/pxejoin/pxejoin/lab/labenv"
)

// checkServingCert checks that node's certificates were approved by the boot server's approver, not
// kube-controller-manager (kubeadm's auto-approval is off), and that the kubelet serves a
// certificate that verifies against the cluster CA for the node's address, as the apiserver with
// --kubelet-certificate-authority (and so kubectl logs/exec) would check it.
func checkServingCert(ctx context.Context, t *testing.T, cp *controlplane.ControlPlane, n *labenv.Net, node string) {
	t.Helper()
	nd, err := cp.Admin().CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var ip string
	for _, a := range nd.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			ip = a.Address
		}
	}
	if ip == "" {
		t.Fatalf("node %s has no InternalIP: %v", node, nd.Status.Addresses)
	}
	roots := x509.NewCertPool()
	roots.AddCert(cp.CA())
	// The kubelet asks for its serving certificate once it runs; until the approver issues it, it
	// has none to serve.
	var last error
	if !eventually.Within(2*time.Minute, func() bool {
		last = netns.RunNamed(n.NS.Name, func() error {
			d := tls.Dialer{Config: &tls.Config{RootCAs: roots, ServerName: ip}, NetDialer: &net.Dialer{Timeout: 5 * time.Second}}
			c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(ip, "10250"))
			if err != nil {
				return err
			}
			defer c.Close()
			if cn := c.(*tls.Conn).ConnectionState().PeerCertificates[0].Subject.CommonName; cn != "system:node:"+node {
				return fmt.Errorf("the kubelet serves a certificate for %q", cn)
			}
			return nil
		})
		return last == nil
	}) {
		t.Fatalf("kubelet serving certificate on %s:10250: %v", ip, last)
	}
	csrs, err := cp.Admin().CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	approvedBy := map[string]string{} // signer → reason of the approval
	for _, c := range csrs.Items {
		for _, cond := range c.Status.Conditions {
			if cond.Type == certificatesv1.CertificateApproved && len(c.Status.Certificate) > 0 {
				approvedBy[c.Spec.SignerName] = cond.Reason
			}
		}
	}
	for _, signer := range []string{certificatesv1.KubeAPIServerClientKubeletSignerName, certificatesv1.KubeletServingSignerName} {
		reason, ok := approvedBy[signer]
		if !ok {
			t.Errorf("no issued %s CSR for %s", signer, node)
			continue
		}
		if reason == "AutoApproved" { // kube-controller-manager's reason
			t.Errorf("the %s CSR was approved by kube-controller-manager, not the boot server's approver", signer)
		}
		t.Logf("%s: approved (%s)", signer, reason)
	}
	t.Logf("the kubelet on %s:10250 serves a certificate that verifies against the cluster CA", ip)
}

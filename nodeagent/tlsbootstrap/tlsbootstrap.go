// Package tlsbootstrap is the control plane's trust in the node: the agent makes an ECDSA P-256 key
// (kept across re-runs), sends a CSR for system:node:<name> authenticated with the bootstrap token,
// and waits until it is approved and issued, as the kubelet's own TLS bootstrap does.
package tlsbootstrap

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/certificate/csr"
	"k8s.io/client-go/util/keyutil"
)

// Signer and usages of a kubelet client certificate.
var (
	SignerName = certificatesv1.KubeAPIServerClientKubeletSignerName
	Usages     = []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth}
)

// Key parses a PEM key or makes a new ECDSA P-256 key; it reports whether it made one.
func Key(existing []byte) (crypto.Signer, []byte, bool, error) {
	if len(existing) > 0 {
		k, err := keyutil.ParsePrivateKeyPEM(existing)
		if err == nil {
			if s, ok := k.(crypto.Signer); ok {
				return s, existing, false, nil
			}
		}
		// A damaged key is replaced rather than trusted; the old CSR (if any) is then simply not reused.
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, false, err
	}
	pemKey, err := keyutil.MarshalPrivateKeyToPEM(k)
	if err != nil {
		return nil, nil, false, err
	}
	return k, pemKey, true, nil
}

// Subject is the CSR subject of node name.
func Subject(node string) pkix.Name {
	return pkix.Name{CommonName: "system:node:" + node, Organization: []string{"system:nodes"}}
}

// CSRName is the kubelet's name for a bootstrap CSR: a digest of key, subject and usages, so that the
// same key asks with the same name and a re-run finds its earlier request.
func CSRName(pub crypto.PublicKey, subject pkix.Name) (string, error) {
	h := sha512.New512_256()
	enc := base64.RawURLEncoding.EncodeToString
	write := func(b []byte) { h.Write([]byte(enc(b))); h.Write([]byte{'|'}) }
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", err
	}
	write(der)
	write([]byte(subject.CommonName))
	for _, o := range subject.Organization {
		write([]byte(o))
	}
	for _, u := range Usages {
		write([]byte(u))
	}
	return "node-csr-" + enc(h.Sum(nil)), nil
}

// Request is one TLS bootstrap.
type Request struct {
	Client   kubernetes.Interface // authenticated with the bootstrap token (or the discovery file's credentials)
	NodeName string
	Key      crypto.Signer
	// Waiting is told once, after NoticeAfter, that the CSR is not approved yet: show it to an admin.
	Waiting     func(csrName string)
	NoticeAfter time.Duration
}

// Run creates (or finds) the CSR and waits until it is issued or ctx ends. It returns the certificate
// PEM and the CSR name.
func Run(ctx context.Context, r Request) ([]byte, string, error) {
	subject := Subject(r.NodeName)
	name, err := CSRName(r.Key.Public(), subject)
	if err != nil {
		return nil, "", err
	}
	der, err := certutil.MakeCSR(r.Key, &subject, nil, nil)
	if err != nil {
		return nil, "", err
	}
	reqName, uid, err := csr.RequestCertificateWithContext(ctx, r.Client, der, name, SignerName, nil, Usages, r.Key)
	if err != nil {
		return nil, name, fmt.Errorf("cannot create the certificate signing request %s: %w (the bootstrap token needs the system:node-bootstrapper role: kubeadm's binding kubeadm:kubelet-bootstrap)", name, err)
	}
	notice := r.NoticeAfter
	if notice <= 0 {
		notice = 3 * time.Second
	}
	stop := make(chan struct{})
	defer close(stop)
	if r.Waiting != nil {
		go func() {
			t := time.NewTimer(notice)
			defer t.Stop()
			select {
			case <-stop:
				return
			case <-t.C:
			}
			got, err := r.Client.CertificatesV1().CertificateSigningRequests().Get(ctx, reqName, metav1.GetOptions{})
			if err == nil && !approved(got) {
				r.Waiting(reqName)
			}
		}()
	}
	pemCert, err := csr.WaitForCertificate(ctx, r.Client, reqName, uid)
	if err != nil {
		if ctx.Err() != nil {
			return nil, reqName, fmt.Errorf("timed out waiting for the certificate signing request %s to be approved and issued: "+
				"approve it with `kubectl certificate approve %s`, or restore automatic approval (kubeadm's ClusterRoleBinding "+
				"kubeadm:node-autoapprove-bootstrap), then run the join again: the key is kept, so the same request is reused", reqName, reqName)
		}
		return nil, reqName, fmt.Errorf("the certificate signing request %s: %w", reqName, err)
	}
	if err := Matches(pemCert, r.Key); err != nil {
		return nil, reqName, err
	}
	return pemCert, reqName, nil
}

func approved(c *certificatesv1.CertificateSigningRequest) bool {
	for _, cond := range c.Status.Conditions {
		if cond.Type == certificatesv1.CertificateApproved {
			return true
		}
	}
	return false
}

// Matches checks that the issued certificate is for key.
func Matches(certPEM []byte, key crypto.Signer) error {
	keyPEM, err := keyutil.MarshalPrivateKeyToPEM(key)
	if err != nil {
		return err
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		return errors.New("the issued certificate does not match the node's key: " + err.Error())
	}
	return nil
}

// Package discovery is the node's trust in the control plane, as kubeadm does it: token discovery
// (cluster-info checked with the token's JWS signature and the CA public-key pins) or file discovery
// (a kubeconfig from a path or an https URL).
package discovery

import (
	"context"
	"crypto/x509"
	"fmt"
	"time"

	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	certutil "k8s.io/client-go/util/cert"
)

// Result is what discovery establishes: the API server to talk to, the CA to verify it with, and the
// credentials a discovery file carried (nil when the TLS bootstrap token is to be used).
type Result struct {
	Server      string
	ClusterName string
	CAData      []byte
	// AuthInfo holds the discovery file's credentials, if it had any.
	AuthInfo *clientcmdapi.AuthInfo
	// Method says how trust was established, for logs ("token with CA pin", "file", …).
	Method string
}

// CACerts parses the CA bundle.
func (r *Result) CACerts() ([]*x509.Certificate, error) {
	certs, err := certutil.ParseCertsPEM(r.CAData)
	if err != nil {
		return nil, fmt.Errorf("the cluster's CA data is not a PEM certificate bundle: %w", err)
	}
	return certs, nil
}

// Warner receives loud warnings (e.g. CA verification skipped).
type Warner func(format string, args ...any)

// retryInterval is how long discovery waits after a failed request before trying again. kubeadm waits
// 5 s; pxejoin watches cluster-info where allowed and otherwise polls at this interval.
var retryInterval = 500 * time.Millisecond

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

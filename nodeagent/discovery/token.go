package discovery

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
	"k8s.io/cluster-bootstrap/token/jws"
	bootstraputil "k8s.io/cluster-bootstrap/token/util"

	"github.com/pxejoin/pxejoin/internal/pubkeypin"
)

// TokenOptions configure token discovery.
type TokenOptions struct {
	// Endpoint is the API server's host:port.
	Endpoint string
	// Token is the discovery token, id.secret.
	Token string
	// CACertHashes are the allowed CA pins; one must match unless UnsafeSkipCAVerification.
	CACertHashes []string
	// UnsafeSkipCAVerification trusts any CA whose cluster-info is signed with the token.
	UnsafeSkipCAVerification bool
	// Warn receives the loud warning when CA verification is skipped; may be nil.
	Warn Warner
	// Progress receives "waiting for …" lines; may be nil.
	Progress func(format string, args ...any)
}

// Token runs token discovery until it succeeds, a non-retryable check fails, or ctx ends.
func Token(ctx context.Context, o TokenOptions) (*Result, error) {
	if o.Endpoint == "" {
		return nil, errors.New("token discovery needs the API server endpoint: pass it as the first argument of join (host:port) or set discovery.bootstrapToken.apiServerEndpoint")
	}
	if _, _, err := net.SplitHostPort(o.Endpoint); err != nil {
		return nil, fmt.Errorf("API server endpoint %q is not host:port: %w", o.Endpoint, err)
	}
	if !bootstraputil.IsValidBootstrapToken(o.Token) {
		return nil, errors.New("the discovery token is not of the form [a-z0-9]{6}.[a-z0-9]{16}: create one on the control plane with `kubeadm token create`")
	}
	id, secret, _ := strings.Cut(o.Token, ".")
	pins, err := pubkeypin.NewSet(o.CACertHashes...)
	if err != nil {
		return nil, err
	}
	if pins.Empty() && !o.UnsafeSkipCAVerification {
		return nil, errors.New("token-based discovery without a CA pin is unsafe: pass --discovery-token-ca-cert-hash sha256:<hash> " +
			"(or set discovery.bootstrapToken.caCertHashes), or explicitly accept the risk with --discovery-token-unsafe-skip-ca-verification")
	}
	progress := o.Progress
	if progress == nil {
		progress = func(string, ...any) {}
	}
	insecure := anonymousClient(o.Endpoint, nil)

	// 1. cluster-info over unverified TLS, waiting for the token's signature to appear.
	cm, err := waitSigned(ctx, insecure, id, progress)
	if err != nil {
		return nil, err
	}
	kubeconfig := cm.Data[bootstrapapi.KubeConfigKey]
	sig := cm.Data[bootstrapapi.JWSSignatureKeyPrefix+id]
	if !jws.DetachedTokenIsValid(sig, kubeconfig, id, secret) {
		return nil, fmt.Errorf("the cluster-info signature for token %q does not verify: the token's secret is wrong for this cluster, "+
			"or something between here and %s altered cluster-info; check the token (`kubeadm token list` on the control plane)", id, o.Endpoint)
	}
	cluster, name, err := onlyCluster(kubeconfig)
	if err != nil {
		return nil, err
	}
	res := &Result{Server: "https://" + o.Endpoint, ClusterName: name, CAData: cluster.CertificateAuthorityData}
	certs, err := res.CACerts()
	if err != nil {
		return nil, err
	}
	// 2. The CA must match a pin, unless explicitly skipped.
	if pins.Empty() {
		if o.Warn != nil {
			o.Warn("WARNING: CA verification is SKIPPED (--discovery-token-unsafe-skip-ca-verification): this node trusts "+
				"whichever control plane answered at %s with a cluster-info signed by this token", o.Endpoint)
		}
		res.Method = "token (CA NOT verified)"
	} else {
		if err := pins.CheckAny(certs); err != nil {
			return nil, err
		}
		res.Method = "token with CA pin"
	}
	// 3. Fetch again over TLS verified with that CA; the content must not have changed.
	secure := anonymousClient(o.Endpoint, res.CAData)
	var again *corev1.ConfigMap
	for {
		again, err = secure.CoreV1().ConfigMaps(metav1.NamespacePublic).Get(ctx, bootstrapapi.ConfigMapClusterInfo, metav1.GetOptions{})
		if err == nil {
			break
		}
		if !retryable(err) {
			return nil, fmt.Errorf("fetching cluster-info again over TLS verified with the pinned CA failed: %w", err)
		}
		progress("[discovery] cluster-info over verified TLS failed (%v), retrying", err)
		if err := sleep(ctx, retryInterval); err != nil {
			return nil, timeoutErr(ctx, "cluster-info over verified TLS")
		}
	}
	if again.Data[bootstrapapi.KubeConfigKey] != kubeconfig {
		return nil, errors.New("cluster-info changed between the unverified and the verified request: refusing to trust it; try again, and if it persists check what sits between this node and the API server")
	}
	return res, nil
}

// anonymousClient talks to the endpoint with no credentials; with caData nil TLS is not verified
// (that is what the JWS and the pin are for).
func anonymousClient(endpoint string, caData []byte) kubernetes.Interface {
	cfg := &rest.Config{Host: "https://" + endpoint, Timeout: 10 * time.Second, UserAgent: "pxejoin-nodeagent/discovery"}
	if caData == nil {
		cfg.TLSClientConfig.Insecure = true
	} else {
		cfg.TLSClientConfig.CAData = caData
	}
	return kubernetes.NewForConfigOrDie(cfg)
}

// waitSigned returns cluster-info once it holds the token's signature. It watches the ConfigMap
// where anonymous watch is allowed and polls otherwise.
func waitSigned(ctx context.Context, c kubernetes.Interface, id string, progress func(string, ...any)) (*corev1.ConfigMap, error) {
	key := bootstrapapi.JWSSignatureKeyPrefix + id
	cms := c.CoreV1().ConfigMaps(metav1.NamespacePublic)
	said := map[string]bool{}
	once := func(k, format string, args ...any) {
		if !said[k] {
			said[k] = true
			progress(format, args...)
		}
	}
	canWatch := true
	for {
		cm, err := cms.Get(ctx, bootstrapapi.ConfigMapClusterInfo, metav1.GetOptions{})
		switch {
		case err == nil:
			if _, ok := cm.Data[key]; ok {
				return cm, nil
			}
			if _, ok := cm.Data[bootstrapapi.KubeConfigKey]; !ok {
				return nil, errors.New("the cluster-info ConfigMap holds no kubeconfig: this cluster was not set up for joining (kubeadm init phase bootstrap-token)")
			}
			once("unsigned", "[discovery] cluster-info holds no signature for token id %q yet: waiting (the token is invalid or expired if this lasts; create one with `kubeadm token create`)", id)
			if canWatch {
				// Watch from "now" (no resource version): the first event is the current object, so a signature
				// added since the GET is not missed, and a lagging watch cache cannot refuse a too-new version.
				if signed, werr := watchSigned(ctx, cms, "", key); werr == nil && signed != nil {
					return signed, nil
				} else if apierrors.IsForbidden(werr) || apierrors.IsUnauthorized(werr) {
					canWatch = false // kubeadm's Role allows only get: poll.
				}
			}
		case apierrors.IsNotFound(err):
			once("missing", "[discovery] the cluster-info ConfigMap does not exist yet in kube-public: waiting")
		case apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err):
			once("forbidden", "[discovery] anonymous access to cluster-info is refused (%v): waiting; the control plane needs kubeadm's Role %q", err, "kubeadm:bootstrap-signer-clusterinfo")
		default:
			once("unreachable", "[discovery] cannot reach the API server yet (%v): retrying", err)
		}
		if ctx.Err() != nil {
			return nil, timeoutErr(ctx, fmt.Sprintf("a cluster-info signed for token id %q", id))
		}
		if err := sleep(ctx, retryInterval); err != nil {
			return nil, timeoutErr(ctx, fmt.Sprintf("a cluster-info signed for token id %q", id))
		}
	}
}

// watchSigned watches cluster-info from rv until it carries key; it returns (nil, nil) when the watch
// ends without it (the caller then re-reads).
func watchSigned(ctx context.Context, cms interface {
	Watch(context.Context, metav1.ListOptions) (watch.Interface, error)
}, rv, key string) (*corev1.ConfigMap, error) {
	w, err := cms.Watch(ctx, metav1.ListOptions{
		FieldSelector:   fields.OneTermEqualSelector("metadata.name", bootstrapapi.ConfigMapClusterInfo).String(),
		ResourceVersion: rv,
	})
	if err != nil {
		return nil, err
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, nil
		case ev, ok := <-w.ResultChan():
			if !ok {
				return nil, nil
			}
			if ev.Type == watch.Error {
				return nil, apierrors.FromObject(ev.Object)
			}
			if cm, ok := ev.Object.(*corev1.ConfigMap); ok {
				if _, ok := cm.Data[key]; ok {
					return cm, nil
				}
			}
		}
	}
}

func onlyCluster(kubeconfig string) (*clientcmdapi.Cluster, string, error) {
	cfg, err := clientcmd.Load([]byte(kubeconfig))
	if err != nil {
		return nil, "", fmt.Errorf("cluster-info's kubeconfig does not parse: %w", err)
	}
	if len(cfg.Clusters) != 1 {
		return nil, "", fmt.Errorf("cluster-info's kubeconfig must hold exactly one cluster, it holds %d", len(cfg.Clusters))
	}
	for name, c := range cfg.Clusters {
		if len(c.CertificateAuthorityData) == 0 {
			return nil, "", errors.New("cluster-info's kubeconfig carries no certificate-authority-data")
		}
		return c, name, nil
	}
	panic("unreachable")
}

func retryable(err error) bool {
	return !(apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) || isCertError(err))
}

func isCertError(err error) bool {
	var ua x509.UnknownAuthorityError
	var hn x509.HostnameError
	var ci x509.CertificateInvalidError
	return errors.As(err, &ua) || errors.As(err, &hn) || errors.As(err, &ci)
}

func timeoutErr(ctx context.Context, what string) error {
	return fmt.Errorf("discovery timed out waiting for %s (%v): check that the API server endpoint is reachable from this node and that the token exists and has not expired; raise timeouts.discovery to wait longer", what, context.Cause(ctx))
}

package discovery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// maxKubeconfig bounds a downloaded discovery file.
const maxKubeconfig = 1 << 20

// File runs file discovery: location is a kubeconfig path or an https:// URL (verified with the host's
// CA bundle; SSL_CERT_FILE is honoured). Plain http:// is refused: nothing would protect the CA it carries.
func File(ctx context.Context, location string) (*Result, error) {
	data, err := readLocation(ctx, location)
	if err != nil {
		return nil, err
	}
	cfg, err := clientcmd.Load(data)
	if err != nil {
		return nil, fmt.Errorf("the discovery file %s is not a kubeconfig: %w", location, err)
	}
	cluster, name, auth, err := current(cfg)
	if err != nil {
		return nil, fmt.Errorf("the discovery file %s: %w", location, err)
	}
	if cluster.Server == "" {
		return nil, fmt.Errorf("the discovery file %s names no server for cluster %q", location, name)
	}
	caData := cluster.CertificateAuthorityData
	if len(caData) == 0 && cluster.CertificateAuthority != "" {
		if caData, err = os.ReadFile(cluster.CertificateAuthority); err != nil {
			return nil, fmt.Errorf("the discovery file's certificate-authority: %w", err)
		}
	}
	if len(caData) == 0 {
		return nil, fmt.Errorf("the discovery file %s carries no certificate-authority-data for cluster %q: without it the node cannot verify the API server", location, name)
	}
	res := &Result{Server: cluster.Server, ClusterName: name, CAData: caData, Method: "file " + location}
	if hasCredentials(auth) {
		res.AuthInfo = auth
	}
	if _, err := res.CACerts(); err != nil {
		return nil, err
	}
	return res, nil
}

func readLocation(ctx context.Context, location string) ([]byte, error) {
	u, err := url.Parse(location)
	if err == nil && u.Scheme != "" && len(u.Scheme) > 1 { // "C:" style paths don't exist here; a scheme means a URL.
		switch u.Scheme {
		case "https":
			return fetchHTTPS(ctx, location)
		case "http":
			return nil, fmt.Errorf("refusing the discovery file %s over plain http: the CA it carries could be replaced on the way; serve it over https, or copy it to the node and pass its path", location)
		default:
			return nil, fmt.Errorf("the discovery file %s has unsupported scheme %q: use a local path or an https:// URL", location, u.Scheme)
		}
	}
	data, err := os.ReadFile(location)
	if err != nil {
		return nil, fmt.Errorf("cannot read the discovery file: %w", err)
	}
	return data, nil
}

func fetchHTTPS(ctx context.Context, location string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, location, nil)
	if err != nil {
		return nil, err
	}
	// A fresh transport: no proxies from the environment, the system CA bundle (SSL_CERT_FILE honoured).
	hc := &http.Client{Transport: &http.Transport{}}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot fetch the discovery file %s: %w (the server's certificate must be trusted by this host's CA bundle)", redactURL(location), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetching the discovery file %s: the server answered %s", redactURL(location), resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxKubeconfig+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxKubeconfig {
		return nil, errors.New("the discovery file is larger than 1 MiB: that is not a kubeconfig")
	}
	return data, nil
}

func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "<url>"
	}
	return u.Redacted()
}

func current(cfg *clientcmdapi.Config) (*clientcmdapi.Cluster, string, *clientcmdapi.AuthInfo, error) {
	ctxName := cfg.CurrentContext
	if ctxName == "" && len(cfg.Contexts) == 1 {
		for n := range cfg.Contexts {
			ctxName = n
		}
	}
	if c, ok := cfg.Contexts[ctxName]; ok {
		cl, ok := cfg.Clusters[c.Cluster]
		if !ok {
			return nil, "", nil, fmt.Errorf("context %q names cluster %q, which is not in the file", ctxName, c.Cluster)
		}
		return cl, c.Cluster, cfg.AuthInfos[c.AuthInfo], nil
	}
	if len(cfg.Clusters) == 1 {
		for n, cl := range cfg.Clusters {
			return cl, n, nil, nil
		}
	}
	return nil, "", nil, errors.New("it has no current-context and not exactly one cluster: set current-context")
}

func hasCredentials(a *clientcmdapi.AuthInfo) bool {
	if a == nil {
		return false
	}
	return a.Token != "" || a.TokenFile != "" || a.Exec != nil || a.AuthProvider != nil ||
		len(a.ClientCertificateData) > 0 || a.ClientCertificate != "" || strings.TrimSpace(a.Username) != ""
}

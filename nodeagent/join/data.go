package join

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/internal/joinconfig"
	"github.com/pxejoin/pxejoin/nodeagent/discovery"
	"github.com/pxejoin/pxejoin/nodeagent/nodefiles"
)

// data is what the phases share. Expensive parts (discovery, clients) are made on first use, so
// `join phase X` does only what X needs.
type data struct {
	cfg      *joinconfig.JoinConfiguration
	opts     Options
	root     nodefiles.Root
	out      io.Writer
	nodeName string
	ignored  map[string]bool
	skip     map[string]bool

	disc *discovery.Result
	// cluster is the cluster's ClusterConfiguration (control-plane join), read on first use.
	cluster *joinconfig.ClusterConfiguration
	// advertise and bindPort: this node's API server (control-plane join), chosen on first use.
	advertise net.IP
	bindPort  int32
	bootstrap kubernetes.Interface
	key       crypto.Signer
	keyPEM    []byte
	keyIsNew  bool
	certPEM   []byte
	csrName   string
	// table and plan: the phases and which of them (by full name) this invocation runs.
	table []Phase
	plan  map[string]bool
	// nodeChecked: checkExistingNode found that this node may join.
	nodeChecked bool
	csr         *csrRequest
	// registering is closed when the background Node registration (Options.RegisterNode) ended.
	registering chan struct{}
	mu          sync.Mutex // serializes out and Observer between a phase and the CSR goroutine
}

func newData(cfg *joinconfig.JoinConfiguration, opts Options) (*data, error) {
	if opts.Rootfs == "" {
		opts.Rootfs = "/"
	}
	out := opts.Out
	if out == nil {
		out = io.Discard
	}
	d := &data{cfg: cfg, opts: opts, root: nodefiles.Root(opts.Rootfs), ignored: map[string]bool{}, skip: map[string]bool{}}
	d.out = lockedWriter{mu: &d.mu, w: out}
	for _, s := range append(append([]string{}, cfg.NodeRegistration.IgnorePreflightErrors...), opts.IgnorePreflightErrors...) {
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				d.ignored[strings.ToLower(p)] = true
			}
		}
	}
	for _, s := range append(append([]string{}, cfg.SkipPhases...), opts.SkipPhases...) {
		for _, p := range strings.Split(s, ",") {
			p = strings.TrimSpace(p)
			if target, ok := PhaseAliases[p]; ok {
				p = target // "" for update-status: nothing to skip
			}
			if p != "" {
				d.skip[p] = true
			}
		}
	}
	d.nodeName = cfg.NodeRegistration.Name
	if d.nodeName == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("cannot read this host's name (%v): pass --node-name", err)
		}
		d.nodeName = strings.ToLower(h)
	}
	return d, nil
}

func (d *data) dryRun() bool { return d.opts.DryRun || d.cfg.DryRun }

func (d *data) printf(format string, args ...any) { fmt.Fprintf(d.out, format+"\n", args...) }

func (d *data) event(phase, state, detail string, err error) {
	if d.opts.Observer != nil {
		d.mu.Lock()
		defer d.mu.Unlock()
		d.opts.Observer(Event{Phase: phase, State: state, Time: time.Now(), Err: err, Detail: detail})
	}
}

// discovery runs discovery once, within timeouts.discovery.
func (d *data) discovery(ctx context.Context) (*discovery.Result, error) {
	if d.disc != nil {
		return d.disc, nil
	}
	d.event("discovery", bootstatus.StateStart, "", nil)
	ctx, cancel := context.WithTimeout(ctx, d.cfg.DiscoveryTimeout())
	defer cancel()
	var res *discovery.Result
	var err error
	switch disc := d.cfg.Discovery; {
	case disc.File != nil:
		res, err = discovery.File(ctx, disc.File.KubeConfigPath)
	case disc.BootstrapToken != nil:
		bt := disc.BootstrapToken
		res, err = discovery.Token(ctx, discovery.TokenOptions{
			Endpoint: bt.APIServerEndpoint, Token: bt.Token, CACertHashes: bt.CACertHashes,
			UnsafeSkipCAVerification: bt.UnsafeSkipCAVerification,
			Warn:                     func(f string, a ...any) { d.printf(f, a...) },
			Progress:                 func(f string, a ...any) { d.printf(f, a...) },
		})
	default:
		err = errors.New("no discovery method: give an API server endpoint with --token/--discovery-token, or --discovery-file")
	}
	if err != nil {
		d.event("discovery", bootstatus.StateError, "", err)
		return nil, err
	}
	d.printf("[discovery] Trusting the control plane at %s (%s)", res.Server, res.Method)
	d.event("discovery", bootstatus.StateDone, res.Server, nil)
	d.disc = res
	return res, nil
}

// bootstrapConfig is a rest config for TLS bootstrap: the discovery file's credentials, or the TLS
// bootstrap token.
func (d *data) bootstrapConfig(ctx context.Context) (*rest.Config, error) {
	res, err := d.discovery(ctx)
	if err != nil {
		return nil, err
	}
	cfg := &rest.Config{Host: res.Server, TLSClientConfig: rest.TLSClientConfig{CAData: res.CAData},
		Timeout: d.cfg.APICallTimeout(), UserAgent: "pxejoin-nodeagent"}
	if a := res.AuthInfo; a != nil {
		applyAuth(cfg, a)
		return cfg, nil
	}
	if d.cfg.Discovery.TLSBootstrapToken == "" {
		return nil, errors.New("no TLS bootstrap token: pass --tls-bootstrap-token (or --token), or use a discovery file that carries credentials")
	}
	cfg.BearerToken = d.cfg.Discovery.TLSBootstrapToken
	return cfg, nil
}

func (d *data) bootstrapClient(ctx context.Context) (kubernetes.Interface, error) {
	if d.bootstrap != nil {
		return d.bootstrap, nil
	}
	cfg, err := d.bootstrapConfig(ctx)
	if err != nil {
		return nil, err
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	d.bootstrap = c
	return c, nil
}

func applyAuth(cfg *rest.Config, a *clientcmdapi.AuthInfo) {
	cfg.BearerToken, cfg.BearerTokenFile = a.Token, a.TokenFile
	cfg.CertData, cfg.CertFile, cfg.KeyData, cfg.KeyFile = a.ClientCertificateData, a.ClientCertificate, a.ClientKeyData, a.ClientKey
	cfg.Username, cfg.Password = a.Username, a.Password
	cfg.ExecProvider, cfg.AuthProvider = a.Exec, a.AuthProvider
}

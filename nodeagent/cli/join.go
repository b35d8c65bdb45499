// Package cli is nodeagent's command line: `join` with kubeadm's flags, `join phase`, and
// `config print join-defaults`.
package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/klog/v2"

	"github.com/pxejoin/pxejoin/internal/joinconfig"
	"github.com/pxejoin/pxejoin/nodeagent/join"
)

// joinFlags are kubeadm join's flags.
type joinFlags struct {
	token, discoveryToken, discoveryFile, tlsBootstrapToken string
	caCertHashes                                            []string
	unsafeSkipCA                                            bool
	nodeName, criSocket, configPath, patches, rootfs        string
	dryRun                                                  bool
	ignorePreflight, skipPhases                             []string
	controlPlane                                            bool
	certificateKey, advertiseAddress                        string
	bindPort                                                int32
}

// flagsAllowedWithConfig may be mixed with --config, as in kubeadm.
var flagsAllowedWithConfig = map[string]bool{
	"config": true, "ignore-preflight-errors": true, "dry-run": true, "skip-phases": true,
	"rootfs": true, "patches": true, "v": true,
}

func (f *joinFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.token, "token", "", "Use this token for both discovery-token and tls-bootstrap-token when those values are not provided.")
	fs.StringVar(&f.discoveryToken, "discovery-token", "", "For token-based discovery, the token used to validate cluster information fetched from the API server.")
	fs.StringSliceVar(&f.caCertHashes, "discovery-token-ca-cert-hash", nil, `For token-based discovery, validate that the root CA public key matches this hash (format: "sha256:<hex>"). Repeatable.`)
	fs.BoolVar(&f.unsafeSkipCA, "discovery-token-unsafe-skip-ca-verification", false, "For token-based discovery, allow joining without --discovery-token-ca-cert-hash pinning.")
	fs.StringVar(&f.discoveryFile, "discovery-file", "", "For file-based discovery, a file or https URL from which to load cluster information.")
	fs.StringVar(&f.tlsBootstrapToken, "tls-bootstrap-token", "", "Specify the token used to temporarily authenticate with the Kubernetes Control Plane while joining the node.")
	fs.StringVar(&f.nodeName, "node-name", "", "Specify the node name.")
	fs.StringVar(&f.criSocket, "cri-socket", "", "Path to the CRI socket to connect.")
	fs.StringVar(&f.configPath, "config", "", "Path to a JoinConfiguration file (kubeadm.k8s.io/v1beta4 or v1beta3).")
	fs.BoolVar(&f.dryRun, "dry-run", false, "Don't apply any changes; just output what would be done.")
	fs.StringSliceVar(&f.ignorePreflight, "ignore-preflight-errors", nil, "A list of checks whose errors will be shown as warnings. Example: 'IsPrivilegedUser,Port-10250'. Value 'all' ignores errors from all checks.")
	fs.StringSliceVar(&f.skipPhases, "skip-phases", nil, "List of phases to be skipped, e.g. kubelet-start/start.")
	fs.StringVar(&f.patches, "patches", "", `Path to a directory of patch files named "target[suffix][+patchtype].extension"; on a worker the target is "kubeletconfiguration".`)
	fs.StringVar(&f.rootfs, "rootfs", "", "The path to the node's root filesystem; files are written under it. With a root other than /, skip kubelet-start/start.")
	fs.BoolVar(&f.controlPlane, "control-plane", false, "Create a new control plane instance on this node")
	fs.StringVar(&f.certificateKey, "certificate-key", "", "Use this key to decrypt the certificate secrets uploaded by init. The certificate key is a hex encoded string that is an AES key of size 32 bytes.")
	fs.StringVar(&f.advertiseAddress, "apiserver-advertise-address", "", "If the node should host a new control plane instance, the IP address the API Server will advertise it's listening on. If not set the default network interface will be used.")
	fs.Int32Var(&f.bindPort, "apiserver-bind-port", 6443, "If the node should host a new control plane instance, the port for the API Server to bind to.")
}

// config builds the JoinConfiguration from --config or from the flags.
func (f *joinFlags) config(fs *pflag.FlagSet, args []string) (*joinconfig.JoinConfiguration, error) {
	if f.configPath != "" {
		var mixed []string
		fs.Visit(func(fl *pflag.Flag) {
			if !flagsAllowedWithConfig[fl.Name] {
				mixed = append(mixed, fl.Name)
			}
		})
		if len(args) > 0 {
			mixed = append(mixed, "api-server-endpoint")
		}
		if len(mixed) > 0 {
			sort.Strings(mixed)
			return nil, fmt.Errorf("can not mix '--config' with arguments %v: put those settings in the JoinConfiguration file", mixed)
		}
		return joinconfig.Load(f.configPath)
	}
	if len(args) > 1 {
		return nil, fmt.Errorf("join takes at most one argument (the API server endpoint host:port), got %d", len(args))
	}
	cfg := &joinconfig.JoinConfiguration{}
	cfg.APIVersion, cfg.Kind = joinconfig.V1beta4, joinconfig.Kind
	cfg.NodeRegistration = joinconfig.NodeRegistrationOptions{Name: f.nodeName, CRISocket: f.criSocket}
	discoveryToken, tlsToken := f.discoveryToken, f.tlsBootstrapToken
	if discoveryToken == "" {
		discoveryToken = f.token
	}
	if tlsToken == "" {
		tlsToken = f.token
	}
	cfg.Discovery.TLSBootstrapToken = tlsToken
	if f.discoveryFile != "" {
		cfg.Discovery.File = &joinconfig.FileDiscovery{KubeConfigPath: f.discoveryFile}
	} else {
		bt := &joinconfig.BootstrapTokenDiscovery{Token: discoveryToken, CACertHashes: f.caCertHashes, UnsafeSkipCAVerification: f.unsafeSkipCA}
		if len(args) == 1 {
			bt.APIServerEndpoint = args[0]
		}
		cfg.Discovery.BootstrapToken = bt
	}
	if f.controlPlane {
		cfg.ControlPlane = &joinconfig.JoinControlPlane{CertificateKey: f.certificateKey,
			LocalAPIEndpoint: joinconfig.APIEndpoint{AdvertiseAddress: f.advertiseAddress, BindPort: f.bindPort}}
	}
	return cfg, nil
}

func (f *joinFlags) options(out io.Writer) join.Options {
	return join.Options{Rootfs: f.rootfs, SkipPhases: f.skipPhases, DryRun: f.dryRun,
		IgnorePreflightErrors: f.ignorePreflight, PatchesDir: f.patches, Out: out}
}

// NewCommand is nodeagent's root command.
func NewCommand(out, errOut io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "nodeagent",
		Short:         "nodeagent: kubeadm-compatible join (discovery, TLS bootstrap, kubelet start; control-plane join)",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(out)
	root.SetErr(errOut)
	klogFlags := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(klogFlags)
	root.PersistentFlags().AddGoFlag(klogFlags.Lookup("v"))
	root.AddCommand(newJoinCommand(out), newConfigCommand(out))
	return root
}

func newJoinCommand(out io.Writer) *cobra.Command {
	f := &joinFlags{}
	cmd := &cobra.Command{
		Use:   "join [api-server-endpoint]",
		Short: "Run this on any machine you wish to join an existing cluster",
		Long:  "Run this on any machine you wish to join an existing cluster, as a worker or (with --control-plane)\nas a new control-plane instance.\n\n" + phasesHelp(join.Phases),
		Args:  cobra.MaximumNArgs(1),
		RunE:  f.run(out, join.Run),
	}
	f.register(cmd.Flags())
	phase := &cobra.Command{Use: "phase", Short: "Use this command to invoke single phase of the join workflow"}
	for _, p := range join.Phases {
		phase.AddCommand(phaseCommand(out, p, ""))
	}
	// The older names (join.PhaseAliases), hidden as kubeadm no longer lists them.
	for _, c := range phase.Commands() {
		for alias := range join.PhaseAliases {
			parent, name, _ := strings.Cut(alias, "/")
			if c.Name() == parent {
				sub := aliasCommand(out, name, alias)
				c.AddCommand(sub)
			}
		}
	}
	cmd.AddCommand(phase)
	return cmd
}

// phasesHelp lists the phases as kubeadm's `join --help` does.
func phasesHelp(phases []join.Phase) string {
	type row struct{ name, short string }
	var rows []row
	var walk func(ps []join.Phase, depth int)
	walk = func(ps []join.Phase, depth int) {
		for _, p := range ps {
			name := p.Name
			if depth > 0 {
				name = strings.Repeat("  ", depth) + "/" + p.Name
			}
			rows = append(rows, row{name, p.Short})
			walk(p.Phases, depth+1)
		}
	}
	walk(phases, 0)
	width := 0
	for _, r := range rows {
		width = max(width, len(r.name))
	}
	var b strings.Builder
	b.WriteString("The \"join\" command executes the following phases:\n```\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "%-*s  %s\n", width, r.name, r.short)
	}
	b.WriteString("```")
	return b.String()
}

// aliasCommand is `join phase <parent> <name>` for an older phase name.
func aliasCommand(out io.Writer, name, alias string) *cobra.Command {
	f := &joinFlags{}
	cmd := &cobra.Command{
		Use:    name,
		Short:  "Older name of a phase (see join --help)",
		Hidden: true,
		Args:   cobra.MaximumNArgs(1),
		RunE: f.run(out, func(ctx context.Context, cfg *joinconfig.JoinConfiguration, opts join.Options) error {
			return join.RunPhase(ctx, cfg, opts, alias)
		}),
	}
	f.register(cmd.Flags())
	return cmd
}

// run is a join command's RunE: the configuration from flags and arguments, then do until done or
// interrupted.
func (f *joinFlags) run(out io.Writer, do func(context.Context, *joinconfig.JoinConfiguration, join.Options) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		cfg, err := f.config(cmd.Flags(), args)
		if err != nil {
			return err
		}
		ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return do(ctx, cfg, f.options(out))
	}
}

// phaseCommand makes `join phase <name> [<sub>]` from the phase table.
func phaseCommand(out io.Writer, p join.Phase, parent string) *cobra.Command {
	f := &joinFlags{}
	full := parent + p.Name
	cmd := &cobra.Command{
		Use:   p.Name + " [api-server-endpoint]",
		Short: p.Short,
		Args:  cobra.MaximumNArgs(1),
		RunE: f.run(out, func(ctx context.Context, cfg *joinconfig.JoinConfiguration, opts join.Options) error {
			return join.RunPhase(ctx, cfg, opts, full)
		}),
	}
	f.register(cmd.Flags())
	for _, sub := range p.Phases {
		cmd.AddCommand(phaseCommand(out, sub, full+"/"))
	}
	return cmd
}

func newConfigCommand(out io.Writer) *cobra.Command {
	cfg := &cobra.Command{Use: "config", Short: "Print nodeagent's configuration"}
	printCmd := &cobra.Command{Use: "print", Short: "Print configuration"}
	printCmd.AddCommand(&cobra.Command{
		Use:   "join-defaults",
		Short: "Print default join configuration, that can be used for 'nodeagent join --config'",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := joinconfig.Marshal(joinconfig.Defaults())
			if err != nil {
				return err
			}
			_, err = out.Write(b)
			return err
		},
	})
	cfg.AddCommand(printCmd)
	return cfg
}

// Main runs the command line and returns the process exit code.
func Main(ctx context.Context, args []string, out, errOut io.Writer) int {
	cmd := NewCommand(out, errOut)
	cmd.SetArgs(args)
	if err := cmd.ExecuteContext(ctx); err != nil {
		msg := err.Error()
		if !strings.HasPrefix(msg, "error execution phase") {
			msg = "error: " + msg
		}
		fmt.Fprintln(errOut, msg)
		return 1
	}
	return 0
}

func marshal(c *joinconfig.JoinConfiguration) ([]byte, error) { return joinconfig.Marshal(c) }

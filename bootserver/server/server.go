// Package server wires the boot server together: DHCP (bootserver/dhcpd), TFTP (bootserver/tftpd)
// and HTTP (bootserver/httpd) over one inventory, one state store, one token manager and one
// metrics registry, run by a single Serve(ctx) that returns when ctx ends and everything stopped.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"

	"github.com/pxejoin/pxejoin/bootserver/addrclaim"
	"github.com/pxejoin/pxejoin/bootserver/approver"
	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/bootserver/dhcpd"
	"github.com/pxejoin/pxejoin/bootserver/httpd"
	"github.com/pxejoin/pxejoin/bootserver/inventory"
	"github.com/pxejoin/pxejoin/bootserver/leases"
	"github.com/pxejoin/pxejoin/bootserver/peers"
	"github.com/pxejoin/pxejoin/bootserver/routeradv"
	"github.com/pxejoin/pxejoin/bootserver/shards"
	"github.com/pxejoin/pxejoin/bootserver/status"
	"github.com/pxejoin/pxejoin/bootserver/statussync"
	"github.com/pxejoin/pxejoin/bootserver/tftpd"
	"github.com/pxejoin/pxejoin/bootserver/tokens"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// Options configure a Server.
type Options struct {
	Config *config.Config
	// Logger; default slog.Default().
	Logger *slog.Logger
	// Cluster overrides the cluster loaded from Config.Cluster (tests).
	Cluster *Cluster
	// InNetns, if set, runs a function that opens sockets inside the boot network's namespace
	// (tests run the server in a network namespace); default runs it as is.
	InNetns func(func() error) error
	// Ready is called once DHCP, TFTP and HTTP listen (sd_notify READY=1).
	Ready func()
}

// Server is a configured boot server.
type Server struct {
	opts     Options
	cfg      *config.Config
	log      *slog.Logger
	db       *bolt.DB
	leases   *leases.Store
	status   *status.Store
	tokens   *tokens.Manager    // nil without a cluster
	sync     *statussync.Writer // nil without a cluster
	inv      inventory.Source
	kube     *inventory.Kubernetes // nil unless inventory.source is kubernetes
	dhcpMu   sync.Mutex            // orders s.dhcp's creation with inventory changes
	http     *httpd.Handler
	dhcp     *dhcpd.Server
	tftp     *tftpd.Server
	ra       *routeradv.Server // nil unless router advertisements are on
	reg      *prometheus.Registry
	url      string
	serverIP netip.Addr
	uuids    uuidIndex

	// The cluster, and the informers the token manager and the approver share (nil without one).
	cluster   *Cluster
	informers informers.SharedInformerFactory
	approver  *approver.Controller // nil without a cluster or with approval.mode kubeadm
	claims    *addrclaim.Claimer   // nil without dhcp.ha.claims
	peers     *peers.Peers         // nil without dhcp.ha
	haClient  kubernetes.Interface // the presence's and the shards' Leases (claims.go)

	shards *shards.Manager   // nil without dhcp.ha (shards.go)
	prober *dhcpd.ICMPProber // nil without dhcp.ha
}

// New opens the state store, connects to the cluster (if one is configured) and builds every part;
// nothing listens yet. Errors say what is wrong and what to do next.
func New(opts Options) (_ *Server, err error) {
	c := opts.Config
	if c == nil {
		return nil, errors.New("server: no configuration")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.InNetns == nil {
		opts.InNetns = func(f func() error) error { return f() }
	}
	s := &Server{opts: opts, cfg: c, log: opts.Logger, reg: prometheus.NewRegistry()}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if err := s.resolveURL(); err != nil {
		return nil, err
	}
	cl := opts.Cluster
	if cl == nil && c.Cluster.Kubeconfig != "" {
		if cl, err = LoadCluster(c.Cluster.Kubeconfig, c.Cluster.APIServerEndpoint); err != nil {
			return nil, err
		}
	} else if cl == nil && config.InCluster() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cl, err = LoadInCluster(ctx, c.Cluster.APIServerEndpoint)
		cancel()
		if err != nil {
			return nil, err
		}
	}
	if err := s.openInventory(cl); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(c.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w: make it a directory the boot server may write, or set stateDir (--state-dir)", err)
	}
	dbPath := filepath.Join(c.StateDir, "bootserver.db")
	if s.db, err = bolt.Open(dbPath, 0o600, &bolt.Options{Timeout: 5 * time.Second}); err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("state store %s is locked: is another bootserver running with this state directory? Stop it, or set another stateDir (--state-dir)", dbPath)
		}
		return nil, fmt.Errorf("state store %s: %w: make the state directory writable by the boot server, or set another stateDir (--state-dir)", dbPath, err)
	}
	if s.status, err = status.Open(s.db, status.Options{Registerer: s.reg, MaxUnknown: c.Unknown.MaxTimelines,
		Known: func(mac hwaddr.MAC) bool { return s.inv.Current().Known(mac, "") }, OnChange: s.statusChanged}); err != nil {
		return nil, err
	}
	// The handler's Tokens stays a nil interface without a cluster (not a nil *tokens.Manager).
	var tk httpd.Tokens
	var endpoint string
	var pins []string
	if cl != nil {
		api, err := cl.clients(c.API)
		if err != nil {
			return nil, fmt.Errorf("kubernetes client: %w", err)
		}
		s.cluster, s.informers = cl, informers.NewSharedInformerFactory(api.read, 10*time.Minute)
		if s.tokens, err = tokens.New(tokens.Options{Client: api.read, Creates: api.tokenCreates, Deletes: api.tokenDeletes, DB: s.db, TTL: c.TokenTTL,
			Groups: tokenGroups(c), Informers: s.informers,
			MaxUnknown: c.Unknown.MaxTokens, UnknownPerMinute: c.Unknown.TokensPerMinute, Logger: s.log, Registerer: s.reg, OnNode: s.onNode}); err != nil {
			return nil, err
		}
		if err := s.newApprover(); err != nil {
			return nil, err
		}
		if err := s.newClaimer(cl, api.read); err != nil {
			return nil, err
		}
		if err := s.newPeers(cl); err != nil {
			return nil, err
		}
		tk, endpoint, pins = s.tokens, cl.Endpoint, cl.CAPins
		if api.status != nil {
			if s.sync, err = statussync.New(statussync.Options{Client: api.status, Timelines: s.status, NameOf: s.machineName,
				ServerName: c.API.ServerName, MaxQueue: c.API.StatusQueue, Logger: s.log, Registerer: s.reg}); err != nil {
				return nil, err
			}
		}
	}
	ipxeDir := c.TFTP.Root
	if fi, err := os.Stat(ipxeDir); err != nil || !fi.IsDir() {
		ipxeDir = ""
	}
	if s.http, err = httpd.New(httpd.Config{
		Inventory: s.inv, Status: s.status, Tokens: tk, ServerURL: s.url, MintAhead: true,
		APIServerEndpoint: endpoint, CACertHashes: pins, IPXEDir: ipxeDir, Limits: c.HTTP, UUIDOf: s.uuids.of, MACOf: s.macOf,
		Logger: s.log, Registerer: s.reg, Gatherer: s.reg, LeaseHolder: s.leaseHolder(), OncePerBoot: c.Approval.Mode == config.ApprovalPxejoin,
		Reimage: s.reimageFunc(cl),
		Peers:   s.peerURLs(),
	}); err != nil {
		return nil, err
	}
	if err := s.newDHCP(); err != nil {
		return nil, err
	}
	if !c.TFTP.Disabled {
		links, err := rootLinks(c.TFTP.Root)
		if err != nil {
			return nil, err
		}
		if s.tftp, err = tftpd.New(tftpd.Config{Dir: c.TFTP.Root, Files: links, Logger: s.log, Registerer: s.reg, OnEvent: s.onTFTP,
			MaxTransfers: c.TFTP.MaxTransfers, MaxTransfersPerClient: c.TFTP.MaxTransfersPerClient}); err != nil {
			return nil, err
		}
	}
	inv := s.inv.Current()
	attrs := []any{"url", s.url, "dhcp", c.DHCP.Mode, "profiles", len(inv.Profiles()), "machines", len(inv.Machines()), "unknown_profile", c.Unknown.Profile,
		"inventory", c.Inventory.Source}
	if c.SendRouterAdvertisements() && c.Interface != "" {
		if s.ra, err = routeradv.New(routeradv.Config{Interface: c.Interface, Logger: s.log, Registerer: s.reg}); err != nil {
			return nil, err
		}
	}
	if cl == nil {
		s.log.Warn("no cluster configured: machines boot, but their join files answer 503 and no node joins; " +
			"set cluster.kubeconfig (--kubeconfig) to an admin kubeconfig to hand out join files")
	} else {
		attrs = append(attrs, "apiserver", endpoint, "ca_pins", pins)
	}
	s.log.Info("boot server configured", attrs...)
	return s, nil
}

// openInventory reads the configuration's machines, or starts the Kubernetes source.
func (s *Server) openInventory(cl *Cluster) error {
	c := s.cfg
	if c.Inventory.Source != config.InventoryKubernetes {
		inv, err := inventory.New(c)
		s.inv = inv
		return err
	}
	if cl == nil || cl.Dynamic == nil {
		return errors.New("inventory.source kubernetes needs a cluster: set cluster.kubeconfig (--kubeconfig)")
	}
	k, err := inventory.StartKubernetes(inventory.KubernetesOptions{Config: c, Client: cl.Dynamic, Logger: s.log, Registerer: s.reg,
		OnChange: s.inventoryChanged})
	if err != nil {
		return err
	}
	s.inv, s.kube = k, k
	return nil
}

// inventoryChanged hands a new inventory snapshot's size and reservations to DHCP.
func (s *Server) inventoryChanged(inv *inventory.Inventory) {
	s.dhcpMu.Lock()
	defer s.dhcpMu.Unlock()
	if s.dhcp == nil {
		return
	}
	var rs []dhcpd.Reservation
	for mac, ip := range inv.Reservations() {
		a, _ := inv.Lookup(mac, "")
		rs = append(rs, dhcpd.Reservation{MAC: mac, IP: ip, Hostname: a.NodeName})
	}
	s.dhcp.SetInventory(len(inv.Machines()), rs)
}

// resolveURL settles the URL machines use and the server's IPv4 address.
func (s *Server) resolveURL() error {
	c := s.cfg
	_, port, _ := net.SplitHostPort(c.Listen.HTTP)
	if c.ServerURL != "" {
		s.url = c.ServerURL
		if u, err := url.Parse(c.ServerURL); err == nil {
			s.serverIP, _ = netip.ParseAddr(u.Hostname())
		}
		return nil
	}
	if c.Interface == "" {
		return errors.New("no interface and no serverURL: cannot tell machines where the server is; set interface (--interface) or serverURL (--server-url)")
	}
	var p netip.Prefix
	err := s.opts.InNetns(func() (err error) { p, err = dhcpd.InterfacePrefix(c.Interface); return err })
	if err != nil {
		return fmt.Errorf("%w, or set serverURL (--server-url)", err)
	}
	s.serverIP = p.Addr()
	s.url = "http://" + net.JoinHostPort(s.serverIP.String(), port)
	return nil
}

func (s *Server) newDHCP() (err error) {
	c := s.cfg
	if c.DHCP.Mode == config.DHCPOff {
		return nil
	}
	policy := dhcpd.DefaultPolicy{TFTPServer: s.serverIP, HTTPBase: s.url, UseSNPOnly: c.TFTP.SNPOnly}
	if c.TFTP.Disabled {
		policy.TFTPServer = netip.Addr{}
	}
	dc := dhcpd.Config{
		Interface:  c.Interface,
		ListenAddr: c.Listen.DHCP,
		Mode:       dhcpd.ModeProxy,
		ServerIP:   s.serverIP,
		BootPolicy: dhcpd.BootPolicyFunc(func(f dhcpd.ClientFacts) dhcpd.Boot {
			mac, uuid := f.MAC, inventory.SMBIOSUUID(f.UUID)
			s.noteUUID(mac, uuid)
			if !s.inv.Current().Boots(mac, uuid) {
				return dhcpd.Boot{}
			}
			return policy.Boot(f)
		}),
		OnEvent: s.onDHCP,
		Known: func(mac hwaddr.MAC, uuid []byte) bool {
			return s.inv.Current().Known(mac, inventory.SMBIOSUUID(uuid))
		},
		Silent: func(mac hwaddr.MAC, uuid []byte) bool {
			return s.inv.Current().Silent(mac, inventory.SMBIOSUUID(uuid))
		},
		Inventory:   len(s.inv.Current().Machines()),
		MaxUnknown:  c.DHCP.MaxUnknownLeases,
		MaxInFlight: c.DHCP.MaxInFlight,
		Logger:      s.log,
		Registerer:  s.reg,
	}
	if c.DHCP.Mode == config.DHCPFull {
		dc.Mode = dhcpd.ModeFull
		var subnet netip.Prefix
		if c.DHCP.Pool.Subnet == "" {
			if err := s.opts.InNetns(func() (err error) { subnet, err = dhcpd.InterfacePrefix(c.Interface); return err }); err != nil {
				return err
			}
		}
		p, err := pool(c, subnet)
		if err != nil {
			return err
		}
		dc.Pools = []dhcpd.Pool{p}
		if s.claims != nil {
			if err := s.checkClaims(p.Subnet); err != nil {
				return err
			}
			dc.Address = s.address
		}
		if s.leases, err = leases.Open(filepath.Join(c.StateDir, "leases.db")); err != nil {
			return fmt.Errorf("lease store in %s: %w: make the state directory writable by the boot server and stop any other bootserver using it, or set another stateDir (--state-dir)", c.StateDir, err)
		}
		dc.Leases = s.leases
		if err := s.newShards(&dc, p); err != nil {
			return err
		}
	}
	d, err := dhcpd.New(dc)
	if err != nil {
		return err
	}
	s.dhcpMu.Lock()
	s.dhcp = d
	s.dhcpMu.Unlock()
	s.inventoryChanged(s.inv.Current())
	return nil
}

// noteUUID remembers the SMBIOS UUID a MAC sent in DHCP when that UUID, not the MAC, is how the
// inventory knows the machine: script and join requests carry only the MAC. Other UUIDs are not
// kept, so packets from ever new MACs cannot grow the index past the inventory.
func (s *Server) noteUUID(mac hwaddr.MAC, uuid string) {
	if inv := s.inv.Current(); uuid != "" && !inv.Known(mac, "") && inv.Known(mac, uuid) {
		s.uuids.remember(mac, uuid)
	}
}

// pool converts the configured (validated) pool; ifSubnet is the interface's subnet, used when
// the pool names none.
func pool(c *config.Config, ifSubnet netip.Prefix) (dhcpd.Pool, error) {
	pc := c.DHCP.Pool
	p := dhcpd.Pool{Start: netip.MustParseAddr(pc.Start), End: netip.MustParseAddr(pc.End), Subnet: ifSubnet.Masked()}
	if pc.Subnet != "" {
		p.Subnet = netip.MustParsePrefix(pc.Subnet).Masked()
	}
	if !p.Subnet.Contains(p.Start) || !p.Subnet.Contains(p.End) {
		return p, fmt.Errorf("dhcp pool %s-%s is not inside the subnet %s: set dhcp.pool.subnet", p.Start, p.End, p.Subnet)
	}
	if pc.Router != "" {
		p.Router = netip.MustParseAddr(pc.Router)
	}
	for _, d := range pc.DNS {
		p.DNS = append(p.DNS, netip.MustParseAddr(d))
	}
	if c.DHCP.LeaseTime != "" {
		p.LeaseTime, _ = time.ParseDuration(c.DHCP.LeaseTime)
	}
	return p, nil
}

// statusChanged hands a timeline change to the Machine.status writer, once there is one.
func (s *Server) statusChanged(c status.Change) {
	if s.sync != nil {
		s.sync.Changed(c)
	}
}

// machineName is the Machine (node) name of an inventory machine.
func (s *Server) machineName(mac hwaddr.MAC) (string, bool) {
	a, ok := s.inv.Current().Lookup(mac, s.uuids.of(mac))
	return a.NodeName, ok && a.Known
}

// URL is the server's HTTP base URL.
func (s *Server) URL() string { return s.url }

// Serve runs DHCP, TFTP, HTTP and the token watch until ctx ends, then stops them all and returns.
// The first part to fail stops the others and its error is returned.
func (s *Server) Serve(ctx context.Context) error {
	approvalPending, err := s.startApproval(ctx)
	if err != nil {
		return err
	}
	var ln net.Listener
	if err := s.opts.InNetns(func() (err error) { ln, err = net.Listen("tcp", s.cfg.Listen.HTTP); return err }); err != nil {
		return fmt.Errorf("http: %w", err)
	}
	var tftpConn *net.UDPConn
	if s.tftp != nil {
		err := s.opts.InNetns(func() error {
			a, err := net.ResolveUDPAddr("udp", s.cfg.Listen.TFTP)
			if err == nil {
				tftpConn, err = net.ListenUDP("udp", a)
			}
			return err
		})
		if err != nil {
			ln.Close()
			return fmt.Errorf("tftp: %w: stop the other TFTP server (dnsmasq, tftpd-hpa), give the boot server CAP_NET_BIND_SERVICE, "+
				"or set listen.tftp (--tftp-addr) or tftp.disabled", err)
		}
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := s.http.Serve(ctx, ln); err != nil {
			return fmt.Errorf("http: %w", err)
		}
		return nil
	})
	if s.tftp != nil {
		g.Go(func() error { return s.tftp.ServeConn(ctx, tftpConn) })
	}
	if s.dhcp != nil {
		g.Go(func() error { return s.opts.InNetns(func() error { return s.dhcp.Serve(ctx) }) })
	}
	if s.ra != nil {
		g.Go(func() error { return s.opts.InNetns(func() error { return s.ra.Serve(ctx) }) })
	}
	g.Go(func() error { return s.serveShards(ctx) })
	if s.tokens != nil {
		g.Go(func() error {
			if err := s.tokens.Run(ctx); err != nil && ctx.Err() == nil {
				return fmt.Errorf("token watch: %w", err)
			}
			return nil
		})
	}
	if s.approver != nil {
		g.Go(func() error {
			if err := s.runApproval(ctx, approvalPending); err != nil && ctx.Err() == nil {
				return fmt.Errorf("approver: %w", err)
			}
			return nil
		})
	}
	if s.sync != nil {
		g.Go(func() error { return s.sync.Run(ctx) })
	}
	if s.peers != nil {
		g.Go(func() error { return s.peers.Run(ctx) })
	}
	g.Go(func() error {
		if s.dhcp != nil {
			select {
			case <-s.dhcp.Ready():
			case <-ctx.Done():
				return nil
			}
		}
		s.log.Info("boot server ready", "http", ln.Addr().String(), "url", s.url, "tftp", s.cfg.Listen.TFTP, "dhcp", s.cfg.DHCP.Mode)
		if s.opts.Ready != nil {
			s.opts.Ready()
		}
		return nil
	})
	return g.Wait()
}

// Close releases the stores; call it after Serve returned.
func (s *Server) Close() {
	if s.kube != nil {
		s.kube.Stop()
	}
	if s.http != nil {
		_ = s.http.Close()
	}
	if s.status != nil {
		_ = s.status.Close()
	}
	if s.prober != nil {
		_ = s.prober.Close()
	}
	if s.leases != nil {
		_ = s.leases.Close()
	}
	if s.db != nil {
		_ = s.db.Close()
	}
}

// rootLinks serves the TFTP root's top-level symlinks to regular files as the files they name
// (httpd.RootLinks, which /ipxe/ serves too).
func rootLinks(dir string) (map[string]tftpd.Opener, error) {
	links, err := httpd.RootLinks(dir)
	if err != nil {
		return nil, fmt.Errorf("tftp.root: %w: install Debian's ipxe package, or set tftp.root (--tftp-root) to the directory of the iPXE binaries", err)
	}
	files := map[string]tftpd.Opener{}
	for name, target := range links {
		files[name] = tftpd.File(target)
	}
	return files, nil
}

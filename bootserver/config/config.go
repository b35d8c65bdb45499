// Package config reads the boot server's configuration: a YAML file (full mode) or the command-line
// flags of quick mode, which build the same Config with one profile that every machine gets.
//
// A file is decoded strictly (an unknown field is an error) and then validated; every error names the
// line of the offending field, e.g. "bootserver.yaml:12: machines[1].mac: "52:54:zz" is not a MAC
// address".
package config

import (
	"fmt"
	"time"

	"github.com/pxejoin/pxejoin/internal/diskspec"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// DHCP modes.
const (
	DHCPFull  = "full"  // the boot server hands out addresses from its pool
	DHCPProxy = "proxy" // another DHCP server hands out addresses; we add boot information only
	DHCPOff   = "off"   // no DHCP at all (another server points clients at our HTTP script)
)

// Defaults used when the file leaves a field out.
const (
	DefaultHTTPAddr = ":8080"
	DefaultTFTPAddr = ":69"
	DefaultTFTPRoot = "/usr/lib/ipxe"
	DefaultStateDir = "/var/lib/pxejoin"
	DefaultTokenTTL = 30 * time.Minute
	MinTokenTTL     = time.Minute
	MaxTokenTTL     = 24 * time.Hour

	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultIdleTimeout       = 2 * time.Minute
	DefaultMaxHeaderBytes    = 8 << 10
	DefaultMaxConnsPerClient = 16

	DefaultUnknownMaxTokens       = 64
	DefaultUnknownTokensPerMinute = 60
)

// Config is the whole configuration. Field names are the YAML keys.
type Config struct {
	// Interface is the network interface DHCP serves and whose first IPv4 address names the server.
	Interface string `yaml:"interface"`
	// ServerURL is how machines reach the HTTP server, e.g. http://10.0.0.1:8080. Default: the
	// interface's first IPv4 address and the HTTP port.
	ServerURL string `yaml:"serverURL"`
	// Listen holds the listening addresses.
	Listen Listen `yaml:"listen"`
	// HTTP bounds what clients may hold of the HTTP server.
	HTTP HTTP `yaml:"http"`
	// DHCP configures the DHCP server.
	DHCP DHCP `yaml:"dhcp"`
	// TFTP configures the TFTP server that hands out iPXE.
	TFTP TFTP `yaml:"tftp"`
	// Cluster names the Kubernetes cluster machines join. Without it (no kubeconfig) machines boot but
	// get no join file: /join answers 503 (e.g. to watch machines PXE-boot before a cluster exists).
	Cluster Cluster `yaml:"cluster"`
	// Approval says who approves the machines' certificate signing requests.
	Approval Approval `yaml:"approval"`
	// API bounds the boot server's requests to the cluster's API (api.go).
	API API `yaml:"api"`
	// StateDir holds the state store (timelines, token ids) and DHCP leases.
	StateDir string `yaml:"stateDir"`
	// Unknown says what machines missing from the inventory get.
	Unknown Unknown `yaml:"unknownMachines"`
	// Profiles are boot profiles by name.
	Profiles map[string]Profile `yaml:"profiles"`
	// Machines is the inventory (inventory.source file).
	Machines []Machine `yaml:"machines"`
	// Inventory says where the machines come from.
	Inventory Inventory `yaml:"inventory"`
	// Segment names the L2 segment this server answers: with inventory.source kubernetes it
	// answers the Machines whose spec.segment is this one or empty. Empty: only Machines without
	// a segment.
	Segment string `yaml:"segment"`

	// Parsed values, filled by Validate.
	TokenTTL time.Duration `yaml:"-"`
}

// Inventory sources.
const (
	InventoryFile       = "file"       // the machines: list of this file (default)
	InventoryKubernetes = "kubernetes" // Machine objects (machines.pxejoin.io) in the cluster
)

// Inventory says where the machines come from.
type Inventory struct {
	// Source is file (the machines: list, the default) or kubernetes (the cluster's Machine
	// objects, read through an informer; needs cluster.kubeconfig and the CRD in deploy/crd).
	Source string `yaml:"source"`
}

// Listen holds listening addresses (host:port; an empty host means every address).
type Listen struct {
	HTTP string `yaml:"http"`
	TFTP string `yaml:"tftp"`
	// DHCP is the DHCP listen address; empty means 0.0.0.0:67.
	DHCP string `yaml:"dhcp"`
}

// HTTP bounds what clients may hold of the HTTP server; a field left out (or 0) takes its default.
type HTTP struct {
	// ReadHeaderTimeout is the time a client has to send a request's header (Go duration); default 10s.
	ReadHeaderTimeout time.Duration `yaml:"readHeaderTimeout"`
	// IdleTimeout closes a kept-alive connection that waits that long for its next request; default 2m.
	IdleTimeout time.Duration `yaml:"idleTimeout"`
	// MaxHeaderBytes bounds a request's header (a larger one gets 431); default 8 KiB. iPXE's and the
	// agent's requests are a few hundred bytes.
	MaxHeaderBytes int `yaml:"maxHeaderBytes"`
	// MaxConnsPerClient bounds the connections one client address holds at once; past it a new
	// connection is closed at once. Default 16 (a booting machine uses one or two).
	MaxConnsPerClient int `yaml:"maxConnsPerClient"`
}

// DHCP configures the DHCP server.
type DHCP struct {
	// Mode is full, proxy or off.
	Mode string `yaml:"mode"`
	// Pool is the address range of full mode.
	Pool Pool `yaml:"pool"`
	// LeaseTime is a Go duration ("1h"); default 1h.
	LeaseTime string `yaml:"leaseTime"`
	// RouterAdvertisements sends IPv6 RAs that announce no router and no DHCPv6, so iPXE does not wait
	// ~16 s for IPv6 configuration. Default: on in full mode (the boot server owns the link), off otherwise
	// (an existing network has its own routers).
	RouterAdvertisements *bool `yaml:"routerAdvertisements"`
	// MaxUnknownLeases caps the addresses (offers and leases) machines outside the inventory hold
	// in full mode; the pool always keeps as many addresses as there are inventory machines.
	// Default 64.
	MaxUnknownLeases int `yaml:"maxUnknownLeases"`
	// MaxInFlight bounds the DHCP requests handled at once; past it requests are dropped and
	// counted (clients retransmit). Default 256.
	MaxInFlight int `yaml:"maxInFlight"`
}

// SendRouterAdvertisements resolves DHCP.RouterAdvertisements' default.
func (c *Config) SendRouterAdvertisements() bool {
	if c.DHCP.RouterAdvertisements != nil {
		return *c.DHCP.RouterAdvertisements
	}
	return c.DHCP.Mode == DHCPFull
}

// Pool is a DHCP address range with the options given with it.
type Pool struct {
	Start string `yaml:"start"`
	End   string `yaml:"end"`
	// Subnet (CIDR); default: the interface's subnet.
	Subnet string   `yaml:"subnet"`
	Router string   `yaml:"router"`
	DNS    []string `yaml:"dns"`
}

// TFTP configures the TFTP server.
type TFTP struct {
	// Root is the directory of iPXE binaries (undionly.kpxe, ipxe.efi, snponly.efi); default
	// /usr/lib/ipxe (Debian's ipxe package). It is served over HTTP at /ipxe/ too.
	Root string `yaml:"root"`
	// SNPOnly gives x64 UEFI snponly.efi instead of ipxe.efi.
	SNPOnly bool `yaml:"snpOnly"`
	// Disabled turns TFTP off (e.g. when another server or only iPXE ROMs are used).
	Disabled bool `yaml:"disabled"`
	// MaxTransfers bounds the TFTP transfers under way. Default 256.
	MaxTransfers int `yaml:"maxTransfers"`
	// MaxTransfersPerClient bounds the transfers one client address has under way, so that one
	// address cannot take every transfer. Default 4.
	MaxTransfersPerClient int `yaml:"maxTransfersPerClient"`
}

// Cluster names the cluster machines join.
type Cluster struct {
	// Kubeconfig is an admin-ish kubeconfig: it must allow creating and deleting Secrets in
	// kube-system and watching CSRs and Nodes. The CA pin is derived from its cluster CA. Empty: no
	// cluster, unless the boot server runs in a pod (InCluster): then it uses its ServiceAccount, and
	// the endpoint and CA machines use come from kube-public/cluster-info.
	Kubeconfig string `yaml:"kubeconfig"`
	// APIServerEndpoint (host:port) overrides the endpoint taken from the kubeconfig's server, for
	// when machines reach the API server at another address than the boot server does.
	APIServerEndpoint string `yaml:"apiServerEndpoint"`
	// TokenTTL is each machine token's lifetime (Go duration); default 30m.
	TokenTTL string `yaml:"tokenTTL"`
}

// Unknown says what machines missing from the inventory get.
type Unknown struct {
	// Profile, if set, is booted by unknown machines; empty means they get nothing.
	Profile string `yaml:"profile"`
	// MaxTimelines bounds the boot timelines kept for machines not in the inventory (any MAC that
	// sends a DISCOVER, a script request or a status report gets one): past it, the least recently
	// seen one is dropped, from memory and disk. 0 means the default, 1024. Inventory machines
	// always keep theirs.
	MaxTimelines int `yaml:"maxTimelines"`
	// MaxTokens bounds the live bootstrap tokens minted for unknown machines (each is a Secret in
	// kube-system until its machine's CSR is issued or it expires); past it their join files are
	// refused with 503 and Retry-After. Default 64. Inventory machines never count against it.
	MaxTokens int `yaml:"maxTokens"`
	// TokensPerMinute is the rate tokens are minted for unknown machines, in bursts of up to 10
	// seconds' worth; default 60.
	TokensPerMinute int `yaml:"tokensPerMinute"`
}

// Profile is what a machine boots.
type Profile struct {
	// Kernel is a local file path.
	Kernel string `yaml:"kernel"`
	// Initrds are local file paths, loaded in order.
	Initrds []string `yaml:"initrds"`
	// Cmdline is a text/template of the kernel command line. Fields: .JoinURL .StatusURL .MAC
	// .NodeName .ServerURL .RootImageURL .Profile.
	Cmdline string `yaml:"cmdline"`
	// RootImage is a local path (served at /images/<profile>/<name>) or an http(s) URL.
	RootImage string `yaml:"rootImage"`
	// ControlPlane, if set, makes the profile's machines join as control-plane nodes.
	ControlPlane *ControlPlaneProfile `yaml:"controlPlane"`
	// Disk, if set, makes the profile persistent: the agent installs the named local disk on the
	// first boot and keeps the node's state (credentials, kubelet, containerd, the root image)
	// there, so that later boots resume as the same node without a join. Nil: diskless (every boot
	// joins). The boot server puts it on the kernel command line (diskspec.Spec.Params).
	Disk *diskspec.Spec `yaml:"disk"`
}

// Machine is one inventory entry; MAC or UUID (or both) identify it.
type Machine struct {
	// MAC is the machine's boot NIC (zero if the machine is known by UUID only).
	MAC hwaddr.MAC `yaml:"mac"`
	// UUID is the SMBIOS system UUID as dmidecode prints it.
	UUID string `yaml:"uuid"`
	// Name is the node name; default derived from the MAC (node-525400aabbcc).
	Name    string            `yaml:"name"`
	Profile string            `yaml:"profile"`
	Labels  map[string]string `yaml:"labels"`
	// Disk overrides the profile's disk for this machine (e.g. another by-path name); it needs a
	// persistent profile.
	Disk *diskspec.Spec `yaml:"disk"`
}

// Error is a configuration error at a line of a file (Line 0: no line is known).
type Error struct {
	File  string
	Line  int
	Field string
	Msg   string
}

func (e *Error) Error() string {
	where := e.File
	if e.Line > 0 {
		where = fmt.Sprintf("%s:%d", e.File, e.Line)
	}
	if e.Field != "" {
		return fmt.Sprintf("%s: %s: %s", where, e.Field, e.Msg)
	}
	return fmt.Sprintf("%s: %s", where, e.Msg)
}

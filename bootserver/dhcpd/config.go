package dhcpd

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pxejoin/pxejoin/bootserver/leases"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// Mode says which DHCP role the server plays on its link.
type Mode string

const (
	// ModeFull hands out addresses (DISCOVER, OFFER, REQUEST, ACK, NAK, RELEASE, DECLINE, INFORM)
	// with boot information for PXE, HTTP-boot and iPXE clients. Requests relayed by a DHCP relay
	// (giaddr set) are answered too: the pool is chosen by giaddr and the reply goes to giaddr:67.
	ModeFull Mode = "full"
	// ModeProxy runs beside another DHCP server: it answers only PXE, HTTP-boot and iPXE clients,
	// with yiaddr 0.0.0.0 and boot information, on port 67 and on the PXE port 4011.
	ModeProxy Mode = "proxy"
)

// Pool is one subnet the server hands addresses out of.
type Pool struct {
	// Subnet is the network and its prefix length; the subnet mask (option 1) comes from it.
	// A relayed request uses the pool whose Subnet holds its giaddr; a local one the pool whose
	// Subnet holds the server's address.
	Subnet netip.Prefix
	// Start and End bound the dynamic range (both included).
	Start, End netip.Addr
	// Router is option 3 (omitted if invalid).
	Router netip.Addr
	// DNS is option 6.
	DNS []netip.Addr
	// LeaseTime is option 51; T1/T2 are half and 7/8 of it. Zero means one hour.
	LeaseTime time.Duration
}

// Reservation pins a hardware address to an address (it need not lie in the dynamic range, only in
// a pool's Subnet) and optionally a hostname (option 12).
type Reservation struct {
	MAC      hwaddr.MAC
	IP       netip.Addr
	Hostname string
}

// Config configures a Server. Zero values are filled with the defaults noted.
type Config struct {
	// Interface is the network interface to serve (SO_BINDTODEVICE); empty serves every interface.
	Interface string
	// ListenAddr is the address:port for DHCP; empty means 0.0.0.0:67. Proxy mode also listens
	// on the same address at port ProxyPort. Keep the address 0.0.0.0 and scope the server with
	// Interface: Linux delivers broadcasts (what clients without an address send) only to sockets
	// bound to the wildcard address.
	ListenAddr string
	// ProxyPort is the PXE boot server port answered in proxy mode; zero means 4011, -1 disables.
	ProxyPort int
	// Mode is ModeFull (default) or ModeProxy.
	Mode Mode
	// ServerIP is siaddr and option 54. If invalid, Serve takes Interface's first IPv4 address.
	ServerIP netip.Addr
	// Pools are the subnets served in full mode (unused in proxy mode).
	Pools []Pool
	// Reservations are static hardware address → IP bindings.
	Reservations []Reservation
	// Leases is the durable store; full mode needs it. The caller opens and closes it.
	Leases *leases.Store
	// BootPolicy decides the boot information for each client; nil means no boot information.
	BootPolicy BootPolicy
	// OfferHold is how long an offered address stays held for a known client; zero means 30 s.
	OfferHold time.Duration
	// Known, if set, tells inventory machines from strangers (uuid is option 97 as sent, or nil).
	// Strangers' offers are held for UnknownOfferHold only, and strangers hold at most MaxUnknown
	// addresses of a pool (offers and leases), fewer if the pool must keep Inventory addresses
	// for known machines; past that they get no offer (counted as "unknown_cap"). Nil treats
	// every client as known.
	Known func(mac hwaddr.MAC, uuid []byte) bool
	// Address, if set, gives an inventory machine (see Known) its address, the same on every
	// server of a segment: its reservation, or one claimed once through the API
	// (bootserver/addrclaim). It is asked on every DISCOVER and REQUEST of a known machine, so it
	// must answer from memory once the machine has its address; the answer becomes the machine's
	// reservation. An invalid address leaves the machine to the pool; an error drops the request
	// (counted as "claim").
	Address func(mac hwaddr.MAC, uuid []byte) (ip netip.Addr, hostname string, err error)
	// Silent, if set, names clients that get no reply at all, not even an address (their
	// inventory entry is disabled or in conflict); their requests are dropped as "silenced".
	Silent func(mac hwaddr.MAC, uuid []byte) bool
	// Inventory is how many machines Known accepts: each pool keeps that many addresses of its
	// range out of strangers' reach.
	Inventory int
	// MaxUnknown caps the addresses strangers (see Known) hold in one pool; zero means 64.
	MaxUnknown int
	// UnknownOfferHold is how long an address offered to a stranger stays held; zero means 5 s.
	UnknownOfferHold time.Duration
	// MaxInFlight bounds the requests handled at once (a REQUEST waits for its lease to be
	// durable); past it requests are dropped (counted as "busy") and clients retransmit. Zero
	// means 256.
	MaxInFlight int
	// DeclineHold is how long an address a client DECLINEd stays out of use; zero means 10 min.
	DeclineHold time.Duration
	// Shards, if set, limits the dynamic range to the shards this server holds (several servers
	// on one segment; see Shards). Nil: this server alone hands out the pools' addresses.
	Shards Shards
	// TakeoverAfter is how long a machine whose DISCOVERs are another live server's share (with
	// Shards) keeps DISCOVERing before this server answers it too; zero means
	// DefaultTakeoverAfter.
	TakeoverAfter time.Duration
	// Probe, if set, reports whether an address answers on the link (ARP or ICMP echo, short
	// timeout). An address another client held before is probed before it is offered again; one
	// that answers is kept out of use as if DECLINEd.
	Probe func(netip.Addr) bool
	// OnEvent, if set, receives boot events (see EventFunc).
	OnEvent EventFunc
	// Logger receives one line per event at Debug and problems at Warn; nil discards.
	Logger *slog.Logger
	// Registerer, if set, gets the server's metrics registered (see Metrics).
	Registerer prometheus.Registerer
}

const (
	defaultLeaseTime   = time.Hour
	defaultOfferHold   = 30 * time.Second
	defaultDeclineHold = 10 * time.Minute
	defaultProxyPort   = 4011

	// DefaultMaxUnknown is Config.MaxUnknown's default.
	DefaultMaxUnknown = 64
	// DefaultUnknownOfferHold is Config.UnknownOfferHold's default.
	DefaultUnknownOfferHold = 5 * time.Second
	// DefaultMaxInFlight is Config.MaxInFlight's default.
	DefaultMaxInFlight = 256
)

func (c *Config) setDefaults() error {
	if c.Mode == "" {
		c.Mode = ModeFull
	}
	if c.Mode != ModeFull && c.Mode != ModeProxy {
		return fmt.Errorf("dhcpd: unknown mode %q", c.Mode)
	}
	if c.ListenAddr == "" {
		c.ListenAddr = "0.0.0.0:67"
	}
	if c.ProxyPort == 0 {
		c.ProxyPort = defaultProxyPort
	}
	if c.OfferHold == 0 {
		c.OfferHold = defaultOfferHold
	}
	if c.UnknownOfferHold <= 0 {
		c.UnknownOfferHold = DefaultUnknownOfferHold
	}
	if c.MaxUnknown <= 0 {
		c.MaxUnknown = DefaultMaxUnknown
	}
	if c.TakeoverAfter <= 0 {
		c.TakeoverAfter = DefaultTakeoverAfter
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
	if c.DeclineHold == 0 {
		c.DeclineHold = defaultDeclineHold
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Mode == ModeFull && c.Leases == nil {
		return errors.New("dhcpd: full mode needs a lease store (Config.Leases)")
	}
	for i := range c.Pools {
		p := &c.Pools[i]
		if !p.Subnet.IsValid() || !p.Subnet.Addr().Is4() {
			return fmt.Errorf("dhcpd: pool %d: subnet %v is not IPv4", i, p.Subnet)
		}
		p.Subnet = p.Subnet.Masked()
		if !p.Subnet.Contains(p.Start) || !p.Subnet.Contains(p.End) || p.End.Less(p.Start) {
			return fmt.Errorf("dhcpd: pool %d: range %v-%v is not inside %v", i, p.Start, p.End, p.Subnet)
		}
		if p.LeaseTime == 0 {
			p.LeaseTime = defaultLeaseTime
		}
		if p.LeaseTime < 10*time.Second {
			return fmt.Errorf("dhcpd: pool %d: lease time %v too short", i, p.LeaseTime)
		}
		for j := range c.Pools[:i] {
			if c.Pools[j].Subnet.Overlaps(p.Subnet) {
				return fmt.Errorf("dhcpd: pools %d and %d overlap", j, i)
			}
		}
	}
	for _, r := range c.Reservations {
		if len(r.MAC) == 0 || !r.IP.Is4() {
			return fmt.Errorf("dhcpd: bad reservation %v → %v", r.MAC, r.IP)
		}
	}
	return nil
}

// poolFor returns the pool whose subnet holds ip.
func (c *Config) poolFor(ip netip.Addr) *Pool {
	for i := range c.Pools {
		if c.Pools[i].Subnet.Contains(ip) {
			return &c.Pools[i]
		}
	}
	return nil
}

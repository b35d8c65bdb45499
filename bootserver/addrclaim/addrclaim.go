// Package addrclaim gives an inventory machine without a reserved address (Machine spec.ipv4) one
// address for good, the same from every boot server on its segment, without a protocol between
// the servers: the Kubernetes API is the arbiter.
//
// On the machine's first boot a server claims an address of the claims range by creating a
// networking.k8s.io/v1 IPAddress named after it (KEP-1880's one-object-per-IP allocator: the
// apiserver refuses a second object of the same name, so an address is never claimed twice).
// AlreadyExists means another machine holds it: the next one is tried. The claim is then recorded
// in the Machine's status.claimedIPv4 by server-side apply with this package's field manager, not
// forced: if another server recorded a different claim first, the apply conflicts, this server
// takes the recorded address and deletes the object it created. Every server's inventory then
// reads the address from the Machine, so later DORAs from any server answer it from memory with no
// write at all.
//
// Why IPAddress rather than a CRD of our own: it is built in (nothing to install), cluster-scoped,
// named by the canonical address, and its parentRef names the Machine. The apiserver's service-IP
// allocator and its repair loop act only on IPAddresses labelled
// ipaddress.kubernetes.io/managed-by=ipallocator.k8s.io and on addresses inside a ServiceCIDR;
// ours carry ManagedBy instead and lie in the boot network, so the apiserver leaves them alone
// (TestRepairLoopLeavesClaimsAlone checks it against the real kube-apiserver). Each object has an
// ownerReference to its Machine, so kube-controller-manager's garbage collector deletes the claim
// when the Machine is deleted.
//
// Residual case, written down: a server that dies between creating an object and deleting it
// after a lost race leaves one extra IPAddress owned by the Machine; it goes with the Machine.
package addrclaim

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/pxejoin/pxejoin/bootserver/machineapi"
)

// ManagedBy is the value of the ipaddress.kubernetes.io/managed-by label on claims.
const ManagedBy = "addrclaim.pxejoin.io"

// FieldManager prefixes the field manager of the status.claimedIPv4 applies; the server's name
// follows it, so that two servers recording different addresses conflict.
const FieldManager = "pxejoin-addrclaim"

// DefaultTimeout bounds one claim (its API calls together).
const DefaultTimeout = 5 * time.Second

// DefaultMaxInFlight is Options.MaxInFlight's default: at the default budget (api.claims, 25 requests a
// second, a claim takes two or three) 32 claims queue about 3 s, within DefaultTimeout.
const DefaultMaxInFlight = 32

// Decisions counted by pxejoin_addrclaim_decisions_total.
const (
	DecisionReserved  = "reserved"  // spec.ipv4
	DecisionStatus    = "status"    // status.claimedIPv4, recorded earlier by any server
	DecisionClaimed   = "claimed"   // a new claim, created and recorded by this server
	DecisionConflict  = "conflict"  // an address held by another machine: the next one was tried
	DecisionLost      = "lost"      // another server recorded a claim first: its address was taken
	DecisionExhausted = "exhausted" // no free address left in the range
	DecisionError     = "error"     // the API failed: the request got no answer
	DecisionBusy      = "busy"      // MaxInFlight claims were running: the request got no answer
)

// Options configure a Claimer.
type Options struct {
	// Client creates, reads and deletes IPAddresses.
	Client kubernetes.Interface
	// Machines reads Machines and applies their status.
	Machines dynamic.Interface
	// Start and End bound the claims range (both included). It must not overlap a dynamic pool.
	Start, End netip.Addr
	// ServerName names this server in the field manager.
	ServerName string
	// Timeout bounds one claim; default DefaultTimeout.
	Timeout time.Duration
	// MaxInFlight bounds the claims running at once; past it a claim fails at once (the DHCP client
	// retransmits). Without the bound, a burst of first boots congests the client's rate limiter:
	// every claim spends its first request, then times out waiting for its last behind newer
	// claims' first ones, and almost none finish (make bench-fleet -ha: 39 of 250 first-boot
	// machines got an address in the burst). Default DefaultMaxInFlight.
	MaxInFlight int
	// Logger; default discards.
	Logger *slog.Logger
	// Registerer gets pxejoin_addrclaim_decisions_total.
	Registerer prometheus.Registerer
}

// Claimer claims addresses. It is safe for concurrent use.
type Claimer struct {
	opts      Options
	log       *slog.Logger
	flight    singleflight.Group
	inFlight  chan struct{} // a slot per running claim (Options.MaxInFlight)
	decisions *prometheus.CounterVec

	mu sync.Mutex
	// taken are addresses of the range found held by other machines (bounded by the range).
	taken map[netip.Addr]bool
}

// New makes a Claimer and registers its metric.
func New(opts Options) (*Claimer, error) {
	if opts.Client == nil || opts.Machines == nil {
		return nil, errors.New("addrclaim: Client and Machines are required")
	}
	if !opts.Start.Is4() || !opts.End.Is4() || opts.End.Less(opts.Start) {
		return nil, fmt.Errorf("addrclaim: bad range %v-%v", opts.Start, opts.End)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = DefaultMaxInFlight
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	c := &Claimer{opts: opts, log: opts.Logger, taken: map[netip.Addr]bool{}, inFlight: make(chan struct{}, opts.MaxInFlight)}
	c.decisions = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pxejoin_addrclaim_decisions_total",
		Help: "Addresses of inventory machines without spec.ipv4, by decision: reserved (spec.ipv4), status (claimed earlier), " +
			"claimed (a new claim), conflict (address held by another machine, next tried), lost (another server recorded first), " +
			"exhausted (claims range full), error (API failed), busy (too many claims running, no answer)."}, []string{"decision"})
	for _, d := range []string{DecisionReserved, DecisionStatus, DecisionClaimed, DecisionConflict, DecisionLost, DecisionExhausted, DecisionError, DecisionBusy} {
		c.decisions.WithLabelValues(d)
	}
	if opts.Registerer != nil {
		if err := opts.Registerer.Register(c.decisions); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Count counts a decision taken without the API (reserved, or status read from the inventory).
func (c *Claimer) Count(decision string) { c.decisions.WithLabelValues(decision).Inc() }

// Contains reports whether ip lies in the claims range.
func (c *Claimer) Contains(ip netip.Addr) bool {
	return ip.Is4() && !ip.Less(c.opts.Start) && !c.opts.End.Less(ip)
}

// Claim returns the address of Machine name: the one recorded in its status, else a new claim.
// Concurrent calls for one machine share one claim.
func (c *Claimer) Claim(ctx context.Context, name string) (netip.Addr, error) {
	v, err, _ := c.flight.Do(name, func() (any, error) {
		select {
		case c.inFlight <- struct{}{}:
			defer func() { <-c.inFlight }()
		default:
			c.decisions.WithLabelValues(DecisionBusy).Inc()
			return netip.Addr{}, ErrBusy
		}
		ctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
		defer cancel()
		ip, err := c.claim(ctx, name)
		if err != nil && !errors.Is(err, errExhausted) {
			c.decisions.WithLabelValues(DecisionError).Inc()
		}
		return ip, err
	})
	if err != nil {
		return netip.Addr{}, err
	}
	return v.(netip.Addr), nil
}

var errExhausted = errors.New("exhausted")

// ErrBusy is returned while Options.MaxInFlight claims run: the machine asks again (DHCP
// retransmits) and gets its address once the burst has drained.
var ErrBusy = errors.New("addrclaim: too many first-boot claims at once; the machine retransmits and is answered once they drain")

func (c *Claimer) claim(ctx context.Context, name string) (netip.Addr, error) {
	m, err := c.machine(ctx, name)
	if err != nil {
		return netip.Addr{}, err
	}
	if ip, ok := recorded(m); ok {
		c.decisions.WithLabelValues(DecisionStatus).Inc()
		return ip, nil
	}
	ip, err := c.search(ctx, m)
	if errors.Is(err, errExhausted) && c.forget() {
		ip, err = c.search(ctx, m) // addresses seen taken may have been freed since (their Machines deleted)
	}
	if errors.Is(err, errExhausted) {
		c.decisions.WithLabelValues(DecisionExhausted).Inc()
		return netip.Addr{}, fmt.Errorf("no free address in the claims range %s-%s for Machine %s: widen the range or give the Machine spec.ipv4: %w",
			c.opts.Start, c.opts.End, name, errExhausted)
	}
	return ip, err
}

// search claims the first free address for m, starting at an address that depends on m's name
// only: servers racing for one machine try the same address first and end with one claim.
func (c *Claimer) search(ctx context.Context, m *machineapi.Machine) (netip.Addr, error) {
	name := m.Name
	start, size := u32(c.opts.Start), u32(c.opts.End)-u32(c.opts.Start)+1
	first := hash(name) % size
	for i := range size {
		ip := addr32(start + (first+i)%size)
		if c.isTaken(ip) {
			continue
		}
		err := c.create(ctx, ip, m)
		if apierrors.IsAlreadyExists(err) {
			ours, gerr := c.ownedBy(ctx, ip, m)
			if gerr != nil {
				return netip.Addr{}, gerr
			}
			if !ours {
				c.setTaken(ip)
				c.decisions.WithLabelValues(DecisionConflict).Inc()
				continue
			}
			err = nil // created for this machine before (by a server that died, or racing us)
		}
		if err != nil {
			return netip.Addr{}, fmt.Errorf("claim %s for Machine %s: %w", ip, name, err)
		}
		// Taken from now on: this server's next machines skip it without asking the API. Their
		// names' hashed starts collide with its own claims (a survivor claiming a dead server's
		// machines made only collisions with its own): each collision cost a Create and a Get
		// of the 25 requests a second the claims budget allows.
		c.setTaken(ip)
		return c.record(ctx, ip, m)
	}
	return netip.Addr{}, errExhausted
}

func (c *Claimer) machine(ctx context.Context, name string) (*machineapi.Machine, error) {
	u, err := c.opts.Machines.Resource(machineapi.GVR).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("read Machine %s: %w", name, err)
	}
	return machineapi.FromUnstructured(u)
}

// recorded returns the address m's status records, if any.
func recorded(m *machineapi.Machine) (netip.Addr, bool) {
	ip, err := netip.ParseAddr(m.Status.ClaimedIPv4)
	return ip, err == nil && ip.Is4()
}

// create creates the IPAddress object of ip for m.
func (c *Claimer) create(ctx context.Context, ip netip.Addr, m *machineapi.Machine) error {
	obj := &networkingv1.IPAddress{
		ObjectMeta: metav1.ObjectMeta{
			Name:   ip.String(),
			Labels: map[string]string{networkingv1.LabelManagedBy: ManagedBy},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: machineapi.GVK.GroupVersion().String(), Kind: machineapi.Kind,
				Name: m.Name, UID: m.UID}},
		},
		Spec: networkingv1.IPAddressSpec{ParentRef: &networkingv1.ParentReference{Group: machineapi.Group, Resource: machineapi.Resource, Name: m.Name}},
	}
	_, err := c.opts.Client.NetworkingV1().IPAddresses().Create(ctx, obj, metav1.CreateOptions{FieldManager: FieldManager})
	return err
}

// ownedBy reports whether the existing IPAddress of ip belongs to m (this Machine object, not an
// earlier one of the same name).
func (c *Claimer) ownedBy(ctx context.Context, ip netip.Addr, m *machineapi.Machine) (bool, error) {
	obj, err := c.opts.Client.NetworkingV1().IPAddresses().Get(ctx, ip.String(), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil // deleted meanwhile: tried again on the next claim
	}
	if err != nil {
		return false, fmt.Errorf("read IPAddress %s: %w", ip, err)
	}
	for _, o := range obj.OwnerReferences {
		if o.UID == m.UID {
			return true, nil
		}
	}
	return false, nil
}

// record writes ip to m's status.claimedIPv4; if another server recorded an address first, that
// one is returned and ip's object deleted.
func (c *Claimer) record(ctx context.Context, ip netip.Addr, m *machineapi.Machine) (netip.Addr, error) {
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": machineapi.GVK.GroupVersion().String(), "kind": machineapi.Kind,
		"metadata": map[string]any{"name": m.Name, "uid": string(m.UID)},
		"status":   map[string]any{"claimedIPv4": ip.String()},
	}}
	machines := c.opts.Machines.Resource(machineapi.GVR)
	_, err := machines.ApplyStatus(ctx, m.Name, obj, metav1.ApplyOptions{FieldManager: c.fieldManager()})
	if err == nil {
		c.decisions.WithLabelValues(DecisionClaimed).Inc()
		c.log.Info("address claimed", "machine", m.Name, "ip", ip)
		return ip, nil
	}
	if !apierrors.IsConflict(err) {
		return netip.Addr{}, fmt.Errorf("record claim %s in Machine %s: %w", ip, m.Name, err)
	}
	// Another server recorded its claim first (or the Machine was replaced: its uid differs).
	cur, gerr := c.machine(ctx, m.Name)
	if gerr != nil {
		return netip.Addr{}, gerr
	}
	won, ok := recorded(cur)
	if !ok || cur.UID != m.UID {
		return netip.Addr{}, fmt.Errorf("record claim %s in Machine %s: %w", ip, m.Name, err)
	}
	if won != ip {
		c.release(ctx, ip, m.UID)
	}
	c.decisions.WithLabelValues(DecisionLost).Inc()
	return won, nil
}

// release deletes ip's object if it is still the one created for the Machine of uid.
func (c *Claimer) release(ctx context.Context, ip netip.Addr, uid types.UID) {
	obj, err := c.opts.Client.NetworkingV1().IPAddresses().Get(ctx, ip.String(), metav1.GetOptions{})
	if err != nil {
		return
	}
	owned := false
	for _, o := range obj.OwnerReferences {
		owned = owned || o.UID == uid
	}
	if !owned {
		return
	}
	pre := metav1.Preconditions{UID: &obj.UID}
	if err := c.opts.Client.NetworkingV1().IPAddresses().Delete(ctx, ip.String(), metav1.DeleteOptions{Preconditions: &pre}); err != nil && !apierrors.IsNotFound(err) {
		c.log.Warn("cannot delete an unused address claim; it is deleted with its Machine", "ip", ip, "err", err)
	}
}

func (c *Claimer) fieldManager() string {
	if c.opts.ServerName == "" {
		return FieldManager
	}
	return FieldManager + "/" + c.opts.ServerName
}

func (c *Claimer) isTaken(ip netip.Addr) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.taken[ip]
}

// forget clears the addresses seen taken; false if there were none.
func (c *Claimer) forget() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := len(c.taken)
	clear(c.taken)
	return n > 0
}

func (c *Claimer) setTaken(ip netip.Addr) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.taken[ip] = true
}

func hash(s string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(s))
	return h.Sum32()
}

func u32(a netip.Addr) uint32 { b := a.As4(); return binary.BigEndian.Uint32(b[:]) }

func addr32(u uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], u)
	return netip.AddrFrom4(b)
}

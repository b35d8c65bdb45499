package dhcpd

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pxejoin/pxejoin/bootserver/leases"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// allocator picks addresses. An offered address is held for its client for OfferHold (in memory
// only: an offer is a promise the client must confirm with a REQUEST); an ACKed one is protected by
// its lease in the store.
//
// Strangers (clients Config.Known does not know) are kept from crowding out inventory machines:
// their offers are held for UnknownOfferHold only, and the addresses they hold in a pool (offers
// and leases, tracked in strangers) are capped by strangerCap.
type allocator struct {
	store       *leases.Store
	serverIP    func() netip.Addr
	offerHold   time.Duration
	strangeHold time.Duration
	declineHold time.Duration
	maxUnknown  int
	shards      Shards // nil: this server alone serves the range
	// res are the reservations, replaced whole when the inventory changes (setInventory).
	res atomic.Pointer[reservations]

	mu        sync.Mutex
	inventory int // guarded by mu
	held      map[netip.Addr]hold
	heldBy    map[hwaddr.MAC]netip.Addr
	declined  map[netip.Addr]time.Time
	cursor    map[netip.Prefix]uint32
	lastSweep time.Time
	// strangers are the strangers holding an address (an offer or a lease) until a time, and
	// inPool how many of them each pool has. Both stay within the pools' strangerCap.
	strangers map[hwaddr.MAC]stranger
	inPool    map[netip.Prefix]int
}

// reservations index Config.Reservations both ways.
type reservations struct {
	byMAC map[hwaddr.MAC]Reservation
	byIP  map[netip.Addr]hwaddr.MAC
}

func newReservations(rs []Reservation) *reservations {
	x := &reservations{byMAC: map[hwaddr.MAC]Reservation{}, byIP: map[netip.Addr]hwaddr.MAC{}}
	for _, r := range rs {
		x.byMAC[r.MAC] = r
		x.byIP[r.IP] = r.MAC
	}
	return x
}

// setInventory replaces the inventory's size and the reservations.
func (a *allocator) setInventory(n int, rs []Reservation) {
	a.res.Store(newReservations(rs))
	a.mu.Lock()
	a.inventory = n
	a.mu.Unlock()
}

type stranger struct {
	pool  netip.Prefix
	until time.Time
}

type hold struct {
	mac   hwaddr.MAC
	until time.Time
}

func newAllocator(c *Config, serverIP func() netip.Addr) *allocator {
	a := &allocator{
		store:       c.Leases,
		serverIP:    serverIP,
		offerHold:   c.OfferHold,
		strangeHold: c.UnknownOfferHold,
		declineHold: c.DeclineHold,
		maxUnknown:  c.MaxUnknown,
		shards:      c.Shards,
		inventory:   c.Inventory,
		held:        map[netip.Addr]hold{},
		heldBy:      map[hwaddr.MAC]netip.Addr{},
		declined:    map[netip.Addr]time.Time{},
		cursor:      map[netip.Prefix]uint32{},
		strangers:   map[hwaddr.MAC]stranger{},
		inPool:      map[netip.Prefix]int{},
	}
	a.res.Store(newReservations(c.Reservations))
	if c.Known != nil && a.store != nil {
		now := time.Now()
		for _, l := range a.store.All() {
			if p := c.poolFor(l.IP); p != nil && l.Active(now) && !c.Known(l.MAC, nil) {
				a.setStranger(l.MAC, p.Subnet, l.Expiry)
			}
		}
	}
	return a
}

// strangerCap is how many addresses of p strangers may hold: MaxUnknown, but never so many that
// fewer than Inventory addresses of the range are left for known machines.
func (a *allocator) strangerCap(p *Pool) int {
	size := int(min(u32(p.End)-u32(p.Start)+1, 1<<30))
	return max(0, min(a.maxUnknown, size-a.inventory))
}

// admitStranger reports whether stranger mac may hold an address of p: it holds one already, or
// p has room under strangerCap. Callers hold mu.
func (a *allocator) admitStranger(p *Pool, mac hwaddr.MAC, now time.Time) bool {
	if st, ok := a.strangers[mac]; ok && st.pool == p.Subnet && now.Before(st.until) {
		return true
	}
	if a.inPool[p.Subnet] < a.strangerCap(p) {
		return true
	}
	for k, st := range a.strangers { // at most the pools' caps together: cheap
		if !now.Before(st.until) {
			a.dropStranger(k)
		}
	}
	return a.inPool[p.Subnet] < a.strangerCap(p)
}

// setStranger records that stranger mac holds an address of pool until until. Callers hold mu.
func (a *allocator) setStranger(mac hwaddr.MAC, pool netip.Prefix, until time.Time) {
	a.dropStranger(mac)
	a.strangers[mac] = stranger{pool: pool, until: until}
	a.inPool[pool]++
}

// dropStranger forgets stranger mac. Callers hold mu.
func (a *allocator) dropStranger(mac hwaddr.MAC) {
	if st, ok := a.strangers[mac]; ok {
		delete(a.strangers, mac)
		a.inPool[st.pool]--
	}
}

func u32(a netip.Addr) uint32 { b := a.As4(); return binary.BigEndian.Uint32(b[:]) }

func addr32(u uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], u)
	return netip.AddrFrom4(b)
}

// reservation returns mac's reservation if its address lies in p.
func (a *allocator) reservation(p *Pool, mac hwaddr.MAC) (Reservation, bool) {
	r, ok := a.res.Load().byMAC[mac]
	if !ok || !p.Subnet.Contains(r.IP) {
		return Reservation{}, false
	}
	return r, true
}

// usable reports whether ip may be given to mac out of p at now. Callers hold mu.
func (a *allocator) usable(p *Pool, ip netip.Addr, mac hwaddr.MAC, now time.Time) bool {
	if !ip.Is4() || !p.Subnet.Contains(ip) || ip == a.serverIP() || ip == p.Router {
		return false
	}
	n := u32(ip)
	bits := 32 - p.Subnet.Bits()
	if bits >= 2 {
		host := n & (1<<bits - 1)
		if host == 0 || host == 1<<bits-1 { // network or broadcast address
			return false
		}
	}
	if owner, ok := a.res.Load().byIP[ip]; ok {
		if owner != mac {
			return false
		}
	} else if ip.Less(p.Start) || p.End.Less(ip) {
		return false
	} else if a.shards != nil && !a.shardUsable(ip, mac, now) {
		return false
	}
	if until, ok := a.declined[ip]; ok {
		if now.Before(until) {
			return false
		}
		delete(a.declined, ip)
	}
	if h, ok := a.held[ip]; ok && h.mac != mac && now.Before(h.until) {
		return false
	}
	if holder, ok := a.store.HolderOf(ip, now); ok && holder != mac {
		return false
	}
	return true
}

// holdFor holds ip for mac until now+d, dropping mac's other hold. Callers hold mu.
func (a *allocator) holdFor(ip netip.Addr, mac hwaddr.MAC, now time.Time, d time.Duration) {
	if old, ok := a.heldBy[mac]; ok && old != ip {
		if a.held[old].mac == mac {
			delete(a.held, old)
		}
	}
	a.held[ip] = hold{mac: mac, until: now.Add(d)}
	a.heldBy[mac] = ip
}

// sweep drops expired holds, at most once per strangers' offer hold. Callers hold mu.
func (a *allocator) sweep(now time.Time) {
	if now.Sub(a.lastSweep) < min(a.offerHold, a.strangeHold) {
		return
	}
	a.lastSweep = now
	for ip, h := range a.held {
		if !now.Before(h.until) {
			delete(a.held, ip)
			if a.heldBy[h.mac] == ip {
				delete(a.heldBy, h.mac)
			}
		}
	}
}

// offer picks an address in p for mac and holds it: mac's reservation, the address it holds or
// held, the one it asked for (option 50), else the next free one in the range. A stranger (known
// false) past p's strangerCap gets none: the result is then errStrangerCap.
func (a *allocator) offer(p *Pool, mac hwaddr.MAC, known bool, requested netip.Addr, now time.Time) (netip.Addr, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.sweep(now)
	d := a.offerHold
	if !known {
		if !a.admitStranger(p, mac, now) {
			return netip.Addr{}, errStrangerCap
		}
		d = a.strangeHold
	}
	take := func(ip netip.Addr) {
		a.holdFor(ip, mac, now, d)
		if !known {
			until := now.Add(d)
			if l, ok := a.store.Get(mac); ok && l.IP == ip && l.Expiry.After(until) {
				until = l.Expiry // its lease keeps the address longer than the offer
			}
			a.setStranger(mac, p.Subnet, until)
		}
	}
	var candidates []netip.Addr
	if r, ok := a.reservation(p, mac); ok {
		candidates = append(candidates, r.IP)
	}
	if ip, ok := a.heldBy[mac]; ok {
		candidates = append(candidates, ip)
	}
	if l, ok := a.store.Get(mac); ok {
		candidates = append(candidates, l.IP)
	}
	if requested.Is4() {
		candidates = append(candidates, requested)
	}
	for _, ip := range candidates {
		if a.usable(p, ip, mac, now) {
			take(ip)
			return ip, nil
		}
	}
	start, end := u32(p.Start), u32(p.End)
	size := end - start + 1
	cur, ok := a.cursor[p.Subnet]
	if !ok || cur < start || cur > end {
		cur = start
	}
	served := a.shards == nil
	for i := uint32(0); i < size; i++ {
		ip := addr32(cur)
		cur++
		if cur > end {
			cur = start
		}
		if a.notServed(p, ip, now) {
			continue
		}
		served = true
		if a.usable(p, ip, mac, now) {
			a.cursor[p.Subnet] = cur
			take(ip)
			return ip, nil
		}
	}
	if !served {
		return netip.Addr{}, errNoShard
	}
	return netip.Addr{}, errExhausted
}

var (
	errExhausted   = errors.New("pool exhausted")
	errNoShard     = errors.New("this server holds no shard of the pool")
	errStrangerCap = errors.New("unknown machines hold as many addresses as they may")
)

// claim checks that mac may have ip out of p and holds it while the lease is committed; a
// stranger past p's strangerCap may not.
func (a *allocator) claim(p *Pool, mac hwaddr.MAC, known bool, ip netip.Addr, now time.Time) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.usable(p, ip, mac, now) || (!known && !a.admitStranger(p, mac, now)) {
		return false
	}
	a.holdFor(ip, mac, now, a.offerHold)
	if !known {
		a.setStranger(mac, p.Subnet, now.Add(a.offerHold))
	}
	return true
}

// leased records that stranger mac's lease in p lasts until expiry (its REQUEST was ACKed).
func (a *allocator) leased(p *Pool, mac hwaddr.MAC, expiry time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.setStranger(mac, p.Subnet, expiry)
}

// forget drops mac's place among the strangers (its lease was released or declined, or its
// commit failed).
func (a *allocator) forget(mac hwaddr.MAC) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.dropStranger(mac)
}

// unhold forgets mac's hold (its lease is committed, or it took another server's offer).
func (a *allocator) unhold(mac hwaddr.MAC) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if ip, ok := a.heldBy[mac]; ok {
		if a.held[ip].mac == mac {
			delete(a.held, ip)
		}
		delete(a.heldBy, mac)
	}
}

// decline keeps ip out of use for declineHold: a client found it in use on the link.
func (a *allocator) decline(ip netip.Addr, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.declined[ip] = now.Add(a.declineHold)
}

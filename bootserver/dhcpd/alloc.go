package dhcpd

import (
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pxejoin/pxejoin/bootserver/leases"
)

// allocator picks addresses. An offered address is held for its client for OfferHold (in memory
// only: an offer is a promise the client must confirm with a REQUEST); an ACKed one is protected by
// its lease in the store.
type allocator struct {
	store       *leases.Store
	serverIP    func() netip.Addr
	offerHold   time.Duration
	declineHold time.Duration
	resByMAC    map[string]Reservation
	resByIP     map[netip.Addr]string

	mu        sync.Mutex
	held      map[netip.Addr]hold
	heldBy    map[string]netip.Addr
	declined  map[netip.Addr]time.Time
	cursor    map[netip.Prefix]uint32
	lastSweep time.Time
}

type hold struct {
	mac   string
	until time.Time
}

func newAllocator(c *Config, serverIP func() netip.Addr) *allocator {
	a := &allocator{
		store:       c.Leases,
		serverIP:    serverIP,
		offerHold:   c.OfferHold,
		declineHold: c.DeclineHold,
		resByMAC:    map[string]Reservation{},
		resByIP:     map[netip.Addr]string{},
		held:        map[netip.Addr]hold{},
		heldBy:      map[string]netip.Addr{},
		declined:    map[netip.Addr]time.Time{},
		cursor:      map[netip.Prefix]uint32{},
	}
	for _, r := range c.Reservations {
		a.resByMAC[string(r.MAC)] = r
		a.resByIP[r.IP] = string(r.MAC)
	}
	return a
}

func u32(a netip.Addr) uint32 { b := a.As4(); return binary.BigEndian.Uint32(b[:]) }

func addr32(u uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], u)
	return netip.AddrFrom4(b)
}

// reservation returns mac's reservation if its address lies in p.
func (a *allocator) reservation(p *Pool, mac net.HardwareAddr) (Reservation, bool) {
	r, ok := a.resByMAC[string(mac)]
	if !ok || !p.Subnet.Contains(r.IP) {
		return Reservation{}, false
	}
	return r, true
}

// usable reports whether ip may be given to mac out of p at now. Callers hold mu.
func (a *allocator) usable(p *Pool, ip netip.Addr, mac string, now time.Time) bool {
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
	if owner, ok := a.resByIP[ip]; ok {
		if owner != mac {
			return false
		}
	} else if ip.Less(p.Start) || p.End.Less(ip) {
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
	if holder, ok := a.store.HolderOf(ip, now); ok && string(holder) != mac {
		return false
	}
	return true
}

// holdFor holds ip for mac until now+offerHold, dropping mac's other hold. Callers hold mu.
func (a *allocator) holdFor(ip netip.Addr, mac string, now time.Time) {
	if old, ok := a.heldBy[mac]; ok && old != ip {
		if a.held[old].mac == mac {
			delete(a.held, old)
		}
	}
	a.held[ip] = hold{mac: mac, until: now.Add(a.offerHold)}
	a.heldBy[mac] = ip
}

// sweep drops expired holds, at most once per offerHold. Callers hold mu.
func (a *allocator) sweep(now time.Time) {
	if now.Sub(a.lastSweep) < a.offerHold {
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
// held, the one it asked for (option 50), else the next free one in the range.
func (a *allocator) offer(p *Pool, mac net.HardwareAddr, requested netip.Addr, now time.Time) (netip.Addr, bool) {
	k := string(mac)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.sweep(now)
	var candidates []netip.Addr
	if r, ok := a.reservation(p, mac); ok {
		candidates = append(candidates, r.IP)
	}
	if ip, ok := a.heldBy[k]; ok {
		candidates = append(candidates, ip)
	}
	if l, ok := a.store.Get(mac); ok {
		candidates = append(candidates, l.IP)
	}
	if requested.Is4() {
		candidates = append(candidates, requested)
	}
	for _, ip := range candidates {
		if a.usable(p, ip, k, now) {
			a.holdFor(ip, k, now)
			return ip, true
		}
	}
	start, end := u32(p.Start), u32(p.End)
	size := end - start + 1
	cur, ok := a.cursor[p.Subnet]
	if !ok || cur < start || cur > end {
		cur = start
	}
	for i := uint32(0); i < size; i++ {
		ip := addr32(cur)
		cur++
		if cur > end {
			cur = start
		}
		if a.usable(p, ip, k, now) {
			a.cursor[p.Subnet] = cur
			a.holdFor(ip, k, now)
			return ip, true
		}
	}
	return netip.Addr{}, false
}

// claim checks that mac may have ip out of p and holds it while the lease is committed.
func (a *allocator) claim(p *Pool, mac net.HardwareAddr, ip netip.Addr, now time.Time) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.usable(p, ip, string(mac), now) {
		return false
	}
	a.holdFor(ip, string(mac), now)
	return true
}

// unhold forgets mac's hold (its lease is committed, or it took another server's offer).
func (a *allocator) unhold(mac net.HardwareAddr) {
	a.mu.Lock()
	defer a.mu.Unlock()
	k := string(mac)
	if ip, ok := a.heldBy[k]; ok {
		if a.held[ip].mac == k {
			delete(a.held, ip)
		}
		delete(a.heldBy, k)
	}
}

// decline keeps ip out of use for declineHold: a client found it in use on the link.
func (a *allocator) decline(ip netip.Addr, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.declined[ip] = now.Add(a.declineHold)
}

package dhcpd

import (
	"net/netip"
	"time"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// Shards limits the dynamic range to the parts this server holds, when several servers share a
// segment (bootserver/shards.Manager implements it). Reservations are not limited: every server
// gives a reserved address to its machine.
//
// With Shards set, the server
//   - offers and ACKs an address of the range only while Serves holds for it, and checks Serves
//     again once the lease is durable, before the ACK leaves;
//   - stays silent (drop reason "shard_not_held") on a REQUEST for an address of the range it does
//     not serve: the server that holds the address's shard answers, and a NAK from this one would
//     take a working address away (the INIT-REBOOT shortcut applies in held shards only);
//   - hands a free-looking address to a new holder only when Reusable says so;
//   - ends each lease no later than Expiry allows (a binding not yet mirrored gets at most MCLT);
//   - answers at once only its share of the DISCOVERs (Share; balance.go).
type Shards interface {
	// Serves reports whether this server may bind ip at now.
	Serves(ip netip.Addr, now time.Time) bool
	// Reusable reports whether ip, free in the local store, may go to a new holder at now.
	Reusable(ip netip.Addr, now time.Time) bool
	// Expiry caps the end of a lease of ip by mac that would otherwise end at want.
	Expiry(mac hwaddr.MAC, ip netip.Addr, now, want time.Time) time.Time
	// Share returns this server's index among the live servers of the segment (sorted alike on
	// every server) and their number; index < 0 or of < 2: this server answers every DISCOVER.
	Share() (index, of int)
}

// sharded reports whether ip is subject to Shards: Shards is set and ip is in p's dynamic range and
// reserved for nobody.
func (a *allocator) sharded(p *Pool, ip netip.Addr) bool {
	if a.shards == nil || ip.Less(p.Start) || p.End.Less(ip) {
		return false
	}
	_, reserved := a.res.Load().byIP[ip]
	return !reserved
}

// notServed reports whether a REQUEST for ip is another server's to answer.
func (a *allocator) notServed(p *Pool, ip netip.Addr, now time.Time) bool {
	return a.sharded(p, ip) && !a.shards.Serves(ip, now)
}

// shardUsable is usable's test for a sharded address: held, and either mac's own binding or
// reusable. Callers hold mu.
func (a *allocator) shardUsable(ip netip.Addr, mac hwaddr.MAC, now time.Time) bool {
	if !a.shards.Serves(ip, now) {
		return false
	}
	if h, ok := a.held[ip]; ok && h.mac == mac {
		return true
	}
	if l, ok := a.store.Get(mac); ok && l.IP == ip {
		return true
	}
	return a.shards.Reusable(ip, now)
}

// leaseEnd is when a lease of ip by mac out of p granted at now ends.
func (a *allocator) leaseEnd(p *Pool, mac hwaddr.MAC, ip netip.Addr, now time.Time) time.Time {
	end := now.Add(p.LeaseTime)
	if a.sharded(p, ip) {
		end = a.shards.Expiry(mac, ip, now, end)
	}
	return end
}

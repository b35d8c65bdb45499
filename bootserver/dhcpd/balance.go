package dhcpd

import (
	"sync"
	"time"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// Several servers on one segment (Config.Shards) all receive every broadcast DISCOVER. Answered by
// every server, each DISCOVER would cost one offer per server, of which the client takes one: an
// address held (and often probed) per server, and, for an inventory machine, a bootstrap token
// minted ahead per server (bootserver/server's onDHCP) and a first-boot claim tried per server. So
// each DISCOVER has one server that answers it at once, as in RFC 3074's load balancing (what ISC
// dhcpd's failover and Kea's HA load-balancing mode do): the RFC's hash of the client's hardware
// address, modulo the number of live servers, picks one of them in the sorted order every server
// sees (Shards.Share). The others stay silent (drop reason "peer_share") unless the machine is
// still DISCOVERing TakeoverAfter after they first left it to its server: that server may be dead,
// cut off, without a shard yet, or slow, and the machine must not wait for the presence Lease to
// expire. The price: while a dead server still counts as live, its machines wait TakeoverAfter
// (and their next retransmission) for an answer. CPU is not what it saves: an offer costs no disk
// write, and on the 2-core bench machine two servers' DORA per CPU-second was the same with and
// without it (README, "Several boot servers").
//
// Deviations, with the reason:
//   - The hash is over chaddr even when the client sends a client identifier (option 61, which RFC
//     3074 prefers): pxejoin keys a machine by its MAC everywhere, and firmware, iPXE and the agent
//     of one machine send different identifiers (or none).
//   - A retransmission is recognised by time, not by the secs field (ISC's "load balance max
//     seconds"): iPXE fills secs with a packet count and flags (count<<2, iPXE's dhcp.c), so its
//     first DISCOVER already says 4 "seconds", and much firmware sends 0.
//   - A REQUEST seen from the machine (to any server) ends its wait: the iPXE DISCOVER that follows
//     the firmware's, and the agent's after that, are new exchanges, each left to the machine's server.

// DefaultTakeoverAfter is Config.TakeoverAfter's default: a machine that iPXE (timeouts 1, 2, 4 s)
// or PXE firmware (4, 8, 16 s) is still DISCOVERing after it gets answers from every server at
// its next retransmission (iPXE's third DISCOVER, at 3 s; firmware's second, at 4 s).
const DefaultTakeoverAfter = 2 * time.Second

// maxWaiting bounds the machines whose DISCOVERs this server left to another and remembers: past
// it, a new machine's DISCOVER is answered here too (the behaviour without balancing), counted in
// pxejoin_dhcp_balance_full_total, so that no machine waits on a full table.
const maxWaiting = 4096

// forgetAfter is how long a machine's first DISCOVER left to another server is remembered without
// a REQUEST from it: longer than firmware's whole DISCOVER schedule (4+8+16+32 s).
const forgetAfter = time.Minute

// mixTable is RFC 3074's mixing table (section 6): the 256 byte values in pseudo-random order.
var mixTable = [256]byte{
	251, 175, 119, 215, 81, 14, 79, 191, 103, 49, 181, 143, 186, 157, 0, 232,
	31, 32, 55, 60, 152, 58, 17, 237, 174, 70, 160, 144, 220, 90, 57, 223,
	59, 3, 18, 140, 111, 166, 203, 196, 134, 243, 124, 95, 222, 179, 197, 65,
	180, 48, 36, 15, 107, 46, 233, 130, 165, 30, 123, 161, 209, 23, 97, 16,
	40, 91, 219, 61, 100, 10, 210, 109, 250, 127, 22, 138, 29, 108, 244, 67,
	207, 9, 178, 204, 74, 98, 126, 249, 167, 116, 34, 77, 193, 200, 121, 5,
	20, 113, 71, 35, 128, 13, 182, 94, 25, 226, 227, 199, 75, 27, 41, 245,
	230, 224, 43, 225, 177, 26, 155, 150, 212, 142, 218, 115, 241, 73, 88, 105,
	39, 114, 62, 255, 192, 201, 145, 214, 168, 158, 221, 148, 154, 122, 12, 84,
	82, 163, 44, 139, 228, 236, 205, 242, 217, 11, 187, 146, 159, 64, 86, 239,
	195, 42, 106, 198, 118, 112, 184, 172, 87, 2, 173, 117, 176, 229, 247, 253,
	137, 185, 99, 164, 102, 147, 45, 66, 231, 52, 141, 211, 194, 206, 246, 238,
	56, 110, 78, 248, 63, 240, 189, 93, 92, 51, 53, 183, 19, 171, 72, 50,
	33, 104, 101, 69, 8, 252, 83, 120, 76, 135, 85, 54, 202, 125, 188, 213,
	96, 235, 136, 208, 162, 129, 190, 132, 156, 38, 47, 1, 7, 254, 24, 4,
	216, 131, 89, 21, 28, 133, 37, 153, 149, 80, 170, 68, 6, 169, 234, 151,
}

// bucket is RFC 3074's hash of key (section 6: Pearson's hash, seeded with the key's length,
// over the key from its last byte to its first).
func bucket(key []byte) byte {
	h := byte(len(key))
	for i := len(key) - 1; i >= 0; i-- {
		h = mixTable[h^key[i]]
	}
	return h
}

// balancer decides which DISCOVERs this server answers (see above). Its methods are safe for
// concurrent use.
type balancer struct {
	shards Shards
	after  time.Duration
	m      *Metrics

	mu        sync.Mutex
	waiting   map[hwaddr.MAC]time.Time // first DISCOVER left to another server, per machine
	lastSweep time.Time
}

func newBalancer(s Shards, after time.Duration, m *Metrics) *balancer {
	return &balancer{shards: s, after: after, m: m, waiting: map[hwaddr.MAC]time.Time{}}
}

// answers reports whether this server answers mac's DISCOVER at now.
func (b *balancer) answers(mac hwaddr.MAC, now time.Time) bool {
	if b == nil {
		return true
	}
	me, of := b.shards.Share()
	if me < 0 || of < 2 || int(bucket(mac[:]))%of == me {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if now.Sub(b.lastSweep) >= forgetAfter/2 {
		b.lastSweep = now
		for m, first := range b.waiting {
			if now.Sub(first) >= forgetAfter {
				delete(b.waiting, m)
			}
		}
	}
	first, ok := b.waiting[mac]
	switch {
	case ok && now.Sub(first) < forgetAfter:
		if now.Sub(first) >= b.after {
			b.m.Takeovers.Inc()
			return true
		}
		return false
	case !ok && len(b.waiting) >= maxWaiting:
		b.m.BalanceFull.Inc()
		return true
	}
	b.waiting[mac] = now
	return false
}

// done forgets mac's wait: a REQUEST from it was seen, its exchange with some server went on.
func (b *balancer) done(mac hwaddr.MAC) {
	if b == nil {
		return
	}
	b.mu.Lock()
	delete(b.waiting, mac)
	b.mu.Unlock()
}

package dhcpd

import (
	"net/netip"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// dropClaim counts requests of inventory machines dropped because Config.Address failed.
const dropClaim = "claim"

// pinAddress asks Config.Address for a known machine's address, the same on every server of the
// segment, and makes it the machine's reservation here. It reports false when the request must
// be dropped: the address could not be had (the API is unreachable), and answering from the
// pool could give another server's address.
func (s *Server) pinAddress(p *Pool, f ClientFacts, known bool) bool {
	if s.cfg.Address == nil || !known {
		return true
	}
	ip, hostname, err := s.cfg.Address(f.MAC, f.UUID)
	if err != nil {
		s.warn.Warn("dhcp: no address for an inventory machine, no answer sent (it retransmits): check the boot server's access to the API, "+
			"or give the Machine spec.ipv4", "mac", f.MAC.String(), "err", err)
		s.drop(dropClaim, f.MAC, "")
		return false
	}
	if ip.Is4() && p.Subnet.Contains(ip) {
		s.alloc.pin(Reservation{MAC: f.MAC, IP: ip, Hostname: hostname})
	}
	return true
}

// pin makes r a reservation until the next setInventory (which then carries it: a claimed
// address is in the Machine's status, which the inventory reads).
func (a *allocator) pin(r Reservation) {
	for {
		old := a.res.Load()
		if cur, ok := old.byMAC[r.MAC]; ok && cur == r {
			return
		}
		n := &reservations{byMAC: make(map[hwaddr.MAC]Reservation, len(old.byMAC)+1), byIP: make(map[netip.Addr]hwaddr.MAC, len(old.byIP)+1)}
		for k, v := range old.byMAC {
			n.byMAC[k] = v
		}
		for k, v := range old.byIP {
			n.byIP[k] = v
		}
		if prev, ok := n.byMAC[r.MAC]; ok && n.byIP[prev.IP] == r.MAC {
			delete(n.byIP, prev.IP)
		}
		n.byMAC[r.MAC], n.byIP[r.IP] = r, r.MAC
		if a.res.CompareAndSwap(old, n) {
			return
		}
	}
}

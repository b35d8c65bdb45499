package server

import (
	"sync"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// uuidIndex remembers which MAC an inventory machine known only by its SMBIOS UUID last sent DHCP
// from, so its script and join requests (which carry a MAC) find it. It holds inventory UUIDs only
// and one MAC per UUID (a UUID seen from a new MAC replaces the old pair), so a flood of packets from
// new MACs cannot grow it past the inventory's size.
type uuidIndex struct {
	mu     sync.Mutex
	byMAC  map[hwaddr.MAC]string // mac → uuid
	byUUID map[string]hwaddr.MAC // uuid → mac
}

// remember records that mac sent uuid; call it only for UUIDs in the inventory.
func (x *uuidIndex) remember(mac hwaddr.MAC, uuid string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.byMAC == nil {
		x.byMAC, x.byUUID = map[hwaddr.MAC]string{}, map[string]hwaddr.MAC{}
	}
	if old, ok := x.byUUID[uuid]; ok {
		delete(x.byMAC, old)
	}
	if old, ok := x.byMAC[mac]; ok {
		delete(x.byUUID, old)
	}
	x.byMAC[mac], x.byUUID[uuid] = uuid, mac
}

// of is the inventory UUID mac last sent, or "".
func (x *uuidIndex) of(mac hwaddr.MAC) string {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.byMAC[mac]
}

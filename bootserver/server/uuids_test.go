package server

import (
	"fmt"
	"testing"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/bootserver/inventory"
)

// TestUUIDIndexBounded: DHCP packets from 20,000 new MACs (random UUIDs, or the UUID of an inventory
// machine copied) leave at most one pair per inventory UUID, and the inventory machine's UUID is still
// found from its MAC. The index used to keep every MAC's UUID for good (~246 bytes each).
func TestUUIDIndexBounded(t *testing.T) {
	const known = "4c4c4544-0000-1000-8000-000000000001"
	inv, err := inventory.New(&config.Config{
		Profiles: map[string]config.Profile{"worker": {Kernel: "k", Initrds: []string{"i"}}},
		Unknown:  config.Unknown{Profile: "worker"},
		Machines: []config.Machine{{UUID: known, Profile: "worker"}, {MAC: "52:54:00:00:00:02", Profile: "worker"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{inv: inv}
	const real = "52:54:00:00:00:01"
	s.noteUUID(real, known)
	for i := range 10000 {
		s.noteUUID(fmt.Sprintf("02:00:00:%02x:%02x:%02x", i>>16&0xff, i>>8&0xff, i&0xff), fmt.Sprintf("00000000-0000-0000-0000-%012x", i))
		s.noteUUID("52:54:00:00:00:02", fmt.Sprintf("00000000-0000-0000-0001-%012x", i)) // an inventory MAC with any UUID
	}
	if got := s.uuids.of(real); got != known {
		t.Errorf("the inventory machine's UUID: %q, want %s", got, known)
	}
	for i := range 10000 { // strangers copy the inventory machine's UUID
		s.noteUUID(fmt.Sprintf("02:01:00:%02x:%02x:%02x", i>>16&0xff, i>>8&0xff, i&0xff), known)
	}
	s.noteUUID(real, known) // the machine's next DHCP packet takes its UUID back
	if n := s.uuids.len(); n > 1 {
		t.Errorf("the index holds %d MACs, want at most 1 (the inventory's UUIDs)", n)
	}
	if got := s.uuids.of(real); got != known {
		t.Errorf("after the flood, the inventory machine's UUID: %q, want %s", got, known)
	}
}

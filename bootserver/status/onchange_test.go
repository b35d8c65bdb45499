package status

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// TestOnChange: every change names its machine, whether it is known and whether it is important
// (a new boot, an error, the node registered or ready); an event dropped at the phase limit is no
// change.
func TestOnChange(t *testing.T) {
	db := openDB(t, filepath.Join(t.TempDir(), "s.db"))
	defer db.Close()
	known, stranger := hwaddr.MAC{0x52, 0x54, 0, 0, 0, 1}, hwaddr.MAC{2, 0, 0, 0, 0, 1}
	var got []Change
	s, err := Open(db, Options{Known: func(m hwaddr.MAC) bool { return m == known }, OnChange: func(c Change) { got = append(got, c) }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	now := time.Now()
	steps := []struct {
		mac  hwaddr.MAC
		ev   Event
		want *Change
	}{
		{known, ev(PhaseDHCP, bootstatus.StateStart, now, true), &Change{MAC: known, Known: true, Important: true}}, // first boot
		{known, ev(PhaseScript, bootstatus.StateDone, now, true), &Change{MAC: known, Known: true}},
		{known, ev(bootstatus.PhaseJoin, bootstatus.StateError, now, false), &Change{MAC: known, Known: true, Important: true}},
		{known, ev(PhaseNodeRegistered, bootstatus.StateDone, now, false), &Change{MAC: known, Known: true, Important: true}},
		{known, ev(PhaseDHCP, bootstatus.StateStart, now, true), &Change{MAC: known, Known: true, Important: true}}, // reboot
		{stranger, ev(PhaseScript, bootstatus.StateDone, now, false), &Change{MAC: stranger, Important: true}},
		{stranger, ev(PhaseKernel, bootstatus.StateDone, now, false), &Change{MAC: stranger}},
	}
	for i, st := range steps {
		got = nil
		s.Record(st.mac, st.ev)
		if len(got) != 1 || got[0] != *st.want {
			t.Errorf("step %d: changes %+v, want %+v", i, got, *st.want)
		}
	}
	for i := range MaxPhases {
		s.Record(known, ev(string(rune('A'+i%26))+string(rune('a'+i/26)), bootstatus.StateDone, now, false))
	}
	got = nil
	s.Record(known, ev("one-too-many", bootstatus.StateDone, now, false))
	if len(got) != 0 {
		t.Errorf("a dropped event reported as a change: %+v", got)
	}
}

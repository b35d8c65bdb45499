package status

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	bolt "go.etcd.io/bbolt"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

func macN(i int) hwaddr.MAC {
	return hwaddr.MAC{0x52, 0x54, 0x02, byte(i >> 16), byte(i >> 8), byte(i)}
}

func allKnown(hwaddr.MAC) bool { return true }

func mustMAC(s string) hwaddr.MAC {
	m, err := hwaddr.Parse(s)
	if err != nil {
		panic(err)
	}
	return m
}

// TestReopen writes timelines through every path that reaches the disk (background flushes of a few
// or many machines, RecordSync) and checks after each round that a reopened store holds exactly what
// the running one held.
func TestReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	db := openDB(t, path)
	opts := Options{FlushInterval: time.Hour, Known: allKnown}
	s, err := Open(db, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close(); db.Close() }()
	t0 := time.Unix(1700000000, 0)
	rounds := []struct {
		name     string
		machines int
		sync     bool
	}{
		{"one machine", 1, false},
		{"a burst", 3000, false},
		{"the same burst again", 3000, false},
		{"agent reports, synced", 50, true},
		{"a larger burst", 9000, false},
		{"a few", 7, false},
	}
	for r, tc := range rounds {
		for i := 0; i < tc.machines; i++ {
			e := ev(PhaseScript, "done", t0.Add(time.Duration(r)*time.Minute), r == 0)
			if tc.sync {
				if _, err := s.RecordSync(macN(i), e); err != nil {
					t.Fatal(err)
				}
			} else {
				s.Record(macN(i), e)
			}
		}
		if err := s.Flush(); err != nil {
			t.Fatal(err)
		}
		want := s.All()
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		db.Close()
		db = openDB(t, path)
		if s, err = Open(db, opts); err != nil {
			t.Fatal(err)
		}
		if got := s.All(); !sameJSON(t, got, want) {
			t.Fatalf("%s: after reopen %d machines differ from the %d before (first %+v)", tc.name, len(got), len(want), got[0])
		}
	}
}

// sameJSON compares as the status pages show them (time.Time values differ in location only).
func sameJSON(t *testing.T, a, b []Machine) bool {
	t.Helper()
	ja, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	jb, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return string(ja) == string(jb)
}

// TestCorrupt: a value that is not a timeline stops Open with an error naming the machine.
func TestCorrupt(t *testing.T) {
	db := openDB(t, filepath.Join(t.TempDir(), "state.db"))
	defer db.Close()
	err := db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket(bucket)
		if err != nil {
			return err
		}
		return b.Put([]byte("52:54:00:00:00:01"), []byte("[1"))
	})
	if err != nil {
		t.Fatal(err)
	}
	if s, err := Open(db, Options{}); err == nil {
		s.Close()
		t.Fatal("a corrupt timeline opened")
	} else if want := "status: cannot load the timelines from the state store: timeline of 52:54:00:00:00:01: "; err.Error()[:len(want)] != want {
		t.Fatalf("error %q", err)
	}
}

// TestDiskFormat: a timeline's key on disk is the MAC's text and its value JSON with the same text,
// as before MACs had a type of their own.
func TestDiskFormat(t *testing.T) {
	db := openDB(t, filepath.Join(t.TempDir(), "state.db"))
	defer db.Close()
	s, err := Open(db, Options{FlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.RecordSync(mustMAC("52:54:00:AB:CD:01"), ev(PhaseDHCP, "start", time.Unix(1700000000, 0), true)); err != nil {
		t.Fatal(err)
	}
	err = db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).ForEach(func(k, v []byte) error {
			if string(k) != "52:54:00:ab:cd:01" || !strings.Contains(string(v), `"mac":"52:54:00:ab:cd:01"`) {
				t.Errorf("on disk: %q = %s", k, v)
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
}

// storedMACs counts the timelines on disk.
func storedMACs(t *testing.T, s *Store) int {
	t.Helper()
	n := 0
	if err := s.db.View(func(tx *bolt.Tx) error { n = tx.Bucket(bucket).Stats().KeyN; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestUnknownFlood records events for 50,000 MACs not in the inventory, as a flood of status POSTs,
// DISCOVERs or script GETs from random MACs does, between the events of inventory machines: these keep
// their timelines, and unknown machines never hold more than their budget, in memory or on disk, nor
// after a restart. Inventory machines are known by the Known predicate (as the boot server's
// inventory says), or by an Identity with Known set (a machine found by its SMBIOS UUID).
func TestUnknownFlood(t *testing.T) {
	const flood, budget = 50000, DefaultMaxUnknown
	inventory := map[hwaddr.MAC]bool{}
	for i := range 5 {
		inventory[hwaddr.MAC{0x52, 0x54, 0, 0xaa, 0, byte(i)}] = true
	}
	byUUID := mustMAC("52:54:00:bb:00:01")
	opts := Options{FlushInterval: time.Hour, Known: func(mac hwaddr.MAC) bool { return inventory[mac] }}
	path := filepath.Join(t.TempDir(), "state.db")
	db := openDB(t, path)
	s, err := Open(db, opts)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Unix(1700000000, 0)
	inventoryEvents := func(at time.Time) {
		for mac := range inventory {
			s.Record(mac, ev(PhaseDHCP, "start", at, true))
		}
		s.RecordAs(byUUID, &Identity{NodeName: "by-uuid", Profile: "worker", Known: true}, ev(PhaseScript, "done", at, true))
	}
	inventoryEvents(t0)
	for i := range flood {
		at := t0.Add(time.Duration(i) * time.Millisecond)
		s.Record(macN(i), ev(PhaseDHCP, "start", at, true))
		if i%1000 == 999 {
			inventoryEvents(at)
			if err := s.Flush(); err != nil {
				t.Fatal(err)
			}
		}
	}
	check := func(when string) {
		t.Helper()
		for mac := range inventory {
			if m, ok := s.Get(mac); !ok || m.LastPhase != PhaseDHCP {
				t.Errorf("%s: inventory machine %s has no timeline", when, mac)
			}
		}
		if m, ok := s.Get(byUUID); !ok || m.NodeName != "by-uuid" {
			t.Errorf("%s: machine known by UUID has no timeline", when)
		}
		if n := len(s.All()); n != len(inventory)+1+budget {
			t.Errorf("%s: %d timelines in memory, want %d inventory + %d unknown", when, n, len(inventory)+1, budget)
		}
		if n := storedMACs(t, s); n != len(inventory)+1+budget {
			t.Errorf("%s: %d timelines on disk, want %d inventory + %d unknown", when, n, len(inventory)+1, budget)
		}
		// The unknown machines kept are the most recently seen.
		if _, ok := s.Get(macN(flood - budget)); !ok {
			t.Errorf("%s: the most recent unknown machines were evicted", when)
		}
		if _, ok := s.Get(macN(flood - budget - 1)); ok {
			t.Errorf("%s: an older unknown machine was kept", when)
		}
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	check("after the flood")
	if got := testutil.ToFloat64(s.evictions); got != flood-budget {
		t.Errorf("evictions counted: %v, want %d", got, flood-budget)
	}
	s = reopen(t, s, db, path, opts)
	check("after a restart")
}

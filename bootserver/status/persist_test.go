package status

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func macN(i int) string { return fmt.Sprintf("52:54:02:%02x:%02x:%02x", i>>16, (i>>8)&0xff, i&0xff) }

// TestLogReopen writes timelines through every path that reaches the disk (background flushes of
// a few or many machines, RecordSync, compactions) and checks after each round that a reopened
// store holds exactly what the running one held, and that compaction keeps the log small.
func TestLogReopen(t *testing.T) {
	defer func(e int, b int64) { compactEntries, compactSlack = e, b }(compactEntries, compactSlack)
	compactEntries, compactSlack = 40, 1<<20
	path := filepath.Join(t.TempDir(), "state.db")
	db := openDB(t, path)
	s, err := Open(db, Options{FlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close(); db.Close() }()
	t0 := time.Unix(1700000000, 0)
	compactions := 0
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
		// The second flush has nothing to write, but compacts a log the first left over its bound.
		for range 2 {
			before := s.log.entries
			if err := s.Flush(); err != nil {
				t.Fatal(err)
			}
			if s.log.entries < before {
				compactions++
			}
		}
		if s.log.bytes > 4*s.log.compacted+compactSlack {
			t.Errorf("%s: the log holds %d bytes, last compaction %d", tc.name, s.log.bytes, s.log.compacted)
		}
		want := s.All()
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		db.Close()
		db = openDB(t, path)
		if s, err = Open(db, Options{FlushInterval: time.Hour}); err != nil {
			t.Fatal(err)
		}
		if got := s.All(); !sameJSON(t, got, want) {
			t.Fatalf("%s: after reopen %d machines differ from the %d before (first %+v)", tc.name, len(got), len(want), got[0])
		}
		if live := liveBytes(t, s); s.log.compacted != live {
			t.Errorf("%s: after reopen the store takes its last compaction as %d bytes; a compaction would write %d", tc.name, s.log.compacted, live)
		}
	}
	if compactions == 0 {
		t.Error("no round compacted the log")
	}
}

// liveBytes is the size of a compaction of s: one record per machine.
func liveBytes(t *testing.T, s *Store) int64 {
	t.Helper()
	var n int64
	for _, m := range s.All() {
		rec, err := appendRecord(nil, m.MAC, &m)
		if err != nil {
			t.Fatal(err)
		}
		n += int64(len(rec))
	}
	return n
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

// TestLegacyTimelines opens a database written before the log (one key per machine in bucket
// "timelines"), keeps its timelines, and drops the old bucket at the first flush.
func TestLegacyTimelines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	db := openDB(t, path)
	old := Machine{MAC: macN(1), NodeName: "n1", Boot: 2, Phases: []Phase{{Phase: PhaseScript, State: "done", Source: SourceHTTP}}}
	err := db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket(legacyBucket)
		if err != nil {
			return err
		}
		v, _ := json.Marshal(old)
		return b.Put([]byte(old.MAC), v)
	})
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(db, Options{FlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := s.Get(old.MAC); !ok || got.NodeName != "n1" || got.Boot != 2 {
		t.Fatalf("legacy timeline: %+v %v", got, ok)
	}
	s = reopen(t, s, db, path) // Close flushes: a compaction, since the legacy bucket is there
	if got, ok := s.Get(old.MAC); !ok || got.NodeName != "n1" {
		t.Fatalf("after the compaction: %+v %v", got, ok)
	}
	_ = s.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(legacyBucket) != nil {
			t.Error("the legacy bucket is still there after a compaction")
		}
		return nil
	})
}

// TestLogCorrupt: a log value that does not parse stops Open with an error naming it.
func TestLogCorrupt(t *testing.T) {
	for _, tc := range []struct {
		name  string
		value []byte
	}{
		{"empty MAC length", []byte{}},
		{"MAC longer than the value", []byte{17, 'a'}},
		{"JSON length past the end", append([]byte{1, 'm'}, 0, 0, 1, 0, '{')},
		{"JSON that is not a timeline", append([]byte{1, 'm'}, 0, 0, 0, 1, '[')},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := openDB(t, filepath.Join(t.TempDir(), "state.db"))
			defer db.Close()
			err := db.Update(func(tx *bolt.Tx) error {
				b, err := tx.CreateBucket(logBucket)
				if err != nil {
					return err
				}
				v := tc.value
				if len(v) == 0 {
					v = []byte{0x80} // an unterminated uvarint
				}
				return b.Put([]byte{0, 0, 0, 0, 0, 0, 0, 1}, v)
			})
			if err != nil {
				t.Fatal(err)
			}
			if s, err := Open(db, Options{}); err == nil {
				s.Close()
				t.Fatal("a corrupt log opened")
			} else {
				t.Log(err)
			}
		})
	}
}

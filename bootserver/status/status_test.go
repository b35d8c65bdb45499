package status

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

func openDB(t testing.TB, path string) *bolt.DB {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	return db
}

// reopen closes s and its database and opens both again from path with opts, as a restarted server does; the
// test's cleanup closes the new ones.
func reopen(t *testing.T, s *Store, db *bolt.DB, path string, opts Options) *Store {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db.Close()
	db = openDB(t, path)
	t.Cleanup(func() { db.Close() })
	s2, err := Open(db, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s2.Close() })
	return s2
}

func ev(phase, state string, t time.Time, startsBoot bool) Event {
	return Event{Event: bootstatus.Event{Phase: phase, State: state, Time: t}, Source: SourceHTTP, StartsBoot: startsBoot}
}

func TestTimeline(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	db := openDB(t, path)
	s, err := Open(db, Options{})
	if err != nil {
		t.Fatal(err)
	}
	mac := mustMAC("52:54:00:00:00:01")
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	steps := []struct {
		ev       Event
		wantBoot int
	}{
		{ev(PhaseDHCP, "start", t0, true), 1},
		{ev(PhaseDHCP, "done", t0.Add(2*time.Second), false), 1},
		{ev(PhaseScript, "start", t0.Add(3*time.Second), true), 1},
		{ev(PhaseScript, "done", t0.Add(3500*time.Millisecond), false), 1},
		{ev(PhaseDHCP, "start", t0.Add(time.Minute), true), 2}, // booted again
	}
	for i, st := range steps {
		if got := s.Record(mac, st.ev); got != st.wantBoot {
			t.Fatalf("step %d: boot %d, want %d", i, got, st.wantBoot)
		}
	}
	if _, err := s.RecordSync(mac, Event{Event: bootstatus.Event{Phase: "preflight", State: "error", Error: "token abcdef.0123456789abcdef refused"}, Source: SourceAgent}); err != nil {
		t.Fatal(err)
	}
	m, _ := s.Get(mac)
	if len(m.Phases) != 2 || m.Phases[1].Error != "token abcdef.<redacted> refused" {
		t.Fatalf("phases %+v", m.Phases)
	}
	// A new process sees the same timeline.
	s2 := reopen(t, s, db, path, Options{})
	m2, ok := s2.Get(mac)
	if !ok || m2.Boot != 2 || m2.LastPhase != "preflight" || m2.LastState != "error" {
		t.Fatalf("after reopen: %+v", m2)
	}
}

func TestDurations(t *testing.T) {
	db := openDB(t, filepath.Join(t.TempDir(), "s.db"))
	defer db.Close()
	s, _ := Open(db, Options{})
	defer s.Close()
	t0 := time.Now()
	s.Record(mustMAC("aa:00:00:00:00:01"), ev(PhaseKernel, "start", t0, false))
	s.Record(mustMAC("aa:00:00:00:00:01"), ev(PhaseKernel, "done", t0.Add(1500*time.Millisecond), false))
	m, _ := s.Get(mustMAC("aa:00:00:00:00:01"))
	if m.Phases[0].Seconds != 1.5 {
		t.Errorf("seconds %v", m.Phases[0].Seconds)
	}
}

// TestFlushDuringRecords writes timelines while events keep coming, then checks what a reopened
// store loads is what the first one held.
func TestFlushDuringRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	db := openDB(t, path)
	s, err := Open(db, Options{FlushInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	macs := []hwaddr.MAC{mustMAC("52:54:00:00:00:01"), mustMAC("52:54:00:00:00:02"), mustMAC("52:54:00:00:00:03")}
	for i := 0; i < 3000; i++ {
		mac := macs[i%len(macs)]
		s.RecordAs(mac, &Identity{NodeName: "n" + mac.String(), Profile: "worker"},
			ev(PhaseScript, "start", t0.Add(time.Duration(i)*time.Second), true),
			ev(PhaseScript, "done", t0.Add(time.Duration(i)*time.Second+time.Millisecond), false))
	}
	want := s.All()
	s2 := reopen(t, s, db, path, Options{})
	got := s2.All()
	gj, _ := json.Marshal(got)
	wj, _ := json.Marshal(want)
	if !bytes.Equal(gj, wj) {
		t.Errorf("reloaded:\n%s\nwant:\n%s", gj, wj)
	}
	if m, _ := s2.Get(macs[0]); m.Boot != 1000 || len(m.Phases) != 1 || m.NodeName != "n"+macs[0].String() || m.Phases[0].Seconds != 0.001 {
		t.Errorf("machine: %+v", m)
	}
}

// TestRecordAs checks that RecordAs leaves what Record of each event and SetIdentity leave.
func TestRecordAs(t *testing.T) {
	open := func() *Store {
		db := openDB(t, filepath.Join(t.TempDir(), "state.db"))
		s, err := Open(db, Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close(); db.Close() })
		return s
	}
	a, b := open(), open()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	id := &Identity{NodeName: "n", Profile: "worker", Known: true}
	steps := []struct {
		mac hwaddr.MAC
		id  *Identity
		evs []Event
	}{
		{mustMAC("52:54:00:00:00:01"), id, []Event{ev(PhaseScript, "start", t0, true), ev(PhaseScript, "done", t0, false)}},
		{mustMAC("52:54:00:00:00:01"), id, []Event{ev(PhaseScript, "start", t0.Add(time.Second), true), ev(PhaseScript, "done", t0.Add(2*time.Second), false)}},
		{mustMAC("52:54:00:00:00:01"), nil, []Event{ev(PhaseKernel, "start", t0.Add(3*time.Second), false)}},
		{mustMAC("52:54:00:00:00:02"), &Identity{NodeName: "m"}, []Event{ev(PhaseScript, "error", t0, true)}},
		{mustMAC("52:54:00:00:00:03"), id, []Event{ev(PhaseScript, "start", t0, true)}},
	}
	for _, st := range steps {
		gotBoot := a.RecordAs(st.mac, st.id, st.evs...)
		wantBoot := 0
		for _, e := range st.evs {
			wantBoot = b.Record(st.mac, e)
		}
		if st.id != nil {
			b.SetIdentity(st.mac, st.id.NodeName, st.id.Profile, st.id.Known)
		}
		if gotBoot != wantBoot {
			t.Errorf("%s: boot %d, want %d", st.mac, gotBoot, wantBoot)
		}
	}
	gj, _ := json.Marshal(a.All())
	wj, _ := json.Marshal(b.All())
	if !bytes.Equal(gj, wj) {
		t.Errorf("RecordAs:\n%s\nRecord and SetIdentity:\n%s", gj, wj)
	}
}

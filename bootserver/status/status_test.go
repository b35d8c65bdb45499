package status

import (
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/pxejoin/pxejoin/internal/bootstatus"
)

func openDB(t testing.TB, path string) *bolt.DB {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	return db
}

// reopen closes s and its database and opens both again from path, as a restarted server does; the
// test's cleanup closes the new ones.
func reopen(t *testing.T, s *Store, db *bolt.DB, path string) *Store {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db.Close()
	db = openDB(t, path)
	t.Cleanup(func() { db.Close() })
	s2, err := Open(db, Options{})
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
	const mac = "52:54:00:00:00:01"
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
	s2 := reopen(t, s, db, path)
	m2, ok := s2.Get(mac)
	if !ok || m2.Boot != 2 || m2.LastPhase != "preflight" || m2.LastState != "error" {
		t.Fatalf("after reopen: %+v", m2)
	}
}

func TestDurations(t *testing.T) {
	db := openDB(t, filepath.Join(t.TempDir(), "s.db"))
	defer db.Close()
	s, _ := Open(db, Options{MaxMachines: 1})
	defer s.Close()
	t0 := time.Now()
	s.Record("aa:00:00:00:00:01", ev(PhaseKernel, "start", t0, false))
	s.Record("aa:00:00:00:00:01", ev(PhaseKernel, "done", t0.Add(1500*time.Millisecond), false))
	m, _ := s.Get("aa:00:00:00:00:01")
	if m.Phases[0].Seconds != 1.5 {
		t.Errorf("seconds %v", m.Phases[0].Seconds)
	}
	if s.Record("aa:00:00:00:00:02", ev(PhaseKernel, "start", t0, false)) != 0 {
		t.Error("the machine limit must hold")
	}
}

func TestScrub(t *testing.T) {
	for in, want := range map[string]string{
		"":                            "",
		"plain":                       "plain",
		"x abcdef.0123456789abcdef y": "x abcdef.<redacted> y",
		"abcdef.0123456789abcdef,a1b2c3.0123456789abcdef": "abcdef.<redacted>,a1b2c3.<redacted>",
	} {
		if got := Scrub(in); got != want {
			t.Errorf("Scrub(%q) = %q, want %q", in, got, want)
		}
	}
}

package status

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"
)

// TestMarshalMachine checks the fast encoder against encoding/json byte for byte, on the odd cases
// (escapes, HTML characters, invalid UTF-8, zones, years outside RFC 3339, tiny/huge/NaN floats,
// nil and empty timelines) and on random timelines.
func TestMarshalMachine(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 600700800, time.UTC)
	tests := []struct {
		name string
		m    Machine
	}{
		{"empty", Machine{}},
		{"nil phases", Machine{MAC: "52:54:00:00:00:01", Boot: 1}},
		{"empty phases", Machine{MAC: "52:54:00:00:00:01", Phases: []Phase{}}},
		{"typical", Machine{MAC: "52:54:00:00:00:01", NodeName: "node-1", Profile: "worker", Known: true, Boot: 3,
			BootStarted: t0, LastPhase: "script", LastState: "done", LastSeen: t0.Add(time.Second),
			Phases: []Phase{
				{Phase: "script", State: "done", Source: "http", Start: t0, End: t0, Detail: "profile worker"},
				{Phase: "kernel", State: "error", Source: "http", Start: t0, End: t0.Add(1500 * time.Millisecond), Seconds: 1.5, Error: "HTTP 500", Attempt: 2},
			}}},
		{"escapes", Machine{MAC: "a\"b\\c", NodeName: "<node>&", Profile: "tab\there\n", Phases: []Phase{{Detail: "\x00\x1f\x7f é \u2028 \xff"}}}},
		{"zones", Machine{BootStarted: t0.In(time.FixedZone("x", 5*3600+30*60)), LastSeen: t0.In(time.FixedZone("y", -7*3600)),
			Phases: []Phase{{Start: t0.In(time.FixedZone("z", 23*3600+59*60)), End: t0.In(time.FixedZone("lmt", 3600+17))}}}},
		{"local time", Machine{LastSeen: t0.Local()}},
		{"bad zone", Machine{LastSeen: t0.In(time.FixedZone("w", 25*3600))}},
		{"year 10000", Machine{LastSeen: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}},
		{"year 0", Machine{LastSeen: time.Date(0, 1, 1, 0, 0, 0, 1, time.UTC)}},
		{"floats", Machine{Phases: []Phase{{Seconds: 1e-7}, {Seconds: 1e21}, {Seconds: 123456789.125}, {Seconds: -2.5e-9}, {Seconds: 5e-324}, {Seconds: math.MaxFloat64}}}},
		{"NaN", Machine{Phases: []Phase{{Seconds: math.NaN()}}}},
		{"negative attempt and boot", Machine{Boot: -1, Phases: []Phase{{Attempt: -7}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkMarshal(t, &tt.m)
		})
	}
	rng := rand.New(rand.NewPCG(1, 2))
	strs := []string{"", "script", "profile worker", "a<b", "é", "\n", "token abcdef.<redacted>"}
	pick := func() string { return strs[rng.IntN(len(strs))] }
	tm := func() time.Time {
		if rng.IntN(3) == 0 {
			return time.Time{}
		}
		return t0.Add(time.Duration(rng.Int64N(int64(1000 * time.Hour))))
	}
	for i := 0; i < 500; i++ {
		m := Machine{MAC: pick(), NodeName: pick(), Profile: pick(), Known: rng.IntN(2) == 0, Boot: rng.IntN(100),
			BootStarted: tm(), LastPhase: pick(), LastState: pick(), LastSeen: tm()}
		for j := rng.IntN(4) - 1; j >= 0; j-- {
			m.Phases = append(m.Phases, Phase{Phase: pick(), State: pick(), Source: pick(), Start: tm(), End: tm(),
				Seconds: rng.Float64() * math.Pow(10, float64(rng.IntN(30)-15)), Detail: pick(), Error: pick(), Attempt: rng.IntN(3)})
		}
		checkMarshal(t, &m)
	}
}

func checkMarshal(t *testing.T, m *Machine) {
	t.Helper()
	want, wantErr := json.Marshal(m)
	got, err := marshalMachine([]byte("prefix"), m)
	if (err != nil) != (wantErr != nil) {
		t.Fatalf("error %v, encoding/json's %v", err, wantErr)
	}
	if err == nil && !bytes.Equal(got, append([]byte("prefix"), want...)) {
		t.Fatalf("got  %s\nwant prefix%s", got, want)
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
	macs := []string{"52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"}
	for i := 0; i < 3000; i++ {
		mac := macs[i%len(macs)]
		s.RecordAs(mac, &Identity{NodeName: "n" + mac, Profile: "worker"},
			ev(PhaseScript, "start", t0.Add(time.Duration(i)*time.Second), true),
			ev(PhaseScript, "done", t0.Add(time.Duration(i)*time.Second+time.Millisecond), false))
	}
	want := s.All()
	s2 := reopen(t, s, db, path)
	got := s2.All()
	gj, _ := json.Marshal(got)
	wj, _ := json.Marshal(want)
	if !bytes.Equal(gj, wj) {
		t.Errorf("reloaded:\n%s\nwant:\n%s", gj, wj)
	}
	if m, _ := s2.Get(macs[0]); m.Boot != 1000 || len(m.Phases) != 1 || m.NodeName != "n"+macs[0] || m.Phases[0].Seconds != 0.001 {
		t.Errorf("machine: %+v", m)
	}
}

// TestRecordAs checks that RecordAs leaves what Record of each event and SetIdentity leave.
func TestRecordAs(t *testing.T) {
	open := func() *Store {
		db := openDB(t, filepath.Join(t.TempDir(), "state.db"))
		s, err := Open(db, Options{MaxMachines: 2})
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
		mac string
		id  *Identity
		evs []Event
	}{
		{"52:54:00:00:00:01", id, []Event{ev(PhaseScript, "start", t0, true), ev(PhaseScript, "done", t0, false)}},
		{"52:54:00:00:00:01", id, []Event{ev(PhaseScript, "start", t0.Add(time.Second), true), ev(PhaseScript, "done", t0.Add(2*time.Second), false)}},
		{"52:54:00:00:00:01", nil, []Event{ev(PhaseKernel, "start", t0.Add(3*time.Second), false)}},
		{"52:54:00:00:00:02", &Identity{NodeName: "m"}, []Event{ev(PhaseScript, "error", t0, true)}},
		{"52:54:00:00:00:03", id, []Event{ev(PhaseScript, "start", t0, true)}}, // over MaxMachines: dropped
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

package status

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pxejoin/pxejoin/internal/bootstatus"
)

func openStore(t *testing.T, opts Options) *Store {
	t.Helper()
	db := openDB(t, filepath.Join(t.TempDir(), "state.db"))
	t.Cleanup(func() { db.Close() })
	s, err := Open(db, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// agentEv is an event of the agent's attempt n.
func agentEv(phase, state string, n int, t time.Time, errText string) Event {
	return Event{Event: bootstatus.Event{Phase: phase, State: state, Time: t, Attempt: n, Error: errText}, Source: SourceAgent}
}

func TestAttempts(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	refused := `a Node with name "node-1" and status "Ready" already exists; token abcdef.0123456789abcdef`
	cases := []struct {
		name string
		evs  []Event
		// want is the preflight phase's attempts then its latest, "attempt state seconds error".
		want []string
	}{
		{"one attempt", []Event{
			agentEv("preflight", "start", 1, at(0), ""), agentEv("preflight", "done", 1, at(1), ""),
		}, []string{"1 done 1 "}},
		{"agent retries: each attempt kept, secrets scrubbed", []Event{
			agentEv("preflight", "start", 1, at(0), ""), agentEv("preflight", "error", 1, at(1), refused),
			agentEv("preflight", "start", 2, at(5), ""), agentEv("preflight", "error", 2, at(7), refused),
			agentEv("preflight", "start", 3, at(15), ""), agentEv("preflight", "done", 3, at(16), ""),
		}, []string{
			`1 error 1 a Node with name "node-1" and status "Ready" already exists; token abcdef.<redacted>`,
			`2 error 2 a Node with name "node-1" and status "Ready" already exists; token abcdef.<redacted>`,
			"3 done 1 ",
		}},
		{"retried from an earlier phase: a done attempt is kept too", []Event{
			agentEv("preflight", "start", 1, at(0), ""), agentEv("preflight", "done", 1, at(1), ""),
			agentEv("preflight", "start", 2, at(4), ""), agentEv("preflight", "done", 2, at(6), ""),
		}, []string{"1 done 1 ", "2 done 2 "}},
		{"no attempt numbers: a start after an error is a new attempt", []Event{
			agentEv("preflight", "start", 0, at(0), ""), agentEv("preflight", "error", 0, at(2), "HTTP 404"),
			agentEv("preflight", "start", 0, at(3), ""), agentEv("preflight", "done", 0, at(4), ""),
		}, []string{"0 error 2 HTTP 404", "0 done 1 "}},
		{"a start after done continues the phase (several initrds)", []Event{
			agentEv("preflight", "start", 0, at(0), ""), agentEv("preflight", "done", 0, at(2), ""),
			agentEv("preflight", "start", 0, at(3), ""), agentEv("preflight", "done", 0, at(4), ""),
		}, []string{"0 done 1 "}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := openStore(t, Options{})
			mac := mustMAC("52:54:00:00:00:01")
			s.Record(mac, ev(PhaseScript, "start", t0, true))
			for _, e := range c.evs {
				s.Record(mac, e)
			}
			m, _ := s.Get(mac)
			p := m.Phases[m.index("preflight")]
			var got []string
			for _, a := range p.Attempts {
				got = append(got, fmt.Sprintf("%d %s %g %s", a.Attempt, a.State, a.Seconds, a.Error))
			}
			got = append(got, fmt.Sprintf("%d %s %g %s", p.Attempt, p.State, p.Seconds, p.Error))
			if strings.Join(got, "\n") != strings.Join(c.want, "\n") {
				t.Errorf("attempts:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(c.want, "\n"))
			}
		})
	}
}

func TestAttemptsBound(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := openStore(t, Options{Registerer: reg})
	mac := mustMAC("52:54:00:00:00:01")
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s.Record(mac, ev(PhaseScript, "start", t0, true))
	// Two phases retried: discovery 3 times, then preflight many more times than the bound.
	n := 0
	for i := 1; i <= 3; i++ {
		n++
		s.Record(mac, agentEv("discovery", "error", n, t0.Add(time.Duration(n)*time.Second), fmt.Sprint("discovery ", n)))
	}
	last := n + 2*MaxAttempts
	for n < last {
		n++
		s.Record(mac, agentEv("preflight", "error", n, t0.Add(time.Duration(n)*time.Second), fmt.Sprint("preflight ", n)))
	}
	m, _ := s.Get(mac)
	kept := 0
	for _, p := range m.Phases {
		kept += len(p.Attempts)
	}
	if kept != MaxAttempts {
		t.Errorf("%d earlier attempts kept, want %d", kept, MaxAttempts)
	}
	d, p := m.Phases[m.index("discovery")], m.Phases[m.index("preflight")]
	if len(d.Attempts) != 2 || d.Error != "discovery 3" {
		t.Errorf("discovery lost attempts: %+v", d)
	}
	if p.Attempts[0].Error != "preflight 4" || p.Attempts[len(p.Attempts)-1].Attempt != last-1 || p.Attempt != last {
		t.Errorf("preflight must keep its first and latest attempts: first %q, latest earlier %d, latest %d",
			p.Attempts[0].Error, p.Attempts[len(p.Attempts)-1].Attempt, p.Attempt)
	}
	if got, want := testutil.ToFloat64(s.attemptDrops), float64(2+(2*MaxAttempts-1)-MaxAttempts); got != want { // pushed - kept
		t.Errorf("dropped %g, want %g", got, want)
	}
	if m.Failures() != 3+MaxAttempts-2+1 { // discovery 3, preflight its kept earlier attempts and its latest
		t.Errorf("failures %d", m.Failures())
	}
	if r := m.Reason(); r != fmt.Sprint("preflight: preflight ", last) {
		t.Errorf("reason %q", r)
	}
	// A copy does not change when the store drops an attempt.
	before := m.Phases[m.index("preflight")].Attempts[1]
	n++
	s.Record(mac, agentEv("preflight", "error", n, t0.Add(time.Duration(n)*time.Second), "again"))
	if m.Phases[m.index("preflight")].Attempts[1] != before {
		t.Error("Get's copy shares the attempts")
	}
}

func TestSortFailuresFirst(t *testing.T) {
	mk := func(last byte, phases ...Phase) Machine {
		return Machine{MAC: mustMAC(fmt.Sprintf("52:54:00:00:00:%02x", last)), Phases: phases}
	}
	ok := Phase{Phase: "preflight", State: "done"}
	recovered := Phase{Phase: "preflight", State: "done", Attempts: []Attempt{{State: "error", Error: "refused"}}}
	failing := Phase{Phase: "preflight", State: "error", Error: "refused"}
	ms := []Machine{mk(1, ok), mk(2, recovered), mk(3, failing), mk(4), mk(5, failing), mk(6, recovered)}
	SortFailuresFirst(ms)
	var got []string
	for _, m := range ms {
		got = append(got, m.MAC.String()[15:])
	}
	if g := strings.Join(got, " "); g != "03 05 02 06 01 04" {
		t.Errorf("order %s", g)
	}
}

func TestAttemptsPersist(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	db := openDB(t, path)
	s, err := Open(db, Options{})
	if err != nil {
		t.Fatal(err)
	}
	mac := mustMAC("52:54:00:00:00:01")
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s.Record(mac, ev(PhaseScript, "start", t0, true))
	if _, err := s.RecordSync(mac, agentEv("preflight", "error", 1, t0.Add(time.Second), "refused"),
		agentEv("preflight", "done", 2, t0.Add(3*time.Second), "")); err != nil {
		t.Fatal(err)
	}
	m, _ := reopen(t, s, db, path, Options{}).Get(mac)
	p := m.Phases[m.index("preflight")]
	if len(p.Attempts) != 1 || p.Attempts[0].Error != "refused" || p.Attempt != 2 || m.Failures() != 1 {
		t.Errorf("after a restart: %+v", p)
	}
}

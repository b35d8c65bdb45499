package httpd

import (
	"compress/gzip"
	"embed"
	"encoding/json"
	"html/template"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/pxejoin/pxejoin/bootserver/status"
	"github.com/pxejoin/pxejoin/internal/bootstatus"
)

// The fleet page (GET /) is one row per machine with its current boot's phases as bars on a time
// axis, failures first. fleet.html is the page with the first data inline; fleet.js draws the rows
// and fetches GET /fleet.json every few seconds. Everything is served from here: no CDN.
//
//go:embed fleet.html fleet.js
var fleetFiles embed.FS

var fleetPage = template.Must(template.ParseFS(fleetFiles, "fleet.html"))

// maxReason bounds the reason a fleet row carries (the machine's page has it whole).
const maxReason = 300

// fleetView is the body of GET /fleet.json, compact: a thousand machines are a few hundred KB.
type fleetView struct {
	// Now is the server's clock in Unix milliseconds, the end of the bars still running.
	Now      int64      `json:"now"`
	Machines []fleetRow `json:"machines"`
}

// fleetRow is a machine's row.
type fleetRow struct {
	MAC      string `json:"mac"`
	Node     string `json:"node,omitempty"`
	Profile  string `json:"profile,omitempty"`
	Unlisted bool   `json:"unlisted,omitempty"` // not in the inventory
	Boot     int    `json:"boot"`
	// State is the row's status word: failing, recovered (failed, then went on), ok, never seen.
	State    string `json:"state"`
	Last     string `json:"last,omitempty"` // "<phase> <state>" of the latest event
	Failures int    `json:"failures,omitempty"`
	Reason   string `json:"reason,omitempty"` // the latest failure, "<phase>: <error>"
	// T0 is the boot's start (Unix ms): the bars' times are milliseconds after it.
	T0   int64      `json:"t0,omitempty"`
	Bars []fleetBar `json:"bars"`
}

// fleetBar is one attempt of a phase.
type fleetBar struct {
	Phase   string `json:"p"`
	Attempt int    `json:"n,omitempty"`
	State   string `json:"s"`
	// Start and End are milliseconds after the boot's start; End -1: still running. A phase seen
	// only when it ended (the Node registered) is a mark at its end.
	Start int64 `json:"a"`
	End   int64 `json:"b"`
	// Lane: 0 the boot's steps, 1 the join's phases, 2 their sub-phases.
	Lane  int    `json:"l,omitempty"`
	Error string `json:"e,omitempty"`
}

// fleet builds the fleet view of ms (in their order).
func fleet(ms []status.Machine, now time.Time) fleetView {
	v := fleetView{Now: now.UnixMilli(), Machines: make([]fleetRow, 0, len(ms))}
	for i := range ms {
		m := &ms[i]
		row := fleetRow{MAC: m.MAC.String(), Node: m.NodeName, Profile: m.Profile, Unlisted: !m.Known, Boot: m.Boot,
			Failures: m.Failures(), Reason: bootstatus.Truncate(m.Reason(), maxReason), Bars: []fleetBar{}}
		switch {
		case m.Boot == 0:
			row.State = "never seen"
		case m.Failing():
			row.State = "failing"
		case row.Failures > 0:
			row.State = "recovered"
		default:
			row.State = "ok"
		}
		if m.LastPhase != "" {
			row.Last = m.LastPhase + " " + m.LastState
		}
		t0 := m.BootStarted
		if !t0.IsZero() {
			row.T0 = t0.UnixMilli()
		}
		for j := range m.Phases {
			p := &m.Phases[j]
			for _, a := range p.Attempts {
				row.Bars = append(row.Bars, bar(p.Phase, a, t0))
			}
			row.Bars = append(row.Bars, bar(p.Phase, status.Attempt{Attempt: p.Attempt, State: p.State, Start: p.Start, End: p.End, Error: p.Error}, t0))
		}
		v.Machines = append(v.Machines, row)
	}
	return v
}

func bar(phase string, a status.Attempt, t0 time.Time) fleetBar {
	ms := func(t time.Time) int64 { return max(t.Sub(t0).Milliseconds(), 0) }
	b := fleetBar{Phase: phase, Attempt: a.Attempt, State: a.State, End: -1, Error: bootstatus.Truncate(a.Error, maxReason)}
	if !a.End.IsZero() {
		b.End = ms(a.End)
	}
	switch {
	case !a.Start.IsZero():
		b.Start = ms(a.Start)
	case b.End >= 0:
		b.Start = b.End
	}
	if a.State == bootstatus.StateStart {
		b.End = -1
	}
	switch {
	case strings.Contains(phase, "/"):
		b.Lane = 2
	case slices.Contains(bootstatus.JoinPhases, phase):
		b.Lane = 1
	}
	return b
}

func (h *Handler) serveFleetPage(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	data := struct {
		Notice string
		Fleet  fleetView
	}{Fleet: fleet(h.machines(), time.Now())}
	if h.cfg.Tokens == nil {
		data.Notice = NoClusterReason
	}
	body := gzipped(w, r)
	defer body.Close()
	if err := fleetPage.Execute(body, data); err != nil {
		h.log.Warn("fleet page", "err", err)
	}
}

func (h *Handler) serveFleetJSON(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	body := gzipped(w, r)
	defer body.Close()
	_ = json.NewEncoder(body).Encode(fleet(h.machines(), time.Now()))
}

// gzipped is w compressed with gzip when the client takes it (a fleet's JSON shrinks about tenfold);
// the caller closes it.
func gzipped(w http.ResponseWriter, r *http.Request) io.WriteCloser {
	w.Header().Add("Vary", "Accept-Encoding")
	if !strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
		return nopCloser{w}
	}
	w.Header().Set("Content-Encoding", "gzip")
	gz, _ := gzip.NewWriterLevel(w, gzip.BestSpeed) // the level is valid
	return gz
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

func (h *Handler) serveFleetJS(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
	http.ServeFileFS(w, r, fleetFiles, "fleet.js")
}

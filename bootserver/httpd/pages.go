package httpd

import (
	"encoding/json"
	"html/template"
	"net/http"
	"slices"
	"time"

	"github.com/pxejoin/pxejoin/bootserver/status"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// MachinesResponse is the body of GET /machines.
type MachinesResponse struct {
	Machines []status.Machine `json:"machines"`
}

// machines merges the timelines with inventory machines never seen yet, failures first
// (status.SortFailuresFirst).
func (h *Handler) machines() []status.Machine {
	all := h.cfg.Status.All()
	seen := make(map[hwaddr.MAC]bool, len(all))
	for _, m := range all {
		seen[m.MAC] = true
	}
	inv := h.cfg.Inventory.Current()
	for _, im := range inv.Machines() {
		if im.MAC.IsZero() || seen[im.MAC] {
			continue
		}
		a, _ := inv.Lookup(im.MAC, im.UUID)
		all = append(all, status.Machine{MAC: im.MAC, NodeName: a.NodeName, Profile: im.Profile, Known: true, Phases: []status.Phase{}})
	}
	status.SortFailuresFirst(all)
	return all
}

func (h *Handler) serveMachines(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(MachinesResponse{Machines: h.machines()})
}

// machinePage is one machine's page (GET /machine/<mac>, linked from its row of the fleet page):
// its current boot, every attempt of each phase.
var machinePage = template.Must(template.New("machine").Funcs(template.FuncMap{
	"ts": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.Local().Format("15:04:05.000")
	},
	"secs": func(s float64) string {
		if s == 0 {
			return ""
		}
		return time.Duration(s * float64(time.Second)).Round(time.Millisecond).String()
	},
}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{or .NodeName .MAC}} · pxejoin</title>
<meta http-equiv="refresh" content="5">
<style>
body{font-family:sans-serif;margin:1em 2em}table{border-collapse:collapse;margin-bottom:1.5em}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:left;font-size:90%}
.error{color:#b00}.done{color:#070}.start{color:#a60}.earlier td{color:#666}
</style></head><body>
<p><a href="../">← all machines</a></p>
<h1>{{.MAC}} {{if .NodeName}}— {{.NodeName}}{{end}} {{if .Profile}}({{.Profile}}){{end}}{{if not .Known}} <small>not in inventory</small>{{end}}</h1>
<p>boot {{.Boot}}{{if .LastPhase}}, last phase <b class="{{.LastState}}">{{.LastPhase}} {{.LastState}}</b> at {{ts .LastSeen}}{{end}}{{with .Failures}}, <b class="error">{{.}} failed attempts</b>{{end}}</p>
{{if .Phases}}<table><tr><th>phase</th><th>attempt</th><th>state</th><th>source</th><th>start</th><th>end</th><th>duration</th><th>detail</th><th>error</th></tr>
{{range .Phases}}{{$p := .}}{{range .Attempts}}<tr class="earlier"><td>{{$p.Phase}}</td><td>{{.Attempt}}</td><td class="{{.State}}">{{.State}}</td><td>{{$p.Source}}</td><td>{{ts .Start}}</td><td>{{ts .End}}</td><td>{{secs .Seconds}}</td><td></td><td class="error">{{.Error}}</td></tr>
{{end}}<tr><td>{{.Phase}}</td><td>{{.Attempt}}</td><td class="{{.State}}">{{.State}}</td><td>{{.Source}}</td><td>{{ts .Start}}</td><td>{{ts .End}}</td><td>{{secs .Seconds}}</td><td>{{.Detail}}</td><td class="error">{{.Error}}</td></tr>
{{end}}</table>{{else}}<p>No phase seen in this boot yet.</p>{{end}}
</body></html>
`))

func (h *Handler) serveMachinePage(w http.ResponseWriter, r *http.Request) {
	mac, err := hwaddr.Parse(r.PathValue("mac"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ms := h.machines()
	i := slices.IndexFunc(ms, func(m status.Machine) bool { return m.MAC == mac })
	if i < 0 {
		http.Error(w, "no machine "+mac.String()+" in the inventory or the timelines: see the list at /", http.StatusNotFound)
		return
	}
	m := ms[i]
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err := machinePage.Execute(w, &m); err != nil {
		h.log.Warn("machine page", "err", err)
	}
}

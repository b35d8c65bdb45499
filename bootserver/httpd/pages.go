package httpd

import (
	"encoding/json"
	"html/template"
	"net/http"
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

var page = template.Must(template.New("page").Funcs(template.FuncMap{
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
<html><head><meta charset="utf-8"><title>pxejoin boot server</title>
<meta http-equiv="refresh" content="5">
<style>
body{font-family:sans-serif;margin:1em 2em}table{border-collapse:collapse;margin-bottom:1.5em}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:left;font-size:90%}
.error{color:#b00}.done{color:#070}.start{color:#a60}h2{font-size:110%;margin-bottom:.3em}
</style></head><body>
<h1>pxejoin boot server</h1>
{{with .Notice}}<p class="error"><b>Join files are not served:</b> {{.}}.</p>{{end}}
<p>{{len .Machines}} machines. <a href="/machines">JSON</a> · <a href="/metrics">metrics</a></p>
{{range .Machines}}
<h2>{{.MAC}} {{if .NodeName}}— {{.NodeName}}{{end}} {{if .Profile}}({{.Profile}}){{end}}{{if not .Known}} <small>not in inventory</small>{{end}}</h2>
<p>boot {{.Boot}}{{if .LastPhase}}, last phase <b class="{{.LastState}}">{{.LastPhase}} {{.LastState}}</b> at {{ts .LastSeen}}{{end}}</p>
{{if .Phases}}<table><tr><th>phase</th><th>state</th><th>source</th><th>start</th><th>end</th><th>duration</th><th>detail</th><th>error</th></tr>
{{range .Phases}}<tr><td>{{.Phase}}</td><td class="{{.State}}">{{.State}}</td><td>{{.Source}}</td><td>{{ts .Start}}</td><td>{{ts .End}}</td><td>{{secs .Seconds}}</td><td>{{.Detail}}</td><td class="error">{{.Error}}</td></tr>
{{end}}</table>{{end}}
{{end}}
</body></html>
`))

func (h *Handler) servePage(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	data := struct {
		Notice   string
		Machines []status.Machine
	}{Machines: h.machines()}
	if h.cfg.Tokens == nil {
		data.Notice = NoClusterReason
	}
	if err := page.Execute(w, data); err != nil {
		h.log.Warn("status page", "err", err)
	}
}

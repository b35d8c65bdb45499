package httpd

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/html"

	"github.com/pxejoin/pxejoin/bootserver/status"
	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
	"github.com/pxejoin/pxejoin/lab/testenv"
)

// refusal is the preflight error of a power-cycled node whose Node still reads Ready (issue 12).
func refusal(node string) string {
	return fmt.Sprintf(`a Node with name %q and status "Ready" already exists in the cluster (token abcdef.0123456789abcdef)`, node)
}

// bootFleet records n machines' boots in st: every 25th fails its preflight three times, and every
// other one of those then joins (recovered), the rest are still failing. It returns the MACs failing
// and recovered.
func bootFleet(st *status.Store, n int, t0 time.Time) (failing, recovered []hwaddr.MAC) {
	for i := range n {
		mac := hwaddr.MAC{0x52, 0x54, 0, 0, byte(i >> 8), byte(i)}
		node := fmt.Sprintf("node-%03d", i)
		st.SetIdentity(mac, node, "worker", true)
		at := func(s float64) time.Time {
			return t0.Add(time.Duration(float64(i)*float64(time.Second)/10 + s*float64(time.Second)))
		}
		ev := func(phase, state string, attempt int, s float64, errText string) status.Event {
			return status.Event{Event: bootstatus.Event{Phase: phase, State: state, Time: at(s), Attempt: attempt, Error: errText},
				Source: status.SourceAgent, StartsBoot: phase == status.PhaseScript}
		}
		evs := []status.Event{
			ev(status.PhaseScript, "start", 0, 0, ""), ev(status.PhaseScript, "done", 0, 0.1, ""),
			ev(status.PhaseKernel, "start", 0, 0.2, ""), ev(status.PhaseKernel, "done", 0, 2, ""),
			ev(status.PhaseInitrd, "start", 0, 2, ""), ev(status.PhaseInitrd, "done", 0, 5, ""),
			ev(bootstatus.PhaseJoinFile, "start", 1, 8, ""), ev(bootstatus.PhaseJoinFile, "done", 1, 8.2, ""),
		}
		attempts := 1
		if i%25 == 7 {
			for a := 1; a <= 3; a++ {
				s := 10 + 12*float64(a-1)
				evs = append(evs, ev(bootstatus.PhaseJoin, "start", a, s, ""), ev("preflight", "start", a, s, ""),
					ev("preflight", "error", a, s+1, refusal(node)), ev(bootstatus.PhaseJoin, "error", a, s+1, "preflight: "+refusal(node)))
			}
			attempts = 4
			if i%50 == 7 {
				failing = append(failing, mac)
				st.RecordAs(mac, nil, evs...)
				continue
			}
			recovered = append(recovered, mac)
		}
		s := 10 + 12*float64(attempts-1)
		evs = append(evs, ev(bootstatus.PhaseJoin, "start", attempts, s, ""),
			ev("preflight", "start", attempts, s, ""), ev("preflight", "done", attempts, s+1, ""),
			ev("kubelet-start", "start", attempts, s+1, ""), ev("kubelet-start/tls-bootstrap", "start", attempts, s+2, ""),
			ev("kubelet-start/tls-bootstrap", "done", attempts, s+9, ""), ev("kubelet-start", "done", attempts, s+10, ""),
			ev(bootstatus.PhaseJoin, "done", attempts, s+10, ""), ev(bootstatus.PhaseNodeReady, "done", attempts, s+30, ""))
		st.RecordAs(mac, nil, evs...)
	}
	return failing, recovered
}

func TestFleetJSON(t *testing.T) {
	f := newFixture(t, "http://10.80.0.1:8080", 16, true)
	failing, recovered := bootFleet(f.store, 60, time.Now().Add(-time.Minute))
	w := get(t, f.h, "GET", "/fleet.json", nil)
	if strings.Contains(w.Body.String(), "0123456789abcdef") {
		t.Error("a token secret appears in /fleet.json")
	}
	var v fleetView
	if err := json.Unmarshal(w.Body.Bytes(), &v); err != nil {
		t.Fatal(err)
	}
	if len(v.Machines) != 60 {
		t.Fatalf("%d rows", len(v.Machines))
	}
	for i, mac := range append(failing, recovered...) {
		r := v.Machines[i]
		want := "failing"
		if i >= len(failing) {
			want = "recovered"
		}
		if r.MAC != mac.String() || r.State != want || r.Failures != 6 || !strings.Contains(r.Reason, `already exists`) {
			t.Errorf("row %d: %s %s %d failures %q; want %s %s", i, r.MAC, r.State, r.Failures, r.Reason, mac, want)
		}
		preflight := 0
		for _, b := range r.Bars {
			if b.Phase == "preflight" {
				preflight++
			}
		}
		if want := map[string]int{"failing": 3, "recovered": 4}[want]; preflight != want {
			t.Errorf("row %d: %d preflight bars, want %d", i, preflight, want)
		}
	}
	if r := v.Machines[len(failing)+len(recovered)]; r.State != "ok" || r.Failures != 0 || r.Reason != "" {
		t.Errorf("first row without failures: %+v", r)
	}
	if w := get(t, f.h, "GET", "/machine/"+failing[0].String(), nil); w.Code != 200 || strings.Count(w.Body.String(), "already exists") != 6 {
		t.Errorf("the machine page must show every failed attempt: %d\n%s", w.Code, w.Body)
	}
	if w := get(t, f.h, "GET", "/machine/52:54:00:99:99:99", nil); w.Code != 404 {
		t.Errorf("an unknown machine's page: %d", w.Code)
	}
}

// loadFleetPage serves f's handler on loopback and dumps the fleet page's DOM as headless Chromium
// draws it, after budget of virtual time (the page refreshes every 5 s; 0: as soon as it loaded, on
// the real clock). afterLoad runs once the page was served.
func loadFleetPage(t testing.TB, f *fixture, budget time.Duration, afterLoad func()) (dom string, pageBytes int) {
	t.Helper()
	chromium := testenv.RequireTool(t, "chromium")
	var once sync.Once
	var mu sync.Mutex
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := httptest.NewRecorder()
		f.h.ServeHTTP(rec, r)
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
		if r.URL.Path == "/" || r.URL.Path == "/fleet.js" {
			mu.Lock()
			pageBytes += rec.Body.Len()
			mu.Unlock()
		}
		if r.URL.Path == "/" && afterLoad != nil {
			once.Do(afterLoad)
		}
	}))
	defer ts.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	args := []string{"--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--user-data-dir=" + t.TempDir()}
	if budget > 0 {
		args = append(args, "--virtual-time-budget="+strconv.Itoa(int(budget.Milliseconds())))
	}
	out, err := exec.CommandContext(ctx, chromium, append(args, "--dump-dom", ts.URL+"/")...).Output()
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	return string(out), pageBytes
}

// pageRow is a row of the fleet page as drawn.
type pageRow struct {
	mac, class, reason string
	bars               []map[string]string // each bar's attributes
}

// parseRows reads the rows of the fleet page's table from a DOM dump.
func parseRows(t testing.TB, dom string) []pageRow {
	t.Helper()
	doc, err := html.Parse(strings.NewReader(dom))
	if err != nil {
		t.Fatal(err)
	}
	attrs := func(n *html.Node) map[string]string {
		m := map[string]string{}
		for _, a := range n.Attr {
			m[a.Key] = a.Val
		}
		return m
	}
	text := func(n *html.Node) string {
		var b strings.Builder
		for d := range n.Descendants() {
			if d.Type == html.TextNode {
				b.WriteString(d.Data)
			}
		}
		return b.String()
	}
	var rows []pageRow
	for n := range doc.Descendants() {
		if n.Type != html.ElementNode || n.Data != "tr" || attrs(n.Parent)["id"] != "rows" {
			continue
		}
		a := attrs(n)
		r := pageRow{mac: a["data-mac"], class: a["class"]}
		for d := range n.Descendants() {
			if d.Type != html.ElementNode {
				continue
			}
			da := attrs(d)
			switch {
			case d.Data == "span" && strings.HasPrefix(da["class"], "bar "):
				r.bars = append(r.bars, da)
			case d.Data == "td" && strings.HasPrefix(da["class"], "reason"):
				r.reason = text(d)
			}
		}
		rows = append(rows, r)
	}
	return rows
}

func TestFleetPageChromium(t *testing.T) {
	if testing.Short() {
		t.Skip("runs headless Chromium; runs without -short")
	}
	f := newFixture(t, "http://10.80.0.1:8080", 16, true)
	t0 := time.Now().Add(-2 * time.Minute)
	failing, recovered := bootFleet(f.store, 300, t0)
	late := mustMAC("52:54:00:aa:00:01")
	dom, _ := loadFleetPage(t, f, 12*time.Second, func() {
		f.store.SetIdentity(late, "node-late", "worker", true)
		f.store.Record(late, status.Event{Event: bootstatus.Event{Phase: "preflight", State: "error", Time: time.Now(), Attempt: 1, Error: refusal("node-late")}, Source: status.SourceAgent, StartsBoot: true})
	})
	if strings.Contains(dom, "0123456789abcdef") {
		t.Error("a token secret appears on the page")
	}
	rows := parseRows(t, dom)
	if len(rows) != 301 {
		t.Fatalf("%d rows drawn, want 301 (300 at load, 1 after the refresh)", len(rows))
	}
	// The failing first (the machine added after the page loaded among them), then the recovered.
	wantFirst := append(append([]hwaddr.MAC{}, failing...), late)
	for i := range wantFirst {
		if rows[i].class != "failing" {
			t.Errorf("row %d (%s) is %q, want failing", i, rows[i].mac, rows[i].class)
		}
	}
	for i := range recovered {
		if r := rows[len(wantFirst)+i]; r.class != "recovered" || r.mac != recovered[i].String() {
			t.Errorf("row %d: %s %q, want %s recovered", len(wantFirst)+i, r.mac, r.class, recovered[i])
		}
	}
	byMAC := map[string]pageRow{}
	for _, r := range rows {
		byMAC[r.mac] = r
	}
	if r, ok := byMAC[late.String()]; !ok || !strings.Contains(r.reason, `"node-late"`) {
		t.Errorf("the machine added after load is not drawn with its reason after the refresh: %+v", r)
	}
	for _, mac := range append(failing, recovered...) {
		r := byMAC[mac.String()]
		m, _ := f.store.Get(mac)
		want := 0
		for _, p := range m.Phases {
			want += 1 + len(p.Attempts)
		}
		failed := 0
		for _, b := range r.bars {
			if b["data-phase"] == "preflight" && strings.Contains(b["class"], "error") {
				failed++
				if !strings.Contains(b["title"], "attempt "+b["data-attempt"]+": error") || !strings.Contains(b["title"], refusal(m.NodeName)[:40]) {
					t.Errorf("%s: a failed bar's label %q lacks its attempt or reason", mac, b["title"])
				}
			}
		}
		if len(r.bars) != want || failed != 3 {
			t.Errorf("%s: %d bars (%d failed preflights), want one per attempt: %d (3)", mac, len(r.bars), failed, want)
		}
		if !strings.Contains(r.reason, "already exists") {
			t.Errorf("%s: reason %q", mac, r.reason)
		}
	}
}

// BenchmarkFleetPage measures the fleet page with 1,000 machines in headless Chromium: its weight
// (page + script as sent: gzip) and the time its script takes to draw the rows, and the size of a
// refresh (README, status page).
func BenchmarkFleetPage(b *testing.B) {
	f := newFixture(b, "http://10.80.0.1:8080", 16, true)
	bootFleet(f.store, 1000, time.Now().Add(-2*time.Minute))
	for b.Loop() {
		dom, weight := loadFleetPage(b, f, 0, nil)
		i := strings.Index(dom, `data-render-ms="`)
		if i < 0 {
			b.Fatal("the page did not draw its rows")
		}
		ms, _ := strconv.Atoi(dom[i+len(`data-render-ms="`) : i+strings.IndexByte(dom[i+len(`data-render-ms="`):], '"')+len(`data-render-ms="`)])
		b.ReportMetric(float64(weight), "page-bytes")
		b.ReportMetric(float64(ms), "render-ms")
		for _, enc := range []string{"", "gzip"} {
			w := httptest.NewRecorder()
			r := httptest.NewRequest("GET", "/fleet.json", nil)
			r.Header.Set("Accept-Encoding", enc)
			f.h.ServeHTTP(w, r)
			b.ReportMetric(float64(w.Body.Len()), "json"+enc+"-bytes")
		}
	}
}

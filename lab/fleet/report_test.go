package fleet

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// TestStats: stage times run from the previous stage's end (power-on for the first), a failed
// machine is counted and left out of the times, and a reference machine that has only the join
// stage measures it from power-on.
func TestStats(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s ...float64) (d [4]time.Time) {
		for i, v := range s {
			if v >= 0 {
				d[i] = t0.Add(time.Duration(v * float64(time.Second)))
			}
		}
		return d
	}
	ms := []*machine{
		{node: "a", done: at(1, 2, 4, 8)},
		{node: "b", done: at(1, 3, 7, 9)},
		{node: "c", done: at(1)},
	}
	st := stats(t0, ms, []error{nil, nil, errors.New("boom")}, nil, nil)
	if st.Failed != 1 || st.Err == nil || !strings.Contains(st.Err.Error(), "c: boom") {
		t.Errorf("failed %d, err %v", st.Failed, st.Err)
	}
	if st.Total != 9*time.Second || len(st.Stages) != 4 {
		t.Fatalf("total %v, %d stages", st.Total, len(st.Stages))
	}
	// a: 1,1,2,4; b: 1,2,4,2; all = 8+9 = 17 s. Of two, the median is the upper (nearest rank).
	want := []struct {
		p50, p99 time.Duration
		share    float64
	}{{time.Second, time.Second, 2.0 / 17}, {2 * time.Second, 2 * time.Second, 3.0 / 17}, {4 * time.Second, 4 * time.Second, 6.0 / 17}, {4 * time.Second, 4 * time.Second, 6.0 / 17}}
	for i, w := range want {
		s := st.Stages[i]
		if s.Name != Stages[i] || s.P50 != w.p50 || s.P99 != w.p99 || s.Share < w.share-1e-9 || s.Share > w.share+1e-9 {
			t.Errorf("stage %d: %+v, want %+v", i, s, w)
		}
	}
	if r := st.Stages[3].Rate; r != 1 { // 2 machines finishing 1 s apart
		t.Errorf("join rate %v", r)
	}
	ref := stats(t0, []*machine{{done: at(-1, -1, -1, 2)}}, []error{nil}, nil, nil)
	if len(ref.Stages) != 1 || ref.Stages[0].Name != StageJoin || ref.Stages[0].P50 != 2*time.Second {
		t.Errorf("reference stages %+v", ref.Stages)
	}
}

func TestParseLabels(t *testing.T) {
	l := parseLabels(`code="201",component="apiserver",dry_run="",group="",resource="secrets",subresource="",verb="POST"`)
	if l["verb"] != "POST" || l["resource"] != "secrets" || l["code"] != "201" || l["dry_run"] != "" || len(l) != 7 {
		t.Errorf("%v", l)
	}
}

func TestBootServerWrites(t *testing.T) {
	w := map[string]float64{"POST secrets": 3, "DELETE secrets": 3, "APPLY machines/status": 2, "POST events": 1, "POST certificatesigningrequests": 3, "PUT configmaps": 5}
	if n := bootServerWrites(w); n != 9 {
		t.Errorf("%v", n)
	}
}

func TestStatusWrites(t *testing.T) {
	w := map[string]float64{"APPLY machines/status": 250, "PATCH machines/status": 10, "POST machines": 100, "POST secrets": 100}
	if n := statusWrites(w); n != 260 {
		t.Errorf("%v", n)
	}
	r := &Result{N: 100, Fleet: Stats{Total: time.Second}, CRD: &CRDRun{Stats: Stats{Total: 2 * time.Second, Writes: w}, PeakRSS: 64 << 20}}
	if out := r.String(); !strings.Contains(out, "Machine status writes per machine: 2.60") || !strings.Contains(out, "fleet-crd: 64.0 MiB") {
		t.Errorf("the report lacks the Machine inventory run's status writes or RSS:\n%s", out)
	}
}

func TestWriteDelta(t *testing.T) {
	d := writeDelta(map[string]float64{"POST secrets": 3, "PUT leases": 5}, map[string]float64{"POST secrets": 10, "PUT leases": 5, "DELETE secrets": 2})
	if len(d) != 2 || d["POST secrets"] != 7 || d["DELETE secrets"] != 2 {
		t.Errorf("%v", d)
	}
}

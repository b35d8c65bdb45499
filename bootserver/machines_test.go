package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pxejoin/pxejoin/bootserver/httpd"
	"github.com/pxejoin/pxejoin/bootserver/status"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

func TestMachinesCommand(t *testing.T) {
	now := time.Now()
	mr := httpd.MachinesResponse{Machines: []status.Machine{
		{MAC: hwaddr.MAC{0x52, 0x54, 0, 0, 0, 1}, NodeName: "worker-1", Profile: "worker", Known: true, Boot: 2, LastPhase: "kubelet-start/tls-bootstrap", LastState: "done", LastSeen: now.Add(-3 * time.Second)},
		{MAC: hwaddr.MAC{0x52, 0x54, 0, 0, 0, 2}, NodeName: "node-525400000002", Profile: "worker", Boot: 1, LastPhase: "preflight", LastState: "error", LastSeen: now,
			Phases: []status.Phase{{Phase: "preflight", State: "error", Error: "no container runtime"}}},
		{MAC: hwaddr.MAC{0x52, 0x54, 0, 0, 0, 3}, NodeName: "worker-3", Profile: "worker", Known: true},
		{MAC: hwaddr.MAC{0x52, 0x54, 0, 0, 0, 4}, NodeName: "worker-4", Profile: "worker", Known: true, Boot: 1, LastPhase: "preflight", LastState: "done", LastSeen: now,
			BootStarted: now.Add(-80 * time.Second), Phases: []status.Phase{{Phase: "agent-start", State: "done", Attempt: 1, End: now.Add(-75 * time.Second)}, {Phase: "preflight", State: "done", Attempt: 3, Start: now.Add(-20 * time.Second), Seconds: 1.5,
				Attempts: []status.Attempt{
					{Attempt: 1, State: "error", Start: now.Add(-70 * time.Second), Seconds: 1, Error: `a Node with name "worker-4" and status "Ready" already exists`},
					{Attempt: 2, State: "error", Start: now.Add(-50 * time.Second), Seconds: 1, Error: `a Node with name "worker-4" and status "Ready" already exists`},
				}}}},
		{MAC: hwaddr.MAC{0x52, 0x54, 0, 0, 0, 5}, NodeName: "db-4", Profile: "persistent", Known: true, Boot: 3, LastPhase: "resume", LastState: "done", LastSeen: now,
			Install: status.Install{Installed: true, LastResume: now.Add(-time.Minute), Rejoins: 1, RejoinReason: "client certificate expired", Reimage: "2026-11-30T14:00:00Z"}},
	}}
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/machines" {
			http.NotFound(w, r)
			return
		}
		_ = json.NewEncoder(w).Encode(mr)
	}))
	defer ts.Close()
	var out bytes.Buffer
	if code := machinesCmd([]string{"--server", ts.URL}, &out); code != 0 {
		t.Fatalf("exit %d", code)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 6 || !strings.HasPrefix(lines[0], "MAC") {
		t.Fatalf("table:\n%s", out.String())
	}
	// Failing first, then recovered from failures, then the rest.
	for i, want := range []string{
		"52:54:00:00:00:02 node-525400000002 worker (unlisted) 1 preflight error 0s 1 - preflight: no container runtime",
		`52:54:00:00:00:04 worker-4 worker 1 preflight done 0s 2 - preflight: a Node with name "worker-4" and status "Ready"...`,
		"52:54:00:00:00:01 worker-1 worker 2 kubelet-start/tls-bootstrap done 3s - -",
		"52:54:00:00:00:03 worker-3 worker 0 - - - -",
		"52:54:00:00:00:05 db-4 persistent 3 resume done 0s - installed, resumed 1m0s ago, re-joined 1x (client certificate expired), reimage pending",
	} {
		if got := strings.Join(strings.Fields(lines[i+1]), " "); got != want {
			t.Errorf("line %d: %q, want %q", i+1, got, want)
		}
	}
	// One machine: every attempt.
	out.Reset()
	if code := machinesCmd([]string{"--server", ts.URL, "worker-4"}, &out); code != 0 {
		t.Fatalf("exit %d", code)
	}
	lines = strings.Split(strings.TrimSpace(out.String()), "\n")
	for i, want := range []string{
		"52:54:00:00:00:04 worker-4 boot 1, 2 failed attempts",
		"PHASE ATTEMPT STATE START SECONDS ERROR / DETAIL",
		"agent-start 1 done +5s 0.000", // an event: when it happened
		`preflight 1 error +10s 1.000 a Node with name "worker-4" and status "Ready" already exists`,
		`preflight 2 error +30s 1.000 a Node with name "worker-4" and status "Ready" already exists`,
		"preflight 3 done +1m0s 1.500",
	} {
		if i >= len(lines) {
			t.Fatalf("attempts:\n%s", out.String())
		}
		if got := strings.Join(strings.Fields(lines[i]), " "); got != want {
			t.Errorf("attempts line %d: %q, want %q", i, got, want)
		}
	}
	if code := machinesCmd([]string{"--server", ts.URL, "worker-9"}, &out); code != 1 {
		t.Errorf("an unknown machine: exit %d, want 1", code)
	}
	if code := machinesCmd([]string{"--server", "http://127.0.0.1:1"}, &out); code == 0 {
		t.Error("an unreachable server must fail")
	}
}

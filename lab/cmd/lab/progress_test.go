package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pxejoin/pxejoin/bootserver/status"
	"github.com/pxejoin/pxejoin/lab/vm"
)

// TestProgress: lab up logs a machine's latest phase once per change, an error with its reason,
// and nothing for a machine the lab did not boot.
func TestProgress(t *testing.T) {
	var ms []status.Machine
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]any{"machines": ms})
	}))
	defer ts.Close()
	var out bytes.Buffer
	flags := log.Flags()
	log.SetOutput(&out)
	log.SetFlags(0)
	defer func() { log.SetOutput(os.Stderr); log.SetFlags(flags) }()
	vms := map[string]*vm.VM{"node-1": {Started: time.Now().Add(-30 * time.Second)}}
	seen := map[string]string{}
	look := func(phase, state, errText string) string {
		ms = []status.Machine{
			{NodeName: "node-1", LastPhase: phase, LastState: state, Phases: []status.Phase{{Phase: phase, State: state, Error: errText}}},
			{NodeName: "stranger", LastPhase: "dhcp", LastState: "done"},
		}
		out.Reset()
		progress(context.Background(), ts.URL, vms, seen)
		return out.String()
	}
	if got := look("disk", "done", ""); !strings.HasPrefix(got, "node-1: disk done, 30 s after power-on") || strings.Contains(got, "stranger") {
		t.Errorf("first look: %q", got)
	}
	if got := look("disk", "done", ""); got != "" {
		t.Errorf("no change, yet logged %q", got)
	}
	if got := look("join", "error", "discovery timed out"); !strings.Contains(got, "node-1: join error") || !strings.Contains(got, "join: discovery timed out") {
		t.Errorf("an error: %q", got)
	}
}

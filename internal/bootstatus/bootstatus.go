// Package bootstatus is the boot-status protocol between nodeagent and bootserver: the agent POSTs one
// Event per phase transition to /status/<mac>; the boot server records them in each machine's timeline.
// Both binaries use this one definition.
package bootstatus

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// States of a phase.
const (
	StateStart   = "start"
	StateDone    = "done"
	StateError   = "error"
	StateSkipped = "skipped"
)

// Well-known phase names besides the join phases (preflight, kubelet-start/tls-bootstrap, …). The boot
// server adds its own (dhcp, nbp, script, kernel, initrd, join-file) from what it serves.
const (
	PhaseAgentStart = "agent-start"
	PhaseNetwork    = "network"
	PhaseJoinFile   = "join-file"
	PhaseRootImage  = "root-image"
	PhaseSwitchRoot = "switch-root"
	PhaseNodeReady  = "node-ready"
)

// Event is one phase transition. Error must never hold a token, key or certificate.
type Event struct {
	Phase  string    `json:"phase"`
	State  string    `json:"state"`
	Time   time.Time `json:"time"`
	Detail string    `json:"detail,omitempty"`
	Error  string    `json:"error,omitempty"`
	// Attempt counts the agent's retries of the whole join (1 for the first).
	Attempt int `json:"attempt,omitempty"`
}

// Validate checks an event received from the network.
func (e *Event) Validate() error {
	switch {
	case e.Phase == "" || len(e.Phase) > 64:
		return fmt.Errorf("phase must be 1 to 64 characters")
	case e.State != StateStart && e.State != StateDone && e.State != StateError && e.State != StateSkipped:
		return fmt.Errorf("state must be one of %s, %s, %s, %s", StateStart, StateDone, StateError, StateSkipped)
	case len(e.Detail) > 1024 || len(e.Error) > 4096:
		return fmt.Errorf("detail or error too long")
	}
	return nil
}

// Post sends events to url (…/status/<mac>) as a JSON array. It gives up after the context's deadline.
func Post(ctx context.Context, hc *http.Client, url string, events ...Event) error {
	body, err := json.Marshal(events)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("boot server answered %s to the status report", resp.Status)
	}
	return nil
}

package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/lab/labenv"
)

// server is what the VM tests need from a boot server: the real bootserver (labenv.BootServer) or the
// stand-in.
type server interface {
	// waitPhase waits until mac's phase reached state.
	waitPhase(ctx context.Context, mac, phase, state string) error
	// phasesDone lists the phases mac reported done.
	phasesDone(mac string) map[string]bool
	// timeline prints mac's timeline relative to t0.
	timeline(t0 time.Time, mac string) string
	// restart stops the boot server (a crash), waits and starts it again.
	restart(t *testing.T, down time.Duration)
	// secretSeen says whether s appears in any report of mac.
	secretSeen(mac, s string) bool
}

var (
	bsOnce sync.Once
	bsBin  string
	bsErr  error
)

// bootserverBin is PXEJOIN_BOOTSERVER, or bootserver built from this tree ("" if it has no main yet).
func bootserverBin(t testing.TB) string {
	bsOnce.Do(func() {
		if b := os.Getenv("PXEJOIN_BOOTSERVER"); b != "" {
			bsBin = b
			return
		}
		if _, err := os.Stat(filepath.Join(repoRoot, "bootserver/main.go")); err != nil {
			return
		}
		dir, err := os.MkdirTemp("", "pxejoin-bootserver-")
		if err != nil {
			bsErr = err
			return
		}
		tempDirs = append(tempDirs, dir)
		bsBin = filepath.Join(dir, "bootserver")
		cmd := exec.Command("go", "build", "-o", bsBin, "./bootserver")
		cmd.Dir = repoRoot
		if out, err := cmd.CombinedOutput(); err != nil {
			bsErr = &buildError{string(out), err}
		}
	})
	if bsErr != nil {
		t.Fatal(bsErr)
	}
	return bsBin
}

type buildError struct {
	out string
	err error
}

func (e *buildError) Error() string { return "go build ./bootserver: " + e.err.Error() + ": " + e.out }

// real wraps labenv.BootServer.
type real struct{ *labenv.BootServer }

func (r real) machine(mac string) (labenv.Machine, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ms, err := labenv.Machines(ctx, r.URL())
	if err != nil {
		return labenv.Machine{}, false
	}
	for _, m := range ms {
		if strings.EqualFold(m.MAC, mac) {
			return m, true
		}
	}
	return labenv.Machine{}, false
}

func (r real) waitPhase(ctx context.Context, mac, phase, state string) error {
	for {
		if m, ok := r.machine(mac); ok {
			for _, p := range m.Phases {
				if p.Phase == phase && p.State == state {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (r real) phasesDone(mac string) map[string]bool {
	out := map[string]bool{}
	m, _ := r.machine(mac)
	for _, p := range m.Phases {
		if p.State == bootstatus.StateDone {
			out[p.Phase] = true
		}
	}
	return out
}

func (r real) timeline(t0 time.Time, mac string) string {
	m, ok := r.machine(mac)
	if !ok {
		return "(machine not in /machines)"
	}
	return labenv.FormatTimeline(t0, m)
}

func (r real) restart(t *testing.T, down time.Duration) {
	r.Kill()
	t.Logf("bootserver killed (SIGKILL)")
	time.Sleep(down)
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Logf("bootserver started again")
}

func (r real) secretSeen(mac, s string) bool {
	m, _ := r.machine(mac)
	for _, p := range m.Phases {
		if strings.Contains(p.Detail+p.Error, s) {
			return true
		}
	}
	return strings.Contains(r.LogTail(100000), s)
}

// standIn adapts StandIn.
type standIn struct{ *StandIn }

func (s standIn) waitPhase(ctx context.Context, mac, phase, state string) error {
	_, err := s.WaitEvent(ctx, mac, phase, state)
	return err
}

func (s standIn) phasesDone(mac string) map[string]bool {
	out := map[string]bool{}
	for _, e := range s.Events(mac) {
		if e.State == bootstatus.StateDone {
			out[e.Phase] = true
		}
	}
	return out
}

func (s standIn) timeline(t0 time.Time, mac string) string { return Timeline(t0, s.Events(mac)) }

func (s standIn) restart(t *testing.T, down time.Duration) {
	s.Stop()
	t.Logf("stand-in boot server stopped")
	time.Sleep(down)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Logf("stand-in boot server started again")
}

func (s standIn) secretSeen(mac, sec string) bool {
	for _, e := range s.Events(mac) {
		if strings.Contains(e.Error+e.Detail, sec) {
			return true
		}
	}
	return false
}

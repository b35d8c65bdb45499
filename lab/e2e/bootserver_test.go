package e2e

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"

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
	// secretSeen lists where s appears: in mac's reports, the status pages, the log.
	secretSeen(mac, s string) []string
}

var (
	bsOnce sync.Once
	bsBin  string
	bsErr  error
)

// bootserverBin is PXEJOIN_BOOTSERVER, or bootserver built from this tree. A build failure fails the
// test: the VM tests never fall back to the stand-in.
func bootserverBin(t testing.TB) string {
	bsOnce.Do(func() {
		if b := os.Getenv("PXEJOIN_BOOTSERVER"); b != "" {
			bsBin = b
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
		if strings.EqualFold(m.MAC.String(), mac) {
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

func (r real) secretSeen(mac, s string) []string {
	var where []string
	m, _ := r.machine(mac)
	for _, p := range m.Phases {
		if strings.Contains(p.Detail+p.Error, s) {
			where = append(where, "the report of phase "+p.Phase)
		}
	}
	for _, path := range []string{"/", "/machines", "/metrics"} {
		body, err := httpGet(r.URL() + path)
		if err != nil {
			where = append(where, fmt.Sprintf("GET %s failed (%v), so it could not be checked", path, err))
		} else if strings.Contains(body, s) {
			where = append(where, "GET "+path)
		}
	}
	if log, err := os.ReadFile(filepath.Join(r.Dir, "bootserver.log")); err != nil || strings.Contains(string(log), s) {
		where = append(where, fmt.Sprintf("the log (%v)", err))
	}
	return where
}

func httpGet(url string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %s", resp.Status)
	}
	return string(b), err
}

// The label the boot server puts on the token Secrets it mints.
const managedBy, bootserverName = "app.kubernetes.io/managed-by", "pxejoin-bootserver"

// mintedSecrets watches the bootstrap token Secrets the boot server creates from now on and returns
// a function listing the secret halves seen so far (tokens deleted since included).
func mintedSecrets(ctx context.Context, t testing.TB, c kubernetes.Interface) func() []string {
	var mu sync.Mutex
	seen := map[string]bool{}
	add := func(obj runtime.Object) {
		if s, ok := obj.(*corev1.Secret); ok && s.Labels[managedBy] == bootserverName && len(s.Data[bootstrapapi.BootstrapTokenSecretKey]) > 0 {
			mu.Lock()
			seen[string(s.Data[bootstrapapi.BootstrapTokenSecretKey])] = true
			mu.Unlock()
		}
	}
	opts := metav1.ListOptions{LabelSelector: managedBy + "=" + bootserverName}
	// list adds what exists and returns the version to watch from.
	list := func() (string, error) {
		l, err := c.CoreV1().Secrets(metav1.NamespaceSystem).List(ctx, opts)
		if err != nil {
			return "", err
		}
		for i := range l.Items {
			add(&l.Items[i])
		}
		return l.ResourceVersion, nil
	}
	rv, err := list()
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for ctx.Err() == nil {
			if rv == "" { // the last watch failed or ended in an error: list again
				if rv, _ = list(); rv == "" {
					time.Sleep(time.Second)
					continue
				}
			}
			w, err := c.CoreV1().Secrets(metav1.NamespaceSystem).Watch(ctx, metav1.ListOptions{LabelSelector: opts.LabelSelector, ResourceVersion: rv})
			if err != nil {
				rv = ""
				continue
			}
			for ev := range w.ResultChan() {
				if ev.Type == watch.Error {
					rv = ""
					break
				}
				add(ev.Object)
				if m, err := meta.Accessor(ev.Object); err == nil {
					rv = m.GetResourceVersion()
				}
			}
			w.Stop()
		}
	}()
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Sorted(maps.Keys(seen))
	}
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

func (s standIn) secretSeen(mac, sec string) []string {
	var where []string
	for _, e := range s.Events(mac) {
		if strings.Contains(e.Error+e.Detail, sec) {
			where = append(where, "the report of phase "+e.Phase)
		}
	}
	return where
}

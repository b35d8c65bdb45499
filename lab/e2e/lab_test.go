package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
	"github.com/pxejoin/pxejoin/lab/controlplane"
	"github.com/pxejoin/pxejoin/lab/labenv"
	"github.com/pxejoin/pxejoin/lab/testenv"
	"github.com/pxejoin/pxejoin/lab/vm"
)

var repoRoot = func() string { d, _ := filepath.Abs("../.."); return d }()

// tempDirs are the test binary's own build directories (agent, bootserver), removed by TestMain.
var tempDirs []string

func TestMain(m *testing.M) {
	code := m.Run()
	for _, d := range tempDirs {
		os.RemoveAll(d)
	}
	os.Exit(code)
}

// needRoot skips under -short; otherwise it fails unless the test can boot VMs and the control plane.
func needRoot(t testing.TB) {
	t.Helper()
	testenv.RequireVM(t)
	testenv.RequireK8s(t)
	for _, f := range []string{"/usr/lib/ipxe/undionly.kpxe", vm.OVMFCode} {
		testenv.RequireFile(t, f)
	}
}

var (
	buildOnce  sync.Once
	builtImage *labenv.Image
	buildErr   error
)

// image builds the agent (PXEJOIN_AGENT, or ./nodeagent built static) and the node image around it with
// images/build.sh (cached by inputs), once per test binary.
func image(t testing.TB) *labenv.Image {
	t.Helper()
	buildOnce.Do(func() {
		agent := os.Getenv("PXEJOIN_AGENT")
		if agent == "" {
			dir, err := os.MkdirTemp("", "pxejoin-e2e-")
			if err != nil {
				buildErr = err
				return
			}
			tempDirs = append(tempDirs, dir)
			agent = filepath.Join(dir, "nodeagent")
			cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", agent, "./nodeagent")
			cmd.Dir, cmd.Env = repoRoot, append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("build agent: %v: %s", err, out)
				return
			}
		}
		t0 := time.Now()
		builtImage, buildErr = labenv.BuildImage(repoRoot, agent, os.Stderr)
		fmt.Fprintf(os.Stderr, "node image ready in %s\n", time.Since(t0).Round(time.Second))
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtImage
}

// labNet makes the test's namespace with the lab bridge, reachable from the test process.
func labNet(t testing.TB) *labenv.Net {
	n, err := labenv.NewNet("pxe")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	return n
}

// startVM boots a VM and stops it at the test's end, keeping its console on failure.
func startVM(t testing.TB, n *labenv.Net, name string, mac hwaddr.MAC, fw vm.Firmware, memMB int) *vm.VM {
	t.Helper()
	dir := t.TempDir()
	v, err := vm.Start(vm.Options{Name: name, NetNS: n.NS.Name, Bridge: n.Bridge, MAC: mac, Firmware: fw, Dir: dir, MemoryMB: memMB})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		v.Stop()
		if t.Failed() {
			t.Logf("console of %s (last 60 lines):\n%s", name, v.Console.Tail(60))
		}
		if keep := os.Getenv("PXEJOIN_KEEP"); keep != "" {
			b, _ := os.ReadFile(filepath.Join(dir, name+".console"))
			os.WriteFile(filepath.Join(keep, name+".console"), b, 0o644)
		}
	})
	return v
}

// startControlPlane runs the test's control plane on the lab bridge and makes a signed bootstrap token.
func startControlPlane(ctx context.Context, t testing.TB, n *labenv.Net) (*controlplane.ControlPlane, string) {
	t.Helper()
	testenv.RequireK8s(t)
	t0 := time.Now()
	cp, err := controlplane.Start(ctx, controlplane.Options{StateDir: t.TempDir(), Address: n.BridgeAddr, NetNS: n.NS.Name, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cp.Stop)
	token, err := cp.CreateToken(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.WaitSigned(ctx, token, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	t.Logf("control plane at %s ready with a signed token after %s", cp.Endpoint(), time.Since(t0).Round(time.Millisecond))
	return cp, token
}

// consoleMarks prints when the console first showed each mark (a per-phase timeline of the boot).
func consoleMarks(t testing.TB, v *vm.VM, marks ...string) {
	var b strings.Builder
	for _, m := range marks {
		if at, ok := v.Console.FirstSeen(m); ok {
			fmt.Fprintf(&b, "  %7.2fs %s\n", at.Seconds(), m)
		}
	}
	t.Logf("%s console:\n%s", v.Opts.Name, b.String())
}

func ctxFor(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// LogOnFailure prints the stand-in's DHCP/TFTP log if the test failed.
func (s *StandIn) LogOnFailure(t *testing.T) {
	if t.Failed() {
		b, _ := os.ReadFile(filepath.Join(s.Dir, "dnsmasq.log"))
		t.Logf("dnsmasq log:\n%s", b)
	}
}

func durationEnv(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(name)); err == nil {
		return d
	}
	return def
}

// Package netlab gives tests and benchmarks their own hosts: Linux network namespaces joined by veth
// pairs or a bridge, created by the caller and removed when it ends. Traffic sent there never reaches a
// real interface. It needs root and iproute2 (installed by `make deps`).
package netlab

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pxejoin/pxejoin/internal/netns"
)

// TB is the part of testing.TB netlab uses.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
	Logf(format string, args ...any)
}

var seq atomic.Int64

// NS is a network namespace made by this process.
type NS struct {
	Name string
}

// New creates a namespace with loopback up; it is deleted (after killing what still runs in it) at the
// test's cleanup.
func New(t TB, prefix string) *NS {
	t.Helper()
	n, err := Create(prefix)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() { n.Delete() })
	return n
}

// Create makes a namespace named prefix-<pid>-<n> with loopback up. Delete removes it.
func Create(prefix string) (*NS, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("netlab: network namespaces need root: run the tests as root (make test does)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("netlab: iproute2's ip is missing: run make deps")
	}
	sweepStale(prefix)
	name := fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), seq.Add(1))
	if len(name) > 60 {
		return nil, fmt.Errorf("netlab: namespace name %q too long", name)
	}
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("netlab: ip netns add %s: %v: %s", name, err, out)
	}
	n := &NS{Name: name}
	if _, err := n.Exec("ip", "link", "set", "lo", "up"); err != nil {
		n.Delete()
		return nil, err
	}
	return n, nil
}

var swept sync.Map

// sweepStale deletes, once per prefix and process, the namespaces named prefix-<pid>-<n> whose
// process is gone: a test or lab killed before its cleanup (kill -9, a CI time limit, the end of a
// session) leaves its namespace behind, and the next run removes it. A namespace whose pid is alive
// is never touched, nor one named otherwise.
func sweepStale(prefix string) {
	if _, done := swept.LoadOrStore(prefix, true); done {
		return
	}
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		pid, ok := staleOwner(prefix, e.Name())
		if !ok || pid == os.Getpid() || syscall.Kill(pid, 0) != syscall.ESRCH {
			continue
		}
		(&NS{Name: e.Name()}).Delete()
	}
}

// staleOwner parses name as prefix-<pid>-<n> and returns the pid.
func staleOwner(prefix, name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, prefix+"-")
	if !ok {
		return 0, false
	}
	p, n, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(p)
	if err != nil || pid <= 0 || strconv.Itoa(pid) != p {
		return 0, false
	}
	if k, err := strconv.Atoi(n); err != nil || k <= 0 || strconv.Itoa(k) != n {
		return 0, false
	}
	return pid, true
}

// Delete kills every process left in the namespace and removes it.
func (n *NS) Delete() {
	for i := 0; i < 20; i++ {
		out, _ := exec.Command("ip", "netns", "pids", n.Name).Output()
		pids := strings.Fields(string(out))
		if len(pids) == 0 {
			break
		}
		for _, p := range pids {
			if pid, err := strconv.Atoi(p); err == nil && pid != os.Getpid() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = exec.Command("ip", "netns", "del", n.Name).Run()
}

// Exec runs a command inside the namespace and returns its output; errors carry the output.
func (n *NS) Exec(name string, args ...string) ([]byte, error) {
	cmd := n.Command(name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("in netns %s: %s %s: %v: %s", n.Name, name, strings.Join(args, " "), err, out.String())
	}
	return out.Bytes(), nil
}

// Command prepares a command that runs inside the namespace (ip netns exec).
func (n *NS) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// MustExec is Exec that fails the test.
func (n *NS) MustExec(t TB, name string, args ...string) []byte {
	t.Helper()
	out, err := n.Exec(name, args...)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return out
}

// Do runs f on an OS thread switched into the namespace: sockets f opens belong to the namespace and
// stay there after Do returns.
func (n *NS) Do(f func() error) error { return netns.RunNamed(n.Name, f) }

// Veth joins two namespaces with a veth pair: aIf in a with address aCIDR, bIf in b with bCIDR (an
// empty CIDR leaves that end unnumbered). Both ends are up.
func Veth(t TB, a *NS, aIf, aCIDR string, b *NS, bIf, bCIDR string) {
	t.Helper()
	if err := AddVeth(a, aIf, aCIDR, b, bIf, bCIDR); err != nil {
		t.Fatalf("%v", err)
	}
}

// AddVeth is Veth without a test.
func AddVeth(a *NS, aIf, aCIDR string, b *NS, bIf, bCIDR string) error {
	tmp := fmt.Sprintf("nlv%d", seq.Add(1))
	if out, err := exec.Command("ip", "link", "add", tmp+"a", "netns", a.Name, "type", "veth", "peer", "name", tmp+"b", "netns", b.Name).CombinedOutput(); err != nil {
		return fmt.Errorf("netlab: ip link add veth: %v: %s", err, out)
	}
	for _, e := range []struct {
		ns       *NS
		tmp, ifc string
		cidr     string
	}{{a, tmp + "a", aIf, aCIDR}, {b, tmp + "b", bIf, bCIDR}} {
		if _, err := e.ns.Exec("ip", "link", "set", e.tmp, "name", e.ifc); err != nil {
			return err
		}
		if e.cidr != "" {
			if _, err := e.ns.Exec("ip", "addr", "add", e.cidr, "dev", e.ifc); err != nil {
				return err
			}
		}
		if _, err := e.ns.Exec("ip", "link", "set", e.ifc, "up"); err != nil {
			return err
		}
	}
	return nil
}

// Bridge creates a bridge in n with address cidr (may be empty), STP off and no forward delay.
func (n *NS) Bridge(t TB, name, cidr string) {
	t.Helper()
	n.MustExec(t, "ip", "link", "add", name, "type", "bridge", "stp_state", "0", "forward_delay", "0")
	if cidr != "" {
		n.MustExec(t, "ip", "addr", "add", cidr, "dev", name)
	}
	n.MustExec(t, "ip", "link", "set", name, "up")
}

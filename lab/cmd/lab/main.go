// Command lab runs the whole pxejoin chain on one machine without KVM: a real control plane reachable
// from the lab bridge, the boot server in a network namespace and N QEMU/TCG machines that PXE-boot
// and join (`make lab`, `make lab-down`).
//
//	lab up   [-nodes N] [-dir .lab] [-agent BIN] [-bootserver BIN]   returns once every node is Ready
//	lab down [-dir .lab]                                              removes everything up made
//	lab reboot [-dir .lab] node-N                                     power-cycles a node, prints both boots
//
// `lab up` starts a supervisor (`lab serve`, its own session, log in DIR/lab.log) that owns the
// daemons and VMs, waits until it reports the nodes Ready, prints each machine's timeline from the boot
// server's /machines and `kubectl get nodes`, and exits; the lab keeps running. `lab down` stops the
// supervisor and every process it recorded (by PID, after checking /proc/PID/exe), deletes the
// namespace and the host's veth, and removes DIR. Every lab machine has a virtio disk and a persistent
// profile: `lab reboot node-1` pulls its plug (through the supervisor, which owns the VMs), powers it on
// again with the same MAC and disk, waits until the same Node is Ready and prints the boot server's
// timeline of that boot beside the first.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pxejoin/pxejoin/nodeagent/nodefiles"
)

// State is what `lab serve` records in DIR/state.json for `lab up` and `lab down`.
type State struct {
	Supervisor Proc   `json:"supervisor"`
	NetNS      string `json:"netns,omitempty"`
	HostIf     string `json:"hostIf,omitempty"`
	Procs      []Proc `json:"procs,omitempty"`
	// Phase is "starting", "ready" or "failed".
	Phase  string `json:"phase"`
	Error  string `json:"error,omitempty"`
	Report string `json:"report,omitempty"`
}

// Proc is a process the lab started.
type Proc struct {
	Name string `json:"name"`
	PID  int    `json:"pid"`
	Exe  string `json:"exe"`
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: lab up|down|reboot [flags] [node]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet("lab "+os.Args[1], flag.ExitOnError)
	dir := fs.String("dir", ".lab", "state directory")
	nodes := fs.Int("nodes", envInt("LAB_NODES", 2), "machines to boot (odd ones BIOS, even ones UEFI); LAB_NODES")
	agent := fs.String("agent", os.Getenv("LAB_AGENT"), "nodeagent binary for the image (default: build ./nodeagent static); LAB_AGENT")
	bootserver := fs.String("bootserver", envOr("LAB_BOOTSERVER", "bin/bootserver"), "bootserver binary; LAB_BOOTSERVER")
	timeout := fs.Duration("timeout", 30*time.Minute, "how long up waits for the nodes")
	_ = fs.Parse(os.Args[2:])
	abs, err := filepath.Abs(*dir)
	if err != nil {
		die(err)
	}
	switch os.Args[1] {
	case "up":
		err = up(abs, os.Args[2:], *timeout)
	case "serve":
		err = serve(abs, *nodes, *agent, *bootserver)
	case "down":
		err = down(abs)
	case "reboot":
		if fs.NArg() != 1 {
			err = errors.New("usage: lab reboot [-dir .lab] node-N")
			break
		}
		err = reboot(abs, fs.Arg(0))
	default:
		err = fmt.Errorf("unknown command %q: up, down or reboot", os.Args[1])
	}
	if err != nil {
		die(err)
	}
}

func up(dir string, args []string, timeout time.Duration) error {
	if st, err := readState(dir); err == nil && alive(st.Supervisor) {
		return fmt.Errorf("a lab already runs (supervisor pid %d): make lab-down first", st.Supervisor.PID)
	}
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(dir, "lab.log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(self, append([]string{"serve"}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	logf.Close()
	fmt.Printf("lab: supervisor pid %d, log %s\n", cmd.Process.Pid, filepath.Join(dir, "lab.log"))
	go func() { _ = cmd.Wait() }()
	deadline := time.Now().Add(timeout)
	var printed int
	for time.Now().Before(deadline) {
		time.Sleep(2 * time.Second)
		printed = follow(filepath.Join(dir, "lab.log"), printed)
		st, err := readState(dir)
		if err != nil {
			continue
		}
		switch st.Phase {
		case "ready":
			fmt.Println(st.Report)
			fmt.Printf("lab is up: kubectl --kubeconfig %s get nodes; make lab-down removes it\n", filepath.Join(dir, "kubeconfig"))
			return nil
		case "failed":
			return fmt.Errorf("lab failed: %s (log: %s; make lab-down cleans up)", st.Error, filepath.Join(dir, "lab.log"))
		}
		if cmd.ProcessState != nil {
			return fmt.Errorf("the supervisor exited; see %s", filepath.Join(dir, "lab.log"))
		}
	}
	return fmt.Errorf("nodes not Ready after %s; the lab still runs (make lab-down removes it)", timeout)
}

// follow prints the log's new lines.
func follow(path string, from int) int {
	b, err := os.ReadFile(path)
	if err != nil || len(b) <= from {
		return from
	}
	os.Stdout.Write(b[from:])
	return len(b)
}

func down(dir string) error {
	st, err := readState(dir)
	if errors.Is(err, os.ErrNotExist) {
		fmt.Println("lab: nothing to remove")
		return os.RemoveAll(dir)
	}
	if err != nil {
		return err
	}
	if alive(st.Supervisor) {
		_ = syscall.Kill(st.Supervisor.PID, syscall.SIGTERM)
		for i := 0; i < 300 && alive(st.Supervisor); i++ {
			time.Sleep(100 * time.Millisecond)
		}
	}
	for _, p := range append(st.Procs, st.Supervisor) {
		if alive(p) {
			fmt.Printf("lab: killing %s (pid %d, %s)\n", p.Name, p.PID, p.Exe)
			_ = syscall.Kill(p.PID, syscall.SIGKILL)
		}
	}
	if st.HostIf != "" {
		_ = exec.Command("ip", "link", "del", st.HostIf).Run()
	}
	if st.NetNS != "" {
		if out, err := exec.Command("ip", "netns", "pids", st.NetNS).Output(); err == nil && len(strings.TrimSpace(string(out))) > 0 {
			fmt.Printf("lab: processes still in %s: %s (not started by this lab's record; left alone)\n", st.NetNS, strings.Fields(string(out)))
		}
		_ = exec.Command("ip", "netns", "del", st.NetNS).Run()
	}
	fmt.Printf("lab: removed %s\n", dir)
	return os.RemoveAll(dir)
}

// alive says whether p still runs as the same program (its PID not reused by another one).
func alive(p Proc) bool {
	if p.PID <= 0 {
		return false
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", p.PID))
	return err == nil && strings.TrimSuffix(exe, " (deleted)") == p.Exe
}

func procOf(name string, pid int) Proc {
	exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	return Proc{Name: name, PID: pid, Exe: exe}
}

func readState(dir string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		return nil, err
	}
	var st State
	return &st, json.Unmarshal(b, &st)
}

func writeState(dir string, st *State) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return nodefiles.Root(dir).Write(nodefiles.File{Path: "state.json", Data: b, Mode: 0o644})
}

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func die(err error) {
	fmt.Fprintln(os.Stderr, "lab:", err)
	os.Exit(1)
}

package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pxejoin/pxejoin/lab/controlplane"
	"github.com/pxejoin/pxejoin/lab/labenv"
	"github.com/pxejoin/pxejoin/lab/vm"
)

// serve is the supervisor: it builds and starts everything, records it, reports Ready and waits for
// SIGTERM (lab down), then stops what it started.
func serve(dir string, nodes int, agent, bootserverBin string) error {
	log.SetFlags(log.Ltime)
	log.SetPrefix("lab: ")
	st := &State{Supervisor: procOf("lab", os.Getpid()), Phase: "starting"}
	if err := writeState(dir, st); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var cleanups []func()
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
		log.Printf("stopped")
	}()
	fail := func(err error) error {
		st.Phase, st.Error = "failed", err.Error()
		_ = writeState(dir, st)
		log.Printf("FAILED: %v", err)
		<-ctx.Done() // keep everything for inspection until lab down
		return err
	}
	repo, err := os.Getwd()
	if err != nil {
		return fail(err)
	}
	bsBin, err := filepath.Abs(bootserverBin)
	if err != nil {
		return fail(err)
	}
	if _, err := os.Stat(bsBin); err != nil {
		return fail(fmt.Errorf("bootserver binary: %w (make build)", err))
	}
	if agent == "" {
		agent = filepath.Join(dir, "nodeagent")
		log.Printf("building nodeagent (static: it is the initramfs's /init)")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", agent, "./nodeagent")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fail(fmt.Errorf("build agent: %v: %s", err, out))
		}
	}
	if agent, err = filepath.Abs(agent); err != nil {
		return fail(err)
	}
	t0 := time.Now()
	log.Printf("building the node image (images/build.sh, cached by inputs)")
	img, err := labenv.BuildImage(repo, agent, os.Stdout)
	if err != nil {
		return fail(err)
	}
	log.Printf("image %s ready after %s", img.Dir, time.Since(t0).Round(time.Second))

	n, err := labenv.NewNet("pxelab")
	if err != nil {
		return fail(err)
	}
	cleanups = append(cleanups, n.Close)
	st.NetNS, st.HostIf = n.NS.Name, n.HostIf
	_ = writeState(dir, st)
	log.Printf("namespace %s, bridge %s %s/24 (host route via %s)", n.NS.Name, n.Bridge, n.BridgeAddr, n.HostIf)

	cp, err := controlplane.Start(ctx, controlplane.Options{StateDir: filepath.Join(dir, "controlplane"),
		Address: n.BridgeAddr, APIPort: 6443, NetNS: n.NS.Name, Logf: log.Printf})
	if err != nil {
		return fail(err)
	}
	cleanups = append(cleanups, cp.Stop)
	// The lab's nodes are approved by the boot server alone (issue 13): no kubeadm auto-approval, and
	// kubelets get serving certificates, so kubectl logs/exec can verify them.
	if err := cp.SetAutoApprove(ctx, false); err != nil {
		return fail(err)
	}
	if err := cp.SetServerTLSBootstrap(ctx, true); err != nil {
		return fail(err)
	}
	recordNS(st, n)
	_ = writeState(dir, st)
	kc, _ := os.ReadFile(cp.AdminKubeconfig())
	_ = os.WriteFile(filepath.Join(dir, "kubeconfig"), kc, 0o600)

	machines := map[string]string{}
	for i := 1; i <= nodes; i++ {
		machines[n.MAC(i).String()] = fmt.Sprintf("node-%d", i)
	}
	// Every lab machine has a disk and the profile is persistent: a power cycle (lab reboot) resumes.
	disk := func(i int) *vm.Disk {
		return &vm.Disk{Path: filepath.Join(dir, "vms", fmt.Sprintf("node-%d.disk", i)), SizeGiB: 8}
	}
	bs := &labenv.BootServer{Bin: bsBin, NS: n.NS, Interface: n.Bridge, Addr: n.BridgeAddr, Dir: filepath.Join(dir, "bootserver"),
		Kubeconfig: cp.AdminKubeconfig(), Image: img, Machines: machines, Disk: disk(1).ByID()}
	if err := bs.Start(ctx); err != nil {
		return fail(err)
	}
	cleanups = append(cleanups, bs.Stop)
	log.Printf("boot server at %s (page: %s/)", bs.URL(), bs.URL())

	vmStart := time.Now()
	vms := map[string]*vm.VM{}
	for i := 1; i <= nodes; i++ {
		fw := vm.BIOS
		if i%2 == 0 {
			fw = vm.UEFI
		}
		v, err := vm.Start(vm.Options{Name: fmt.Sprintf("node-%d", i), NetNS: n.NS.Name, Bridge: n.Bridge, MAC: n.MAC(i),
			Firmware: fw, MemoryMB: 2048, Dir: filepath.Join(dir, "vms"), Disk: disk(i)})
		if err != nil {
			return fail(err)
		}
		vms[v.Opts.Name] = v
		cleanups = append(cleanups, func() { vms[v.Opts.Name].Stop() })
		log.Printf("node-%d: %s VM, MAC %s, console %s", i, fw, n.MAC(i), filepath.Join(dir, "vms", fmt.Sprintf("node-%d.console", i)))
	}
	recordNS(st, n)
	_ = writeState(dir, st)

	ready := map[string]time.Duration{}
	for len(ready) < nodes {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
		list, err := cp.Admin().CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			continue
		}
		for _, nd := range list.Items {
			for _, c := range nd.Status.Conditions {
				if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue && ready[nd.Name] == 0 {
					ready[nd.Name] = time.Since(vmStart)
					log.Printf("%s Ready %.0f s after its VM started", nd.Name, ready[nd.Name].Seconds())
				}
			}
		}
	}
	var rep strings.Builder
	if ms, err := labenv.Machines(ctx, bs.URL()); err == nil {
		for _, m := range ms {
			rep.WriteString(labenv.FormatTimeline(vmStart, m))
		}
	}
	kubectl := filepath.Join(os.Getenv("PXEJOIN_K8S_BIN"), "kubectl")
	out, _ := exec.Command(kubectl, "--kubeconfig", filepath.Join(dir, "kubeconfig"), "get", "nodes", "-o", "wide").CombinedOutput()
	rep.WriteString("\n$ kubectl get nodes -o wide\n")
	rep.Write(out)
	r := &rebooter{cs: cp.Admin(), bs: bs, vms: vms, record: func() { recordNS(st, n); _ = writeState(dir, st) }}
	stopCtl, err := r.serve(ctx, filepath.Join(dir, controlSocket))
	if err != nil {
		return fail(err)
	}
	cleanups = append(cleanups, stopCtl)
	st.Phase, st.Report = "ready", rep.String()
	_ = writeState(dir, st)
	log.Printf("all %d nodes Ready; waiting for lab down (lab reboot node-N power-cycles one)", nodes)
	<-ctx.Done()
	return nil
}

// recordNS records every process in the lab namespace (control plane daemons, boot server, qemu) with
// its executable, for lab down.
func recordNS(st *State, n *labenv.Net) {
	out, _ := exec.Command("ip", "netns", "pids", n.NS.Name).Output()
	seen := map[int]bool{}
	for _, p := range st.Procs {
		seen[p.PID] = true
	}
	for _, f := range strings.Fields(string(out)) {
		pid, err := strconv.Atoi(f)
		if err != nil || seen[pid] {
			continue
		}
		p := procOf("", pid)
		p.Name = filepath.Base(p.Exe)
		st.Procs = append(st.Procs, p)
	}
}

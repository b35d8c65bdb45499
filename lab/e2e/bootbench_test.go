package e2e

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pxejoin/pxejoin/lab/labenv"
	"github.com/pxejoin/pxejoin/lab/vm"
)

// bootMarks are the console lines that end each stretch of a boot, in order.
var bootMarks = []struct{ name, line string }{
	{"init", "nodeagent init mode"},                      // firmware, DHCP, TFTP, iPXE, kernel + initramfs over HTTP
	{"creds", "kubelet-start/tls-bootstrap done"},        // + the join file and the join: the node's credentials
	{"switch-root", "switch-root done: exec /sbin/init"}, // + the 160 MB root image
}

// BenchmarkBootVsPlainServer answers "does the boot server add anything beyond firmware and kernel
// time?": the same BIOS VM (same MAC, kernel, initramfs, root image and agent) boots through the real
// bootserver and through Plain (dnsmasq + nginx with static files and a join file made beforehand),
// interleaved, PXEJOIN_BOOT_ROUNDS times each (default 2), until switch_root. It reports, per
// milestone, the best time from qemu's start on each side and the ratio ours/plain (1.00 = nothing
// added; the bootserver also mints the machine's token when the join file is asked for).
func BenchmarkBootVsPlainServer(b *testing.B) {
	needRoot(b)
	bin := bootserverBin(b)
	rounds := 2
	if n, err := strconv.Atoi(os.Getenv("PXEJOIN_BOOT_ROUNDS")); err == nil && n > 0 {
		rounds = n
	}
	img := image(b)
	n := labNet(b)
	ctx := ctxFor(b, 30*time.Minute)
	cp, token := startControlPlane(ctx, b, n)
	const node = "vm-bench"
	mac := n.MAC(3)
	stateDir := b.TempDir() // the boot server keeps its leases and timelines across its rounds

	best := map[string]map[string]time.Duration{"ours": {}, "plain": {}}
	boot := func(side string, round int) {
		var stop func()
		switch side {
		case "ours":
			bs := &labenv.BootServer{Bin: bin, NS: n.NS, Interface: n.Bridge, Addr: n.BridgeAddr, Dir: stateDir,
				Kubeconfig: cp.AdminKubeconfig(), Image: img, Machines: map[string]string{mac.String(): node}}
			if err := bs.Start(ctx); err != nil {
				b.Fatal(err)
			}
			stop = bs.Stop
		case "plain":
			p := &Plain{NS: n.NS, Addr: n.BridgeAddr, Bridge: n.Bridge, Dir: b.TempDir(), Kernel: img.Kernel,
				Initrd: img.Initrd, Image: img.Root, MAC: mac, Join: joinFile(node, token, cp.Endpoint(), cp.CAPin())}
			if err := p.Start(); err != nil {
				b.Fatal(err)
			}
			stop = p.Stop
		}
		defer stop()
		v, err := vm.Start(vm.Options{Name: fmt.Sprintf("%s%d", side, round), NetNS: n.NS.Name, Bridge: n.Bridge, MAC: mac,
			Dir: b.TempDir(), MemoryMB: 2048})
		if err != nil {
			b.Fatal(err)
		}
		defer v.Stop()
		bctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		var line []string
		for _, m := range bootMarks {
			at, err := v.Console.Wait(bctx, m.line)
			if err != nil {
				b.Fatalf("%s round %d: no %q on the console: %v\n%s", side, round, m.line, err, v.Console.Tail(40))
			}
			if d, ok := best[side][m.name]; !ok || at < d {
				best[side][m.name] = at
			}
			line = append(line, fmt.Sprintf("%s %.2fs", m.name, at.Seconds()))
		}
		b.Logf("%-5s round %d: %s", side, round, strings.Join(line, ", "))
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for r := 1; r <= rounds; r++ {
			// Alternate which side goes first, so neither always boots on a warmer machine.
			if r%2 == 1 {
				boot("ours", r)
				boot("plain", r)
			} else {
				boot("plain", r)
				boot("ours", r)
			}
		}
	}
	b.StopTimer()
	var sum []string
	for _, m := range bootMarks {
		o, p := best["ours"][m.name], best["plain"][m.name]
		b.ReportMetric(o.Seconds(), m.name+"-ours-s")
		b.ReportMetric(p.Seconds(), m.name+"-plain-s")
		b.ReportMetric(o.Seconds()/p.Seconds(), m.name+"-ratio")
		sum = append(sum, fmt.Sprintf("%s ours %.2fs plain %.2fs ratio %.2f (%+.2fs)", m.name, o.Seconds(), p.Seconds(),
			o.Seconds()/p.Seconds(), (o-p).Seconds()))
	}
	b.Logf("best of %d, seconds from qemu start: %s", rounds, strings.Join(sum, "; "))
}

// BenchmarkDisklessReboot is the lab timeline of issue 12: power-on → Ready of a diskless machine's
// first boot and of its power-cycle (the Node still Ready when the plug is pulled) side by side in one
// run, with where each spends its time: every phase the boot server's status shows, as the time it
// ended after qemu started and how long it took. It reports both power-on → Ready times and the ratio
// reboot/first (target: the reboot within first boot + 15 s). Beside them, the power-cycle of a
// persistent machine (disk, persistent profile: runPersistent), which resumes from its disk without a
// join or an image download (target: Ready no later than the first boot).
func BenchmarkDisklessReboot(b *testing.B) {
	var (
		r  rebootRun
		pr persistentRun
	)
	// Sub-benchmarks: each one's VMs and control plane are gone before the next one starts.
	b.Run("diskless", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			r = runReboot(b)
		}
		b.ReportMetric(r.first.ready.Seconds(), "first-ready-s")
		b.ReportMetric(r.reboot.ready.Seconds(), "reboot-ready-s")
		b.ReportMetric(r.reboot.ready.Seconds()/r.first.ready.Seconds(), "reboot/first")
	})
	b.Run("persistent", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			pr = runPersistent(b)
		}
		b.ReportMetric(pr.first.ready.Seconds(), "first-ready-s")
		b.ReportMetric(pr.reboot.ready.Seconds(), "reboot-ready-s")
	})
	if r.first.ready == 0 || pr.reboot.ready == 0 {
		return // a run failed
	}
	runs := []struct {
		name string
		run  bootRun
	}{{"first boot", r.first}, {"persistent reboot", pr.reboot}, {"diskless reboot", r.reboot}}
	// Rows: every phase either boot reported, in the order they ended.
	end := map[string]time.Duration{}
	for _, c := range runs {
		for _, p := range c.run.phases {
			at := phaseEnd(p).Sub(c.run.started)
			if d, ok := end[p.Phase]; !ok || at < d {
				end[p.Phase] = at
			}
		}
	}
	names := make([]string, 0, len(end))
	for p := range end {
		names = append(names, p)
	}
	sort.Slice(names, func(i, j int) bool { return end[names[i]] < end[names[j]] })
	var tb strings.Builder
	fmt.Fprintf(&tb, "%-30s", "seconds after power-on (took)")
	for _, c := range runs {
		fmt.Fprintf(&tb, " %-24s", c.name)
	}
	tb.WriteString("\n")
	for _, name := range names {
		fmt.Fprintf(&tb, "%-30s", name)
		for _, c := range runs {
			cell := "—"
			if p := findPhase(c.run.phases, name); p != nil {
				cell = fmt.Sprintf("%6.1f (%5.1f) %s", phaseEnd(*p).Sub(c.run.started).Seconds(), p.Seconds, p.State)
			}
			fmt.Fprintf(&tb, " %-24s", cell)
		}
		tb.WriteString("\n")
	}
	fmt.Fprintf(&tb, "%-30s", "Node Ready (API)")
	for _, c := range runs {
		fmt.Fprintf(&tb, " %6.1f %-17s", c.run.ready.Seconds(), "")
	}
	tb.WriteString("\n")
	b.Logf("lab timeline, one run (first boot and diskless reboot of a diskless machine, reboot of a persistent one):\n%s", tb.String())
	ratio := r.reboot.ready.Seconds() / r.first.ready.Seconds()
	b.Logf("power-on → Ready: first boot %.1fs, diskless reboot %.1fs: ratio reboot/first %.2f (%+.1fs; target ≤ +15 s)",
		r.first.ready.Seconds(), r.reboot.ready.Seconds(), ratio, (r.reboot.ready - r.first.ready).Seconds())
	b.Logf("power-on → Ready: persistent machine's first boot %.1fs (disk installed), its reboot %.1fs: %+.1fs from the diskless first boot (target ≤ 0)",
		pr.first.ready.Seconds(), pr.reboot.ready.Seconds(), (pr.reboot.ready - r.first.ready).Seconds())
	if len(r.refused) > 0 {
		b.Logf("refused on the way: %s", strings.Join(r.refused, "; "))
	}
}

// phaseEnd is when a phase ended, or began when it has not ended.
func phaseEnd(p labenv.MachinePhase) time.Time {
	if p.End.IsZero() {
		return p.Start
	}
	return p.End
}

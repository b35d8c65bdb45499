package fleet

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pxejoin/pxejoin/lab/netlab"
)

// Capacity is a closed-loop DHCP measurement: Machines unknown machines, InFlight of them at a
// time, each finished DORA starting the next machine. Unlike a burst (everything at once), the
// rate does not depend on when the client retransmits, as long as Retransmits is zero: the servers
// answer every request before its first timeout.
type Capacity struct {
	Machines, InFlight int
	// Failed counts machines without a lease (after firmware's retries).
	Failed int
	// Elapsed is from the first DISCOVER to the last DORA's end.
	Elapsed time.Duration
	// P50 and P99 are the DORA latencies (DISCOVER sent to ACK received) of the machines that
	// got a lease.
	P50, P99 time.Duration
	// Retransmits counts the exchanges (DISCOVER→OFFER or REQUEST→ACK) that had to be sent again.
	Retransmits int
	// ClientDrops and ServerDrops count the UDP datagrams the kernel dropped for a full socket
	// buffer (RcvbufErrors) in the client's namespace and in the servers' together. A drop by
	// the client costs a retransmit; one by a server only when no other server answers.
	ClientDrops, ServerDrops int
	// ServerCPU is each server's user+system CPU time over the run, in HA.Servers' order.
	ServerCPU []time.Duration
	// Idle is the servers' CPU time per second, together, while no machine boots (Lease renewals,
	// mirroring), measured over idleWindow before the run: the part of ServerCPU that does not
	// grow with DORAs.
	Idle time.Duration
	// ClientCPU is this process's: the DHCP client, and the proxies between servers and apiserver.
	ClientCPU time.Duration
	// Busy is the whole machine's busy CPU time over the run (every process, every engineer's), of
	// Cores.
	Busy  time.Duration
	Cores int
}

// Rate is DORA/s: the machines that got a lease over the elapsed time.
func (c *Capacity) Rate() float64 { return rate(c.Machines-c.Failed, c.Elapsed) }

// CPU is the servers' CPU time together.
func (c *Capacity) CPU() time.Duration {
	var sum time.Duration
	for _, d := range c.ServerCPU {
		sum += d
	}
	return sum
}

// PerCPU is DORAs per server CPU-second (all servers together): the figure per core.
func (c *Capacity) PerCPU() float64 { return rate(c.Machines-c.Failed, c.CPU()) }

func rate(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

func (c *Capacity) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "capacity: %d machines, %d in flight: %.0f DORA/s, DORA p50 %v, p99 %v, %d exchanges retransmitted",
		c.Machines, c.InFlight, c.Rate(), c.P50.Round(100*time.Microsecond), c.P99.Round(100*time.Microsecond), c.Retransmits)
	if c.ClientDrops > 0 || c.ServerDrops > 0 {
		fmt.Fprintf(&b, " (datagrams dropped for a full socket buffer: %d by the client, %d by the servers)", c.ClientDrops, c.ServerDrops)
	}
	if c.Failed > 0 {
		fmt.Fprintf(&b, ", %d without a lease", c.Failed)
	}
	if c.Retransmits > 0 || c.Failed > 0 {
		b.WriteString(" (not a capacity figure: lower -inflight)")
	}
	cpus := make([]string, len(c.ServerCPU))
	for i, d := range c.ServerCPU {
		cpus[i] = fmt.Sprintf("%.2f", d.Seconds())
	}
	fmt.Fprintf(&b, "\n      server CPU %.2f s", c.CPU().Seconds())
	if len(cpus) > 1 {
		fmt.Fprintf(&b, " (%s)", strings.Join(cpus, " + "))
	}
	fmt.Fprintf(&b, ": %.0f DORA per server CPU-second (idle: %v CPU/s); client %.2f s CPU; machine %.1f of %d cores busy",
		c.PerCPU(), c.Idle.Round(100*time.Microsecond), c.ClientCPU.Seconds(), c.Busy.Seconds()/c.Elapsed.Seconds(), c.Cores)
	return b.String()
}

// idleWindow is how long capacity measures the servers' CPU time before the run.
const idleWindow = 2 * time.Second

// capacity runs the DHCP of every machine of macs through h, inFlight at a time, and measures it.
func capacity(h *HA, macs []net.HardwareAddr, inFlight int) (*Capacity, error) {
	c := &Capacity{Machines: len(macs), InFlight: inFlight, Cores: runtime.NumCPU()}
	pids := []int{os.Getpid()}
	for _, s := range h.Servers {
		pids = append(pids, s.PID())
	}
	idle0, err := procCPUs(pids)
	if err != nil {
		return nil, err
	}
	time.Sleep(idleWindow)
	cpu0, err := procCPUs(pids)
	if err != nil {
		return nil, err
	}
	for i := 1; i < len(pids); i++ {
		c.Idle += (cpu0[i] - idle0[i]) * time.Second / idleWindow
	}
	busy0, err := machineBusy()
	if err != nil {
		return nil, err
	}
	drops0, err := h.drops()
	if err != nil {
		return nil, err
	}
	r0 := h.dhcp.retransmitted.Load()
	lat := make([]time.Duration, len(macs))
	var next atomic.Int64
	var failed atomic.Int64
	var wg sync.WaitGroup
	t0 := time.Now()
	for range min(inFlight, len(macs)) {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < len(macs); i = int(next.Add(1) - 1) {
				t := time.Now()
				if _, err := h.DORA(macs[i]); err != nil {
					failed.Add(1)
					continue
				}
				lat[i] = time.Since(t)
			}
		})
	}
	wg.Wait()
	c.Elapsed = time.Since(t0)
	cpu1, err := procCPUs(pids)
	if err != nil {
		return nil, err
	}
	busy1, err := machineBusy()
	if err != nil {
		return nil, err
	}
	c.Retransmits = int(h.dhcp.retransmitted.Load() - r0)
	drops1, err := h.drops()
	if err != nil {
		return nil, err
	}
	c.ClientDrops = drops1[0] - drops0[0]
	for i := 1; i < len(drops1); i++ {
		c.ServerDrops += drops1[i] - drops0[i]
	}
	c.Failed = int(failed.Load())
	c.Busy = busy1 - busy0
	c.ClientCPU = cpu1[0] - cpu0[0]
	for i := range h.Servers {
		c.ServerCPU = append(c.ServerCPU, cpu1[i+1]-cpu0[i+1])
	}
	var ok []time.Duration
	for _, d := range lat {
		if d > 0 {
			ok = append(ok, d)
		}
	}
	c.P50, c.P99 = quantile(ok, 0.5), quantile(ok, 0.99)
	return c, nil
}

// procCPUs reads procCPU of each process.
func procCPUs(pids []int) ([]time.Duration, error) {
	out := make([]time.Duration, len(pids))
	for i, pid := range pids {
		var err error
		if out[i], err = procCPU(pid); err != nil {
			return nil, fmt.Errorf("CPU time of process %d: %w", pid, err)
		}
	}
	return out, nil
}

// drops reads the UDP receive-buffer drops of the client's namespace, then of each server's.
func (h *HA) drops() ([]int, error) {
	nss := []*netlab.NS{h.cli}
	for _, s := range h.Servers {
		nss = append(nss, s.ns)
	}
	out := make([]int, len(nss))
	for i, ns := range nss {
		b, err := ns.Exec("cat", "/proc/net/snmp")
		if err != nil {
			return nil, err
		}
		if out[i], err = parseRcvbufErrors(b); err != nil {
			return nil, fmt.Errorf("netns %s: %w", ns.Name, err)
		}
	}
	return out, nil
}

// parseRcvbufErrors reads Udp RcvbufErrors from /proc/net/snmp: a "Udp:" line of names, then
// one of values.
func parseRcvbufErrors(b []byte) (int, error) {
	var names []string
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Udp:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i, name := range names {
			if name == "RcvbufErrors" && i < len(f) {
				return strconv.Atoi(f[i])
			}
		}
		break
	}
	return 0, fmt.Errorf("/proc/net/snmp: no Udp RcvbufErrors")
}

// machineBusy is the CPU time every core of this machine has spent busy since boot (/proc/stat).
func machineBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	return parseMachineBusy(b)
}

// parseMachineBusy reads /proc/stat's "cpu" line (clock ticks of 10 ms: user nice system idle
// iowait irq softirq steal guest guest_nice): busy is all but idle and iowait; guest time is in
// user already.
func parseMachineBusy(b []byte) (time.Duration, error) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 9 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: first line %q is not the cpu line with 8 counters or more", line)
	}
	var busy int64
	for i, v := range f[1:9] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: cpu counter %d: %w", i+1, err)
		}
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return time.Duration(busy) * 10 * time.Millisecond, nil
}

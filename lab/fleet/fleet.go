// Package fleet is the fleet benchmark (make bench-fleet): N simulated machines boot at once through
// the real bootserver binary and join the real control plane (lab/controlplane), beside a reference
// run that measures what the control plane alone needs for N bootstrap-token joins.
//
// Each simulated machine does what a real one does after its firmware chainloaded iPXE: DHCP
// (DISCOVER → ACK, as iPXE, over a veth link into the boot server's namespace), GET its iPXE script
// (from its own leased address), GET the join file the script names, then the agent's real join
// code (nodeagent/join: discovery, TLS bootstrap, kubelet.conf under a temporary root), and finally
// reports the join's phases to the boot server. The reference gives N machines a token made
// beforehand (already signed into cluster-info) and runs the same join code, at once, on a fresh
// control plane of its own.
//
// Reported: time until every machine has credentials, each stage's times and rate, the bottleneck,
// API writes per machine (the apiserver's apiserver_request_total), the boot server's peak RSS and
// CPU, and the ratio against the reference.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"

	"github.com/vishvananda/netlink"

	"github.com/pxejoin/pxejoin/internal/bootstraptoken"
	"github.com/pxejoin/pxejoin/internal/joinconfig"
	"github.com/pxejoin/pxejoin/lab/controlplane"
	"github.com/pxejoin/pxejoin/lab/labenv"
	"github.com/pxejoin/pxejoin/lab/netlab"
)

// Options configure a run.
type Options struct {
	// N machines boot at once; default 1000, at most MaxMachines.
	N int
	// Bootserver is the boot server binary (make build's bin/bootserver).
	Bootserver string
	// Dir holds the control planes, the boot server's configuration, state and log, and the
	// machines' roots. Required.
	Dir string
	// NoReference skips the control-plane-only run.
	NoReference bool
	// MaxJoins bounds the agent joins running at once in this one process (both runs); default 100.
	// A thousand TLS clients started at once on a small machine starve each other and the
	// apiserver into client timeouts, which measures the harness rather than the control plane;
	// 100 at once already keep the control plane saturated.
	MaxJoins int
	// Inventory is where the boot server reads its machines: InventoryFile (default: its YAML
	// configuration), InventoryKubernetes (N Machine resources, inventory.source kubernetes) or
	// InventoryBoth (one fleet run of each, on fresh control planes).
	Inventory string
	// Logf receives progress lines; may be nil.
	Logf func(format string, args ...any)
}

// Inventory sources of Options.Inventory.
const (
	InventoryFile       = "file"
	InventoryKubernetes = "kubernetes"
	InventoryBoth       = "both"
)

// MaxMachines is what the boot network's pool holds.
const MaxMachines = 3500

// The boot network: the boot server at .0.1 on its namespace's s0, the machines' namespace at .0.2
// on c0 (and every leased address), the pool after them.
const (
	serverAddr = "10.79.0.1"
	hostAddr   = "10.79.0.2"
	prefixLen  = 20
	poolStart  = "10.79.1.1"
	poolEnd    = "10.79.15.254"
	httpPort   = 8080
)

// Result is one fleet run and, unless NoReference, its reference run.
type Result struct {
	N int
	// Inventory is Fleet's inventory source (InventoryFile or InventoryKubernetes).
	Inventory string
	Fleet     Stats
	Reference *Stats
	// BootServerPeakRSS is the boot server's VmHWM at the end of the fleet run, in bytes.
	BootServerPeakRSS uint64
	// CRD is the run with the Machine inventory when Options.Inventory is InventoryBoth.
	CRD *CRDRun
}

// CRDRun is a fleet run whose boot server reads its machines from Machine resources.
type CRDRun struct {
	Stats Stats
	// PeakRSS is the boot server's VmHWM at the end of the run, in bytes.
	PeakRSS uint64
}

// Stats describe one run.
type Stats struct {
	// Total is power-on to the last machine's kubelet.conf.
	Total  time.Duration
	Stages []StageStats
	// Writes are the apiserver's write requests during the run, by "VERB resource".
	Writes map[string]float64
	// CPU is each process's CPU time during the run (bootserver, etcd, kube-apiserver, kube-controller-manager).
	CPU    map[string]time.Duration
	Failed int
	Err    error // the first machine's error
	// LiveTokens are the bootstrap tokens still in the cluster when the last machine had its
	// credentials (fleet run); TokensDrained is how long after that the last was deleted.
	LiveTokens    int
	TokensDrained time.Duration
}

// StageStats describe one stage across the machines.
type StageStats struct {
	Name     string
	P50, P99 time.Duration // a machine's time in the stage
	Share    float64       // of all machines' time, power-on to credentials
	Rate     float64       // machines finishing the stage per second, from the first to the last
	Last     time.Duration // when the last machine finished it, after power-on
}

func (o *Options) logf(format string, args ...any) {
	if o.Logf != nil {
		o.Logf(format, args...)
	}
}

// Run runs the benchmark.
func Run(ctx context.Context, opts Options) (*Result, error) {
	if opts.N == 0 {
		opts.N = 1000
	}
	if opts.MaxJoins == 0 {
		opts.MaxJoins = 100
	}
	if opts.N < 1 || opts.N > MaxMachines {
		return nil, fmt.Errorf("fleet: %d machines: choose 1 to %d", opts.N, MaxMachines)
	}
	if opts.Dir == "" {
		return nil, errors.New("fleet: Dir is required")
	}
	if _, err := os.Stat(opts.Bootserver); err != nil {
		return nil, fmt.Errorf("fleet: boot server binary: %w: run make build", err)
	}
	res := &Result{N: opts.N, Inventory: InventoryFile}
	var err error
	switch opts.Inventory {
	case "", InventoryFile:
		res.Fleet, res.BootServerPeakRSS, err = runFleet(ctx, opts, InventoryFile)
	case InventoryKubernetes:
		res.Inventory = InventoryKubernetes
		res.Fleet, res.BootServerPeakRSS, err = runFleet(ctx, opts, InventoryKubernetes)
	case InventoryBoth:
		if res.Fleet, res.BootServerPeakRSS, err = runFleet(ctx, opts, InventoryFile); err == nil {
			res.CRD = &CRDRun{}
			res.CRD.Stats, res.CRD.PeakRSS, err = runFleet(ctx, opts, InventoryKubernetes)
		}
	default:
		return nil, fmt.Errorf("fleet: inventory %q: choose %s, %s or %s", opts.Inventory, InventoryFile, InventoryKubernetes, InventoryBoth)
	}
	if err != nil {
		return nil, err
	}
	if !opts.NoReference {
		ref, err := runReference(ctx, opts)
		if err != nil {
			return nil, err
		}
		res.Reference = &ref
	}
	return res, nil
}

// startControlPlane starts a fresh control plane inside a lab network's namespace (as make lab does;
// the host reaches it through labenv's route) and waits until its bootstrap signer signs, so neither
// run pays the controllers' start. Both runs use one, so they dial the apiserver the same way.
func startControlPlane(ctx context.Context, opts Options, dir string) (*controlplane.ControlPlane, kubernetes.Interface, *labenv.Net, error) {
	n, err := labenv.NewNet("fltcp")
	if err != nil {
		return nil, nil, nil, err
	}
	cp, err := controlplane.Start(ctx, controlplane.Options{StateDir: dir, Address: n.BridgeAddr, NetNS: n.NS.Name, Logf: opts.Logf})
	if err != nil {
		n.Close()
		return nil, nil, nil, err
	}
	rc := cp.AdminConfig()
	rc.QPS, rc.Burst = 1000, 2000 // the harness's own requests must not be what is measured
	admin := kubernetes.NewForConfigOrDie(rc)
	tok, err := bootstraptoken.Create(ctx, admin, bootstraptoken.Options{TTL: time.Hour, Description: "fleet warm-up"})
	if err == nil {
		err = cp.WaitSigned(ctx, tok, 2*time.Minute)
	}
	if err == nil {
		err = bootstraptoken.Delete(ctx, admin, tok)
	}
	if err != nil {
		cp.Stop()
		n.Close()
		return nil, nil, nil, fmt.Errorf("control plane warm-up: %w", err)
	}
	return cp, admin, n, nil
}

// measured runs f between two readings of the API write counters and the processes' CPU time.
func measured(ctx context.Context, admin kubernetes.Interface, pids map[string]int, f func()) (map[string]float64, map[string]time.Duration, error) {
	w0, err := apiWrites(ctx, admin)
	if err != nil {
		return nil, nil, err
	}
	c0 := cpuTimes(pids)
	f()
	c1 := cpuTimes(pids)
	w1, err := apiWrites(ctx, admin)
	if err != nil {
		return nil, nil, err
	}
	cpu := map[string]time.Duration{}
	for k, v := range c1 {
		cpu[k] = v - c0[k]
	}
	return writeDelta(w0, w1), cpu, nil
}

// machineMAC is machine i's MAC.
func machineMAC(i int) net.HardwareAddr {
	return net.HardwareAddr{0x52, 0x54, 0x02, 0x00, byte(i >> 8), byte(i)}
}

func runFleet(ctx context.Context, opts Options, inventory string) (Stats, uint64, error) {
	dir := filepath.Join(opts.Dir, "fleet")
	if inventory == InventoryKubernetes {
		dir = filepath.Join(opts.Dir, "fleet-crd")
	}
	cp, admin, lab, err := startControlPlane(ctx, opts, filepath.Join(dir, "cp"))
	if err != nil {
		return Stats{}, 0, err
	}
	defer lab.Close()
	defer cp.Stop()
	// The boot server runs beside the control plane; its boot network is a veth into the machines'
	// namespace.
	srvNS := lab.NS
	cliNS, err := netlab.Create("fltc")
	if err != nil {
		return Stats{}, 0, err
	}
	defer cliNS.Delete()
	if err := netlab.AddVeth(srvNS, "s0", fmt.Sprintf("%s/%d", serverAddr, prefixLen), cliNS, "c0", fmt.Sprintf("%s/%d", hostAddr, prefixLen)); err != nil {
		return Stats{}, 0, err
	}
	machines := make([]*machine, opts.N)
	for i := range machines {
		machines[i] = &machine{mac: machineMAC(i), node: fmt.Sprintf("fleet-%04d", i)}
	}
	if inventory == InventoryKubernetes {
		if err := writeMachines(ctx, opts, cp, machines); err != nil {
			return Stats{}, 0, err
		}
	}
	bs, err := startBootServer(ctx, opts, dir, srvNS, cliNS, cp.AdminKubeconfig(), inventory, machines)
	if err != nil {
		return Stats{}, 0, err
	}
	defer bs.stop()
	l := &link{ns: cliNS, mask: net.CIDRMask(prefixLen, 32), roots: filepath.Join(dir, "roots"), joins: make(joinSlots, opts.MaxJoins)}
	if err := cliNS.Do(func() (err error) { l.ifc, err = netlink.LinkByName("c0"); return err }); err != nil {
		return Stats{}, 0, err
	}
	if l.dhcp, err = newDHCPClient(cliNS, "c0"); err != nil {
		return Stats{}, 0, err
	}
	defer l.dhcp.Close()

	pids := cp.PIDs()
	pids["bootserver"] = bs.pid
	opts.logf("fleet: %d machines power on", opts.N)
	var t0 time.Time
	var errs []error
	var live int
	var drained time.Duration
	writes, cpu, err := measured(ctx, admin, pids, func() {
		t0 = time.Now()
		errs = runAll(opts, machines, func(_ int, m *machine) error { return l.boot(ctx, m) })
		// The boot server deletes each token once its CSR is issued: count what is still live
		// when the last machine has its credentials, and wait (within reason) for the rest, so the
		// writes counted are all a machine costs.
		end := time.Now()
		live = liveTokens(ctx, admin)
		_ = wait.PollUntilContextTimeout(ctx, time.Second, 5*time.Minute, true, func(ctx context.Context) (bool, error) {
			return liveTokens(ctx, admin) == 0, nil
		})
		drained = time.Since(end)
		if inventory == InventoryKubernetes {
			statusSettled(ctx, admin)
		}
	})
	if err != nil {
		return Stats{}, 0, err
	}
	st := stats(t0, machines, errs, writes, cpu)
	st.LiveTokens, st.TokensDrained = live, drained
	return st, peakRSS(bs.pid), nil
}

// liveTokens counts the bootstrap token Secrets in kube-system (-1 if they cannot be listed).
func liveTokens(ctx context.Context, admin kubernetes.Interface) int {
	l, err := admin.CoreV1().Secrets(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{FieldSelector: "type=" + string(bootstrapapi.SecretTypeBootstrapToken)})
	if err != nil {
		return -1
	}
	return len(l.Items)
}

func runReference(ctx context.Context, opts Options) (Stats, error) {
	dir := filepath.Join(opts.Dir, "reference")
	cp, admin, lab, err := startControlPlane(ctx, opts, filepath.Join(dir, "cp"))
	if err != nil {
		return Stats{}, err
	}
	defer lab.Close()
	defer cp.Stop()
	opts.logf("reference: minting %d tokens beforehand", opts.N)
	tokens := make([]string, opts.N)
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	next := make(chan int)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				tok, err := bootstraptoken.Create(ctx, admin, bootstraptoken.Options{TTL: time.Hour, Description: "fleet reference"})
				mu.Lock()
				tokens[i] = tok
				if err != nil && firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		}()
	}
	for i := range tokens {
		next <- i
	}
	close(next)
	wg.Wait()
	if firstErr != nil {
		return Stats{}, firstErr
	}
	err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 10*time.Minute, true, func(ctx context.Context) (bool, error) {
		cm, err := admin.CoreV1().ConfigMaps(metav1.NamespacePublic).Get(ctx, bootstrapapi.ConfigMapClusterInfo, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, tok := range tokens {
			if cm.Data[bootstrapapi.JWSSignatureKeyPrefix+bootstraptoken.ID(tok)] == "" {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return Stats{}, fmt.Errorf("reference: cluster-info never carried every token's signature: %w", err)
	}
	machines := make([]*machine, opts.N)
	for i := range machines {
		machines[i] = &machine{node: fmt.Sprintf("ref-%04d", i)}
	}
	opts.logf("reference: %d joins at once", opts.N)
	roots := filepath.Join(dir, "roots")
	joins := make(joinSlots, opts.MaxJoins)
	var t0 time.Time
	var errs []error
	writes, cpu, err := measured(ctx, admin, cp.PIDs(), func() {
		t0 = time.Now()
		errs = runAll(opts, machines, func(i int, m *machine) error {
			jc := &joinconfig.JoinConfiguration{
				Discovery: joinconfig.Discovery{
					BootstrapToken:    &joinconfig.BootstrapTokenDiscovery{Token: tokens[i], APIServerEndpoint: cp.Endpoint(), CACertHashes: []string{cp.CAPin()}},
					TLSBootstrapToken: tokens[i],
				},
				NodeRegistration: joinconfig.NodeRegistrationOptions{Name: m.node},
			}
			if err := joins.join(ctx, jc, filepath.Join(roots, m.node), nil); err != nil {
				return err
			}
			m.done[3] = time.Now()
			return nil
		})
	})
	if err != nil {
		return Stats{}, err
	}
	return stats(t0, machines, errs, writes, cpu), nil
}

// runAll runs f for every machine at once and returns the errors (nil entries for successes).
func runAll(opts Options, machines []*machine, f func(int, *machine) error) []error {
	errs := make([]error, len(machines))
	var wg sync.WaitGroup
	var done sync.WaitGroup
	done.Add(1)
	var finished int64
	var mu sync.Mutex
	stop := make(chan struct{})
	go func() { // progress every 10 s
		defer done.Done()
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				mu.Lock()
				opts.logf("  %d of %d machines done", finished, len(machines))
				mu.Unlock()
			}
		}
	}()
	for i, m := range machines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f(i, m)
			mu.Lock()
			finished++
			mu.Unlock()
		}()
	}
	wg.Wait()
	close(stop)
	done.Wait()
	return errs
}

// bootServer is the real bootserver process in the server namespace.
type bootServer struct {
	cmd  *os.Process
	pid  int
	done chan struct{}
}

func startBootServer(ctx context.Context, opts Options, dir string, srv, cli *netlab.NS, kubeconfig, inventory string, machines []*machine) (*bootServer, error) {
	for _, d := range []string{"images", "state"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	for _, f := range []string{"vmlinuz", "initramfs.img"} {
		if err := os.WriteFile(filepath.Join(dir, "images", f), []byte(f), 0o644); err != nil {
			return nil, err
		}
	}
	inv := strings.Builder{}
	if inventory == InventoryKubernetes {
		inv.WriteString("inventory: {source: kubernetes}\n")
	} else {
		inv.WriteString("machines:\n")
		for _, m := range machines {
			fmt.Fprintf(&inv, "  - {mac: %q, name: %q, profile: node}\n", m.mac, m.node)
		}
	}
	cfg := fmt.Sprintf(`interface: s0
serverURL: http://%s:%d
listen: {http: ":%d"}
dhcp:
  mode: full
  pool: {start: %s, end: %s}
  leaseTime: 1h
tftp: {disabled: true}
cluster: {kubeconfig: %s, tokenTTL: 30m}
# The boot server approves its machines' CSRs itself (the lab control plane binds kube-controller-
# manager's auto-approval to kubeadm's token group only), so approval is not capped by KCM's QPS.
approval: {mode: pxejoin}
stateDir: %s
profiles:
  node:
    kernel: %s
    initrds: [%s]
    cmdline: console=ttyS0 pxejoin.url={{.JoinURL}} pxejoin.status={{.StatusURL}}
%s`, serverAddr, httpPort, httpPort, poolStart, poolEnd, kubeconfig, filepath.Join(dir, "state"),
		filepath.Join(dir, "images", "vmlinuz"), filepath.Join(dir, "images", "initramfs.img"), inv.String())
	cfgPath := filepath.Join(dir, "bootserver.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "bootserver.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := srv.Command(opts.Bootserver, "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bootserver: %w", err)
	}
	bs := &bootServer{cmd: cmd.Process, pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(bs.done) }()
	// ip netns exec execs the server: the PID is the server's own.
	hc := (&link{ns: cli}).httpClient(net.ParseIP(hostAddr))
	defer hc.CloseIdleConnections()
	healthy := func(ctx context.Context) (bool, error) {
		select {
		case <-bs.done:
			return false, fmt.Errorf("bootserver exited; see %s", filepath.Join(dir, "bootserver.log"))
		default:
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s:%d/healthz", serverAddr, httpPort), nil)
		resp, err := hc.Do(req)
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	}
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, healthy); err != nil {
		bs.stop()
		return nil, fmt.Errorf("bootserver not healthy: %w (log: %s)", err, filepath.Join(dir, "bootserver.log"))
	}
	if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", bs.pid)); filepath.Base(exe) != filepath.Base(opts.Bootserver) {
		bs.stop()
		return nil, fmt.Errorf("PID %d is %s, not the boot server", bs.pid, exe)
	}
	return bs, nil
}

// stop sends SIGTERM and waits up to 10 s, then kills.
func (b *bootServer) stop() {
	_ = b.cmd.Signal(syscall.SIGTERM)
	select {
	case <-b.done:
	case <-time.After(10 * time.Second):
		_ = b.cmd.Kill()
		<-b.done
	}
}

package fleet

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
	"github.com/pxejoin/pxejoin/lab/controlplane"
	"github.com/pxejoin/pxejoin/lab/netlab"
	"github.com/pxejoin/pxejoin/lab/tcpproxy"
)

// HAOptions configure a segment of several boot servers (dhcp.ha).
type HAOptions struct {
	// Servers is how many boot servers share the segment; HA runs one with dhcp.ha too (more
	// always do).
	Servers int
	HA      bool
	// Bootserver is the binary; Dir holds configurations, state and logs. Both required.
	Bootserver, Dir string
	// CP is the control plane the servers use (its apiserver on loopback).
	CP *controlplane.ControlPlane
	// Prefix names this segment's Leases (dhcp.ha.namePrefix); default "ha-".
	Prefix string
	// Shards and the Lease timings of dhcp.ha; zero: short ones that keep tests fast.
	Shards                                                    int
	LeaseDuration, RenewDeadline, RetryPeriod, MirrorInterval time.Duration
	MCLT                                                      time.Duration
	// Known machines have a Machine (inventory.source kubernetes), half of them a reserved address,
	// half one claimed from dhcp.ha.claims (haknown.go); at most MaxKnown, and only with Servers > 1.
	Known int
	// Logf receives progress lines; may be nil.
	Logf func(format string, args ...any)
}

// The HA segment: a bridge in a namespace of its own; boot server i at 10.80.0.(1+i) in its own
// namespace, the machines at 10.80.0.200; claims and reservations next (haknown.go); the pool after
// them.
const (
	haPrefixLen = 18
	haClient    = "10.80.0.200"
	haPoolStart = "10.80.5.1"
	haPoolEnd   = "10.80.63.254"
)

// Ack is one ACK a machine's DHCP client saw, from whichever server.
type Ack struct {
	At     time.Time
	Server netip.Addr
	MAC    hwaddr.MAC
	IP     netip.Addr
	Lease  time.Duration
}

// HA is a running segment of boot servers with one DHCP client for every simulated machine.
type HA struct {
	opts    HAOptions
	bridge  *netlab.NS
	cli     *netlab.NS
	Servers []*HAServer
	dhcp    *dhcpClient
	web     *http.Client
	dyn     dynamic.Interface // Machines (Known > 0)

	mu   sync.Mutex
	acks []Ack
	// kill, if set, is SIGKILLed when the killAt-th ACK arrives (KillAt).
	kill   *HAServer
	killAt int
	killed chan time.Time
}

// HAServer is one real bootserver process in its own namespace, reaching the apiserver through a
// proxy the test can stall.
type HAServer struct {
	Name  string
	IP    netip.Addr
	ns    *netlab.NS
	Proxy *tcpproxy.Proxy
	bs    *bootServer
	dir   string
}

func (o *HAOptions) defaults() {
	if o.Prefix == "" {
		o.Prefix = "ha-"
	}
	if o.Shards == 0 {
		o.Shards = 8
	}
	if o.LeaseDuration == 0 {
		o.LeaseDuration, o.RenewDeadline, o.RetryPeriod = 4*time.Second, 3*time.Second, 500*time.Millisecond
	}
	if o.MirrorInterval == 0 {
		o.MirrorInterval = 250 * time.Millisecond
	}
	if o.MCLT == 0 {
		o.MCLT = 5 * time.Second
	}
}

// StartHA builds the segment and starts every server; Close removes it all.
func StartHA(ctx context.Context, opts HAOptions) (_ *HA, err error) {
	opts.defaults()
	if opts.Known < 0 || opts.Known > MaxKnown || opts.Known > 0 && opts.Servers < 2 {
		return nil, fmt.Errorf("ha: %d known machines: choose 0 to %d, with two servers or more (claims need dhcp.ha)", opts.Known, MaxKnown)
	}
	if _, err := os.Stat(opts.Bootserver); err != nil {
		return nil, fmt.Errorf("ha: boot server binary: %w: run make build", err)
	}
	h := &HA{opts: opts}
	defer func() {
		if err != nil {
			h.Close()
		}
	}()
	if h.bridge, err = netlab.Create("hab"); err != nil {
		return nil, err
	}
	if _, err = h.bridge.Exec("ip", "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0"); err != nil {
		return nil, err
	}
	if _, err = h.bridge.Exec("ip", "link", "set", "br0", "up"); err != nil {
		return nil, err
	}
	if h.cli, err = netlab.Create("hac"); err != nil {
		return nil, err
	}
	if err = h.plug(h.cli, "c0", haClient, "pc"); err != nil {
		return nil, err
	}
	if _, err = opts.CP.Admin().CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "pxejoin-system"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	if opts.Known > 0 {
		if err = h.writeKnown(ctx); err != nil {
			return nil, err
		}
	}
	if h.dhcp, err = newDHCPClient(h.cli, "c0"); err != nil {
		return nil, err
	}
	h.dhcp.onReply = h.record
	h.web = (&link{ns: h.cli}).httpClient(net.ParseIP(haClient))
	for i := range opts.Servers {
		s, err := h.startServer(ctx, i)
		if err != nil {
			return nil, err
		}
		h.Servers = append(h.Servers, s)
	}
	return h, nil
}

// plug connects ns to the bridge through a veth: ifc (with addr) in ns, port on the bridge.
func (h *HA) plug(ns *netlab.NS, ifc, addr, port string) error {
	if err := netlab.AddVeth(h.bridge, port, "", ns, ifc, fmt.Sprintf("%s/%d", addr, haPrefixLen)); err != nil {
		return err
	}
	_, err := h.bridge.Exec("ip", "link", "set", port, "master", "br0")
	return err
}

func (h *HA) record(m *dhcpv4.DHCPv4) {
	if m.MessageType() != dhcpv4.MessageTypeAck {
		return
	}
	mac, _ := hwaddr.FromHardwareAddr(m.ClientHWAddr)
	srv, _ := netip.AddrFromSlice(m.ServerIdentifier().To4())
	ip, _ := netip.AddrFromSlice(m.YourIPAddr.To4())
	h.mu.Lock()
	h.acks = append(h.acks, Ack{At: time.Now(), Server: srv, MAC: mac, IP: ip, Lease: m.IPAddressLeaseTime(0)})
	if h.kill != nil && len(h.acks) == h.killAt {
		_ = h.kill.bs.cmd.Kill() // at once, from the client's read loop: the burst goes on
		h.killed <- time.Now()
		h.kill = nil
	}
	h.mu.Unlock()
}

// KillAt SIGKILLs s when the n-th ACK (counted from now) arrives; the channel gets the time.
func (h *HA) KillAt(s *HAServer, n int) <-chan time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.kill, h.killAt, h.killed = s, len(h.acks)+n, make(chan time.Time, 1)
	return h.killed
}

// Log is the end of server s's log (for a failing test).
func (s *HAServer) Log(lines int) string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "bootserver.log"))
	all := strings.Split(string(b), "\n")
	return strings.Join(all[max(0, len(all)-lines):], "\n")
}

// haMAC is unknown machine i of HA run run (another block than the fleet's).
func haMAC(run, i int) net.HardwareAddr {
	return net.HardwareAddr{0x52, 0x54, 0x03, byte(run), byte(i >> 8), byte(i)}
}

// Acks returns every ACK seen so far, in the order they arrived.
func (h *HA) Acks() []Ack {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Ack(nil), h.acks...)
}

// DORA is one machine's DHCP: DISCOVER, the first OFFER, REQUEST, ACK (retried as firmware does).
func (h *HA) DORA(mac net.HardwareAddr) (*dhcpv4.DHCPv4, error) { return h.dhcp.dora(mac) }

func (h *HA) startServer(ctx context.Context, i int) (*HAServer, error) {
	name := fmt.Sprintf("bs%d", i)
	s := &HAServer{Name: name, IP: netip.MustParseAddr(fmt.Sprintf("10.80.0.%d", 1+i)), dir: filepath.Join(h.opts.Dir, name)}
	var err error
	if s.ns, err = netlab.Create("has"); err != nil {
		return nil, err
	}
	if err := h.plug(s.ns, "s0", s.IP.String(), fmt.Sprintf("ps%d", i)); err != nil {
		return nil, err
	}
	if _, err := s.ns.Exec("ip", "link", "set", "lo", "up"); err != nil {
		return nil, err
	}
	// The server's way to the apiserver: a proxy listening on its namespace's loopback.
	var ln net.Listener
	if err := s.ns.Do(func() (err error) { ln, err = net.Listen("tcp", "127.0.0.1:0"); return err }); err != nil {
		return nil, err
	}
	s.Proxy = tcpproxy.New(ln, h.opts.CP.Endpoint())
	if err := os.MkdirAll(filepath.Join(s.dir, "state"), 0o755); err != nil {
		return nil, err
	}
	kc, err := clientcmd.LoadFromFile(h.opts.CP.AdminKubeconfig())
	if err != nil {
		return nil, err
	}
	for _, c := range kc.Clusters {
		c.Server = "https://" + ln.Addr().String()
	}
	kubeconfig := filepath.Join(s.dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		return nil, err
	}
	ha, known := "", ""
	if h.opts.Servers > 1 || h.opts.HA {
		o := h.opts
		claims := ""
		if o.Known > 0 {
			claims = fmt.Sprintf(", claims: {start: %s, end: %s}", haClaimsStart, haClaimsEnd)
			known, err = knownConfig(s.dir)
			if err != nil {
				return nil, err
			}
		}
		ha = fmt.Sprintf("  ha: {shards: %d, mclt: %s, leaseDuration: %s, renewDeadline: %s, retryPeriod: %s, mirrorInterval: %s, namePrefix: %s, identity: %s%s}\n",
			o.Shards, o.MCLT, o.LeaseDuration, o.RenewDeadline, o.RetryPeriod, o.MirrorInterval, o.Prefix, name, claims)
	}
	cfg := fmt.Sprintf(`interface: s0
serverURL: http://%s:%d
listen: {http: ":%d"}
dhcp:
  mode: full
  pool: {start: %s, end: %s}
  leaseTime: 1h
  maxUnknownLeases: 16000
  maxInFlight: 1024
%stftp: {disabled: true}
cluster: {kubeconfig: %s}
approval: {mode: pxejoin, selfCheck: warn}
api: {serverName: %s}
stateDir: %s
%s`, s.IP, httpPort, httpPort, haPoolStart, haPoolEnd, ha, kubeconfig, name, filepath.Join(s.dir, "state"), known)
	cfgPath := filepath.Join(s.dir, "bootserver.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(s.dir, "bootserver.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := s.ns.Command(h.opts.Bootserver, "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bootserver: %w", err)
	}
	s.bs = &bootServer{cmd: cmd.Process, pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(s.bs.done) }()
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		select {
		case <-s.bs.done:
			return false, fmt.Errorf("bootserver %s exited; see %s", name, logf.Name())
		default:
		}
		_, err := h.Metrics(ctx, s)
		return err == nil, nil
	})
	if err != nil {
		return nil, fmt.Errorf("bootserver %s not up: %w (log: %s)", name, err, logf.Name())
	}
	h.opts.logf("ha: %s up at %s (pid %d)", name, s.IP, s.bs.pid)
	return s, nil
}

func (o *HAOptions) logf(format string, args ...any) {
	if o.Logf != nil {
		o.Logf(format, args...)
	}
}

// Metrics scrapes s's /metrics: sample (name with labels, as exposed) → value.
func (h *HA) Metrics(ctx context.Context, s *HAServer) (map[string]float64, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s:%d/metrics", s.IP, httpPort), nil)
	resp, err := h.web.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("metrics: %s", resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out, sc.Err()
}

// Kill SIGKILLs server s; Stop and Cont send SIGSTOP and SIGCONT.
func (s *HAServer) Kill() { _ = s.bs.cmd.Kill(); <-s.bs.done }

// Stop freezes s (SIGSTOP).
func (s *HAServer) Stop() { _ = s.bs.cmd.Signal(syscall.SIGSTOP) }

// Cont thaws s (SIGCONT).
func (s *HAServer) Cont() { _ = s.bs.cmd.Signal(syscall.SIGCONT) }

// PID is the server's process ID.
func (s *HAServer) PID() int { return s.bs.pid }

// Close stops every server and removes the namespaces.
func (h *HA) Close() {
	for _, s := range h.Servers {
		s.Cont()
		s.Proxy.Heal()
		s.bs.stop()
		s.Proxy.Close()
		s.ns.Delete()
	}
	if h.dhcp != nil {
		h.dhcp.Close()
	}
	if h.cli != nil {
		h.cli.Delete()
	}
	if h.bridge != nil {
		h.bridge.Delete()
	}
}

// CheckAcks reports every address ACKed to a machine while another machine's lease on it was
// still running (no client here releases an address).
func CheckAcks(acks []Ack) error {
	holder := map[netip.Addr]Ack{}
	var errs []string
	for _, a := range acks {
		if b, ok := holder[a.IP]; ok && b.MAC != a.MAC && a.At.Before(b.At.Add(b.Lease)) {
			errs = append(errs, fmt.Sprintf("%s ACKed to %s by %s at %s (for %s) and to %s by %s at %s", a.IP, b.MAC, b.Server, b.At.Format(time.StampMilli),
				b.Lease, a.MAC, a.Server, a.At.Format(time.StampMilli)))
			continue
		}
		holder[a.IP] = a
	}
	if len(errs) > 0 {
		return fmt.Errorf("%d addresses ACKed to two machines at once:\n%s", len(errs), strings.Join(errs, "\n"))
	}
	return nil
}

// ShardOf is the shard of ip in the HA pool cut into n (the same cut as bootserver/shards).
func ShardOf(ip netip.Addr, n int) int {
	u := func(a netip.Addr) uint32 {
		b := a.As4()
		return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	}
	start, end := u(netip.MustParseAddr(haPoolStart)), u(netip.MustParseAddr(haPoolEnd))
	size, x := end-start+1, u(ip)-start
	q, r := size/uint32(n), size%uint32(n)
	// The first r shards have q+1 addresses.
	if x < r*(q+1) {
		return int(x / (q + 1))
	}
	return int(r + (x-r*(q+1))/q)
}

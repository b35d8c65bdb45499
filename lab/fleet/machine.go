package fleet

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/internal/joinconfig"
	"github.com/pxejoin/pxejoin/lab/netlab"
	"github.com/pxejoin/pxejoin/nodeagent/join"
)

// Stages of a simulated machine's boot, in order; a machine's time in a stage ends when the next
// starts.
const (
	StageDHCP     = "dhcp"      // DISCOVER → ACK (iPXE's DHCP: the ACK names the script)
	StageScript   = "script"    // GET /boot/<mac>.ipxe
	StageJoinFile = "join-file" // GET /join/<mac>: the boot server mints the machine's token
	StageJoin     = "join"      // the agent's join: discovery, CSR issued, kubelet.conf written
)

// Stages lists the stages in order.
var Stages = []string{StageDHCP, StageScript, StageJoinFile, StageJoin}

// machine is one simulated machine; done[i] is when it finished Stages[i].
type machine struct {
	mac  net.HardwareAddr
	node string
	done [4]time.Time
}

// link is the machines' side of the boot network: a namespace whose interface holds every leased
// address, so that each machine's HTTP requests come from its own address as a real one's do.
type link struct {
	ns    *netlab.NS
	ifc   netlink.Link
	mask  net.IPMask
	dhcp  *dhcpClient
	roots string // the machines' root directories
	joins joinSlots
}

var (
	joinURLRe   = regexp.MustCompile(`pxejoin\.url=(\S+)`)
	statusURLRe = regexp.MustCompile(`pxejoin\.status=(\S+)`)
)

// boot runs what a real machine does from iPXE's DHCP to working credentials, then reports its
// join's phases to the boot server as the agent does.
func (l *link) boot(ctx context.Context, m *machine) error {
	ack, err := l.dhcp.dora(m.mac)
	if err != nil {
		return fmt.Errorf("dhcp: %w", err)
	}
	m.done[0] = time.Now()
	ip := ack.YourIPAddr
	err = l.ns.Do(func() error { return netlink.AddrAdd(l.ifc, &netlink.Addr{IPNet: &net.IPNet{IP: ip, Mask: l.mask}}) })
	if err != nil {
		return fmt.Errorf("adding the lease %s to the link: %w", ip, err)
	}
	hc := l.httpClient(ip)
	defer hc.CloseIdleConnections()
	scriptURL := ack.BootFileName
	if scriptURL == "" {
		scriptURL = ack.BootFileNameOption()
	}
	script, err := get(ctx, hc, scriptURL)
	if err != nil {
		return fmt.Errorf("script: %w", err)
	}
	m.done[1] = time.Now()
	joinURL, statusURL := joinURLRe.FindSubmatch(script), statusURLRe.FindSubmatch(script)
	if joinURL == nil || statusURL == nil {
		return fmt.Errorf("the script names no pxejoin.url= or pxejoin.status=:\n%s", script)
	}
	body, err := get(ctx, hc, string(joinURL[1]))
	if err != nil {
		return fmt.Errorf("join file: %w", err)
	}
	m.done[2] = time.Now()
	jc, err := joinconfig.Parse(body)
	if err != nil {
		return fmt.Errorf("join file: %w", err)
	}
	var events []bootstatus.Event
	if err := l.joins.join(ctx, jc, filepath.Join(l.roots, m.node), func(e join.Event) {
		ev := bootstatus.Event{Phase: e.Phase, State: e.State, Time: e.Time, Detail: e.Detail}
		if e.Err != nil {
			ev.Error = e.Err.Error()
		}
		events = append(events, ev)
	}); err != nil {
		return err
	}
	m.done[3] = time.Now()
	sc := &bootstatus.Client{URL: string(statusURL[1]), HTTP: hc}
	if _, err := sc.Send(ctx, events); err != nil {
		return fmt.Errorf("status report: %w", err)
	}
	return nil
}

// joinSlots bounds the joins running at once (Options.MaxJoins).
type joinSlots chan struct{}

// join runs the agent's join code into root, up to working credentials (kubelet.conf): as the
// initramfs does, without starting a kubelet. It waits for a slot first.
func (s joinSlots) join(ctx context.Context, jc *joinconfig.JoinConfiguration, root string, observe func(join.Event)) error {
	select {
	case s <- struct{}{}:
		defer func() { <-s }()
	case <-ctx.Done():
		return ctx.Err()
	}
	jc.SkipPhases = append(jc.SkipPhases, "kubelet-start/start")
	if err := join.Run(ctx, jc, join.Options{Rootfs: root, Out: io.Discard, Observer: observe}); err != nil {
		return fmt.Errorf("join %s: %w", jc.NodeRegistration.Name, err)
	}
	return nil
}

// httpClient dials from ip inside the machines' namespace.
func (l *link) httpClient(ip net.IP) *http.Client {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := l.ns.Do(func() (err error) {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}}
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	return &http.Client{Transport: &http.Transport{DialContext: dial, MaxIdleConnsPerHost: 1}}
}

// get fetches url as the agent does: a refusal or a failure is retried every second (or after the
// server's Retry-After) for up to a minute.
func get(ctx context.Context, hc *http.Client, url string) ([]byte, error) {
	deadline := time.Now().Add(time.Minute)
	for {
		wait := time.Second
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return nil, err
		}
		resp, err := hc.Do(req)
		if err == nil {
			body, rerr := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && rerr == nil {
				return body, nil
			}
			if s, perr := strconv.Atoi(resp.Header.Get("Retry-After")); perr == nil && s > 0 {
				wait = time.Duration(s) * time.Second
			}
			err = fmt.Errorf("GET %s: %s: %.200s", url, resp.Status, body)
		}
		if time.Now().Add(wait).After(deadline) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
	}
}

package labenv

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pxejoin/pxejoin/bootserver/status"
	"github.com/pxejoin/pxejoin/lab/netlab"
)

// BootServer runs the real bootserver binary inside the lab namespace, configured by a YAML file
// (bootserver --config) with one profile ("node") for the machines listed.
type BootServer struct {
	Bin        string // bin/bootserver
	NS         *netlab.NS
	Interface  string // the lab bridge
	Addr       string // the bridge address
	Dir        string // config, state and log
	Kubeconfig string // allowed to manage bootstrap tokens
	Image      *Image
	// Machines maps MAC → node name.
	Machines map[string]string
	// Cmdline is appended to the profile's kernel command line.
	Cmdline string
	// DHCPMode is "full" (default: the boot server hands out addresses) or "proxy" (another DHCP
	// server on the link does; the boot server answers PXE clients on 67 and 4011).
	DHCPMode string
	// FromAPI takes the inventory from the cluster's Machines (inventory.source: kubernetes) instead
	// of Machines; the caller creates the Machine objects.
	FromAPI bool
	// CertificateKeyFile, if set, makes the profile a control-plane profile whose join files carry
	// the certificate key in that file (profiles.node.controlPlane.certificateKeyFile).
	CertificateKeyFile string
	// Disk, if set, makes the profile persistent: the guest's stable name of the disk the agent
	// installs (e.g. vm.Disk.ByID()), with the default policy (install).
	Disk string

	cmd *exec.Cmd
}

// HTTPPort is the boot server's HTTP port in the lab.
const HTTPPort = 8080

// URL is the boot server's HTTP base URL.
func (b *BootServer) URL() string { return fmt.Sprintf("http://%s:%d", b.Addr, HTTPPort) }

func (b *BootServer) config() string {
	prefix := b.Addr[:strings.LastIndex(b.Addr, ".")]
	dhcp := fmt.Sprintf("dhcp:\n  mode: full\n  pool: {start: %s.100, end: %s.200, router: %s}\n  leaseTime: 12h", prefix, prefix, b.Addr)
	if b.DHCPMode == "proxy" {
		dhcp = "dhcp:\n  mode: proxy"
	}
	var m strings.Builder
	for mac, name := range b.Machines {
		fmt.Fprintf(&m, "  - {mac: %q, name: %q, profile: node}\n", mac, name)
	}
	if b.FromAPI {
		m.Reset()
		m.WriteString("  []\ninventory:\n  source: kubernetes\n")
	}
	profile := ""
	if b.CertificateKeyFile != "" {
		profile = fmt.Sprintf("    controlPlane:\n      certificateKeyFile: %s\n", b.CertificateKeyFile)
	}
	return fmt.Sprintf(`interface: %s
serverURL: %s
listen:
  http: ":%d"
  tftp: ":69"
%s
tftp:
  root: %s
cluster:
  kubeconfig: %s
  tokenTTL: 30m
stateDir: %s
unknownMachines:
  profile: ""
profiles:
  node:
    kernel: %s
    initrds: [%s]
    rootImage: %s
    cmdline: >-
      console=ttyS0 pxejoin.mac={{.MAC}} pxejoin.url={{.JoinURL}} pxejoin.status={{.StatusURL}}
      pxejoin.image={{.RootImageURL}} %s
%smachines:
%s`, b.Interface, b.URL(), HTTPPort, dhcp, filepath.Join(b.Dir, "tftp"), b.Kubeconfig, filepath.Join(b.Dir, "state"),
		b.Image.Kernel, b.Image.Initrd, b.Image.Root, b.Cmdline, profile+b.diskConfig(), m.String())
}

// diskConfig is the profile's disk: line, "" for a diskless profile.
func (b *BootServer) diskConfig() string {
	if b.Disk == "" {
		return ""
	}
	return fmt.Sprintf("    disk: {path: %q}\n", b.Disk)
}

// Start writes the configuration and starts the daemon; it returns once /healthz answers.
func (b *BootServer) Start(ctx context.Context) error {
	if err := os.MkdirAll(filepath.Join(b.Dir, "state"), 0o755); err != nil {
		return err
	}
	// The TFTP root (also served at /ipxe/ for UEFI HTTP boot) is laid out as an operator would: links
	// to Debian's ipxe package, whose /usr/lib/ipxe/ipxe.efi is itself a link to /boot/ipxe.efi.
	tftp := filepath.Join(b.Dir, "tftp")
	if err := os.MkdirAll(tftp, 0o755); err != nil {
		return err
	}
	for _, f := range []string{"undionly.kpxe", "ipxe.efi", "snponly.efi"} {
		src := filepath.Join("/usr/lib/ipxe", f)
		if _, err := os.Stat(src); err != nil {
			return fmt.Errorf("%w (install ipxe)", err)
		}
		if err := os.Symlink(src, filepath.Join(tftp, f)); err != nil && !os.IsExist(err) {
			return err
		}
	}
	cfg := filepath.Join(b.Dir, "bootserver.yaml")
	if err := os.WriteFile(cfg, []byte(b.config()), 0o644); err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(b.Dir, "bootserver.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	b.cmd = b.NS.Command(b.Bin, "--config", cfg, "--log-level", "debug")
	b.cmd.Stdout, b.cmd.Stderr = logf, logf
	// Killed with whoever started it (a test or the lab supervisor), so a killed test leaves no server behind.
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := b.cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("bootserver: %w", err)
	}
	logf.Close()
	_ = os.WriteFile(filepath.Join(b.Dir, "bootserver.pid"), []byte(strconv.Itoa(b.cmd.Process.Pid)+"\n"), 0o644)
	exited := make(chan error, 1)
	go func() { exited <- b.cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-exited:
			return fmt.Errorf("bootserver exited: %v; log:\n%s", err, b.LogTail(30))
		default:
		}
		if r, err := http.Get(b.URL() + "/healthz"); err == nil {
			r.Body.Close()
			if r.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("bootserver not healthy after 30 s; log:\n%s", b.LogTail(30))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Kill stops the daemon at once (SIGKILL: a crash).
func (b *BootServer) Kill() {
	if b.cmd != nil && b.cmd.Process != nil {
		_ = b.cmd.Process.Kill()
		time.Sleep(200 * time.Millisecond)
	}
}

// Stop asks the daemon to stop (SIGTERM), then kills it.
func (b *BootServer) Stop() {
	if b.cmd == nil || b.cmd.Process == nil {
		return
	}
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	for i := 0; i < 50; i++ {
		if b.cmd.ProcessState != nil || syscall.Kill(b.cmd.Process.Pid, 0) != nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = b.cmd.Process.Kill()
}

// LogTail is the end of the daemon's log.
func (b *BootServer) LogTail(n int) string {
	data, _ := os.ReadFile(filepath.Join(b.Dir, "bootserver.log"))
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Machine is one machine of GET /machines, as the boot server's status store encodes it.
type Machine = status.Machine

// MachinePhase is one phase of a machine's timeline.
type MachinePhase = status.Phase

// Machines fetches GET /machines from url (a boot server's base URL).
func Machines(ctx context.Context, url string) ([]Machine, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/machines", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out struct {
		Machines []Machine `json:"machines"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, err
	}
	return out.Machines, nil
}

// FormatTimeline prints a machine's phases, times relative to t0.
func FormatTimeline(t0 time.Time, m Machine) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s (%s), boot %d:\n", m.MAC, m.NodeName, m.Boot)
	for _, p := range m.Phases {
		at := p.End
		if at.IsZero() {
			at = p.Start
		}
		fmt.Fprintf(&b, "  %7.2fs %-28s %-7s %-8s %6.2fs %s", at.Sub(t0).Seconds(), p.Phase, p.State, p.Source, p.Seconds, p.Detail)
		if p.Error != "" {
			fmt.Fprintf(&b, " error: %s", p.Error)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// Boot is one boot of a machine for CompareTimelines: a column's name, the boot's power-on and the
// boot server's status of it.
type Boot struct {
	Name    string
	PowerOn time.Time
	Machine Machine
}

// CompareTimelines prints boots side by side: one row per phase, in the order the boots reached
// them, with each boot's time from its own power-on (the phase's end, else its start) and state;
// "-" where a boot did not go through the phase.
func CompareTimelines(boots []Boot) string {
	var order []string
	at := make([]map[string]string, len(boots))
	for i, bt := range boots {
		at[i] = map[string]string{}
		after := -1 // where this boot's previous phase is in order
		for _, p := range bt.Machine.Phases {
			t := p.End
			if t.IsZero() {
				t = p.Start
			}
			if k := slices.Index(order, p.Phase); k >= 0 {
				after = k
			} else { // a phase only this boot went through: right after its predecessor
				after++
				order = slices.Insert(order, after, p.Phase)
			}
			at[i][p.Phase] = fmt.Sprintf("%7.1fs %-7s", t.Sub(bt.PowerOn).Seconds(), p.State)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%-28s", "phase (s from power-on)")
	for _, bt := range boots {
		fmt.Fprintf(&b, " %-16s", bt.Name)
	}
	b.WriteString("\n")
	for _, ph := range order {
		fmt.Fprintf(&b, "%-28s", ph)
		for i := range boots {
			s, ok := at[i][ph]
			if !ok {
				s = fmt.Sprintf("%8s %-7s", "-", "")
			}
			fmt.Fprintf(&b, " %-16s", s)
		}
		b.WriteString("\n")
	}
	return b.String()
}

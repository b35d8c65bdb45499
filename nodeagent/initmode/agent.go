// Package initmode is nodeagent running as /init (PID 1) of the pxejoin initramfs: it mounts the
// pseudo filesystems, loads the NIC modules, configures the boot interface by DHCP, fetches this
// machine's JoinConfiguration, mounts the node's root image (squashfs in RAM under a tmpfs overlay),
// joins into it and switch_roots to its systemd. Every phase is reported to the boot server; failures
// are retried with backoff forever (there is no shell to drop to).
//
// The sequence is data (Agent.Phases) run against a System, so that it is tested without being PID 1:
// Linux is the real System, tests use a fake one.
package initmode

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	certutil "k8s.io/client-go/util/cert"

	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
	"github.com/pxejoin/pxejoin/internal/joinconfig"
	"github.com/pxejoin/pxejoin/nodeagent/nodefiles"
)

// JoinFunc runs the join into rootfs, skipping the given phases, telling observe about every phase
// transition. nodeagent's main wires it to join.Run (see Config.Join).
type JoinFunc func(ctx context.Context, cfg *joinconfig.JoinConfiguration, rootfs string, skipPhases []string,
	observe func(bootstatus.Event)) error

// System is what the agent needs from the machine.
type System interface {
	// Network brings up the boot interface (mac, or any if nil) with DHCP and returns a short
	// description ("eth0 10.77.0.50/24 via 10.77.0.1").
	Network(ctx context.Context, mac hwaddr.MAC) (string, error)
	// MountRoot mounts the squashfs image file under a tmpfs overlay at newroot.
	MountRoot(image, newroot string) error
	// SetHostname sets the kernel's host name.
	SetHostname(name string) error
	// SwitchRoot makes newroot the root and execs its init; it returns only on failure.
	SwitchRoot(newroot string) error
	// PowerOff turns the machine off.
	PowerOff() error
}

// Agent is one run of the init sequence.
type Agent struct {
	Cmdline Cmdline
	System  System
	Join    JoinFunc
	Report  *Reporter
	HTTP    *http.Client
	Backoff Backoff
	// WorkDir holds the downloaded root image (a tmpfs: /run/pxejoin).
	WorkDir string
	// NewRoot is where the node's root is mounted (/newroot).
	NewRoot string
	// Logf prints to the console.
	Logf func(format string, args ...any)
	// Sleep waits (tests replace it); it returns early when ctx ends.
	Sleep func(ctx context.Context, d time.Duration)
	// Storage prepares and mounts a persistent node's disk (pxejoin.disk=).
	Storage Storage
	// StateDir is where the disk's state partition is mounted (/run/pxejoin/state).
	StateDir string
	// Idle is how long a download from a boot server may go without a byte (0: IdleTimeout).
	Idle time.Duration

	cfg          *joinconfig.JoinConfiguration
	nodeName     string
	stateMounted bool
	resumed      bool   // the disk's credentials are this boot's: no join
	joinBody     []byte // the join file as fetched (kept on a control-plane node for the unit)
	attempt      int
	rootMounted  bool
	server       int // the boot server downloads go to first: 0 is JoinURL's, i is Cmdline.Servers[i-1]
}

// Phase is one step of the sequence. On failure the sequence restarts at RetryFrom after a backoff.
type Phase struct {
	Name      string
	Timeout   time.Duration
	RetryFrom string
	// Quiet phases report only errors (their sub-steps report themselves).
	Quiet bool
	Run   func(ctx context.Context) (detail string, err error)
}

// PhaseJoin wraps the join's own phases (preflight, kubelet-start/…), which the join reports itself.
const PhaseJoin = "join"

// SkipPhases are the join phases the agent never runs: the node's systemd starts kubelet after
// switch_root.
var SkipPhases = []string{"kubelet-start/start"}

// Phases is the sequence after agent-start. The join runs before the root image is fetched, into a
// staging directory that root-image copies into the mounted root: the node has its credentials a
// second after the agent starts, whatever the image's size. A join failure (wrong CA pin, expired
// token) re-fetches the join file, since the boot server may have written a new one.
//
// A persistent node (pxejoin.disk=) prepares and mounts its disk after the network, and checks the
// credentials on it (resume): when they are valid for this cluster, the join file is not fetched
// and the join does not run.
func (a *Agent) Phases() []Phase {
	phases := []Phase{
		{Name: bootstatus.PhaseNetwork, Timeout: 2 * time.Minute, RetryFrom: bootstatus.PhaseNetwork, Run: a.network},
	}
	if a.Cmdline.Disk != nil {
		phases = append(phases,
			Phase{Name: bootstatus.PhaseDisk, Timeout: 10 * time.Minute, RetryFrom: bootstatus.PhaseDisk, Run: a.disk},
			Phase{Name: bootstatus.PhaseResume, Timeout: time.Minute, RetryFrom: bootstatus.PhaseResume, Run: a.resume})
	}
	return append(phases, []Phase{
		{Name: bootstatus.PhaseJoinFile, Timeout: time.Minute, RetryFrom: bootstatus.PhaseJoinFile, Run: a.joinFile},
		{Name: PhaseJoin, Timeout: 10 * time.Minute, RetryFrom: bootstatus.PhaseJoinFile, Run: a.join},
		{Name: bootstatus.PhaseRootImage, Timeout: 15 * time.Minute, RetryFrom: bootstatus.PhaseRootImage, Run: a.rootImage},
		{Name: bootstatus.PhaseSwitchRoot, Timeout: time.Minute, RetryFrom: bootstatus.PhaseRootImage, Run: a.switchRoot},
	}...)
}

// Run reports agent-start and runs the phases until the last one succeeds (switch_root does not return
// when it works) or ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	if a.Sleep == nil {
		a.Sleep = sleepCtx
	}
	if a.Logf == nil {
		a.Logf = func(string, ...any) {}
	}
	a.attempt = 1
	start := "mac " + a.Cmdline.MAC.String()
	if a.Cmdline.MAC.IsZero() {
		start = "no boot MAC given: the first interface with a DHCP lease"
	}
	a.report(ctx, bootstatus.PhaseAgentStart, bootstatus.StateDone, start, nil)
	phases := a.Phases()
	for i := 0; i < len(phases); {
		p := phases[i]
		if !p.Quiet {
			a.report(ctx, p.Name, bootstatus.StateStart, "", nil)
		}
		pctx, cancel := context.WithTimeout(ctx, p.Timeout)
		detail, err := p.Run(pctx)
		cancel()
		if err == nil {
			if p.Name != bootstatus.PhaseSwitchRoot {
				a.report(ctx, p.Name, bootstatus.StateDone, detail, nil)
			}
			i++
			continue
		}
		if errors.Is(err, errSkipped) {
			a.report(ctx, p.Name, bootstatus.StateSkipped, detail, nil)
			i++
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		a.report(ctx, p.Name, bootstatus.StateError, detail, err)
		wait := a.Backoff.Delay(a.attempt)
		var later *RetryAfterError
		if errors.As(err, &later) {
			wait = later.Wait // the server said when: it knows better than our backoff
		}
		a.Logf("%s failed (attempt %d): %s; retrying from %s in %s", p.Name, a.attempt, a.Report.Redact(err.Error()), p.RetryFrom, wait.Round(100*time.Millisecond))
		a.attempt++
		a.Sleep(ctx, wait)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		for j, q := range phases {
			if q.Name == p.RetryFrom {
				i = j
			}
		}
	}
	// Nothing to switch to (no image): deliver the reports, then power off or idle.
	a.Report.Drain(ctx, 10*time.Second)
	if a.Cmdline.PowerOff {
		a.Logf("done; powering off (pxejoin.poweroff)")
		return a.System.PowerOff()
	}
	a.Logf("done; no root image to switch to (no pxejoin.image=), idling")
	<-ctx.Done()
	return ctx.Err()
}

// errSkipped marks a phase that had nothing to do.
var errSkipped = errors.New("skipped")

func (a *Agent) report(ctx context.Context, phase, state, detail string, err error) {
	ev := bootstatus.Event{Phase: phase, State: state, Detail: detail, Attempt: a.attempt}
	if err != nil {
		ev.Error = err.Error()
	}
	a.Report.Report(ctx, ev)
}

func (a *Agent) network(ctx context.Context) (string, error) {
	d, err := a.System.Network(ctx, a.Cmdline.MAC)
	if err != nil {
		return "", err
	}
	a.Report.SetOnline(true)
	return d, nil
}

func (a *Agent) joinFile(ctx context.Context) (string, error) {
	if a.Cmdline.SkipJoin {
		return "pxejoin.join=skip", errSkipped
	}
	if a.resumed {
		return "resuming with the disk's credentials", errSkipped
	}
	if a.Cmdline.Disk != nil {
		// The boot server tells why a persistent machine joins again (a re-image, credentials of
		// another cluster, …) from the disk and resume reports it has when this request arrives:
		// they go first, not beside it.
		a.Report.Flush(ctx)
	}
	body, err := a.get(ctx, a.Cmdline.JoinURL, 1<<20)
	if err != nil {
		return "", err
	}
	cfg, err := joinconfig.Parse(body)
	if err != nil {
		return "", fmt.Errorf("join file %s: %w", a.Cmdline.JoinURL, err)
	}
	if bt := cfg.Discovery.BootstrapToken; bt != nil {
		a.Report.AddSecret(bt.Token)
	}
	a.Report.AddSecret(cfg.Discovery.TLSBootstrapToken)
	if cfg.ControlPlane != nil {
		a.Report.AddSecret(cfg.ControlPlane.CertificateKey)
	}
	a.cfg, a.joinBody, a.nodeName = cfg, body, cfg.NodeRegistration.Name
	if n := cfg.NodeRegistration.Name; n != "" {
		if err := a.System.SetHostname(n); err != nil {
			return "", fmt.Errorf("set host name %q: %w", n, err)
		}
	}
	return fmt.Sprintf("node %q, %d bytes", cfg.NodeRegistration.Name, len(body)), nil
}

func (a *Agent) rootImage(ctx context.Context) (string, error) {
	if a.Cmdline.ImageURL == "" {
		return "no pxejoin.image=: joining into the initramfs", errSkipped
	}
	if a.rootMounted {
		return "already mounted", a.install()
	}
	var img, detail string
	if a.Cmdline.Disk != nil {
		var err error
		if img, detail, err = a.cachedImage(ctx); err != nil {
			return "", err
		}
	} else {
		if err := os.MkdirAll(a.WorkDir, 0o755); err != nil {
			return "", err
		}
		img = filepath.Join(a.WorkDir, "root.squashfs")
		n, err := a.download(ctx, a.Cmdline.ImageURL, img)
		if err != nil {
			os.Remove(img)
			return "", err
		}
		detail = fmt.Sprintf("%.1f MB from %s", float64(n)/1e6, a.Cmdline.ImageURL)
	}
	if err := a.System.MountRoot(img, a.NewRoot); err != nil {
		return "", err
	}
	a.rootMounted = true
	if a.Cmdline.Disk != nil {
		if err := a.persist(); err != nil {
			return "", err
		}
	}
	if err := a.install(); err != nil {
		return "", err
	}
	return detail, nil
}

// install copies the join's files and the node name into the mounted root (nothing without a join).
func (a *Agent) install() error {
	if a.Cmdline.SkipJoin {
		return nil
	}
	if !a.resumed {
		if err := copyTree(a.stage(), a.NewRoot); err != nil {
			return fmt.Errorf("installing the join's files into the root: %w", err)
		}
	}
	if name := a.nodeName; name != "" {
		_ = os.WriteFile(filepath.Join(a.NewRoot, "etc/hostname"), []byte(name+"\n"), 0o644)
		if a.Cmdline.Disk != nil { // etc/pxejoin is on the disk: the name for the next boot's resume
			if err := nodefiles.Root(a.NewRoot).Write(nodefiles.File{Path: nodeNameFile, Data: []byte(name + "\n"), Mode: 0o644}); err != nil {
				return err
			}
		}
	}
	return nil
}

// rootfs is where the join writes: the initramfs itself without an image, else a staging directory
// that root-image copies into the mounted image.
func (a *Agent) rootfs() string {
	if a.Cmdline.ImageURL == "" {
		return "/"
	}
	return a.stage()
}

func (a *Agent) stage() string { return filepath.Join(a.WorkDir, "joined") }

// copyTree copies the files, directories and symlinks under src into dst, keeping modes; each file
// and symlink is written as nodefiles writes (temporary name, fsync, rename, fsync of the directory),
// so dst never holds half a credential, even after a power cut.
func copyTree(src, dst string) error {
	return filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		switch {
		case fi.IsDir():
			return os.MkdirAll(filepath.Join(dst, rel), fi.Mode().Perm()|0o700)
		case fi.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return nodefiles.Root(dst).Write(nodefiles.File{Path: rel, Link: target})
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return nodefiles.Root(dst).Write(nodefiles.File{Path: rel, Data: b, Mode: fi.Mode().Perm(), Secret: true})
		}
		return nil
	})
}

func (a *Agent) join(ctx context.Context) (string, error) {
	if a.Cmdline.SkipJoin {
		return "pxejoin.join=skip", errSkipped
	}
	if a.resumed {
		return "resuming with the disk's credentials", errSkipped
	}
	root := a.rootfs()
	if HasValidCredentials(root, time.Now()) {
		return "the root already holds valid kubelet credentials", errSkipped
	}
	if a.Join == nil {
		return "", fmt.Errorf("this agent has no join engine")
	}
	skip := SkipPhases
	if a.cfg.ControlPlane != nil {
		if a.Cmdline.ImageURL == "" {
			return "", fmt.Errorf("a control-plane join needs the node's root image (its systemd runs the kubelet and %s): give the profile an image (pxejoin.image=) or make it a worker profile", controlPlaneUnit)
		}
		skip = controlPlaneSkip()
	}
	err := a.Join(ctx, a.cfg, root, skip, func(ev bootstatus.Event) {
		ev.Attempt = a.attempt
		a.Report.Report(ctx, ev)
	})
	if err != nil || a.cfg.ControlPlane == nil {
		return "", err
	}
	// The rest of the join runs after switch_root, from this file (root-image installs it 0600).
	if err := nodefiles.Root(root).Write(nodefiles.File{Path: ControlPlaneJoinFile, Data: a.joinBody, Mode: 0o600, Secret: true}); err != nil {
		return "", err
	}
	return "control plane: " + strings.Join(ControlPlaneUnitPhases, ", ") + " left to " + controlPlaneUnit, nil
}

func (a *Agent) switchRoot(ctx context.Context) (string, error) {
	if a.Cmdline.ImageURL == "" {
		return "no root image", errSkipped
	}
	a.report(ctx, bootstatus.PhaseSwitchRoot, bootstatus.StateDone, "exec /sbin/init", nil)
	if !a.Report.Flush(ctx) {
		a.Logf("could not deliver every report before switch_root; %d left", a.Report.Pending())
	}
	err := a.System.SwitchRoot(a.NewRoot)
	if err == nil {
		err = fmt.Errorf("switch_root returned")
	}
	return "", err
}

// HasValidCredentials says whether root holds a kubelet.conf and a kubelet client certificate valid
// for at least another hour: such a machine (installed on disk) skips the join. Diskless roots are
// fresh at every boot and always join.
func HasValidCredentials(root string, now time.Time) bool {
	if _, err := os.Stat(filepath.Join(root, "etc/kubernetes/kubelet.conf")); err != nil {
		return false
	}
	b, err := os.ReadFile(filepath.Join(root, "var/lib/kubelet/pki/kubelet-client-current.pem"))
	if err != nil {
		return false
	}
	certs, err := certutil.ParseCertsPEM(b)
	if err != nil {
		return false
	}
	return now.After(certs[0].NotBefore) && now.Add(time.Hour).Before(certs[0].NotAfter)
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

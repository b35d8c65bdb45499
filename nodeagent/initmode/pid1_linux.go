package initmode

import (
	"bufio"
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"golang.org/x/sys/unix"
)

// Config is what nodeagent's main hands to Main.
type Config struct {
	// Join runs the join. nodeagent's main wires join.Run:
	//
	//	initmode.Main(initmode.Config{Join: func(ctx context.Context, cfg *joinconfig.JoinConfiguration,
	//		rootfs string, skip []string, observe func(bootstatus.Event)) error {
	//		return join.Run(ctx, cfg, join.Options{Rootfs: rootfs, SkipPhases: skip, Out: os.Stdout,
	//			Observer: func(e join.Event) {
	//				ev := bootstatus.Event{Phase: e.Phase, State: e.State, Time: e.Time, Detail: e.Detail}
	//				if e.Err != nil { ev.Error = e.Err.Error() }
	//				observe(ev)
	//			}})
	//	}})
	Join JoinFunc
}

// IsInit says whether this process is the initramfs's init: PID 1, or started as ".../init".
func IsInit() bool {
	return os.Getpid() == 1 || strings.HasSuffix(os.Args[0], "init")
}

// ModuleList is the initramfs file listing the modules to load in order (written by ./initramfs).
const ModuleList = "/etc/pxejoin/modules"

// Main is PID 1: it never returns. Whatever fails is reported and retried; a fatal setup error (no
// pxejoin.url=) is printed on the console every minute, since there is nobody else to tell.
func Main(c Config) {
	log.SetFlags(log.Ltime | log.Lmicroseconds)
	log.SetPrefix("pxejoin: ")
	logf := log.Printf
	start := time.Now()
	if err := mountPseudo(); err != nil {
		logf("mounting pseudo filesystems: %v", err)
	}
	logf("nodeagent init mode (pid %d)", os.Getpid())
	ctx := context.Background()

	raw, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		hang(logf, fmt.Errorf("read /proc/cmdline: %w", err))
	}
	cl, err := ParseCmdline(string(raw))
	if err != nil {
		hang(logf, err)
	}
	n, errs := loadModules(cl.Modules)
	for _, e := range errs {
		logf("module: %v", e)
	}
	logf("loaded %d modules in %s", n, time.Since(start).Round(time.Millisecond))
	waitEntropy(logf)

	rep := &Reporter{URL: cl.StatusURL, Mirrors: cl.Mirrors(cl.StatusURL)[1:], Client: bootClient(10 * time.Second),
		Log: func(ev bootstatus.Event) {
			msg := ev.Phase + " " + ev.State
			if ev.Detail != "" {
				msg += ": " + ev.Detail
			}
			if ev.Error != "" {
				msg += ": " + ev.Error
			}
			logf("%s", msg)
		}}
	a := &Agent{
		Cmdline:  cl,
		System:   &Linux{Logf: logf, RunDir: "/run/pxejoin"},
		Join:     c.Join,
		Report:   rep,
		HTTP:     bootClient(0),
		Backoff:  DefaultBackoff,
		WorkDir:  "/run/pxejoin/image",
		NewRoot:  "/newroot",
		Logf:     logf,
		Storage:  LinuxStorage{},
		StateDir: "/run/pxejoin/state",
	}
	err = a.Run(ctx)
	hang(logf, fmt.Errorf("init sequence ended: %v", err))
}

// connectTimeout bounds a TCP connect to a boot server. On the machine's own link a connect takes
// milliseconds; a server whose host died answers nothing, not even a refusal, and without a bound
// the next server of pxejoin.servers= would be asked only after TCP's SYN retries (30 s per
// request measured in lab/e2e's TestHAServerKilledMidBoot/host).
const connectTimeout = 5 * time.Second

// bootClient is an HTTP client for the boot servers whose connects give up after connectTimeout;
// timeout bounds a whole request (0: none, a root image may take minutes).
func bootClient(timeout time.Duration) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = (&net.Dialer{Timeout: connectTimeout, KeepAlive: 15 * time.Second}).DialContext
	return &http.Client{Transport: tr, Timeout: timeout}
}

// mountPseudo mounts /proc, /sys, /dev (devtmpfs), /run and /tmp (tmpfs), skipping what is mounted.
func mountPseudo() error {
	for _, m := range []struct{ src, dir, fs, opts string }{
		{"proc", "/proc", "proc", ""},
		{"sysfs", "/sys", "sysfs", ""},
		{"devtmpfs", "/dev", "devtmpfs", "mode=0755"},
		{"tmpfs", "/run", "tmpfs", "mode=0755"},
		{"tmpfs", "/tmp", "tmpfs", "mode=1777"},
	} {
		if err := os.MkdirAll(m.dir, 0o755); err != nil {
			return err
		}
		err := unix.Mount(m.src, m.dir, m.fs, unix.MS_NOSUID, m.opts)
		if err != nil && err != unix.EBUSY {
			return fmt.Errorf("mount %s: %w", m.dir, err)
		}
	}
	return nil
}

// loadModules loads the modules the initramfs lists (in dependency order), or only those named plus
// their listed predecessors' dependencies if names is set. Modules already loaded or built in are fine;
// a failing module is reported and the rest still load (a NIC driver without its firmware must not stop
// the others).
func loadModules(names []string) (int, []error) {
	var u unix.Utsname
	_ = unix.Uname(&u)
	kver := unix.ByteSliceToString(u.Release[:])
	f, err := os.Open(ModuleList)
	if err != nil {
		return 0, []error{err}
	}
	defer f.Close()
	var paths []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if p := strings.TrimSpace(sc.Text()); p != "" {
			paths = append(paths, p)
		}
	}
	if len(names) > 0 {
		paths = selectModules(paths, names, filepath.Join("/lib/modules", kver, "modules.dep"))
	}
	var errs []error
	n := 0
	for _, p := range paths {
		full := filepath.Join("/lib/modules", kver, p)
		mf, err := os.Open(full)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		err = unix.FinitModule(int(mf.Fd()), "", 0)
		mf.Close()
		if err != nil && err != unix.EEXIST {
			errs = append(errs, fmt.Errorf("%s: %w", p, err))
			continue
		}
		n++
	}
	return n, errs
}

// selectModules keeps, in order, the listed paths that are one of names or a dependency of one
// (from modules.dep).
func selectModules(paths, names []string, depFile string) []string {
	want := map[string]bool{}
	deps := map[string][]string{}
	if b, err := os.ReadFile(depFile); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			m, rest, ok := strings.Cut(line, ":")
			if ok {
				deps[strings.TrimSpace(m)] = strings.Fields(rest)
			}
		}
	}
	for _, p := range paths {
		for _, n := range names {
			if moduleName(p) == strings.ReplaceAll(n, "-", "_") {
				want[p] = true
				for _, d := range deps[p] {
					want[d] = true
				}
			}
		}
	}
	var out []string
	for _, p := range paths {
		if want[p] {
			out = append(out, p)
		}
	}
	return out
}

func moduleName(p string) string {
	b := filepath.Base(p)
	if i := strings.Index(b, ".ko"); i >= 0 {
		b = b[:i]
	}
	return strings.ReplaceAll(b, "-", "_")
}

// waitEntropy makes sure TLS and DHCP will not hang in getrandom(2): the kernel's CRNG must be ready.
// Under QEMU/TCG without RDRAND it is not for minutes; the lab boots VMs with -cpu qemu64,+rdrand (the
// kernel trusts the CPU's RNG: CONFIG_RANDOM_TRUST_CPU=y) and the initramfs carries virtio_rng. If it
// is still not ready, say so on the console every 10 s instead of hanging silently, and go on after 5
// minutes (the kernel's jitter entropy gets there eventually).
func waitEntropy(logf func(string, ...any)) {
	start := time.Now()
	for !crngReady() {
		if time.Since(start) > 5*time.Minute {
			logf("kernel CRNG still not ready after 5 min; continuing (getrandom may block)")
			return
		}
		if time.Since(start)%(10*time.Second) < time.Second {
			logf("waiting for the kernel's CRNG (no entropy: give the VM -cpu …,+rdrand or a virtio-rng device)")
		}
		time.Sleep(time.Second)
	}
	if d := time.Since(start); d > time.Second {
		logf("kernel CRNG ready after %s", d.Round(time.Second))
	}
}

// hang prints err every minute forever: PID 1 must not exit (the kernel would panic) and there is no
// shell to drop to.
func hang(logf func(string, ...any), err error) {
	for {
		logf("FATAL: %v; nothing more to do (fix the boot configuration and power-cycle)", err)
		time.Sleep(time.Minute)
	}
}

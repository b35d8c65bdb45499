// Package e2e holds the VM end-to-end tests: real QEMU machines PXE-boot the pxejoin initramfs inside a
// network namespace and join a real control plane. The boot server is the real bootserver (built from
// this tree, or PXEJOIN_BOOTSERVER). StandIn serves only join files of a test's making, which the real
// one cannot: a wrong CA pin (TestWrongCAPinReportedAndRetried), a control plane that does not exist
// (TestBIOSAgentReports).
package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/lab/netlab"
)

// StandIn is a small boot server for developing the VM tests without the bootserver daemon: dnsmasq
// (DHCP + TFTP of the iPXE binaries, run inside the namespace) and a Go HTTP server (iPXE script,
// kernel, initramfs, root image, join files, status reports).
type StandIn struct {
	NS      *netlab.NS
	Addr    string // the bridge address, e.g. 10.77.0.1
	Bridge  string
	Dir     string
	Kernel  string
	Initrd  string
	Image   string // root image (empty: none)
	Cmdline string // extra kernel arguments

	mu      sync.Mutex
	joins   map[string][]byte // mac → JoinConfiguration
	events  map[string][]bootstatus.Event
	changed chan struct{}
	srv     *http.Server
	dnsmasq *exec.Cmd
}

// Port is the stand-in's HTTP port.
const Port = 8080

// Start runs dnsmasq and the HTTP server inside the namespace.
func (s *StandIn) Start() error {
	if s.joins == nil { // a restart keeps what it knew
		s.joins = map[string][]byte{}
		s.events = map[string][]bootstatus.Event{}
		s.changed = make(chan struct{})
	}
	var err error
	if s.dnsmasq, err = startDnsmasq(s.NS, s.Bridge, s.Addr, s.Dir, fmt.Sprintf("http://%s:%d/boot.ipxe", s.Addr, Port)); err != nil {
		return err
	}
	var ln net.Listener
	if err := s.NS.Do(func() (err error) {
		ln, err = net.Listen("tcp", fmt.Sprintf("%s:%d", s.Addr, Port))
		return err
	}); err != nil {
		return err
	}
	s.srv = &http.Server{Handler: s.handler()}
	go s.srv.Serve(ln)
	return nil
}

// Stop ends dnsmasq and the HTTP server.
func (s *StandIn) Stop() {
	if s.srv != nil {
		s.srv.Close()
	}
	if s.dnsmasq != nil && s.dnsmasq.Process != nil {
		s.dnsmasq.Process.Kill()
		s.dnsmasq.Wait()
	}
}

// SetJoin sets the join file served to mac.
func (s *StandIn) SetJoin(mac string, cfg []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.joins[strings.ToLower(mac)] = cfg
}

// Events returns the status reports of mac.
func (s *StandIn) Events(mac string) []bootstatus.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]bootstatus.Event(nil), s.events[strings.ToLower(mac)]...)
}

// WaitEvent waits until mac reported phase in state.
func (s *StandIn) WaitEvent(ctx context.Context, mac, phase, state string) (bootstatus.Event, error) {
	return s.WaitFor(ctx, mac, phase+" "+state, func(e bootstatus.Event) bool { return e.Phase == phase && e.State == state })
}

// WaitFor waits until mac reported an event that match accepts; what names it in the error.
func (s *StandIn) WaitFor(ctx context.Context, mac, what string, match func(bootstatus.Event) bool) (bootstatus.Event, error) {
	for {
		s.mu.Lock()
		ch := s.changed
		for _, e := range s.events[strings.ToLower(mac)] {
			if match(e) {
				s.mu.Unlock()
				return e, nil
			}
		}
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return bootstatus.Event{}, fmt.Errorf("waiting for %s from %s: %w", what, mac, ctx.Err())
		case <-ch:
		}
	}
}

func (s *StandIn) base() string { return fmt.Sprintf("http://%s:%d", s.Addr, Port) }

func (s *StandIn) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /boot.ipxe", func(w http.ResponseWriter, r *http.Request) {
		b := s.base()
		img := ""
		if s.Image != "" {
			img = " pxejoin.image=" + b + "/root.squashfs"
		}
		// initrd= on the kernel line: Debian's iPXE under UEFI needs it (notes/pxe-lab.md).
		fmt.Fprintf(w, "#!ipxe\nkernel %[1]s/vmlinuz initrd=initrd console=ttyS0 BOOTIF=01-${mac:hexhyp} pxejoin.url=%[1]s/join/${mac}%[2]s %[3]s\ninitrd --name initrd %[1]s/initrd\nboot\n",
			b, img, s.Cmdline)
	})
	serve := func(path, file string) {
		mux.HandleFunc("GET "+path, func(w http.ResponseWriter, r *http.Request) {
			if file == "" {
				http.NotFound(w, r)
				return
			}
			http.ServeFile(w, r, file)
		})
	}
	serve("/vmlinuz", s.Kernel)
	serve("/initrd", s.Initrd)
	serve("/root.squashfs", s.Image)
	mux.HandleFunc("GET /join/{mac}", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		cfg, ok := s.joins[strings.ToLower(r.PathValue("mac"))]
		s.mu.Unlock()
		if !ok {
			http.Error(w, "unknown machine", http.StatusNotFound)
			return
		}
		w.Write(cfg)
	})
	mux.HandleFunc("POST /status/{mac}", func(w http.ResponseWriter, r *http.Request) {
		var evs []bootstatus.Event
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&evs); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		for _, e := range evs {
			if err := e.Validate(); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
		}
		s.mu.Lock()
		mac := strings.ToLower(r.PathValue("mac"))
		s.events[mac] = append(s.events[mac], evs...)
		close(s.changed)
		s.changed = make(chan struct{})
		s.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /machines", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		json.NewEncoder(w).Encode(s.events)
	})
	return mux
}

// Timeline formats events as seconds since t0.
func Timeline(t0 time.Time, evs []bootstatus.Event) string {
	var b strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&b, "  %7.2fs %-28s %-7s %s", e.Time.Sub(t0).Seconds(), e.Phase, e.State, e.Detail)
		if e.Error != "" {
			fmt.Fprintf(&b, " error: %s", e.Error)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// startDnsmasq runs dnsmasq in ns on bridge as a plain PXE server: DHCP with a pool in addr's /24, TFTP of
// Debian's iPXE binaries from dir/tftp, iPXE chained to scriptURL, RAs for IPv6 (which stop iPXE waiting
// ~16 s for autoconfiguration). With scriptURL "" it is a plain DHCP server without any PXE answer (the
// other server of a proxy-mode test). Its log is dir/dnsmasq.log.
func startDnsmasq(ns *netlab.NS, bridge, addr, dir, scriptURL string) (*exec.Cmd, error) {
	tftp := filepath.Join(dir, "tftp")
	if err := os.MkdirAll(tftp, 0o755); err != nil {
		return nil, err
	}
	for _, f := range []string{"undionly.kpxe", "ipxe.efi"} {
		b, err := os.ReadFile(filepath.Join("/usr/lib/ipxe", f))
		if err != nil {
			return nil, fmt.Errorf("dnsmasq: %w (install ipxe)", err)
		}
		if err := os.WriteFile(filepath.Join(tftp, f), b, 0o644); err != nil {
			return nil, err
		}
	}
	prefix := strings.Join(strings.Split(addr, ".")[:3], ".")
	conf := fmt.Sprintf(`port=0
user=root
interface=%[1]s
bind-interfaces
no-ping
log-dhcp
dhcp-range=%[2]s.100,%[2]s.200,255.255.255.0,12h
dhcp-option=option:router,%[3]s
dhcp-leasefile=%[4]s/leases
enable-ra
dhcp-range=fd77::,ra-only
`, bridge, prefix, addr, dir)
	if scriptURL != "" {
		conf += fmt.Sprintf(`dhcp-match=set:ipxe,175
dhcp-userclass=set:ipxe,iPXE
dhcp-vendorclass=set:efi64,PXEClient:Arch:00007
dhcp-vendorclass=set:efi64,PXEClient:Arch:00009
dhcp-option=encap:175,176,1b
dhcp-boot=tag:ipxe,%[1]s
dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi
dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe
enable-tftp
tftp-root=%[2]s
`, scriptURL, tftp)
	}
	cf := filepath.Join(dir, "dnsmasq.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	// RAs stop iPXE waiting ~16 s for IPv6 autoconfiguration.
	_, _ = ns.Exec("ip", "addr", "add", "fd77::1/64", "dev", bridge)
	log, err := os.Create(filepath.Join(dir, "dnsmasq.log"))
	if err != nil {
		return nil, err
	}
	cmd := ns.Command("dnsmasq", "--keep-in-foreground", "--log-facility=-", "--conf-file="+cf, "--pid-file=")
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("dnsmasq: %w", err)
	}
	log.Close()
	return cmd, nil
}

// Command bootserver answers PXE machines (DHCP, TFTP, HTTP) and hands each a kubeadm join file with
// a token minted for it, so that they come up as Kubernetes nodes.
//
//	bootserver --config /etc/pxejoin/bootserver.yaml
//	bootserver --interface eth1 --dhcp-mode proxy --kernel K --initrd I [--cmdline C] [--kubeconfig KC]
//	bootserver machines [--server http://127.0.0.1:8080]
//	bootserver reimage [--server http://127.0.0.1:8080] <mac|node>
//	bootserver import [--kubeconfig KC] [--segment S] FILE
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/bootserver/server"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "machines" {
		os.Exit(machinesCmd(os.Args[2:], os.Stdout))
	}
	if len(os.Args) > 1 && os.Args[1] == "reimage" {
		os.Exit(reimageCmd(os.Args[2:], os.Stdout, os.Stderr))
	}
	if len(os.Args) > 1 && os.Args[1] == "import" {
		os.Exit(importCmd(os.Args[2:], os.Stdout, os.Stderr))
	}
	os.Exit(serveCmd(os.Args[1:]))
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func serveCmd(args []string) int {
	fs := flag.NewFlagSet("bootserver", flag.ContinueOnError)
	var q config.Quick
	var initrds multiFlag
	cfgFile := fs.String("config", "", "configuration file (YAML); without it, quick mode: the flags below describe one profile for every machine")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	fs.StringVar(&q.Interface, "interface", "", "interface of the boot network")
	fs.StringVar(&q.DHCPMode, "dhcp-mode", "", "full (hand out addresses), proxy (another server does) or off")
	fs.StringVar(&q.PoolStart, "pool-start", "", "first address of the pool (full mode)")
	fs.StringVar(&q.PoolEnd, "pool-end", "", "last address of the pool (full mode)")
	fs.StringVar(&q.Kernel, "kernel", "", "kernel file")
	fs.Var(&initrds, "initrd", "initrd file (repeat for several)")
	fs.StringVar(&q.Cmdline, "cmdline", "", "kernel command line (a template: {{.JoinURL}} {{.StatusURL}} {{.MAC}} {{.NodeName}} {{.ServerURL}} {{.RootImageURL}});\n"+
		"the agent's parameters it does not set are appended: pxejoin.url=, pxejoin.status=, pxejoin.mac= (unless BOOTIF=)\nand, with --root-image, pxejoin.image=")
	fs.StringVar(&q.RootImage, "root-image", "", "root image file or http(s) URL")
	fs.StringVar(&q.Kubeconfig, "kubeconfig", "", "kubeconfig allowed to manage bootstrap tokens; without it machines boot but get no join file")
	fs.StringVar(&q.APIServer, "apiserver", "", "API server host:port machines dial (default: the kubeconfig's)")
	fs.StringVar(&q.TokenTTL, "token-ttl", "", "lifetime of each machine's token (default 30m)")
	fs.StringVar(&q.HTTPAddr, "http-addr", "", "HTTP listen address (default :8080)")
	fs.StringVar(&q.TFTPAddr, "tftp-addr", "", "TFTP listen address (default :69)")
	fs.StringVar(&q.TFTPRoot, "tftp-root", "", "directory of the iPXE binaries (default /usr/lib/ipxe)")
	fs.StringVar(&q.ServerURL, "server-url", "", "URL machines reach the HTTP server at (default from the interface)")
	fs.StringVar(&q.StateDir, "state-dir", "", "state directory (default /var/lib/pxejoin)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintln(os.Stderr, "bootserver: --log-level:", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(log)

	var cfg *config.Config
	var err error
	if *cfgFile != "" {
		quickSet := false
		fs.Visit(func(f *flag.Flag) {
			if f.Name != "config" && f.Name != "log-level" {
				quickSet = true
			}
		})
		if quickSet {
			fmt.Fprintln(os.Stderr, "bootserver: --config and the quick-mode flags exclude each other: put everything in the file")
			return 2
		}
		cfg, err = config.Load(*cfgFile)
	} else {
		q.Initrds = initrds
		cfg, err = config.FromQuick(q)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bootserver: invalid configuration:\n%v\n", err)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	srv, err := server.New(server.Options{Config: cfg, Logger: log, Ready: func() {
		if ok, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
			log.Warn("sd_notify READY=1 failed", "err", err)
		} else if ok {
			log.Debug("told systemd we are ready")
		}
	}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "bootserver:", err)
		return 1
	}
	defer srv.Close()
	err = srv.Serve(ctx)
	_, _ = daemon.SdNotify(false, daemon.SdNotifyStopping)
	if err != nil && !errors.Is(err, context.Canceled) {
		log.Error("boot server stopped", "err", err)
		return 1
	}
	log.Info("boot server stopped")
	return 0
}

package dhcpd_test

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pxejoin/pxejoin/bootserver/dhcpd"
	"github.com/pxejoin/pxejoin/bootserver/leases"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// How the bootserver daemon wires the DHCP service: a lease store it owns, the default boot policy
// asking the inventory who may boot, and Serve until the process is told to stop.
func Example() {
	store, err := leases.Open("/var/lib/pxejoin/leases.db")
	if err != nil {
		slog.Error("open leases", "err", err)
		return
	}
	defer store.Close()
	inventory := map[string]bool{"52:54:00:12:34:56": true}
	server := netip.MustParseAddr("10.0.0.1")
	srv, err := dhcpd.New(dhcpd.Config{
		Interface: "eth1",
		Mode:      dhcpd.ModeFull,
		ServerIP:  server,
		Pools: []dhcpd.Pool{{
			Subnet: netip.MustParsePrefix("10.0.0.0/24"),
			Start:  netip.MustParseAddr("10.0.0.100"), End: netip.MustParseAddr("10.0.0.199"),
			Router: server, DNS: []netip.Addr{server}, LeaseTime: time.Hour,
		}},
		Leases: store,
		BootPolicy: dhcpd.DefaultPolicy{
			TFTPServer: server,
			HTTPBase:   "http://10.0.0.1:8080",
			Known:      func(mac hwaddr.MAC) bool { return inventory[mac.String()] },
		},
		OnEvent: func(e dhcpd.Event) {
			// Hand over to the status page without blocking, e.g. a buffered channel.
		},
		Logger:     slog.New(slog.NewTextHandler(os.Stderr, nil)),
		Registerer: prometheus.DefaultRegisterer,
	})
	if err != nil {
		slog.Error("dhcp config", "err", err)
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := srv.Serve(ctx); err != nil {
		slog.Error("dhcp", "err", err)
	}
}

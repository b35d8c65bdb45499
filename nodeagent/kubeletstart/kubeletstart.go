// Package kubeletstart starts the kubelet through systemd's D-Bus API (go-systemd): daemon-reload,
// enable, restart, and wait until the unit is active.
package kubeletstart

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
)

// Unit is the kubelet's systemd unit.
const Unit = "kubelet.service"

// SystemdRunning reports whether systemd is the init system here (sd_booted's test).
func SystemdRunning() bool {
	fi, err := os.Lstat("/run/systemd/system")
	return err == nil && fi.IsDir()
}

// Start reloads systemd, enables and restarts the kubelet, and waits until the unit is active.
func Start(ctx context.Context) error {
	if !SystemdRunning() {
		return errors.New("systemd is not running on this host (no /run/systemd/system), so the kubelet cannot be started: " +
			"start it yourself, or skip this phase with --skip-phases kubelet-start/start")
	}
	conn, err := sddbus.NewSystemConnectionContext(ctx)
	if err != nil {
		return fmt.Errorf("cannot talk to systemd over D-Bus: %w (is dbus running?)", err)
	}
	defer conn.Close()
	if err := conn.ReloadContext(ctx); err != nil {
		return fmt.Errorf("systemctl daemon-reload failed: %w", err)
	}
	if _, _, err := conn.EnableUnitFilesContext(ctx, []string{Unit}, false, true); err != nil {
		return fmt.Errorf("cannot enable %s: %w (is the kubelet installed with its unit file?)", Unit, err)
	}
	done := make(chan string, 1)
	if _, err := conn.RestartUnitContext(ctx, Unit, "replace", done); err != nil {
		return fmt.Errorf("cannot restart %s: %w", Unit, err)
	}
	select {
	case res := <-done:
		if res != "done" {
			return fmt.Errorf("restarting %s ended with %q: see `journalctl -u kubelet`", Unit, res)
		}
	case <-ctx.Done():
		return fmt.Errorf("timed out restarting %s: see `journalctl -u kubelet`", Unit)
	}
	for {
		p, err := conn.GetUnitPropertyContext(ctx, Unit, "ActiveState")
		if err == nil {
			state := strings.Trim(p.Value.String(), `"`)
			switch state {
			case "active":
				return nil
			case "failed":
				return fmt.Errorf("%s failed to start: see `journalctl -u kubelet`", Unit)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not become active: see `journalctl -u kubelet`", Unit)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

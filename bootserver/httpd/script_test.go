package httpd

import (
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/bootserver/inventory"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// handlerWith is f's handler rebuilt with another inventory, UUIDOf and metrics registry (nil: none).
func handlerWith(t *testing.T, f *fixture, inv *inventory.Inventory, uuidOf func(hwaddr.MAC) string, reg *prometheus.Registry) *Handler {
	t.Helper()
	cfg := f.h.cfg
	cfg.Registerer, cfg.Gatherer, cfg.UUIDOf, cfg.IPXEDir = nil, nil, uuidOf, ""
	if reg != nil {
		cfg.Registerer, cfg.Gatherer = reg, reg
	}
	if inv != nil {
		cfg.Inventory = inv
	}
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// TestScriptLookup fetches scripts by MAC spellings and UUIDs (by ?uuid= or DHCP) and from a handler
// over another inventory (a changed template): each answer is the machine's script, and every
// request is recorded in the timeline and counted.
func TestScriptLookup(t *testing.T) {
	const mac = "52:54:00:00:00:01"
	byUUID := config.Machine{UUID: "4c4c4544-0000-0000-0000-000000000001", Name: "by-uuid", Profile: "worker"}
	f := newFixture(t, "http://10.80.0.1:8080", 16, true, config.Machine{MAC: mustMAC(mac), Name: "worker-1", Profile: "worker"}, byUUID)
	dhcpUUID := ""
	reg := prometheus.NewRegistry()
	first := handlerWith(t, f, nil, func(hwaddr.MAC) string { return dhcpUUID }, reg)

	// Another inventory: the same machines, the profile's template changed.
	c := &config.Config{Profiles: map[string]config.Profile{"worker": {
		Kernel: f.dir + "/vmlinuz", Initrds: []string{f.dir + "/initramfs.cpio.gz"}, Cmdline: "changed={{.NodeName}}",
	}}, Machines: []config.Machine{{MAC: mustMAC(mac), Name: "worker-1", Profile: "worker"}, byUUID}}
	c.Unknown.Profile = "worker"
	inv2, err := inventory.New(c)
	if err != nil {
		t.Fatal(err)
	}
	reloaded := handlerWith(t, f, inv2, func(hwaddr.MAC) string { return dhcpUUID }, nil)

	tests := []struct {
		name, path, dhcpUUID string
		mac                  string // whose timeline it is
		h                    *Handler
		want                 string // a piece of the script
		boot                 int    // the machine's boot after the request
	}{
		{"first boot", "/boot/" + mac + ".ipxe", "", mac, first, "pxejoin.node=worker-1", 1},
		{"second boot", "/boot/" + mac + ".ipxe", "", mac, first, "pxejoin.node=worker-1", 2},
		{"spelled with dashes", "/boot/52-54-00-00-00-01.ipxe", "", mac, first, "pxejoin.node=worker-1", 3},
		{"escaped colons", "/boot/52%3A54%3A00%3A00%3A00%3A01.ipxe", "", mac, first, "pxejoin.node=worker-1", 4},
		{"unknown MAC", "/boot/52:54:00:00:00:0A.ipxe", "", "52:54:00:00:00:0a", first, "pxejoin.node=node-52540000000a", 1},
		{"unknown MAC, UUID by query", "/boot/52:54:00:00:00:0a.ipxe?uuid=" + byUUID.UUID, "", "52:54:00:00:00:0a", first, "pxejoin.node=by-uuid", 2},
		{"unknown MAC, UUID by DHCP", "/boot/52:54:00:00:00:0a.ipxe", byUUID.UUID, "52:54:00:00:00:0a", first, "pxejoin.node=by-uuid", 3},
		{"unknown MAC, DHCP UUID gone", "/boot/52:54:00:00:00:0a.ipxe", "", "52:54:00:00:00:0a", first, "pxejoin.node=node-52540000000a", 4},
		{"changed template", "/boot/" + mac + ".ipxe", "", mac, reloaded, "changed=worker-1", 5},
		{"changed template, by UUID", "/boot/52:54:00:00:00:0a.ipxe", byUUID.UUID, "52:54:00:00:00:0a", reloaded, "changed=by-uuid", 5},
	}
	served := 0
	for _, tt := range tests {
		if tt.h == first {
			served++
		}
		t.Run(tt.name, func(t *testing.T) {
			dhcpUUID = tt.dhcpUUID
			w := get(t, tt.h, "GET", tt.path, nil)
			if w.Code != 200 || !strings.Contains(w.Body.String(), tt.want) {
				t.Fatalf("%d, script:\n%s", w.Code, w.Body)
			}
			if ct, cc := w.Header().Get("Content-Type"), w.Header().Get("Cache-Control"); ct != "text/plain; charset=utf-8" || cc != "no-store" {
				t.Errorf("Content-Type %q, Cache-Control %q", ct, cc)
			}
			m, _ := f.store.Get(mustMAC(tt.mac))
			if m.Boot != tt.boot || len(m.Phases) != 1 || m.Phases[0].Phase != "script" || m.Phases[0].State != "done" {
				t.Errorf("timeline: boot %d, want %d, %+v", m.Boot, tt.boot, m.Phases)
			}
		})
	}
	metrics := get(t, first, "GET", "/metrics", nil).Body.String()
	if !strings.Contains(metrics, fmt.Sprintf(`pxejoin_http_requests_total{code="200",kind="script"} %d`, served)) {
		t.Errorf("script requests not counted:\n%s", grep(metrics, "requests_total"))
	}
}

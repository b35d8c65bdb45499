package httpd

import (
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/bootserver/inventory"
)

// handlerWith is f's handler rebuilt with another inventory, UUIDOf and metrics registry (nil: none).
func handlerWith(t *testing.T, f *fixture, inv *inventory.Inventory, uuidOf func(string) string, reg *prometheus.Registry) *Handler {
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

// TestScriptCache serves scripts through the cache and checks each answer against a handler that
// has never cached anything: a new boot, another UUID (by ?uuid= or DHCP), another inventory (a
// changed template or profile) must each give the script an uncached render gives, and every request
// is still recorded in the timeline and counted.
func TestScriptCache(t *testing.T) {
	const mac = "52:54:00:00:00:01"
	byUUID := config.Machine{UUID: "4c4c4544-0000-0000-0000-000000000001", Name: "by-uuid", Profile: "worker"}
	f := newFixture(t, "http://10.80.0.1:8080", 16, true, config.Machine{MAC: mac, Name: "worker-1", Profile: "worker"}, byUUID)
	dhcpUUID := ""
	reg := prometheus.NewRegistry()
	cached := handlerWith(t, f, nil, func(string) string { return dhcpUUID }, reg)

	// Another inventory: the same machines, the profile's template changed.
	c := &config.Config{Profiles: map[string]config.Profile{"worker": {
		Kernel: f.dir + "/vmlinuz", Initrds: []string{f.dir + "/initramfs.cpio.gz"}, Cmdline: "changed={{.NodeName}}",
	}}, Machines: []config.Machine{{MAC: mac, Name: "worker-1", Profile: "worker"}, byUUID}}
	c.Unknown.Profile = "worker"
	inv2, err := inventory.New(c)
	if err != nil {
		t.Fatal(err)
	}
	reloaded := handlerWith(t, f, inv2, func(string) string { return dhcpUUID }, nil)

	tests := []struct {
		name, path, dhcpUUID string
		mac                  string // whose timeline it is
		h                    *Handler
		want                 string // a piece of the script
		boot                 int    // the machine's boot after the request
	}{
		{"first boot", "/boot/" + mac + ".ipxe", "", mac, cached, "pxejoin.node=worker-1", 1},
		{"second boot, cached", "/boot/" + mac + ".ipxe", "", mac, cached, "pxejoin.node=worker-1", 2},
		{"spelled with dashes", "/boot/52-54-00-00-00-01.ipxe", "", mac, cached, "pxejoin.node=worker-1", 3},
		{"escaped colons", "/boot/52%3A54%3A00%3A00%3A00%3A01.ipxe", "", mac, cached, "pxejoin.node=worker-1", 4},
		{"unknown MAC", "/boot/52:54:00:00:00:0A.ipxe", "", "52:54:00:00:00:0a", cached, "pxejoin.node=node-52540000000a", 1},
		{"unknown MAC, UUID by query", "/boot/52:54:00:00:00:0a.ipxe?uuid=" + byUUID.UUID, "", "52:54:00:00:00:0a", cached, "pxejoin.node=by-uuid", 2},
		{"unknown MAC, UUID by DHCP", "/boot/52:54:00:00:00:0a.ipxe", byUUID.UUID, "52:54:00:00:00:0a", cached, "pxejoin.node=by-uuid", 3},
		{"unknown MAC, DHCP UUID gone", "/boot/52:54:00:00:00:0a.ipxe", "", "52:54:00:00:00:0a", cached, "pxejoin.node=node-52540000000a", 4},
		{"changed template", "/boot/" + mac + ".ipxe", "", mac, reloaded, "changed=worker-1", 5},
		{"changed template, by UUID", "/boot/52:54:00:00:00:0a.ipxe", byUUID.UUID, "52:54:00:00:00:0a", reloaded, "changed=by-uuid", 5},
		{"back to the first inventory", "/boot/" + mac + ".ipxe", "", mac, cached, "pxejoin.node=worker-1", 6},
	}
	served := 0
	for _, tt := range tests {
		if tt.h == cached {
			served++
		}
		t.Run(tt.name, func(t *testing.T) {
			dhcpUUID = tt.dhcpUUID
			w := get(t, tt.h, "GET", tt.path, nil)
			fresh := get(t, handlerWith(t, f, tt.h.cfg.Inventory, func(string) string { return dhcpUUID }, nil), "GET", tt.path, nil)
			if w.Code != 200 || w.Body.String() != fresh.Body.String() || !strings.Contains(w.Body.String(), tt.want) {
				t.Fatalf("%d, script:\n%s\nuncached:\n%s", w.Code, w.Body, fresh.Body)
			}
			for _, k := range []string{"Content-Type", "Cache-Control"} {
				if w.Header().Get(k) != fresh.Header().Get(k) {
					t.Errorf("%s %q, uncached %q", k, w.Header().Get(k), fresh.Header().Get(k))
				}
			}
			// The uncached handler recorded a boot too: two per request.
			m, _ := f.store.Get(tt.mac)
			if m.Boot != 2*tt.boot || len(m.Phases) != 1 || m.Phases[0].Phase != "script" || m.Phases[0].State != "done" {
				t.Errorf("timeline: boot %d, want %d, %+v", m.Boot, 2*tt.boot, m.Phases)
			}
		})
	}
	metrics := get(t, cached, "GET", "/metrics", nil).Body.String()
	if !strings.Contains(metrics, fmt.Sprintf(`pxejoin_http_requests_total{code="200",kind="script"} %d`, served)) {
		t.Errorf("script requests not counted:\n%s", grep(metrics, "requests_total"))
	}
}

func TestScriptCacheBound(t *testing.T) {
	var c scriptCache
	for i := 0; i < maxCachedScripts+100; i++ {
		c.put(scriptKey{mac: fmt.Sprint(i)}, &renderedScript{})
	}
	if n := c.len(); n != maxCachedScripts {
		t.Errorf("%d entries, want %d", n, maxCachedScripts)
	}
	last := scriptKey{mac: fmt.Sprint(maxCachedScripts + 99)}
	if c.get(last) == nil {
		t.Error("the newest entry was evicted")
	}
	c.put(last, &renderedScript{detail: "again"})
	if n := c.len(); n != maxCachedScripts || c.get(last).detail != "again" {
		t.Errorf("replacing an entry: %d entries", n)
	}
}

func TestCanonicalMAC(t *testing.T) {
	for _, s := range []string{"52:54:00:00:00:01", "52:54:00:AB:cd:ef", "52-54-00-00-00-01", "5254.0000.0001",
		"52:54:00:00:00:0g", "52:54:00:00:00", "52:54:00:00:00:01:02:03", "", "52:54:00:00:00;01", "zz"} {
		got, err := canonicalMAC(s)
		want, wantErr := config.CanonicalMAC(s)
		if got != want || (err == nil) != (wantErr == nil) {
			t.Errorf("canonicalMAC(%q) = %q, %v; config.CanonicalMAC: %q, %v", s, got, err, want, wantErr)
		}
	}
}

// TestScriptFastPath checks that ServeHTTP's shortcut to the script handler answers what the mux
// answers, for the paths it takes and the ones it leaves to the mux.
func TestScriptFastPath(t *testing.T) {
	f := newFixture(t, "http://10.80.0.1:8080", 16, true)
	for _, tt := range []struct{ method, path string }{
		{"GET", "/boot/52:54:00:00:00:01.ipxe"},
		{"HEAD", "/boot/52:54:00:00:00:01.ipxe"},
		{"POST", "/boot/52:54:00:00:00:01.ipxe"},
		{"GET", "/boot/52:54:00:00:00:01.ipxe?uuid=x"},
		{"GET", "/boot/52:54:00:00:00:01"},
		{"GET", "/boot/nope.ipxe"},
		{"GET", "/boot/"},
		{"GET", "/boot/a/b.ipxe"},
		{"GET", "/boot/../healthz"},
		{"GET", "/boot/./52:54:00:00:00:01.ipxe"},
		{"GET", "/boot//52:54:00:00:00:01.ipxe"},
		{"GET", "/boot/52%3A54%3A00%3A00%3A00%3A01.ipxe"},
	} {
		got := get(t, f.h, tt.method, tt.path, nil)
		w := httptest.NewRecorder()
		f.h.mux.ServeHTTP(w, httptest.NewRequest(tt.method, tt.path, nil))
		if got.Code != w.Code || got.Body.String() != w.Body.String() || got.Header().Get("Location") != w.Header().Get("Location") {
			t.Errorf("%s %s: %d %q, the mux: %d %q", tt.method, tt.path, got.Code, got.Body, w.Code, w.Body)
		}
	}
}

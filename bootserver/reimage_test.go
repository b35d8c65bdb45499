package main

import (
	"bytes"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/bootserver/httpd"
	"github.com/pxejoin/pxejoin/bootserver/inventory"
	"github.com/pxejoin/pxejoin/bootserver/status"
	"github.com/pxejoin/pxejoin/internal/diskspec"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// reimageServer runs the real HTTP handler on loopback over an inventory with a persistent
// machine (db-1) and a diskless one (web-1), with its state store in dir.
func reimageServer(t *testing.T, dir string) (ts *httptest.Server, stop func()) {
	t.Helper()
	for _, f := range []string{"vmlinuz", "initrd"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(f), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	prof := config.Profile{Kernel: filepath.Join(dir, "vmlinuz"), Initrds: []string{filepath.Join(dir, "initrd")}, Cmdline: "console=ttyS0"}
	persistent := prof
	persistent.Disk = &diskspec.Spec{MinSizeGiB: 10}
	inv, err := inventory.New(&config.Config{Profiles: map[string]config.Profile{"diskless": prof, "persistent": persistent},
		Machines: []config.Machine{{MAC: hwaddr.MAC{0x52, 0x54, 0, 0, 0, 1}, Name: "db-1", Profile: "persistent"},
			{MAC: hwaddr.MAC{0x52, 0x54, 0, 0, 0, 2}, Name: "web-1", Profile: "diskless"}}})
	if err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(filepath.Join(dir, "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := status.Open(db, status.Options{})
	if err != nil {
		t.Fatal(err)
	}
	h, err := httpd.New(httpd.Config{Inventory: inv, Status: st, ServerURL: "http://10.0.0.1:8080"})
	if err != nil {
		t.Fatal(err)
	}
	ts = httptest.NewServer(h)
	var once sync.Once
	stop = func() { once.Do(func() { ts.Close(); st.Close(); db.Close() }) }
	t.Cleanup(stop)
	return ts, stop
}

// TestReimageCommand: `bootserver reimage` by node name or MAC marks a persistent machine (its
// script then carries pxejoin.reimage=1, also after a restart of the server); an unknown machine
// and a diskless one are refused with what to do.
func TestReimageCommand(t *testing.T) {
	dir := t.TempDir()
	ts, stop := reimageServer(t, dir)
	run := func(args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		code := reimageCmd(append([]string{"--server", ts.URL}, args...), &out, &errOut)
		return code, out.String(), errOut.String()
	}
	script := func(ts *httptest.Server) string {
		resp, err := ts.Client().Get(ts.URL + "/boot/52:54:00:00:00:01.ipxe")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if s := script(ts); strings.Contains(s, "pxejoin.reimage") || !strings.Contains(s, "pxejoin.disk=auto") {
		t.Fatalf("before: %s", s)
	}
	for _, tc := range []struct {
		arg, out, err string
		code          int
	}{
		{"db-1", "machine 52:54:00:00:00:01 (node db-1, profile persistent): its next boot wipes its disk and joins afresh", "", 0},
		{"52-54-00-00-00-01", "machine 52:54:00:00:00:01 (node db-1", "", 0},
		{"db-9", "", `404 Not Found: no machine with MAC address or node name "db-9" in the inventory: ` + "`bootserver machines` lists them", 1},
		{"web-1", "", "409 Conflict: machine 52:54:00:00:00:02 (node web-1) boots profile diskless, which is diskless", 1},
	} {
		code, out, errOut := run(tc.arg)
		if code != tc.code || !strings.Contains(out, tc.out) || !strings.Contains(errOut, tc.err) {
			t.Errorf("reimage %s: exit %d, out %q, err %q", tc.arg, code, out, errOut)
		}
	}
	if code, _, _ := run(); code != 2 {
		t.Errorf("no machine named: exit %d", code)
	}
	if s := script(ts); !strings.Contains(s, " pxejoin.reimage=1 ") {
		t.Fatalf("after: %s", s)
	}
	// A restart: the request is still pending.
	stop()
	ts, _ = reimageServer(t, dir)
	if s := script(ts); !strings.Contains(s, " pxejoin.reimage=1 ") {
		t.Fatalf("after a restart: %s", s)
	}
}

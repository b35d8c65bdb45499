package httpd

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
	"github.com/pxejoin/pxejoin/internal/joinconfig"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func get(t *testing.T, h http.Handler, method, path string, body []byte) *httptest.ResponseRecorder {
	t.Helper()
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req := httptest.NewRequest(method, path, r)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file:\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

func TestScripts(t *testing.T) {
	known := config.Machine{MAC: mustMAC("52:54:00:00:00:01"), Name: "worker-1", Profile: "worker"}
	tests := []struct {
		name, path, golden string
		unknown            bool
	}{
		{"known machine", "/boot/52:54:00:00:00:01.ipxe", "known.ipxe", false},
		{"MAC spelled with dashes", "/boot/52-54-00-00-00-01.ipxe", "known.ipxe", false},
		{"unknown machine, default profile", "/boot/52:54:00:00:00:99.ipxe", "default-profile.ipxe", true},
		{"unknown machine, no default", "/boot/52:54:00:00:00:99.ipxe", "unknown.ipxe", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, "http://10.80.0.1:8080", 1024, tt.unknown, known)
			w := get(t, f.h, "GET", tt.path, nil)
			if w.Code != 200 || !strings.HasPrefix(w.Body.String(), "#!ipxe\n") {
				t.Fatalf("%d %q", w.Code, w.Body.String())
			}
			golden(t, tt.golden, w.Body.Bytes())
		})
	}
	// Two other live servers: each names the same images under its URL, tried in turn.
	f := newFixture(t, "http://10.80.0.1:8080", 1024, false, known)
	f.h.cfg.Peers = func() []string { return []string{"http://10.80.0.2:8080", "http://10.80.0.3:8080"} }
	w := get(t, f.h, "GET", "/boot/52:54:00:00:00:01.ipxe", nil)
	if w.Code != 200 {
		t.Fatalf("%d %q", w.Code, w.Body.String())
	}
	golden(t, "known-servers.ipxe", w.Body.Bytes())
	f = newFixture(t, "http://10.80.0.1:8080", 1024, false)
	if w := get(t, f.h, "GET", "/boot/not-a-mac.ipxe", nil); w.Code != 400 {
		t.Errorf("bad MAC: %d", w.Code)
	}
}

func TestJoinFile(t *testing.T) {
	known := config.Machine{MAC: mustMAC("52:54:00:00:00:01"), Name: "worker-1", Profile: "worker", Labels: map[string]string{"rack": "r1", "zone": "a"}}
	f := newFixture(t, "http://10.80.0.1:8080", 1024, false, known)
	w := get(t, f.h, "GET", "/join/52:54:00:00:00:01", nil)
	if w.Code != 200 {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	if cc := w.Header().Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q", cc)
	}
	jc, err := joinconfig.Parse(w.Body.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	bt := jc.Discovery.BootstrapToken
	if jc.NodeRegistration.Name != "worker-1" || bt.Token == "" || bt.Token != jc.Discovery.TLSBootstrapToken ||
		bt.APIServerEndpoint != "10.80.0.1:6443" || len(bt.CACertHashes) != 1 || bt.UnsafeSkipCAVerification {
		t.Errorf("join file: %+v %+v", jc.NodeRegistration, bt)
	}
	if a := jc.NodeRegistration.KubeletExtraArgs; len(a) != 1 || a[0].Name != "node-labels" || a[0].Value != "rack=r1,zone=a" {
		t.Errorf("labels: %+v", a)
	}
	again := get(t, f.h, "GET", "/join/52:54:00:00:00:01", nil)
	jc2, _ := joinconfig.Parse(again.Body.Bytes())
	if jc2.Discovery.TLSBootstrapToken != bt.Token {
		t.Error("the same boot must get the same token")
	}
	if w := get(t, f.h, "GET", "/join/52:54:00:00:00:77", nil); w.Code != 404 {
		t.Errorf("unknown machine: %d", w.Code)
	}
}

func TestStatusPost(t *testing.T) {
	f := newFixture(t, "http://10.80.0.1:8080", 1024, true)
	tests := []struct {
		name string
		mac  string
		body string
		code int
	}{
		{"one event", "52:54:00:00:00:05", `[{"phase":"preflight","state":"start"}]`, 204},
		{"node ready", "52:54:00:00:00:05", `[{"phase":"node-ready","state":"done","time":"2026-01-01T00:00:00Z"}]`, 204},
		{"not an array", "52:54:00:00:00:05", `{"phase":"x","state":"start"}`, 400},
		{"bad state", "52:54:00:00:00:05", `[{"phase":"x","state":"running"}]`, 400},
		{"empty array", "52:54:00:00:00:05", `[]`, 400},
		{"trailing data", "52:54:00:00:00:05", `[{"phase":"x","state":"start"}] []`, 400},
		{"bad MAC", "zz", `[{"phase":"x","state":"start"}]`, 400},
		{"too large", "52:54:00:00:00:05", `[{"phase":"x","state":"start","detail":"` + strings.Repeat("a", bootstatus.MaxBody) + `"}]`, 413},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := get(t, f.h, "POST", "/status/"+tt.mac, []byte(tt.body))
			if w.Code != tt.code {
				t.Errorf("got %d %s, want %d", w.Code, w.Body, tt.code)
			}
		})
	}
	if len(f.tokens.revoked) != 1 || f.tokens.revoked[0] != "52:54:00:00:00:05 node-ready" {
		t.Errorf("node-ready must revoke the token: %v", f.tokens.revoked)
	}
	var mr MachinesResponse
	if err := json.Unmarshal(get(t, f.h, "GET", "/machines", nil).Body.Bytes(), &mr); err != nil {
		t.Fatal(err)
	}
	if len(mr.Machines) != 1 || mr.Machines[0].LastPhase != bootstatus.PhaseNodeReady {
		t.Errorf("machines: %+v", mr.Machines)
	}
	metrics := get(t, f.h, "GET", "/metrics", nil).Body.String()
	if !strings.Contains(metrics, `pxejoin_status_reports_rejected_total{reason="bad-json"} 2`) {
		t.Errorf("rejects not counted:\n%s", grep(metrics, "rejected"))
	}
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestNoSecretsAnywhere boots a machine through every endpoint, with agent events quoting the
// token, and then looks for the token's secret in every log line, /machines, / and /metrics.
func TestNoSecretsAnywhere(t *testing.T) {
	f := newFixture(t, "http://10.80.0.1:8080", 1024, false, config.Machine{MAC: mustMAC("52:54:00:00:00:01"), Profile: "worker"})
	get(t, f.h, "GET", "/boot/52:54:00:00:00:01.ipxe", nil)
	get(t, f.h, "GET", "/files/52:54:00:00:00:01/worker/vmlinuz", nil)
	jc, err := joinconfig.Parse(get(t, f.h, "GET", "/join/52:54:00:00:00:01", nil).Body.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	tok := jc.Discovery.TLSBootstrapToken
	_, secret, _ := strings.Cut(tok, ".")
	evs, _ := json.Marshal([]bootstatus.Event{{Phase: "discovery", State: "error", Error: "token " + tok + " was refused", Detail: "used " + tok}})
	if w := get(t, f.h, "POST", "/status/52:54:00:00:00:01", evs); w.Code != 204 {
		t.Fatal(w.Code)
	}
	for name, out := range map[string]string{
		"logs":     f.logs.String(),
		"machines": get(t, f.h, "GET", "/machines", nil).Body.String(),
		"page":     get(t, f.h, "GET", "/", nil).Body.String(),
		"fleet":    get(t, f.h, "GET", "/fleet.json", nil).Body.String(),
		"machine":  get(t, f.h, "GET", "/machine/52:54:00:00:00:01", nil).Body.String(),
		"metrics":  get(t, f.h, "GET", "/metrics", nil).Body.String(),
	} {
		if strings.Contains(out, secret) {
			t.Errorf("the token secret appears in %s", name)
		}
	}
	if !strings.Contains(f.logs.String(), "join file served") {
		t.Error("the log must say the join file was served (by token id)")
	}
}

func TestFilesAndRange(t *testing.T) {
	f := newFixture(t, "http://10.80.0.1:8080", 100000, true)
	req := httptest.NewRequest("GET", "/files/52:54:00:00:00:01/worker/vmlinuz", nil)
	req.Header.Set("Range", "bytes=100-199")
	w := httptest.NewRecorder()
	f.h.ServeHTTP(w, req)
	if w.Code != 206 || !bytes.Equal(w.Body.Bytes(), f.kernel[100:200]) {
		t.Fatalf("range: %d, %d bytes", w.Code, w.Body.Len())
	}
	for _, p := range []string{"/images/worker/../../etc/passwd", "/images/worker/passwd", "/ipxe/../etc/passwd", "/files/52:54:00:00:00:01/gpu/vmlinuz"} {
		if w := get(t, f.h, "GET", p, nil); w.Code == 200 {
			t.Errorf("%s served", p)
		}
	}
	m, _ := f.store.Get(mustMAC("52:54:00:00:00:01"))
	if len(m.Phases) != 1 || m.Phases[0].Phase != "kernel" || m.Phases[0].State != "done" {
		t.Errorf("timeline: %+v", m.Phases)
	}
}

// FuzzStatus throws bodies at POST /status: the handler must answer 204, 400 or 413, never panic,
// and never keep more than it accepted.
func FuzzStatus(f *testing.F) {
	for _, s := range []string{
		`[{"phase":"preflight","state":"start"}]`,
		`[{"phase":"node-ready","state":"done","time":"2026-01-01T00:00:00Z","attempt":2}]`,
		`[{"phase":"kubelet-start/tls-bootstrap","state":"error","error":"x","detail":"y"}]`,
		`[]`, `{}`, `null`, `[null]`, `[{"phase":"","state":"start"}]`, `[1,2,3]`, "\x00\xff",
		`[{"phase":"p","state":"done","time":"not a time"}]`,
	} {
		f.Add([]byte(s))
	}
	fx := newFixture(f, "http://10.80.0.1:8080", 16, true)
	f.Fuzz(func(t *testing.T, body []byte) {
		w := get(t, fx.h, "POST", "/status/52:54:00:00:00:09", body)
		switch w.Code {
		case 204, 400, 413:
		default:
			t.Fatalf("code %d for %q", w.Code, body)
		}
		if m, ok := fx.store.Get(mustMAC("52:54:00:00:00:09")); ok && len(m.Phases) > 64 {
			t.Fatalf("%d phases kept", len(m.Phases))
		}
	})
}

// TestMintAhead: with MintAhead a script fetch mints the machine's token for that boot in the
// background, and the join file then hands out that very token; without it, or for an unknown
// machine, a script fetch mints nothing.
func TestMintAhead(t *testing.T) {
	known := config.Machine{MAC: mustMAC("52:54:00:00:00:01"), Name: "worker-1", Profile: "worker"}
	for _, tc := range []struct {
		name      string
		mintAhead bool
		mac       string
		wantMint  bool
	}{
		{"on, known machine", true, "52:54:00:00:00:01", true},
		{"on, unknown machine", true, "52:54:00:00:00:77", false},
		{"on, unknown machine booting the unknown machines' profile", true, "52:54:00:00:00:78", false},
		{"off", false, "52:54:00:00:00:01", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, "http://10.80.0.1:8080", 1024, strings.HasSuffix(tc.mac, "78"), known)
			f.h.cfg.MintAhead = tc.mintAhead
			if w := get(t, f.h, "GET", "/boot/"+tc.mac+".ipxe", nil); w.Code != 200 {
				t.Fatalf("script: %d %s", w.Code, w.Body)
			}
			issued := func() map[string]string {
				f.tokens.mu.Lock()
				defer f.tokens.mu.Unlock()
				return maps.Clone(f.tokens.issued)
			}
			if !tc.wantMint {
				// Nothing was started: no background mint can come later (the unknown machine is
				// answered before any mint).
				if n := len(issued()); n != 0 {
					t.Fatalf("%d tokens minted by a script fetch", n)
				}
				return
			}
			for i := 0; len(issued()) == 0; i++ {
				if i == 500 {
					t.Fatal("no token minted ahead after the script fetch")
				}
				time.Sleep(10 * time.Millisecond)
			}
			ahead := issued()
			w := get(t, f.h, "GET", "/join/"+tc.mac, nil)
			jc, err := joinconfig.Parse(w.Body.Bytes())
			if err != nil {
				t.Fatal(err)
			}
			if got := issued(); len(got) != 1 || !slices.Contains(slices.Collect(maps.Values(ahead)), jc.Discovery.TLSBootstrapToken) {
				t.Fatalf("the join file's token is not the one minted ahead (%d tokens minted)", len(got))
			}
		})
	}
}

// TestIPXELinks: /ipxe/ serves the iPXE directory's top-level symlinks to files outside it, as TFTP
// does (Debian's ipxe.efi links to /boot/ipxe.efi), and still nothing else outside the directory.
func TestIPXELinks(t *testing.T) {
	outside := t.TempDir()
	efi := filepath.Join(outside, "ipxe.efi")
	if err := os.WriteFile(efi, []byte("MZ efi binary"), 0o644); err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, "http://10.80.0.1:8080", 16, false)
	for name, target := range map[string]string{"ipxe.efi": efi, "boot": outside, "dangling.efi": filepath.Join(outside, "gone")} {
		if err := os.Symlink(target, filepath.Join(f.dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	cfg := f.h.cfg // links are resolved when the handler is built
	cfg.Registerer, cfg.Gatherer = nil, nil
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	tests := []struct {
		path string
		code int
		body string
	}{
		{"/ipxe/ipxe.efi", 200, "MZ efi binary"},
		{"/ipxe/vmlinuz", 200, string(f.kernel)},
		{"/ipxe/boot", 404, ""},
		{"/ipxe/dangling.efi", 404, ""},
		{"/ipxe/boot%2Fipxe.efi", 404, ""},
		{"/ipxe/..%2F" + filepath.Base(outside) + "%2Fipxe.efi", 404, ""},
	}
	for _, tt := range tests {
		w := get(t, h, "GET", tt.path, nil)
		if w.Code != tt.code || (tt.code == 200 && w.Body.String() != tt.body) {
			t.Errorf("%s: %d %.40q, want %d", tt.path, w.Code, w.Body, tt.code)
		}
	}
}

// TestNoCluster: without Tokens (no kubeconfig), join files are refused with the reason, scripts
// still boot and mint nothing, and the page says why join files are not served.
func TestNoCluster(t *testing.T) {
	f := newFixture(t, "http://10.80.0.1:8080", 16, true, config.Machine{MAC: mustMAC("52:54:00:00:00:01"), Name: "worker-1", Profile: "worker"})
	cfg := f.h.cfg
	cfg.Tokens, cfg.APIServerEndpoint, cfg.CACertHashes, cfg.MintAhead = nil, "", nil, true
	cfg.Registerer, cfg.Gatherer, cfg.IPXEDir = nil, nil, ""
	h, err := New(cfg)
	if err != nil {
		t.Fatalf("New without Tokens, endpoint or pins: %v", err)
	}
	if w := get(t, h, "GET", "/boot/52:54:00:00:00:01.ipxe", nil); w.Code != 200 || !strings.Contains(w.Body.String(), "pxejoin.url=http://10.80.0.1:8080/join/52:54:00:00:00:01") {
		t.Errorf("script: %d\n%s", w.Code, w.Body)
	}
	for _, mac := range []string{"52:54:00:00:00:01", "52:54:00:00:00:99"} {
		w := get(t, h, "GET", "/join/"+mac, nil)
		if w.Code != 503 || !strings.Contains(w.Body.String(), "no cluster configured") || !strings.Contains(w.Body.String(), "--kubeconfig") {
			t.Errorf("join file of %s: %d %q", mac, w.Code, w.Body)
		}
	}
	if page := get(t, h, "GET", "/", nil).Body.String(); !strings.Contains(page, "Join files are not served:</b> this boot server has no cluster configured") {
		t.Errorf("the page does not say why join files are not served:\n%s", page)
	}
	if page := get(t, f.h, "GET", "/", nil).Body.String(); strings.Contains(page, "Join files are not served") {
		t.Error("a boot server with a cluster says it serves no join files")
	}
}

// TestUnknownJoinRefused: a token manager's refusal (a limit on unknown machines) is a 503 with its
// reason and Retry-After, recorded in the machine's timeline.
func TestUnknownJoinRefused(t *testing.T) {
	f := newFixture(t, "http://10.80.0.1:8080", 16, true)
	cfg := f.h.cfg
	cfg.Tokens, cfg.Registerer, cfg.Gatherer, cfg.IPXEDir = &refusingTokens{}, nil, nil, ""
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	w := get(t, h, "GET", "/join/52:54:00:00:00:99", nil)
	if w.Code != 503 || w.Header().Get("Retry-After") != "8" || !strings.Contains(w.Body.String(), "too many strangers") {
		t.Errorf("%d Retry-After %q %q", w.Code, w.Header().Get("Retry-After"), w.Body)
	}
	if m, _ := f.store.Get(mustMAC("52:54:00:00:00:99")); len(m.Phases) == 0 || m.Phases[len(m.Phases)-1].Error != "tokens: too many strangers" {
		t.Errorf("timeline: %+v", m.Phases)
	}
}

type refusingTokens struct{ stubTokens }

type limitErr struct{}

func (limitErr) Error() string             { return "too many strangers" }
func (limitErr) RetryAfter() time.Duration { return 7500 * time.Millisecond }
func (*refusingTokens) Token(context.Context, hwaddr.MAC, string, int, bool) (string, error) {
	return "", fmt.Errorf("tokens: %w", limitErr{})
}

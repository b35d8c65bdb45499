package httpd

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/bootserver/inventory"
	"github.com/pxejoin/pxejoin/bootserver/status"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
	"github.com/pxejoin/pxejoin/lab/logbuf"
)

// stubTokens hands out fixed-shape tokens per (mac, boot); the real minting is tested against a
// real control plane in bootserver/server.
type stubTokens struct {
	mu      sync.Mutex
	issued  map[string]string
	revoked []string
}

func (s *stubTokens) Token(_ context.Context, mac hwaddr.MAC, node string, boot int, known bool) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.issued == nil {
		s.issued = map[string]string{}
	}
	k := fmt.Sprintf("%s/%d", mac, boot)
	if t, ok := s.issued[k]; ok {
		return t, nil
	}
	t := fmt.Sprintf("t%05d.s3cr3t%010d", len(s.issued), len(s.issued)+42)
	s.issued[k] = t
	return t, nil
}

func (s *stubTokens) RevokeMAC(_ context.Context, mac hwaddr.MAC, reason string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.revoked = append(s.revoked, mac.String()+" "+reason)
	return nil
}

func mustMAC(s string) hwaddr.MAC {
	m, err := hwaddr.Parse(s)
	if err != nil {
		panic(err)
	}
	return m
}

// fixtureTime is the modification time of the fixture's root image.
var fixtureTime = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

type fixture struct {
	h      *Handler
	dir    string
	kernel []byte
	tokens *stubTokens
	logs   *logbuf.Buffer
	reg    *prometheus.Registry
	store  *status.Store
}

// newFixture builds a handler over a temp dir with a kernel of kernelSize random bytes, two
// initrds, a profile "worker" for known machines and, if unknown, "worker" for unknown ones too.
func newFixture(t testing.TB, serverURL string, kernelSize int, unknown bool, machines ...config.Machine) *fixture {
	return newFixtureLevel(t, slog.LevelDebug, serverURL, kernelSize, unknown, machines...)
}

// newFixtureLevel is newFixture with a log level (benchmarks log as production does: Info).
func newFixtureLevel(t testing.TB, level slog.Level, serverURL string, kernelSize int, unknown bool, machines ...config.Machine) *fixture {
	t.Helper()
	dir := t.TempDir()
	kernel := make([]byte, kernelSize)
	_, _ = rand.Read(kernel)
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	rootImage := write("root.squashfs", []byte("squashfs"))
	// A fixed time: the root image's URL carries it (imageVersion), and golden files hold the URL.
	if err := os.Chtimes(rootImage, fixtureTime, fixtureTime); err != nil {
		t.Fatal(err)
	}
	c := &config.Config{
		Profiles: map[string]config.Profile{"worker": {
			Kernel:    write("vmlinuz", kernel),
			Initrds:   []string{write("initramfs.cpio.gz", []byte("initramfs")), write("modules.cpio", []byte("modules"))},
			Cmdline:   "console=ttyS0 pxejoin.url={{.JoinURL}} pxejoin.status={{.StatusURL}} pxejoin.image={{.RootImageURL}} pxejoin.node={{.NodeName}}",
			RootImage: rootImage,
		}},
		Machines: machines,
	}
	if unknown {
		c.Unknown.Profile = "worker"
	}
	inv, err := inventory.New(c)
	if err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(filepath.Join(dir, "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	st, err := status.Open(db, status.Options{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close(); db.Close() })
	logs := &logbuf.Buffer{}
	tok := &stubTokens{}
	h, err := New(Config{
		Inventory: inv, Status: st, Tokens: tok, ServerURL: serverURL,
		APIServerEndpoint: "10.80.0.1:6443",
		CACertHashes:      []string{"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"},
		IPXEDir:           dir,
		Logger:            slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: level})),
		Registerer:        reg, Gatherer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return &fixture{h: h, dir: dir, kernel: kernel, tokens: tok, logs: logs, reg: reg, store: st}
}

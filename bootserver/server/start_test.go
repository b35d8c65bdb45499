package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/lab/logbuf"
)

// startFiles writes a kernel, an initrd, a TFTP root and a kubeconfig whose cluster has a CA, and
// returns the directory and a configuration that New accepts (DHCP off, TFTP off, HTTP on loopback:
// nothing listens until Serve).
func startFiles(t *testing.T) (string, *config.Config) {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"vmlinuz", "initrd.img"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(f), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "ipxe"), 0o700); err != nil {
		t.Fatal(err)
	}
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: selfSigned(t)})
	writeKubeconfig(t, filepath.Join(dir, "admin.conf"), "certificate-authority-data: "+base64.StdEncoding.EncodeToString(ca))
	c, err := config.FromQuick(config.Quick{
		DHCPMode: config.DHCPOff, ServerURL: "http://127.0.0.1:8080", HTTPAddr: "127.0.0.1:0",
		Kernel: filepath.Join(dir, "vmlinuz"), Initrds: []string{filepath.Join(dir, "initrd.img")},
		TFTPRoot: filepath.Join(dir, "ipxe"), StateDir: filepath.Join(dir, "state"),
		Kubeconfig: filepath.Join(dir, "admin.conf"), // its server, 127.0.0.1:1, is never dialled by New
	})
	if err != nil {
		t.Fatal(err)
	}
	c.TFTP.Disabled = true
	return dir, c
}

// writeKubeconfig writes a kubeconfig with one cluster at a closed loopback port; caLine is the
// cluster's CA line (or "").
func writeKubeconfig(t *testing.T, path, caLine string) {
	t.Helper()
	kc := `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: https://127.0.0.1:1
    ` + caLine + `
contexts:
- name: c
  context: {cluster: c, user: u}
current-context: c
users:
- name: u
  user: {token: abcdef.0123456789abcdef}
`
	if err := os.WriteFile(path, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
}

func selfSigned(t *testing.T) []byte {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kubernetes"}, IsCA: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestNewErrors: every start-up error is returned (New used to panic on the nil server its deferred
// cleanup closed) and says what is wrong and what to do next.
func TestNewErrors(t *testing.T) {
	tests := []struct {
		name string
		edit func(t *testing.T, dir string, c *config.Config)
		want []string // fragments of the message
	}{
		{"empty kubeconfig", func(t *testing.T, dir string, c *config.Config) {
			os.WriteFile(filepath.Join(dir, "empty.conf"), nil, 0o600)
			c.Cluster.Kubeconfig = filepath.Join(dir, "empty.conf")
		}, []string{"empty.conf names no cluster (is it empty?)", "point cluster.kubeconfig (--kubeconfig) at", "admin.conf"}},
		{"kubeconfig without CA", func(t *testing.T, dir string, c *config.Config) {
			writeKubeconfig(t, filepath.Join(dir, "noca.conf"), "")
			c.Cluster.Kubeconfig = filepath.Join(dir, "noca.conf")
		}, []string{"noca.conf: the cluster has no certificate-authority-data", "use a kubeconfig that holds the cluster's CA"}},
		{"kubeconfig with a missing CA file", func(t *testing.T, dir string, c *config.Config) {
			writeKubeconfig(t, filepath.Join(dir, "cafile.conf"), "certificate-authority: "+filepath.Join(dir, "gone.crt"))
			c.Cluster.Kubeconfig = filepath.Join(dir, "cafile.conf")
		}, []string{"unable to read certificate-authority", "gone.crt", "point cluster.kubeconfig (--kubeconfig) at"}},
		{"kubeconfig that is not YAML", func(t *testing.T, dir string, c *config.Config) {
			os.WriteFile(filepath.Join(dir, "bad.conf"), []byte("clusters: [\n"), 0o600)
			c.Cluster.Kubeconfig = filepath.Join(dir, "bad.conf")
		}, []string{"bad.conf", "point cluster.kubeconfig (--kubeconfig) at"}},
		{"state directory is a file", func(t *testing.T, dir string, c *config.Config) {
			c.StateDir = filepath.Join(dir, "vmlinuz", "state")
		}, []string{"state directory", "not a directory", "set stateDir (--state-dir)"}},
		{"state store locked by another process", func(t *testing.T, dir string, c *config.Config) {
			os.MkdirAll(c.StateDir, 0o700)
			db, err := bolt.Open(filepath.Join(c.StateDir, "bootserver.db"), 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Close() })
		}, []string{"bootserver.db is locked: is another bootserver running with this state directory?", "set another stateDir (--state-dir)"}},
		{"missing interface", func(t *testing.T, dir string, c *config.Config) {
			c.ServerURL, c.Interface = "", "pxejoin-nosuch0"
		}, []string{`interface "pxejoin-nosuch0"`, "no such network interface", "ip -br link", "or set serverURL (--server-url)"}},
		{"no interface and no server URL", func(t *testing.T, dir string, c *config.Config) {
			c.ServerURL = ""
		}, []string{"no interface and no serverURL", "set interface (--interface) or serverURL (--server-url)"}},
		{"pool outside the interface's subnet", func(t *testing.T, dir string, c *config.Config) {
			c.Interface, c.DHCP.Mode = "lo", config.DHCPFull
			c.DHCP.Pool = config.Pool{Start: "10.99.0.100", End: "10.99.0.200"}
		}, []string{"dhcp pool 10.99.0.100-10.99.0.200 is not inside the subnet 127.0.0.0/8", "set dhcp.pool.subnet"}},
		{"TFTP root gone", func(t *testing.T, dir string, c *config.Config) {
			c.TFTP.Disabled = false
			os.Remove(c.TFTP.Root)
		}, []string{"tftp.root", "no such file or directory", "install Debian's ipxe package, or set tftp.root (--tftp-root)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel() // the locked store takes bolt's 5 s timeout
			dir, c := startFiles(t)
			tt.edit(t, dir, c)
			s, err := New(Options{Config: c, Logger: nopLogger()})
			if err == nil {
				s.Close()
				t.Fatal("New accepted the configuration")
			}
			if s != nil {
				t.Error("New returned a server with its error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\nlacks %q", err, w)
				}
			}
		})
	}
}

// TestNewWithoutCluster: with no kubeconfig New starts without a token manager and says once why
// join files are off.
func TestNewWithoutCluster(t *testing.T) {
	_, c := startFiles(t)
	c.Cluster.Kubeconfig = ""
	logs := &logbuf.Buffer{}
	s, err := New(Options{Config: c, Logger: newTextLogger(logs)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.tokens != nil {
		t.Error("a token manager without a cluster")
	}
	if n := strings.Count(logs.String(), "no cluster configured"); n != 1 {
		t.Errorf("the log says %d times that join files are off, want once:\n%s", n, logs)
	}
	// Every machine boots the quick profile; its join file answers 503 and says why.
	const mac = "52:54:00:00:00:01"
	for path, want := range map[string]int{"/boot/" + mac + ".ipxe": http.StatusOK, "/join/" + mac: http.StatusServiceUnavailable} {
		rec := httptest.NewRecorder()
		s.http.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		if rec.Code != want {
			t.Errorf("GET %s: %d %s, want %d", path, rec.Code, rec.Body, want)
		}
		if want == http.StatusServiceUnavailable && !strings.Contains(rec.Body.String(), "kubeconfig") {
			t.Errorf("GET %s does not say what to do: %s", path, rec.Body)
		}
		if want == http.StatusOK && !strings.Contains(rec.Body.String(), " pxejoin.url=http://127.0.0.1:8080/join/"+mac+" pxejoin.status=") {
			t.Errorf("the script's command line lacks the agent's parameters:\n%s", rec.Body)
		}
	}
}

// TestServeStopsWithUnreachableCluster: a stop is prompt while the cluster refuses connections.
// client-go's reflector then sleeps in a backoff that ignores the stop (0.8 s doubling to 30 s);
// Serve used to wait for it (f.Shutdown), which outlasted the unit's 20 s stop timeout. Serve is
// stopped after each watch failed four times, when the reflectors sleep at least 6.4 s, and must
// return well within that.
func TestServeStopsWithUnreachableCluster(t *testing.T) {
	t.Parallel() // it waits seconds for client-go's backoff to grow
	_, c := startFiles(t)
	c.Cluster.Kubeconfig = "" // the cluster is Options.Cluster
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // connections are refused from now on
	var csrTries, nodeTries atomic.Int32
	rc := &rest.Config{Host: "https://" + addr, TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		WrapTransport: func(rt http.RoundTripper) http.RoundTripper {
			return roundTripFunc(func(r *http.Request) (*http.Response, error) {
				switch {
				case strings.Contains(r.URL.Path, "certificatesigningrequests"):
					csrTries.Add(1)
				case strings.Contains(r.URL.Path, "/nodes"):
					nodeTries.Add(1)
				}
				return rt.RoundTrip(r)
			})
		}}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Options{Config: c, Logger: nopLogger(), Cluster: &Cluster{Client: client, Endpoint: addr, CAPins: []string{"sha256:00"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx) }()
	eventually(t, 60*time.Second, func() bool { return csrTries.Load() >= 4 && nodeTries.Load() >= 4 })
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second): // the reflectors sleep ≥ 6.4 s from their 4th failure
		t.Fatal("Serve did not return after its context ended: it waits for client-go's informers")
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// eventually polls cond every 20 ms until it holds, failing the test after timeout.
func eventually(t *testing.T, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met in %s", timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func newTextLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

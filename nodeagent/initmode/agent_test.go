package initmode

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
	"github.com/pxejoin/pxejoin/internal/joinconfig"
)

func mac(s string) hwaddr.MAC {
	m, err := hwaddr.Parse(s)
	if err != nil {
		panic(err)
	}
	return m
}

const token = "abcdef.0123456789abcdef"

// bootServer stands in for the boot server: join file, root image and status endpoint.
type bootServer struct {
	mu         sync.Mutex
	events     []bootstatus.Event
	bodies     []string
	joinGets   int
	atJoin     [][]string // the timeline as each join file GET found it
	statusDown int        // answer 503 to this many status posts
	joinDown   int        // answer 503 to this many join file requests, with retryAfter if set
	retryAfter string
}

func (b *bootServer) handler(t *testing.T) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /join/{mac}", func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		b.joinGets++
		b.atJoin = append(b.atJoin, b.timelineLocked())
		down := b.joinDown > 0
		b.joinDown--
		b.mu.Unlock()
		if down {
			if b.retryAfter != "" {
				w.Header().Set("Retry-After", b.retryAfter)
			}
			http.Error(w, "the boot server cannot reach the cluster's API server", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, `apiVersion: kubeadm.k8s.io/v1beta4
kind: JoinConfiguration
nodeRegistration:
  name: node-a
discovery:
  bootstrapToken:
    token: %s
    apiServerEndpoint: 10.77.0.1:6443
    caCertHashes: ["sha256:0000000000000000000000000000000000000000000000000000000000000000"]
`, token)
	})
	mux.HandleFunc("GET /images/root.squashfs", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("squashfs image bytes"))
	})
	mux.HandleFunc("POST /status/{mac}", func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.statusDown > 0 {
			b.statusDown--
			http.Error(w, "restarting", http.StatusServiceUnavailable)
			return
		}
		var evs []bootstatus.Event
		var raw json.RawMessage
		if err := json.NewDecoder(r.Body).Decode(&raw); err != nil {
			t.Errorf("status body: %v", err)
		}
		b.bodies = append(b.bodies, string(raw))
		if err := json.Unmarshal(raw, &evs); err != nil {
			t.Errorf("status body: %v", err)
		}
		b.events = append(b.events, evs...)
	})
	return mux
}

func (b *bootServer) timeline() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.timelineLocked()
}

func (b *bootServer) timelineLocked() []string {
	var out []string
	for _, e := range b.events {
		out = append(out, e.Phase+" "+e.State)
	}
	return out
}

type fakeSystem struct {
	mounted    string
	image      string
	hostname   string
	switched   string
	poweredOff bool
	netFails   int
	cancel     context.CancelFunc
}

func (f *fakeSystem) Network(ctx context.Context, m hwaddr.MAC) (string, error) {
	if f.netFails > 0 {
		f.netFails--
		return "", errors.New("DHCP: no offer")
	}
	return "eth0 10.77.0.50/24", nil
}
func (f *fakeSystem) MountRoot(image, newroot string) error {
	b, err := os.ReadFile(image)
	f.image, f.mounted = string(b), newroot
	if err != nil {
		return err
	}
	return os.MkdirAll(filepath.Join(newroot, "etc"), 0o755) // a real image has /etc
}
func (f *fakeSystem) SetHostname(n string) error { f.hostname = n; return nil }
func (f *fakeSystem) SwitchRoot(newroot string) error {
	f.switched = newroot
	f.cancel() // a real switch_root never returns
	return nil
}
func (f *fakeSystem) PowerOff() error { f.poweredOff = true; return nil }

func TestAgentRun(t *testing.T) {
	for _, tc := range []struct {
		name       string
		image      bool
		skipJoin   bool
		joinFails  int
		netFails   int
		statusDown int
		joinDown   int
		retryAfter string
		want       []string
		joinGets   int
		// sleeps are the waits between attempts; default: the backoff's, one per failure.
		sleeps []time.Duration
	}{
		{
			name: "no image: join into the initramfs, power off",
			want: []string{"agent-start done", "network start", "network done", "join-file start", "join-file done",
				"join start", "preflight start", "preflight done", "join done", "root-image start", "root-image skipped",
				"switch-root start", "switch-root skipped"},
			joinGets: 1,
		},
		{
			name:  "image: mount, join into it, switch root",
			image: true,
			want: []string{"agent-start done", "network start", "network done", "join-file start", "join-file done",
				"join start", "preflight start", "preflight done", "join done", "root-image start", "root-image done",
				"switch-root start", "switch-root done"},
			joinGets: 1,
		},
		{
			name:     "pxejoin.join=skip: mount and switch root, no join file, no join, nothing installed",
			image:    true,
			skipJoin: true,
			want: []string{"agent-start done", "network start", "network done", "join-file start", "join-file skipped",
				"join start", "join skipped", "root-image start", "root-image done", "switch-root start", "switch-root done"},
		},
		{
			name:      "wrong CA pin: reported, join file fetched again, retried",
			joinFails: 1,
			want: []string{"agent-start done", "network start", "network done", "join-file start", "join-file done",
				"join start", "preflight start", "preflight error", "join error",
				"join-file start", "join-file done", "join start",
				"preflight start", "preflight done", "join done", "root-image start", "root-image skipped", "switch-root start", "switch-root skipped"},
			joinGets: 2,
		},
		{
			name:     "DHCP fails twice: retried, reports queued until the network is up",
			netFails: 2,
			want: []string{"agent-start done", "network start", "network error", "network start", "network error",
				"network start", "network done", "join-file start", "join-file done", "join start",
				"preflight start", "preflight done", "join done", "root-image start", "root-image skipped",
				"switch-root start", "switch-root skipped"},
			joinGets: 1,
		},
		{
			name:       "boot server restarting: nothing lost, order kept",
			statusDown: 3,
			want: []string{"agent-start done", "network start", "network done", "join-file start", "join-file done",
				"join start", "preflight start", "preflight done", "join done", "root-image start", "root-image skipped",
				"switch-root start", "switch-root skipped"},
			joinGets: 1,
		},
		{
			name:     "join file 503 with Retry-After: the agent waits what the server says, not its backoff",
			joinDown: 2, retryAfter: "7",
			want: []string{"agent-start done", "network start", "network done", "join-file start", "join-file error",
				"join-file start", "join-file error", "join-file start", "join-file done", "join start",
				"preflight start", "preflight done", "join done", "root-image start", "root-image skipped",
				"switch-root start", "switch-root skipped"},
			joinGets: 3,
			sleeps:   []time.Duration{7 * time.Second, 7 * time.Second},
		},
		{
			name:     "Retry-After of an hour: capped at a minute",
			joinDown: 1, retryAfter: "3600",
			want: []string{"agent-start done", "network start", "network done", "join-file start", "join-file error",
				"join-file start", "join-file done", "join start", "preflight start", "preflight done", "join done",
				"root-image start", "root-image skipped", "switch-root start", "switch-root skipped"},
			joinGets: 2,
			sleeps:   []time.Duration{time.Minute},
		},
		{
			name:     "join file 503 without Retry-After: the backoff",
			joinDown: 1,
			want: []string{"agent-start done", "network start", "network done", "join-file start", "join-file error",
				"join-file start", "join-file done", "join start", "preflight start", "preflight done", "join done",
				"root-image start", "root-image skipped", "switch-root start", "switch-root skipped"},
			joinGets: 2,
			sleeps:   []time.Duration{time.Second},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bs := &bootServer{statusDown: tc.statusDown, joinDown: tc.joinDown, retryAfter: tc.retryAfter}
			srv := httptest.NewServer(bs.handler(t))
			defer srv.Close()
			line := "BOOTIF=01-52-54-00-12-34-56 pxejoin.poweroff=1 pxejoin.url=" + srv.URL + "/join/52:54:00:12:34:56"
			if tc.skipJoin {
				line = "BOOTIF=01-52-54-00-12-34-56 pxejoin.join=skip pxejoin.status=" + srv.URL + "/status/52:54:00:12:34:56"
			}
			if tc.image {
				line += " pxejoin.image=" + srv.URL + "/images/root.squashfs"
			}
			cl, err := ParseCmdline(line)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			sys := &fakeSystem{netFails: tc.netFails, cancel: cancel}
			joinFails := tc.joinFails
			var joinedInto string
			var sleeps []time.Duration
			a := &Agent{
				Cmdline: cl,
				System:  sys,
				Report:  &Reporter{URL: cl.StatusURL, RetryEvery: 10 * time.Millisecond},
				Backoff: Backoff{Initial: time.Second, Max: 4 * time.Second, Factor: 2},
				WorkDir: t.TempDir(),
				NewRoot: filepath.Join(t.TempDir(), "newroot"),
				Sleep:   func(ctx context.Context, d time.Duration) { sleeps = append(sleeps, d) },
				Join: func(ctx context.Context, cfg *joinconfig.JoinConfiguration, rootfs string, skip []string, observe func(bootstatus.Event)) error {
					joinedInto = rootfs
					if strings.Join(skip, ",") != "kubelet-start/start" {
						t.Errorf("skip phases %v", skip)
					}
					observe(bootstatus.Event{Phase: "preflight", State: bootstatus.StateStart})
					if joinFails > 0 {
						joinFails--
						err := fmt.Errorf("none of the CA pins matches the cluster CA (token %s)", cfg.Discovery.BootstrapToken.Token)
						observe(bootstatus.Event{Phase: "preflight", State: bootstatus.StateError, Error: err.Error()})
						return err
					}
					observe(bootstatus.Event{Phase: "preflight", State: bootstatus.StateDone})
					if rootfs != "/" {
						os.MkdirAll(filepath.Join(rootfs, "etc/kubernetes"), 0o755)
						os.WriteFile(filepath.Join(rootfs, "etc/kubernetes/kubelet.conf"), []byte("creds"), 0o600)
						os.Symlink("kubelet.conf", filepath.Join(rootfs, "etc/kubernetes/link"))
					}
					return nil
				},
			}
			err = a.Run(ctx)
			switch {
			case tc.skipJoin:
				if !errors.Is(err, context.Canceled) || sys.switched != a.NewRoot || sys.image != "squashfs image bytes" {
					t.Fatalf("Run = %v, switched %q, image %q", err, sys.switched, sys.image)
				}
				if joinedInto != "" || sys.hostname != "" {
					t.Errorf("joined into %q, hostname %q: pxejoin.join=skip must not join", joinedInto, sys.hostname)
				}
				if _, err := os.Stat(filepath.Join(a.NewRoot, "etc/kubernetes")); !os.IsNotExist(err) {
					t.Errorf("something was installed into the root: %v", err)
				}
			case tc.image:
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("Run = %v, want the context's end after switch_root", err)
				}
				if sys.switched != a.NewRoot || sys.mounted != a.NewRoot || sys.image != "squashfs image bytes" || joinedInto == "/" || joinedInto == a.NewRoot {
					t.Errorf("switched %q mounted %q image %q joined into %q", sys.switched, sys.mounted, sys.image, joinedInto)
				}
				// The join ran into a staging directory; its files were copied into the mounted root.
				fi, err := os.Stat(filepath.Join(a.NewRoot, "etc/kubernetes/kubelet.conf"))
				if err != nil || fi.Mode().Perm() != 0o600 {
					t.Errorf("joined files not installed into the root (mode kept): %v", err)
				}
				if l, err := os.Readlink(filepath.Join(a.NewRoot, "etc/kubernetes/link")); err != nil || l != "kubelet.conf" {
					t.Errorf("symlink not copied: %q %v", l, err)
				}
				if b, _ := os.ReadFile(filepath.Join(a.NewRoot, "etc/hostname")); string(b) != "node-a\n" {
					t.Errorf("newroot /etc/hostname = %q", b)
				}
			default:
				if err != nil || !sys.poweredOff || joinedInto != "/" {
					t.Fatalf("Run = %v, powered off %v, joined into %q", err, sys.poweredOff, joinedInto)
				}
			}
			if sys.hostname != "node-a" && !tc.skipJoin {
				t.Errorf("hostname %q", sys.hostname)
			}
			// The status server may still be down at the end for the restart case: flush what is left.
			for i := 0; i < 5 && a.Report.Pending() > 0; i++ {
				a.Report.Flush(context.Background())
			}
			got := bs.timeline()
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Fatalf("timeline:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
			if bs.joinGets != tc.joinGets {
				t.Errorf("join file fetched %d times, want %d", bs.joinGets, tc.joinGets)
			}
			for _, body := range bs.bodies {
				if strings.Contains(body, "0123456789abcdef") {
					t.Errorf("a status report holds the token secret: %s", body)
				}
			}
			want := tc.sleeps
			if want == nil {
				for i := range tc.joinFails + tc.netFails {
					want = append(want, a.Backoff.Delay(i+1))
				}
			}
			if !slices.Equal(sleeps, want) {
				t.Errorf("sleeps %v, want %v", sleeps, want)
			}
		})
	}
}

func TestHasValidCredentials(t *testing.T) {
	now := time.Now()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	certPEM := func(from, to time.Time) []byte {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "system:node:a"},
			NotBefore: from, NotAfter: to}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, _ := x509.MarshalECPrivateKey(key)
		return append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
			pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})...)
	}
	for _, tc := range []struct {
		name       string
		kubeconfig bool
		pem        []byte
		want       bool
	}{
		{"empty root", false, nil, false},
		{"valid", true, certPEM(now.Add(-time.Hour), now.Add(24*time.Hour)), true},
		{"no kubelet.conf", false, certPEM(now.Add(-time.Hour), now.Add(24*time.Hour)), false},
		{"expired", true, certPEM(now.Add(-48*time.Hour), now.Add(-time.Hour)), false},
		{"expires within the hour", true, certPEM(now.Add(-time.Hour), now.Add(30*time.Minute)), false},
		{"garbage", true, []byte("not pem"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			if tc.kubeconfig {
				os.MkdirAll(filepath.Join(root, "etc/kubernetes"), 0o755)
				os.WriteFile(filepath.Join(root, "etc/kubernetes/kubelet.conf"), []byte("x"), 0o600)
			}
			if tc.pem != nil {
				os.MkdirAll(filepath.Join(root, "var/lib/kubelet/pki"), 0o755)
				os.WriteFile(filepath.Join(root, "var/lib/kubelet/pki/kubelet-client-current.pem"), tc.pem, 0o600)
			}
			if got := HasValidCredentials(root, now); got != tc.want {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestReporterRedacts(t *testing.T) {
	r := &Reporter{}
	r.AddSecret(token)
	got := r.Redact("join with " + token + " failed; secret 0123456789abcdef leaked")
	if strings.Contains(got, "0123456789abcdef") {
		t.Fatalf("not redacted: %s", got)
	}
}

// TestReporterDoesNotWaitForTheServer: Report returns while a post hangs; the events queued meanwhile go
// out later, each once, in order.
func TestReporterDoesNotWaitForTheServer(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
		var evs []bootstatus.Event
		if err := json.NewDecoder(r.Body).Decode(&evs); err != nil {
			t.Errorf("status body: %v", err)
		}
		mu.Lock()
		for _, e := range evs {
			got = append(got, e.Detail)
		}
		mu.Unlock()
	}))
	defer srv.Close()
	r := &Reporter{URL: srv.URL, RetryEvery: 10 * time.Millisecond}
	r.SetOnline(true)
	var want []string
	for i := 0; i < 20; i++ {
		d := fmt.Sprintf("event %d", i)
		want = append(want, d)
		r.Report(context.Background(), bootstatus.Event{Phase: "network", State: bootstatus.StateStart, Detail: d})
	}
	// Every Report returned although the server has answered nothing yet: let the posts through.
	close(release)
	if !r.Drain(context.Background(), 10*time.Second) {
		t.Fatalf("%d events not delivered", r.Pending())
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("delivered %v\nwant %v", got, want)
	}
}

// TestCopyTree installs a staged join into a root that holds an older one: files keep their modes,
// symlinks are replaced, and no temporary file is left behind.
func TestCopyTree(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	pki := "var/lib/kubelet/pki"
	for _, d := range []string{filepath.Join(src, pki), filepath.Join(dst, pki)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(src, pki, "kubelet-client-new.pem"), []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("kubelet-client-new.pem", filepath.Join(src, pki, "kubelet-client-current.pem")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("kubelet-client-old.pem", filepath.Join(dst, pki, "kubelet-client-current.pem")); err != nil {
		t.Fatal(err)
	}
	if err := copyTree(src, dst); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dst, pki, "kubelet-client-new.pem"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("copied key: %v, %v; want mode 0600", fi, err)
	}
	if target, err := os.Readlink(filepath.Join(dst, pki, "kubelet-client-current.pem")); err != nil || target != "kubelet-client-new.pem" {
		t.Fatalf("current link -> %q, %v", target, err)
	}
	entries, err := os.ReadDir(filepath.Join(dst, pki))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Fatalf("left in pki: %v", entries)
	}
}

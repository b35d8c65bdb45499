package initmode

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/internal/diskspec"
	"github.com/pxejoin/pxejoin/internal/joinconfig"
	"github.com/pxejoin/pxejoin/internal/pubkeypin"
	"github.com/pxejoin/pxejoin/nodeagent/disk"
	"github.com/pxejoin/pxejoin/nodeagent/nodefiles"
)

// fakeStorage installs on the first Prepare and mounts afterwards; Bind links the disk's directory
// into the root, so that what the agent writes there lands on the "disk" (StateDir).
type fakeStorage struct {
	installed bool
	binds     []string
}

func (f *fakeStorage) Prepare(ctx context.Context, spec diskspec.Spec, reimage bool) (disk.Result, error) {
	r := disk.Result{Disk: disk.Disk{Dev: "/dev/vdb"}, Partition: "/dev/vdb1", Plan: disk.Plan{Action: disk.Mount, Reason: "/dev/vdb holds pxejoin's partition /dev/vdb1"}}
	if !f.installed || reimage {
		r.Plan = disk.Plan{Action: disk.Install, Reason: "/dev/vdb was blank"}
		f.installed = true
	}
	return r, nil
}
func (f *fakeStorage) Mount(dev, dir string) error { return os.MkdirAll(dir, 0o755) }
func (f *fakeStorage) Bind(src, dst string) error {
	f.binds = append(f.binds, strings.TrimPrefix(dst, filepath.Dir(filepath.Dir(dst))))
	if err := os.RemoveAll(dst); err != nil {
		return err
	}
	return os.Symlink(src, dst)
}

// TestPersistentReboot boots a persistent node twice: the first boot installs the disk, joins and
// downloads the image onto the disk; the second finds valid credentials there and resumes: no join
// file, no join, the image not downloaded again, the same node name.
func TestPersistentReboot(t *testing.T) {
	b := &bootServer{}
	var downloads atomic.Int32
	modTime := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	mux := http.NewServeMux()
	mux.Handle("/", b.handler(t))
	mux.HandleFunc("GET /disk-images/root.squashfs", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("If-Modified-Since") == "" {
			downloads.Add(1)
		}
		http.ServeContent(w, r, "root.squashfs", modTime, strings.NewReader("squashfs image bytes"))
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()

	ca := newCA(t)
	now := time.Now()
	cert := ca.issue(t, now.Add(-time.Hour), now.Add(365*24*time.Hour))
	stateDir := t.TempDir()
	storage := &fakeStorage{}
	boot := func() (*fakeSystem, *Agent, string) {
		line := "BOOTIF=01-52-54-00-12-34-56 pxejoin.url=" + srv.URL + "/join/52:54:00:12:34:56 pxejoin.image=" + srv.URL + "/disk-images/root.squashfs " +
			"pxejoin.disk=/dev/disk/by-id/virtio-state pxejoin.cahash=" + pubkeypin.Hash(ca.cert)
		cl, err := ParseCmdline(line)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		sys := &fakeSystem{cancel: cancel}
		joined := ""
		a := &Agent{
			Cmdline: cl, System: sys, Storage: storage, StateDir: stateDir,
			Report:  &Reporter{URL: cl.StatusURL, RetryEvery: 10 * time.Millisecond},
			Backoff: Backoff{Initial: time.Second, Max: 4 * time.Second, Factor: 2},
			WorkDir: t.TempDir(), NewRoot: filepath.Join(t.TempDir(), "newroot"),
			Sleep: func(ctx context.Context, d time.Duration) { t.Errorf("no attempt may fail; slept %s", d) },
			Join: func(ctx context.Context, cfg *joinconfig.JoinConfiguration, rootfs string, skip []string, observe func(bootstatus.Event)) error {
				joined = rootfs
				// What tls-bootstrap leaves: kubelet.conf and the client certificate.
				src := nodeState(t, ca, cert)
				return copyTree(src, rootfs)
			},
		}
		if err := a.Run(ctx); !errors.Is(err, context.Canceled) || sys.switched != a.NewRoot {
			t.Fatalf("Run = %v, switched to %q", err, sys.switched)
		}
		return sys, a, joined
	}

	sys, a, joined := boot()
	if joined == "" || sys.hostname != "node-a" || downloads.Load() != 1 {
		t.Fatalf("first boot: joined into %q, hostname %q, %d downloads; want a join, node-a, 1", joined, sys.hostname, downloads.Load())
	}
	if strings.Join(storage.binds, ",") != "/etc/kubernetes,/etc/pxejoin,/lib/kubelet,/lib/containerd,/lib/pxejoin" {
		t.Errorf("binds %v", storage.binds)
	}
	for _, p := range []string{nodefiles.KubeletConf, nodefiles.KubeletClientCurrent, nodeNameFile} {
		if _, err := os.Stat(filepath.Join(stateDir, "root", p)); err != nil {
			t.Errorf("first boot left no %s on the disk: %v", p, err)
		}
	}
	first := b.timeline()
	want := []string{"disk done", "resume skipped", "join-file done"}
	if !containsInOrder(first, want) {
		t.Errorf("first boot's timeline %v lacks %v", first, want)
	}

	gets := b.joinGets
	storage.binds = nil
	b.events = nil
	sys, a, joined = boot()
	if joined != "" || b.joinGets != gets || downloads.Load() != 1 || sys.hostname != "node-a" {
		t.Errorf("second boot: joined into %q, %d more join file GETs, %d downloads, hostname %q; want no join, 0, 1, node-a",
			joined, b.joinGets-gets, downloads.Load(), sys.hostname)
	}
	second := b.timeline()
	if want := []string{"disk done", "resume done", "join-file skipped", "join skipped", "root-image done", "switch-root done"}; !containsInOrder(second, want) {
		t.Errorf("second boot's timeline %v lacks %v", second, want)
	}
	for _, e := range b.events {
		if e.Phase == bootstatus.PhaseDisk && e.State == bootstatus.StateDone && !strings.Contains(e.Detail, "mounted /dev/vdb") {
			t.Errorf("disk detail %q", e.Detail)
		}
		if e.Phase == bootstatus.PhaseRootImage && e.State == bootstatus.StateDone && !strings.Contains(e.Detail, "kept on the disk, not modified") {
			t.Errorf("root-image detail %q", e.Detail)
		}
	}
	_ = a
}

func containsInOrder(have, want []string) bool {
	i := 0
	for _, h := range have {
		if i < len(want) && h == want[i] {
			i++
		}
	}
	return i == len(want)
}

func TestDropFstab(t *testing.T) {
	p := filepath.Join(t.TempDir(), "fstab")
	os.WriteFile(p, []byte("# comment\ntmpfs /var/lib/containerd tmpfs mode=0711 0 0\ntmpfs /tmp tmpfs defaults 0 0\n"), 0o644)
	if err := dropFstab(p, PersistDirs); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	want := "# comment\n# on the persistent disk (nodeagent): tmpfs /var/lib/containerd tmpfs mode=0711 0 0\ntmpfs /tmp tmpfs defaults 0 0\n"
	if string(b) != want {
		t.Errorf("fstab:\n%s\nwant:\n%s", b, want)
	}
}

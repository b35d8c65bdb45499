package httpd

import (
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/bootserver/inventory"
	"github.com/pxejoin/pxejoin/bootserver/machineapi"
	"github.com/pxejoin/pxejoin/bootserver/status"
	"github.com/pxejoin/pxejoin/internal/diskspec"
)

// persistentHandler is f's handler over an inventory where "worker" is persistent (a disk of at
// least 20 GiB) and machine 52:54:00:00:00:07 (db-1) overrides the disk with a by-path name.
func persistentHandler(t *testing.T, f *fixture, reimage string) *Handler {
	t.Helper()
	p := f.h.cfg.Inventory.Current().Profiles()[0]
	c := &config.Config{Profiles: map[string]config.Profile{"worker": {
		Kernel: p.Kernel, Initrds: p.Initrds, RootImage: p.RootImage,
		Cmdline: "console=ttyS0 pxejoin.url={{.JoinURL}} pxejoin.status={{.StatusURL}} pxejoin.image={{.RootImageURL}} pxejoin.node={{.NodeName}}",
		Disk:    &diskspec.Spec{MinSizeGiB: 20},
	}}, Machines: []config.Machine{
		{MAC: mustMAC("52:54:00:00:00:07"), Name: "db-1", Profile: "worker", Disk: &diskspec.Spec{Path: "/dev/disk/by-path/pci-0000:00:05.0", Policy: diskspec.PolicyWipe}},
		{MAC: mustMAC("52:54:00:00:00:08"), Name: "worker-8", Profile: "worker"},
	}}
	inv, err := inventory.New(c)
	if err != nil {
		t.Fatal(err)
	}
	if reimage != "" { // as a Machine's annotation would
		inv = withReimage(t, c, reimage)
	}
	return handlerWith(t, f, inv, nil, prometheus.NewRegistry())
}

// withReimage is c's inventory as the Kubernetes source builds it from Machines, with db-1 and
// worker-8 annotated for a re-image (request req).
func withReimage(t *testing.T, c *config.Config, req string) *inventory.Inventory {
	t.Helper()
	base, err := inventory.New(&config.Config{Profiles: c.Profiles})
	if err != nil {
		t.Fatal(err)
	}
	var ms []*machineapi.Machine
	for _, m := range c.Machines {
		ms = append(ms, &machineapi.Machine{
			ObjectMeta: metav1.ObjectMeta{Name: m.Name, Annotations: map[string]string{machineapi.AnnotationReimage: req}},
			Spec:       machineapi.MachineSpec{MACs: []string{m.MAC.String()}, Profile: m.Profile, Disk: m.Disk},
		})
	}
	b := inventory.FromMachines(base, "", ms)
	if len(b.Problems) > 0 {
		t.Fatal(b.Problems)
	}
	return b.Inventory
}

// TestPersistentScript: a persistent machine's script carries the disk (the machine's override or
// the profile's), the CA pins of its join file, and pxejoin.reimage=1 from a re-image request until
// its agent reports the wipe; a request made after the script stays pending.
func TestPersistentScript(t *testing.T) {
	f := newFixture(t, "http://10.80.0.1:8080", 1024, false)
	h := persistentHandler(t, f, "")
	script := func(mac string) string {
		t.Helper()
		w := get(t, h, "GET", "/boot/"+mac+".ipxe", nil)
		if w.Code != 200 {
			t.Fatalf("%d %s", w.Code, w.Body)
		}
		return w.Body.String()
	}
	report := func(mac, body string) {
		t.Helper()
		if w := get(t, h, "POST", "/status/"+mac, []byte(body)); w.Code != 204 {
			t.Fatalf("status: %d %s", w.Code, w.Body)
		}
	}
	golden(t, "persistent.ipxe", []byte(script("52:54:00:00:00:07")))
	if s := script("52:54:00:00:00:08"); !strings.Contains(s, " pxejoin.disk=auto pxejoin.disk.minsize=20 pxejoin.disk.policy=install pxejoin.cahash=sha256:0123") ||
		strings.Contains(s, "pxejoin.reimage") {
		t.Errorf("the profile's disk:\n%s", s)
	}

	db1 := mustMAC("52:54:00:00:00:07")
	if err := f.store.RequestReimage(db1, status.Identity{NodeName: "db-1", Profile: "worker", Known: true}, "2026-11-30T14:00:00Z"); err != nil {
		t.Fatal(err)
	}
	golden(t, "persistent-reimage.ipxe", []byte(script("52:54:00:00:00:07")))
	if s := script("52:54:00:00:00:07"); !strings.Contains(s, " pxejoin.reimage=1 ") {
		t.Fatalf("a boot without a wipe report must still carry the re-image:\n%s", s)
	}
	// The agent mounted the disk without wiping (e.g. an older agent): the request stays.
	report("52:54:00:00:00:07", `[{"phase":"disk","state":"done","detail":"mounted /dev/vdb"}]`)
	if s := script("52:54:00:00:00:07"); !strings.Contains(s, "pxejoin.reimage=1") {
		t.Fatalf("a mount is no wipe:\n%s", s)
	}
	// A request made after this script went out is not the one the coming wipe carries out.
	if err := f.store.RequestReimage(db1, status.Identity{NodeName: "db-1", Profile: "worker", Known: true}, "2026-11-30T14:05:00Z"); err != nil {
		t.Fatal(err)
	}
	report("52:54:00:00:00:07", `[{"phase":"disk","state":"done","detail":"wiped /dev/vdb: reimage"}]`)
	if s := script("52:54:00:00:00:07"); !strings.Contains(s, "pxejoin.reimage=1") {
		t.Fatalf("the newer request must stay pending:\n%s", s)
	}
	report("52:54:00:00:00:07", `[{"phase":"disk","state":"done","detail":"wiped /dev/vdb: reimage"}]`)
	if s := script("52:54:00:00:00:07"); strings.Contains(s, "pxejoin.reimage") {
		t.Fatalf("the wipe carried the request out:\n%s", s)
	}
	m, _ := f.store.Get(db1)
	if in := m.Install; !in.Installed || in.Reimage != "" || in.Reimaged != "2026-11-30T14:05:00Z" || in.InstalledAt.IsZero() {
		t.Errorf("install record %+v", in)
	}
}

// TestInventoryReimage: a request from the inventory (a Machine's annotation) is carried until a
// wipe reports it done, then no longer, though the inventory still holds it (its clearing is
// the status writer's, and may lag).
func TestInventoryReimage(t *testing.T) {
	f := newFixture(t, "http://10.80.0.1:8080", 1024, false)
	h := persistentHandler(t, f, "now")
	if w := get(t, h, "GET", "/boot/52:54:00:00:00:08.ipxe", nil); !strings.Contains(w.Body.String(), "pxejoin.reimage=1") {
		t.Fatalf("the annotation's request is not carried:\n%s", w.Body)
	}
	if w := get(t, h, "POST", "/status/52:54:00:00:00:08", []byte(`[{"phase":"disk","state":"done","detail":"wiped /dev/vda: reimage"}]`)); w.Code != 204 {
		t.Fatal(w.Code)
	}
	if w := get(t, h, "GET", "/boot/52:54:00:00:00:08.ipxe", nil); strings.Contains(w.Body.String(), "pxejoin.reimage") {
		t.Fatalf("a done request is carried again:\n%s", w.Body)
	}
	if m, _ := f.store.Get(mustMAC("52:54:00:00:00:08")); m.Install.Reimaged != "now" {
		t.Errorf("install record %+v", m.Install)
	}
}

// TestRootImageURLVersion: a new root image file (another time or size) gets another URL, which
// is how a persistent machine learns to download it again.
func TestRootImageURLVersion(t *testing.T) {
	f := newFixture(t, "http://10.80.0.1:8080", 1024, false)
	h := persistentHandler(t, f, "")
	imageURL := regexp.MustCompile(`pxejoin\.image=(\S+)`)
	url := func() string {
		return imageURL.FindStringSubmatch(get(t, h, "GET", "/boot/52:54:00:00:00:08.ipxe", nil).Body.String())[1]
	}
	first := url()
	if url() != first {
		t.Fatal("the same image must keep its URL")
	}
	img := filepath.Join(f.dir, "root.squashfs")
	if err := os.WriteFile(img+".new", []byte("squashfs v2"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(img+".new", fixtureTime.Add(time.Hour), fixtureTime.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(img+".new", img); err != nil {
		t.Fatal(err)
	}
	second := url()
	if second == first || !strings.HasPrefix(second, "http://10.80.0.1:8080/files/52:54:00:00:00:08/worker/root.squashfs?v=") {
		t.Errorf("URL %s after the image changed (was %s)", second, first)
	}
	// The versioned URL serves the file.
	if w := get(t, h, "GET", strings.TrimPrefix(second, "http://10.80.0.1:8080"), nil); w.Code != 200 || w.Body.String() != "squashfs v2" {
		t.Errorf("GET %s: %d %q", second, w.Code, w.Body)
	}
}

// TestReimageOnlyFromLoopback: the boot network cannot ask for a re-image (403, counted); the
// boot server's own host can, by node name.
func TestReimageOnlyFromLoopback(t *testing.T) {
	f := newFixture(t, "http://10.80.0.1:8080", 1024, false)
	h := persistentHandler(t, f, "")
	r := httptest.NewRequest("POST", "/machines/db-1/reimage", nil)
	r.RemoteAddr = "10.80.0.7:40000"
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != 403 || !strings.Contains(w.Body.String(), "kubectl annotate pxm") {
		t.Fatalf("from the boot network: %d %s", w.Code, w.Body)
	}
	if m, _ := f.store.Get(mustMAC("52:54:00:00:00:07")); m.Install.Reimage != "" {
		t.Fatal("a refused request was recorded")
	}
	r.RemoteAddr = "[::1]:40000"
	w = httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != 200 || !strings.Contains(w.Body.String(), `"nodeName":"db-1"`) {
		t.Fatalf("from loopback: %d %s", w.Code, w.Body)
	}
	if m, _ := f.store.Get(mustMAC("52:54:00:00:00:07")); m.Install.Reimage == "" {
		t.Fatal("the request was not recorded")
	}
	metrics := get(t, h, "GET", "/metrics", nil).Body.String()
	for _, want := range []string{`pxejoin_http_requests_total{code="403",kind="reimage"} 1`, `pxejoin_http_requests_total{code="200",kind="reimage"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("no %s in:\n%s", want, grep(metrics, "reimage"))
		}
	}
}

package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/keyutil"

	"github.com/pxejoin/pxejoin/bootserver/status"
	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/internal/diskspec"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
	"github.com/pxejoin/pxejoin/internal/pubkeypin"
	"github.com/pxejoin/pxejoin/lab/labenv"
	"github.com/pxejoin/pxejoin/lab/vm"
	"github.com/pxejoin/pxejoin/nodeagent/nodefiles"
)

// The persistent node's other cases of make test-e2e (issue 12): a disk the agent must leave alone,
// a re-image, and credentials on the disk for another cluster. TestPersistentPowerCycle
// (persistent_test.go) is the plain power cycle.

// TestPersistentDiskRefused: a persistent profile names a disk the VM does not have, then (the
// profile fixed to the VM's disk) asks for more GiB than the disk has. Each boot reports its disk
// phase in error in diskspec's words (disk not found, disk too small) with what the machine does next,
// retries it and goes no further (no join file, not installed); the disk image, blank at its ends with
// a marker in its middle (what the agent would install over), is byte for byte the same afterwards.
func TestPersistentDiskRefused(t *testing.T) {
	extended(t)
	needRoot(t)
	img := image(t)
	n := labNet(t)
	ctx := ctxFor(t, durationEnv("PXEJOIN_JOIN_TIMEOUT", 20*time.Minute))
	cp, _ := startControlPlane(ctx, t, n)
	const node = "vm-refused"
	mac := n.MAC(3)
	disk := &vm.Disk{Path: filepath.Join(t.TempDir(), "state.img"), SizeGiB: 1}
	sum := markedDisk(t, disk)
	rb := &labenv.BootServer{Bin: bootserverBin(t), NS: n.NS, Interface: n.Bridge, Addr: n.BridgeAddr, Dir: t.TempDir(),
		Kubeconfig: cp.AdminKubeconfig(), Image: img, Machines: map[string]string{mac.String(): node}}
	bs := real{rb}
	t.Cleanup(func() {
		rb.Stop()
		if t.Failed() {
			t.Logf("bootserver log:\n%s", rb.LogTail(80))
		}
	})
	var v *vm.VM
	for i, tc := range []struct {
		name  string
		path  string
		min   int
		class string
	}{
		{"a disk the VM does not have", "/dev/disk/by-id/virtio-missing", 0, diskspec.DiskNotFound},
		{"minSizeGiB larger than the VM's disk", disk.ByID(), 2, diskspec.DiskTooSmall},
	} {
		rb.Stop()
		rb.Disk, rb.DiskMinSizeGiB = tc.path, tc.min
		if err := rb.Start(ctx); err != nil {
			t.Fatal(err)
		}
		var err error
		if v == nil {
			v, err = vm.Start(vm.Options{Name: node, NetNS: n.NS.Name, Bridge: n.Bridge, MAC: mac, Dir: t.TempDir(), MemoryMB: 1024, Disk: disk})
		} else {
			v, err = v.PowerCycle()
		}
		if err != nil {
			t.Fatal(err)
		}
		stopVM(t, v)
		p, m := waitDiskRetried(ctx, t, bs, mac, i+1, v)
		t.Logf("%s: boot %d, disk %s (attempt %d): %s", tc.name, i+1, p.State, p.Attempt, p.Error)
		if got := diskspec.DiskRefusal(p.Error); got != tc.class {
			t.Errorf("%s: the disk error is %q, want diskspec's %q", tc.name, p.Error, tc.class)
		}
		if !strings.Contains(p.Error, "Nothing was written to any disk") || !strings.Contains(p.Error, "a changed profile applies at its next boot") {
			t.Errorf("%s: the disk error does not say what the machine does next: %q", tc.name, p.Error)
		}
		for _, q := range m.Phases {
			if q.Source == status.SourceAgent && !slices.Contains([]string{bootstatus.PhaseAgentStart, bootstatus.PhaseNetwork, bootstatus.PhaseDisk}, q.Phase) {
				t.Errorf("%s: the agent went on past its refused disk: %s %s %s", tc.name, q.Phase, q.State, q.Detail)
			}
		}
		if m.Install.Installed {
			t.Errorf("%s: the boot server counts the machine installed: %+v", tc.name, m.Install)
		}
		v.Stop()
		if got := fileSum(t, disk.Path); got != sum {
			t.Fatalf("%s: the disk image changed (sha256 %s, was %s)", tc.name, got, sum)
		}
	}
}

// markedDisk creates d's image file as a blank disk would look to the agent (zeros at both ends)
// with a marker in its middle, and returns its sha256.
func markedDisk(t *testing.T, d *vm.Disk) string {
	t.Helper()
	f, err := os.Create(d.Path)
	if err != nil {
		t.Fatal(err)
	}
	size := int64(d.SizeGiB) << 30
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("pxejoin e2e: nothing may write to this disk "+time.Now().UTC().Format(time.RFC3339Nano)), size/2); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return fileSum(t, d.Path)
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// waitDiskRetried waits until the agent of boot number boot reported its disk phase in error a second
// time (the machine retries rather than going on) and returns that phase and the machine.
func waitDiskRetried(ctx context.Context, t *testing.T, bs real, mac hwaddr.MAC, boot int, v *vm.VM) (labenv.MachinePhase, labenv.Machine) {
	t.Helper()
	for {
		if m, ok := bs.machine(mac.String()); ok && m.Boot >= boot {
			if p := findPhase(m.Phases, bootstatus.PhaseDisk); p != nil && p.State == bootstatus.StateError && p.Attempt >= 2 {
				return *p, m
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("boot %d reported no second disk error: %v\n%s\nconsole:\n%s", boot, ctx.Err(), bs.timeline(v.Started, mac.String()), v.Console.Tail(40))
		case <-v.Done():
			t.Fatalf("the VM ended in boot %d:\n%s", boot, v.Console.Tail(40))
		case <-time.After(time.Second):
		}
	}
}

// stopVM stops v at the test's end, with its console's end if the test failed.
func stopVM(t *testing.T, v *vm.VM) {
	t.Cleanup(func() {
		v.Stop()
		if t.Failed() {
			t.Logf("console of %s (last 60 lines):\n%s", v.Opts.Name, v.Console.Tail(60))
		}
	})
}

// persistLab is a control plane (approval by the boot server's approver only, as in runPersistent)
// and the real boot server with a persistent profile for one machine with a 4 GiB disk.
type persistLab struct {
	ctx  context.Context
	n    *labenv.Net
	cs   kubernetes.Interface
	rb   *labenv.BootServer
	bs   real
	node string
	mac  hwaddr.MAC
	disk *vm.Disk
}

func startPersistLab(t *testing.T, node string, img *labenv.Image) *persistLab {
	t.Helper()
	l := &persistLab{n: labNet(t), node: node}
	l.ctx = ctxFor(t, durationEnv("PXEJOIN_JOIN_TIMEOUT", 30*time.Minute))
	cp, _ := startControlPlane(l.ctx, t, l.n)
	if err := cp.SetAutoApprove(l.ctx, false); err != nil {
		t.Fatal(err)
	}
	if err := cp.SetServerTLSBootstrap(l.ctx, true); err != nil {
		t.Fatal(err)
	}
	l.cs, l.mac = cp.Admin(), l.n.MAC(2)
	l.disk = &vm.Disk{Path: filepath.Join(t.TempDir(), "state.img"), SizeGiB: 4}
	l.rb = &labenv.BootServer{Bin: bootserverBin(t), NS: l.n.NS, Interface: l.n.Bridge, Addr: l.n.BridgeAddr, Dir: t.TempDir(),
		Kubeconfig: cp.AdminKubeconfig(), Image: img, Machines: map[string]string{l.mac.String(): node}, Disk: l.disk.ByID()}
	if err := l.rb.Start(l.ctx); err != nil {
		t.Fatal(err)
	}
	l.bs = real{l.rb}
	t.Cleanup(func() {
		l.rb.Stop()
		if t.Failed() {
			t.Logf("bootserver log:\n%s", l.rb.LogTail(80))
		}
	})
	return l
}

// boot powers the machine on (prev nil) or cycles prev's power, and waits until the Node is Ready
// from this boot's kubelet; it returns the VM and the boot server's record of the boot.
func (l *persistLab) boot(t *testing.T, prev *vm.VM) (*vm.VM, bootRun, labenv.Machine) {
	t.Helper()
	var v *vm.VM
	var err error
	if prev == nil {
		v, err = vm.Start(vm.Options{Name: l.node, NetNS: l.n.NS.Name, Bridge: l.n.Bridge, MAC: l.mac, Dir: t.TempDir(), MemoryMB: 2048, Disk: l.disk})
	} else {
		v, err = prev.PowerCycle()
	}
	if err != nil {
		t.Fatal(err)
	}
	stopVM(t, v)
	r := bootRun{started: v.Started}
	r.ready = waitReady(l.ctx, t, l.cs, l.node, v, nil)
	m, _ := l.bs.machine(l.mac.String())
	r.phases, r.timeline = m.Phases, labenv.FormatTimeline(v.Started, m)
	t.Logf("boot %d, power-on → Ready %.1fs:\n%s", m.Boot, r.ready.Seconds(), r.timeline)
	return v, r, m
}

// checkPhase fails unless the boot's phase is in state with a detail that ok accepts.
func checkPhase(t *testing.T, what string, r bootRun, phase, state string, ok func(detail string) bool) {
	t.Helper()
	p := findPhase(r.phases, phase)
	if p == nil || p.State != state || !ok(p.Detail) {
		t.Errorf("%s: phase %s is %+v, want %s", what, phase, p, state)
	}
}

func anyDetail(string) bool { return true }

// TestPersistentReimage: a persistent VM installs its disk and joins, and a pod writes to a hostPath.
// `bootserver reimage <mac>` (on the boot server's host) marks it; the next power cycle wipes the disk
// (disk done "wiped …", resume skipped "re-image: …") and joins afresh: a new CSR and a new bootstrap
// token Secret in the API, the hostPath file gone, the Node Ready again under the same name, and the
// mark cleared. The root image file is then changed (a new modification time) and the machine power-
// cycled once more: the new image is downloaded and applied, but nothing is wiped (disk "mounted"),
// the boot resumes without a join (no CSR, no token), and the file written after the re-image is
// still there.
func TestPersistentReimage(t *testing.T) {
	extended(t)
	needRoot(t)
	img := *image(t)
	// The boot server versions a local root image by its file's time and size: a copy of the test's
	// own to change.
	img.Root = copyFile(t, img.Root, filepath.Join(t.TempDir(), "root.squashfs"))
	l := startPersistLab(t, "vm-reimage", &img)
	ctx, cs, node := l.ctx, l.cs, l.node

	v, first, _ := l.boot(t, nil)
	checkPhase(t, "first boot", first, bootstatus.PhaseDisk, bootstatus.StateDone, func(d string) bool { return diskspec.DiskAction(d) == diskspec.DiskInstalled })
	probe(ctx, t, cs, node, "probe-first", fmt.Sprintf("mkdir -p /host%s && echo first > /host%s/data && sync", probeDir, probeDir))

	out, err := l.rb.NS.Command(l.rb.Bin, "reimage", "--server", fmt.Sprintf("http://127.0.0.1:%d", labenv.HTTPPort), l.mac.String()).CombinedOutput()
	if err != nil {
		t.Fatalf("bootserver reimage %s: %v: %s", l.mac, err, out)
	}
	t.Logf("bootserver reimage: %s", bytes.TrimSpace(out))
	if m, _ := l.bs.machine(l.mac.String()); m.Install.Reimage == "" {
		t.Fatalf("after bootserver reimage, the machine's install record has no request: %+v", m.Install)
	}

	creds := watchCredentials(ctx, t, cs)
	v, second, m := l.boot(t, v)
	created := creds()
	checkPhase(t, "re-image", second, bootstatus.PhaseDisk, bootstatus.StateDone, func(d string) bool { return diskspec.DiskAction(d) == diskspec.DiskWiped })
	checkPhase(t, "re-image", second, bootstatus.PhaseResume, bootstatus.StateSkipped, func(d string) bool { return diskspec.ResumeClass(d) == diskspec.ResumeReimage })
	checkPhase(t, "re-image", second, bootstatus.PhaseJoin, bootstatus.StateDone, anyDetail)
	if !hasPrefix(created, "csr/") || !hasPrefix(created, "secret/bootstrap-token-") {
		t.Errorf("the re-image's join created %v in the API; want a CSR and a bootstrap token Secret", created)
	}
	if in := m.Install; in.Reimage != "" || in.Reimaged == "" || in.Rejoins != 1 || diskspec.DiskAction(in.RejoinReason) != diskspec.DiskWiped {
		t.Errorf("after the re-image, the install record is %+v; want the request done (reimaged, none pending) and one re-join for the wipe", in)
	}
	if got := probe(ctx, t, cs, node, "probe-reimaged",
		fmt.Sprintf("test -e /host%s/data && echo present || echo absent; mkdir -p /host%s && echo second > /host%s/data && sync", probeDir, probeDir, probeDir)); got != "absent" {
		t.Errorf("the hostPath file written before the re-image is %s after it, want absent", got)
	}
	uid := nodeUID(ctx, t, cs, node)

	now := time.Now()
	if err := os.Chtimes(img.Root, now, now); err != nil {
		t.Fatal(err)
	}
	creds = watchCredentials(ctx, t, cs)
	_, third, m := l.boot(t, v)
	created = creds()
	checkPhase(t, "new root image", third, bootstatus.PhaseDisk, bootstatus.StateDone, func(d string) bool { return diskspec.DiskAction(d) == diskspec.DiskMounted })
	checkPhase(t, "new root image", third, bootstatus.PhaseResume, bootstatus.StateDone, anyDetail)
	before := findPhase(second.phases, bootstatus.PhaseRootImage)
	checkPhase(t, "new root image", third, bootstatus.PhaseRootImage, bootstatus.StateDone, func(d string) bool {
		return strings.Contains(d, " MB from ") && before != nil && imageURL(d) != imageURL(before.Detail)
	})
	if len(created) > 0 {
		t.Errorf("the boot after the re-image created %v in the API: the mark was not cleared, or it joined", created)
	}
	if m.Install.Reimage != "" || m.Install.Rejoins != 1 {
		t.Errorf("after the third boot, the install record is %+v; want no request pending and still one re-join", m.Install)
	}
	if got := probe(ctx, t, cs, node, "probe-new-image", fmt.Sprintf("cat /host%s/data", probeDir)); got != "second" {
		t.Errorf("the hostPath file is %q after the new root image, want %q (written before it)", got, "second")
	}
	if got := nodeUID(ctx, t, cs, node); got != uid {
		t.Errorf("the Node came back as another object after the new root image: UID %s, was %s", got, uid)
	}
}

// imageURL is the URL in a root-image done detail ("165.2 MB from URL, kept on the disk").
func imageURL(detail string) string {
	_, u, _ := strings.Cut(detail, " from ")
	u, _, _ = strings.Cut(u, ",")
	return u
}

func hasPrefix(list []string, prefix string) bool {
	for _, s := range list {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}

func copyFile(t *testing.T, src, dst string) string {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return dst
}

// TestPersistentOtherCluster: a persistent VM installs its disk and joins. With the machine off, its
// disk's kubelet.conf and client certificate are replaced by another cluster's (a CA of their own, a
// certificate for the same node). The next boot does not resume: resume skipped "credentials of
// another cluster: …" (diskspec's words) naming the disk's CA, nothing wiped (disk mounted), and the
// machine joins this cluster again (a CSR and a token Secret created, the Node Ready); the boot server
// counts the re-join with that reason.
func TestPersistentOtherCluster(t *testing.T) {
	extended(t)
	needRoot(t)
	l := startPersistLab(t, "vm-other", image(t))
	ctx, cs := l.ctx, l.cs

	v, _, _ := l.boot(t, nil)
	v.Stop()
	var otherPin string
	withStatePartition(t, l.disk.Path, func(dir string) { otherPin = otherClusterCredentials(t, filepath.Join(dir, "root"), l.node) })

	creds := watchCredentials(ctx, t, cs)
	_, second, m := l.boot(t, v)
	created := creds()
	checkPhase(t, "other cluster", second, bootstatus.PhaseDisk, bootstatus.StateDone, func(d string) bool { return diskspec.DiskAction(d) == diskspec.DiskMounted })
	checkPhase(t, "other cluster", second, bootstatus.PhaseResume, bootstatus.StateSkipped, func(d string) bool {
		return diskspec.ResumeClass(d) == diskspec.ResumeOtherCluster && strings.Contains(d, otherPin)
	})
	checkPhase(t, "other cluster", second, bootstatus.PhaseJoin, bootstatus.StateDone, anyDetail)
	if !hasPrefix(created, "csr/") || !hasPrefix(created, "secret/bootstrap-token-") {
		t.Errorf("the re-join created %v in the API; want a CSR and a bootstrap token Secret", created)
	}
	if in := m.Install; in.Rejoins != 1 || diskspec.ResumeClass(in.RejoinReason) != diskspec.ResumeOtherCluster {
		t.Errorf("the boot server's install record is %+v; want one re-join for %q", in, diskspec.ResumeOtherCluster)
	}
}

// withStatePartition mounts the pxejoin state partition of the (stopped) machine's disk image on
// the host, runs f with its mount point, and unmounts it.
func withStatePartition(t *testing.T, image string, f func(dir string)) {
	t.Helper()
	out, err := exec.Command("sfdisk", "--json", image).Output()
	if err != nil {
		t.Fatalf("sfdisk --json %s: %v", image, err)
	}
	var table struct {
		Table struct {
			SectorSize int64 `json:"sectorsize"`
			Partitions []struct {
				Start, Size int64
				Name        string
			} `json:"partitions"`
		} `json:"partitiontable"`
	}
	if err := json.Unmarshal(out, &table); err != nil {
		t.Fatal(err)
	}
	ss := table.Table.SectorSize
	if ss == 0 {
		ss = 512
	}
	var start, size int64
	for _, p := range table.Table.Partitions {
		if p.Name == diskspec.PartLabel {
			start, size = p.Start*ss, p.Size*ss
		}
	}
	if size == 0 {
		t.Fatalf("%s has no partition %s: %s", image, diskspec.PartLabel, out)
	}
	loop, err := exec.Command("losetup", "--find", "--show", "--offset", fmt.Sprint(start), "--sizelimit", fmt.Sprint(size), image).Output()
	if err != nil {
		t.Fatalf("losetup %s: %v", image, err)
	}
	dev := strings.TrimSpace(string(loop))
	defer exec.Command("losetup", "--detach", dev).Run()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "ext4", dev, dir).CombinedOutput(); err != nil {
		t.Fatalf("mount %s (%s of %s): %v: %s", dev, diskspec.PartLabel, image, err, out)
	}
	defer func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	}()
	f(dir)
}

// otherClusterCredentials replaces the kubelet.conf under root and the client certificate it names
// with another cluster's: a new CA, and a client certificate it issued for node. It returns the new
// CA's pin.
func otherClusterCredentials(t *testing.T, root, node string) string {
	t.Helper()
	kcPath := filepath.Join(root, "etc/kubernetes/kubelet.conf")
	kc, err := clientcmd.LoadFromFile(kcPath)
	if err != nil {
		t.Fatal(err)
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := certutil.NewSelfSignedCACert(certutil.Config{CommonName: "kubernetes (another cluster)"}, caKey)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "system:node:" + node, Organization: []string{"system:nodes"}},
		NotBefore:    time.Now().Add(-time.Hour), NotAfter: time.Now().Add(365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := keyutil.MarshalPrivateKeyToPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	ctx := kc.Contexts[kc.CurrentContext]
	kc.Clusters[ctx.Cluster].CertificateAuthorityData = pem.EncodeToMemory(&pem.Block{Type: certutil.CertificateBlockType, Bytes: ca.Raw})
	if err := clientcmd.WriteToFile(*kc, kcPath); err != nil {
		t.Fatal(err)
	}
	rel := kc.AuthInfos[ctx.AuthInfo].ClientCertificate
	if rel == "" {
		rel = nodefiles.KubeletClientCurrent
	}
	certPath := filepath.Join(root, rel)
	os.Remove(certPath) // a link to the kubelet's dated certificate
	if err := os.WriteFile(certPath, append(pem.EncodeToMemory(&pem.Block{Type: certutil.CertificateBlockType, Bytes: der}), keyPEM...), 0o600); err != nil {
		t.Fatal(err)
	}
	return pubkeypin.Hash(ca)
}

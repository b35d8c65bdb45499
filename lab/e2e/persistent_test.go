package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/lab/labenv"
	"github.com/pxejoin/pxejoin/lab/vm"
)

// TestPersistentPowerCycle is the persistent node of make test: a BIOS VM with a virtio disk boots
// through the real boot server with a persistent profile (disk by-id, policy install), installs the
// disk and joins; a pod writes a file to a hostPath under /var/lib/pxejoin. The plug is pulled and the
// same machine powers on again: it resumes from its disk (phase resume done, no join) and the same
// Node (same UID) is Ready from the new kubelet, with no CSR and no bootstrap token Secret created
// on the way (watched in the API from before the power cut), the pod's file read back by a second
// pod, and containerd's content store (the node's images) still the files (inodes) written before. It
// prints both boots' power-on → Ready and timelines.
func TestPersistentPowerCycle(t *testing.T) {
	r := runPersistent(t)
	t.Logf("power-on → Ready: first boot %.1fs, persistent reboot %.1fs (%+.1fs)", r.first.ready.Seconds(), r.reboot.ready.Seconds(),
		(r.reboot.ready - r.first.ready).Seconds())
	t.Logf("first boot:\n%s", r.first.timeline)
	t.Logf("persistent reboot:\n%s", r.reboot.timeline)
	if p := findPhase(r.first.phases, bootstatus.PhaseDisk); p == nil || p.State != bootstatus.StateDone || !strings.HasPrefix(p.Detail, "installed") {
		t.Errorf("the first boot did not report its disk installed (disk done \"installed …\"): %+v", p)
	}
	if p := findPhase(r.reboot.phases, bootstatus.PhaseResume); p == nil || p.State != bootstatus.StateDone {
		t.Errorf("the reboot did not resume from its disk (resume done): %+v", p)
	}
	if p := findPhase(r.reboot.phases, bootstatus.PhaseJoin); p != nil && p.State != bootstatus.StateSkipped {
		t.Errorf("the reboot joined again (join %s, not skipped): %+v", p.State, p)
	}
	if r.uid[0] != r.uid[1] {
		t.Errorf("the Node came back as another object: UID %s, then %s", r.uid[0], r.uid[1])
	}
	if len(r.created) > 0 {
		t.Errorf("the reboot created credentials in the API: %s", strings.Join(r.created, ", "))
	}
	if r.data[1] != r.data[0] {
		t.Errorf("the hostPath file read after the reboot is %q, want %q (written before it)", r.data[1], r.data[0])
	}
	// Every blob after the reboot is one from before it, the same file (inode) on the disk: nothing was
	// pulled or imported again. (containerd may collect a blob no image refers to: fewer is fine.)
	before := strings.Split(r.blobs[0], "\n")
	for _, b := range strings.Split(r.blobs[1], "\n") {
		if b == "" || !slices.Contains(before, b) {
			t.Errorf("containerd's content store after the reboot has %q, not kept on the disk from before it:\nbefore:\n%s\nafter:\n%s", b, r.blobs[0], r.blobs[1])
			break
		}
	}
}

// persistentRun is a first boot and a persistent power-cycle of the same machine, and what the test
// compares across them ([0] before the power cut, [1] after).
type persistentRun struct {
	first, reboot bootRun
	uid           [2]string // the Node's UID
	data          [2]string // the hostPath file: written, read back
	blobs         [2]string // containerd's content blobs: inode and name
	// created lists the CSRs and bootstrap token Secrets created from the power cut to Ready.
	created []string
}

// probeDir is the node's hostPath the probe pods write to: under /var/lib/pxejoin, which a
// persistent node keeps on its disk.
const probeDir = "/var/lib/pxejoin/e2e-probe"

// contentBlobs lists containerd's content store on the node with inode numbers: the same list
// after a reboot means the images stayed on the disk, neither fetched nor imported again.
const contentBlobs = "ls -i /var/lib/containerd/io.containerd.content.v1.content/blobs/sha256 | sort -k2"

// runPersistent boots a BIOS VM with a disk through the real boot server (persistent profile,
// approval by its approver only, as in runJoin), proves the node's data is written, power-cycles it
// and waits for the Node to be Ready from the new kubelet, watching the API for new credentials.
func runPersistent(t testing.TB) persistentRun {
	needRoot(t)
	img := image(t)
	n := labNet(t)
	ctx := ctxFor(t, durationEnv("PXEJOIN_JOIN_TIMEOUT", 20*time.Minute))
	cp, _ := startControlPlane(ctx, t, n)
	if err := cp.SetAutoApprove(ctx, false); err != nil {
		t.Fatal(err)
	}
	if err := cp.SetServerTLSBootstrap(ctx, true); err != nil {
		t.Fatal(err)
	}
	const node = "vm-persist"
	mac := n.MAC(2)
	disk := &vm.Disk{Path: filepath.Join(t.TempDir(), "state.img"), SizeGiB: 4}
	rb := &labenv.BootServer{Bin: bootserverBin(t), NS: n.NS, Interface: n.Bridge, Addr: n.BridgeAddr, Dir: t.TempDir(),
		Kubeconfig: cp.AdminKubeconfig(), Image: img, Machines: map[string]string{mac.String(): node}, Disk: disk.ByID()}
	if err := rb.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rb.Stop)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("bootserver log:\n%s", rb.LogTail(80))
		}
	})
	bs := real{rb}
	cs := cp.Admin()
	var r persistentRun

	v, err := vm.Start(vm.Options{Name: node, NetNS: n.NS.Name, Bridge: n.Bridge, MAC: mac, Dir: t.TempDir(), MemoryMB: 2048, Disk: disk})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Stop() })
	r.first.started = v.Started
	r.first.ready = waitReady(ctx, t, cs, node, v, nil)
	m, _ := bs.machine(mac.String())
	r.first.phases, r.first.timeline = m.Phases, labenv.FormatTimeline(v.Started, m)
	r.uid[0] = nodeUID(ctx, t, cs, node)
	r.data[0] = fmt.Sprintf("written by the first boot at %s", time.Now().UTC().Format(time.RFC3339Nano))
	// sync: the power cut must not take what the kubelet and the pod wrote with it.
	r.blobs[0] = probe(ctx, t, cs, node, "probe-write",
		fmt.Sprintf("mkdir -p /host%s && echo %q > /host%s/data && %s && sync", probeDir, r.data[0], probeDir, contentBlobs))

	creds := watchCredentials(ctx, t, cs)
	v2, err := v.PowerCycle()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		v2.Stop()
		if t.Failed() {
			t.Logf("console of the reboot (last 60 lines):\n%s", v2.Console.Tail(60))
		}
	})
	r.reboot.started = v2.Started
	r.reboot.ready = waitReady(ctx, t, cs, node, v2, nil)
	m, _ = bs.machine(mac.String())
	r.reboot.phases, r.reboot.timeline = m.Phases, labenv.FormatTimeline(v2.Started, m)
	r.created = creds()
	r.uid[1] = nodeUID(ctx, t, cs, node)
	out := probe(ctx, t, cs, node, "probe-read", fmt.Sprintf("cat /host%s/data && %s", probeDir, contentBlobs))
	r.data[1], r.blobs[1], _ = strings.Cut(out, "\n")
	return r
}

// probe runs script with the node's /usr as runNodeShell does, with the node's /var/lib/pxejoin and
// /var/lib/containerd mounted under /host, and returns its output.
func probe(ctx context.Context, t testing.TB, cs kubernetes.Interface, node, name, script string) string {
	t.Helper()
	privileged, root := true, int64(0)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			NodeName: node, RestartPolicy: corev1.RestartPolicyNever,
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers: []corev1.Container{{
				Name: "sh", Image: podImage, ImagePullPolicy: corev1.PullNever,
				Command:         []string{"/usr/bin/sh", "-c", script},
				SecurityContext: &corev1.SecurityContext{Privileged: &privileged, RunAsUser: &root},
			}},
		},
	}
	mountNodeUsr(pod, true)
	hostMount(pod, "pxejoin", "/var/lib/pxejoin", "/host/var/lib/pxejoin", false)
	hostMount(pod, "containerd", "/var/lib/containerd", "/var/lib/containerd", true)
	out, err := runProbePod(ctx, cs, pod)
	if err != nil {
		t.Fatalf("pod %s on %s: %v; output:\n%s", name, node, err, out)
	}
	return strings.TrimSpace(out)
}

// runProbePod creates pod, waits for it to end and returns its log; an error unless it succeeded.
func runProbePod(ctx context.Context, cs kubernetes.Interface, pod *corev1.Pod) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	pods := cs.CoreV1().Pods(metav1.NamespaceDefault)
	for {
		// The default service account appears a few seconds after the control plane starts.
		_, err := pods.Create(ctx, pod, metav1.CreateOptions{})
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return "", err
		case <-time.After(time.Second):
		}
	}
	defer pods.Delete(context.Background(), pod.Name, metav1.DeleteOptions{})
	for {
		p, err := pods.Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return "", err
		}
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			logs, err := pods.GetLogs(pod.Name, &corev1.PodLogOptions{}).DoRaw(ctx)
			if err != nil {
				return "", fmt.Errorf("%s; its log cannot be read: %v", podState(p), err)
			}
			if p.Status.Phase == corev1.PodFailed {
				return string(logs), fmt.Errorf("%s", podState(p))
			}
			return string(logs), nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("%s (events: %s)", podState(p), podEvents(cs, pod.Name))
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func nodeUID(ctx context.Context, t testing.TB, cs kubernetes.Interface, node string) string {
	t.Helper()
	nd, err := cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return string(nd.UID)
}

// watchCredentials watches CSRs and bootstrap token Secrets from now on; the returned function
// stops the watches and lists what was created (kind/name).
func watchCredentials(ctx context.Context, t testing.TB, cs kubernetes.Interface) func() []string {
	t.Helper()
	var (
		mu      sync.Mutex
		created []string
		wg      sync.WaitGroup
	)
	ctx, cancel := context.WithCancel(ctx)
	follow := func(kind string, w watch.Interface) {
		defer wg.Done()
		defer w.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-w.ResultChan():
				if !ok {
					return
				}
				if ev.Type != watch.Added {
					continue
				}
				if o, err := meta.Accessor(ev.Object); err == nil {
					mu.Lock()
					created = append(created, kind+"/"+o.GetName())
					mu.Unlock()
				}
			}
		}
	}
	csrs, err := cs.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wcsr, err := cs.CertificatesV1().CertificateSigningRequests().Watch(ctx, metav1.ListOptions{ResourceVersion: csrs.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	tokens := metav1.ListOptions{FieldSelector: "type=" + string(corev1.SecretTypeBootstrapToken)}
	secrets, err := cs.CoreV1().Secrets(metav1.NamespaceSystem).List(ctx, tokens)
	if err != nil {
		t.Fatal(err)
	}
	tokens.ResourceVersion = secrets.ResourceVersion
	wsec, err := cs.CoreV1().Secrets(metav1.NamespaceSystem).Watch(ctx, tokens)
	if err != nil {
		t.Fatal(err)
	}
	wg.Add(2)
	go follow("csr", wcsr)
	go follow("secret", wsec)
	return func() []string {
		cancel()
		wg.Wait()
		return created
	}
}

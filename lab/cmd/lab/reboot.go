package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/pxejoin/pxejoin/lab/labenv"
	"github.com/pxejoin/pxejoin/lab/vm"
)

// controlSocket (in the lab's directory) is where the supervisor takes `lab reboot` requests: it owns
// the VMs.
const controlSocket = "lab.sock"

// rebootTimeout bounds a power-cycled node's way back to Ready.
const rebootTimeout = 20 * time.Minute

// reboot asks the supervisor of the lab in dir to power-cycle node and prints its answer: the first
// and the second boot side by side.
func reboot(dir, node string) error {
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", filepath.Join(dir, controlSocket))
	}}}
	fmt.Printf("lab: power-cycling %s (qemu killed, started again with the same MAC and disk); waiting for it to be Ready\n", node)
	resp, err := c.Post("http://lab/reboot?node="+node, "", nil)
	if err != nil {
		return fmt.Errorf("%w (is the lab up? make lab)", err)
	}
	defer resp.Body.Close()
	_, err = io.Copy(os.Stdout, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("reboot of %s failed (%s)", node, resp.Status)
	}
	return err
}

// rebooter power-cycles the lab's VMs for `lab reboot`, one at a time.
type rebooter struct {
	mu     sync.Mutex
	cs     kubernetes.Interface
	bs     *labenv.BootServer
	vms    map[string]*vm.VM // by node name; a power cycle replaces the entry
	record func()            // records the new qemu for lab down
}

// serve answers POST /reboot?node=NAME on the unix socket path until ctx ends; the returned function
// stops it.
func (r *rebooter) serve(ctx context.Context, path string) (func(), error) {
	_ = os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /reboot", func(w http.ResponseWriter, req *http.Request) {
		out, err := r.reboot(ctx, req.URL.Query().Get("node"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		io.WriteString(w, out)
	})
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(l) }()
	return func() { _ = srv.Close() }, nil
}

// reboot power-cycles node's VM, waits until the Node is Ready from the new boot's kubelet and returns
// both boots' timelines side by side (from the boot server's /machines).
func (r *rebooter) reboot(ctx context.Context, node string) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	v := r.vms[node]
	if v == nil {
		return "", fmt.Errorf("no lab machine %q (node-1 … node-%d)", node, len(r.vms))
	}
	first, err := r.machine(ctx, node)
	if err != nil {
		return "", err
	}
	log.Printf("%s: power cycle", node)
	v2, err := v.PowerCycle()
	if err != nil {
		return "", fmt.Errorf("power cycle: %w", err)
	}
	r.vms[node] = v2
	r.record()
	ctx, cancel := context.WithTimeout(ctx, rebootTimeout)
	defer cancel()
	ready, err := waitReady(ctx, r.cs, node, v2)
	if err != nil {
		return "", err
	}
	second, err := r.machine(ctx, node)
	if err != nil {
		return "", err
	}
	log.Printf("%s: Ready %.1f s after power-on", node, ready.Seconds())
	return fmt.Sprintf("%s Ready %.1f s after power-on (boot %d)\n\n%s\nboot %d in full:\n%s", node, ready.Seconds(), second.Boot,
		labenv.CompareTimelines([]labenv.Boot{
			{Name: fmt.Sprintf("boot %d", first.Boot), PowerOn: v.Started, Machine: first},
			{Name: fmt.Sprintf("boot %d", second.Boot), PowerOn: v2.Started, Machine: second},
		}), second.Boot, labenv.FormatTimeline(v2.Started, second)), nil
}

// machine is the boot server's status of node's current boot.
func (r *rebooter) machine(ctx context.Context, node string) (labenv.Machine, error) {
	ms, err := labenv.Machines(ctx, r.bs.URL())
	if err != nil {
		return labenv.Machine{}, fmt.Errorf("boot server /machines: %w", err)
	}
	for _, m := range ms {
		if m.NodeName == node {
			return m, nil
		}
	}
	return labenv.Machine{}, fmt.Errorf("the boot server shows no machine for %s", node)
}

// waitReady waits until node reads Ready from a kubelet of v's boot (its heartbeat not older than
// qemu's start) and returns the time since qemu started.
func waitReady(ctx context.Context, cs kubernetes.Interface, node string, v *vm.VM) (time.Duration, error) {
	since := v.Started.Add(-time.Second) // API timestamps have 1 s resolution
	for {
		if nd, err := cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{}); err == nil {
			for _, c := range nd.Status.Conditions {
				if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue && !c.LastHeartbeatTime.Time.Before(since) {
					return time.Since(v.Started), nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("%s not Ready after its power cycle: %w (console %s)", node, ctx.Err(), filepath.Join(v.Opts.Dir, v.Opts.Name+".console"))
		case <-v.Done():
			return 0, errors.New("the VM ended before the node was Ready")
		case <-time.After(2 * time.Second):
		}
	}
}

package fleet

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/pxejoin/pxejoin/bootserver/machineapi"
	"github.com/pxejoin/pxejoin/deploy/crd"
	"github.com/pxejoin/pxejoin/lab/controlplane"
)

// writeMachines installs the Machine CRD and writes one Machine per machine (named by its node,
// profile "node"), before the boot server starts: its first list holds them all.
func writeMachines(ctx context.Context, opts Options, cp *controlplane.ControlPlane, machines []*machine) error {
	rc := cp.AdminConfig()
	rc.QPS, rc.Burst = 1000, 2000 // the harness's own requests must not be what is measured
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return err
	}
	if err := crd.Install(ctx, dyn, crd.Machines, "pxejoin-fleet"); err != nil {
		return fmt.Errorf("fleet: installing the Machine CRD: %w", err)
	}
	opts.logf("fleet: writing %d Machines", len(machines))
	next := make(chan *machine)
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for m := range next {
				u, err := machineapi.ToUnstructured(&machineapi.Machine{
					TypeMeta:   metav1.TypeMeta{APIVersion: machineapi.GVK.GroupVersion().String(), Kind: machineapi.Kind},
					ObjectMeta: metav1.ObjectMeta{Name: m.node},
					Spec:       machineapi.MachineSpec{MACs: []string{m.mac.String()}, Profile: "node"},
				})
				if err == nil {
					_, err = dyn.Resource(machineapi.GVR).Create(ctx, u, metav1.CreateOptions{})
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("fleet: Machine %s: %w", m.node, err)
					}
					mu.Unlock()
				}
			}
		}()
	}
	for _, m := range machines {
		next <- m
	}
	close(next)
	wg.Wait()
	return firstErr
}

// statusSettled waits (up to two minutes) until the boot server's Machine status writes stop: five
// seconds without one. The writes counted for the run are then all a clean boot costs.
func statusSettled(ctx context.Context, admin kubernetes.Interface) {
	last, still := -1.0, 0
	_ = wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		w, err := apiWrites(ctx, admin)
		if err != nil {
			return false, nil
		}
		n := statusWrites(w)
		if n == last {
			still++
		} else {
			last, still = n, 0
		}
		return still >= 5, nil
	})
}

// statusWrites sums the writes to Machine status.
func statusWrites(w map[string]float64) float64 {
	var n float64
	for k, v := range w {
		if _, r, _ := strings.Cut(k, " "); r == "machines/status" {
			n += v
		}
	}
	return n
}

package inventory

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/bootserver/machineapi"
)

// FieldManager is the server-side apply field manager of the Conflict conditions the Kubernetes
// source writes to Machine.status.
const FieldManager = "pxejoin-inventory"

// DefaultSyncTimeout bounds the wait for the first list of Machines.
const DefaultSyncTimeout = 30 * time.Second

// CRDHint ends the errors of a cluster without the Machine CRD.
const CRDHint = "the Machine CRD (machines.pxejoin.io) is not installed: run kubectl apply -f deploy/crd/, " +
	"or set inventory.source: file"

// KubernetesOptions configure the Kubernetes source.
type KubernetesOptions struct {
	// Config gives the profiles, the unknown machines' profile and this server's segment.
	Config *config.Config
	// Client reads Machines and writes their Conflict conditions.
	Client dynamic.Interface
	// SyncTimeout bounds StartKubernetes' wait for the first list; 0 means DefaultSyncTimeout.
	SyncTimeout time.Duration
	// OnChange, if set, is called with every new snapshot once it is current, from one
	// goroutine, before the next snapshot is built.
	OnChange func(*Inventory)
	// Logger; nil discards.
	Logger *slog.Logger
	// Registerer, if set, gets the source's metrics.
	Registerer prometheus.Registerer
}

// Kubernetes is the inventory of the Machine objects: an informer keeps a copy of them and every
// change builds a new snapshot, swapped in atomically. While the API is unreachable the last
// snapshot keeps serving.
type Kubernetes struct {
	opts     KubernetesOptions
	base     *Inventory
	cur      atomic.Pointer[Inventory]
	informer cache.SharedIndexInformer
	changed  chan struct{}
	cancel   context.CancelFunc
	done     chan struct{}
	problems map[string]string // the invalid Machines last logged

	machines *prometheus.GaugeVec
	writes   *prometheus.CounterVec
	builds   prometheus.Counter
}

// StartKubernetes lists the Machines, builds the first snapshot and keeps it current until Stop.
// It fails, saying what to do, when the CRD is not installed, the client may not list Machines,
// or the list does not arrive within SyncTimeout.
func StartKubernetes(opts KubernetesOptions) (*Kubernetes, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.SyncTimeout <= 0 {
		opts.SyncTimeout = DefaultSyncTimeout
	}
	base, err := withProfiles(opts.Config)
	if err != nil {
		return nil, err
	}
	k := &Kubernetes{
		opts: opts, base: base, changed: make(chan struct{}, 1), done: make(chan struct{}),
		machines: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pxejoin_inventory_machines", Help: "Machine objects in the current inventory snapshot, by state (served, disabled, conflict, invalid, other_segment).",
		}, []string{"state"}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pxejoin_inventory_condition_writes_total", Help: "Conflict conditions written to Machine status, by result (ok, error).",
		}, []string{"result"}),
		builds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pxejoin_inventory_snapshots_total", Help: "Inventory snapshots built from Machine objects.",
		}),
	}
	if opts.Registerer != nil {
		for _, c := range []prometheus.Collector{k.machines, k.writes, k.builds} {
			if err := opts.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("inventory: register metrics: %w", err)
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), opts.SyncTimeout)
	defer cancel()
	if _, err := opts.Client.Resource(machineapi.GVR).List(ctx, metav1.ListOptions{Limit: 1}); err != nil {
		if apierrors.IsNotFound(err) || meta.IsNoMatchError(err) {
			return nil, fmt.Errorf("inventory.source kubernetes: %s", CRDHint)
		}
		return nil, fmt.Errorf("inventory.source kubernetes: cannot list Machines: %w: check that the API server is reachable and that the kubeconfig may list, watch and patch (status) machines.pxejoin.io", err)
	}
	k.informer = dynamicinformer.NewFilteredDynamicInformer(opts.Client, machineapi.GVR, "", 0, cache.Indexers{}, nil).Informer()
	// Only spec, the conditions and the claimed address are read: do not keep managedFields or
	// the boot timeline (status.phases, up to 64 entries) for every Machine.
	_ = k.informer.SetTransform(func(obj any) (any, error) {
		if u, ok := obj.(*unstructured.Unstructured); ok {
			u.SetManagedFields(nil)
			kept := map[string]any{}
			if conds, found, _ := unstructured.NestedSlice(u.Object, "status", "conditions"); found {
				kept["conditions"] = conds
			}
			if ip, found, _ := unstructured.NestedString(u.Object, "status", "claimedIPv4"); found {
				kept["claimedIPv4"] = ip
			}
			delete(u.Object, "status")
			if len(kept) > 0 {
				u.Object["status"] = kept
			}
		}
		return obj, nil
	})
	poke := func() {
		select {
		case k.changed <- struct{}{}:
		default:
		}
	}
	// Status writes (the boot timeline, several per boot) change neither the spec (its
	// generation) nor the conditions nor the claimed address: they build no snapshot.
	if _, err := k.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { poke() },
		DeleteFunc: func(any) { poke() },
		UpdateFunc: func(o, n any) {
			ou, ok1 := o.(*unstructured.Unstructured)
			nu, ok2 := n.(*unstructured.Unstructured)
			if !ok1 || !ok2 || ou.GetGeneration() != nu.GetGeneration() || !equality.Semantic.DeepEqual(ou.Object["status"], nu.Object["status"]) {
				poke()
			}
		},
	}); err != nil {
		return nil, err
	}
	runCtx, stop := context.WithCancel(context.Background())
	k.cancel = stop
	go k.informer.RunWithContext(runCtx)
	if !cache.WaitForCacheSync(ctx.Done(), k.informer.HasSynced) {
		stop()
		return nil, fmt.Errorf("inventory.source kubernetes: the Machines were not listed within %s: check the API server and the boot server's access to it", opts.SyncTimeout)
	}
	retry := k.rebuild(runCtx)
	go k.loop(runCtx, retry)
	return k, nil
}

// Current returns the current snapshot.
func (k *Kubernetes) Current() *Inventory { return k.cur.Load() }

// Stop stops the informer and waits for the last build to end.
func (k *Kubernetes) Stop() {
	k.cancel()
	<-k.done
}

// retryAfter is how soon a failed condition write is tried again.
const retryAfter = 5 * time.Second

func (k *Kubernetes) loop(ctx context.Context, retry bool) {
	defer close(k.done)
	var timer <-chan time.Time
	for {
		if retry {
			timer = time.After(retryAfter)
		}
		select {
		case <-ctx.Done():
			return
		case <-k.changed:
		case <-timer:
		}
		timer = nil
		retry = k.rebuild(ctx)
	}
}

// rebuild makes a snapshot of the informer's Machines, swaps it in and writes the Conflict
// conditions that changed; it reports whether a write failed (and should be retried).
func (k *Kubernetes) rebuild(ctx context.Context) (retry bool) {
	objs := k.informer.GetStore().List()
	ms := make([]*machineapi.Machine, 0, len(objs))
	observed := map[string]*machineapi.Machine{}
	for _, o := range objs {
		u, ok := o.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		m, err := machineapi.FromUnstructured(u)
		if err != nil {
			k.opts.Logger.Warn("inventory: a Machine cannot be read: fix it with kubectl edit pxm", "machine", u.GetName(), "err", err)
			continue
		}
		ms = append(ms, m)
		observed[m.Name] = m
	}
	b := FromMachines(k.base, k.opts.Config.Segment, ms)
	k.cur.Store(b.Inventory)
	k.builds.Inc()
	k.opts.Logger.Debug("inventory snapshot", "machines", len(ms), "served", b.States[StateServed], "conflicts", len(b.Conflicts))
	for _, s := range []string{StateServed, StateDisabled, StateConflict, StateInvalid, StateOtherSegment} {
		k.machines.WithLabelValues(s).Set(float64(b.States[s]))
	}
	if !maps.Equal(b.Problems, k.problems) {
		for _, name := range slices.Sorted(maps.Keys(b.Problems)) {
			k.opts.Logger.Error("inventory: a Machine is not answered", "machine", name, "problem", b.Problems[name])
		}
		k.problems = b.Problems
	}
	if k.opts.OnChange != nil {
		k.opts.OnChange(b.Inventory)
	}
	for _, name := range b.Considered {
		if err := k.writeConflict(ctx, observed[name], b.Conflicts[name]); err != nil {
			k.writes.WithLabelValues("error").Inc()
			k.opts.Logger.Warn("inventory: cannot write a Machine's Conflict condition; retrying", "machine", name, "err", err)
			retry = true
		}
	}
	return retry
}

// writeConflict sets m's Conflict condition to True with msg, or to False when msg is empty and
// the condition is True; it writes nothing when the condition already says so.
func (k *Kubernetes) writeConflict(ctx context.Context, m *machineapi.Machine, msg string) error {
	var cur *metav1.Condition
	for i, c := range m.Status.Conditions {
		if c.Type == machineapi.ConditionConflict {
			cur = &m.Status.Conditions[i]
		}
	}
	want := metav1.Condition{Type: machineapi.ConditionConflict, Status: metav1.ConditionTrue, Reason: "Claimed", Message: msg,
		ObservedGeneration: m.Generation, LastTransitionTime: metav1.Now()}
	if msg == "" {
		if cur == nil || cur.Status != metav1.ConditionTrue {
			return nil
		}
		want.Status, want.Reason, want.Message = metav1.ConditionFalse, "Unique", "no other Machine claims this Machine's MACs, UUID or ipv4"
	} else if cur != nil && cur.Status == want.Status && cur.Message == msg {
		return nil
	}
	if cur != nil && cur.Status == want.Status {
		want.LastTransitionTime = cur.LastTransitionTime
	}
	patch := map[string]any{
		"apiVersion": machineapi.GVK.GroupVersion().String(), "kind": machineapi.Kind,
		"metadata": map[string]any{"name": m.Name},
		"status":   map[string]any{"conditions": []metav1.Condition{want}},
	}
	data, err := json.Marshal(patch)
	if err != nil {
		return err
	}
	force := true
	_, err = k.opts.Client.Resource(machineapi.GVR).Patch(ctx, m.Name, types.ApplyPatchType, data,
		metav1.PatchOptions{FieldManager: FieldManager, Force: &force}, "status")
	if apierrors.IsNotFound(err) {
		return nil // deleted meanwhile: the next build drops it
	}
	if err == nil {
		k.writes.WithLabelValues("ok").Inc()
		k.opts.Logger.Info("inventory: Machine condition written", "machine", m.Name, "conflict", want.Status, "message", want.Message)
	}
	return err
}

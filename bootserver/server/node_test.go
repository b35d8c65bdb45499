package server

import (
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pxejoin/pxejoin/bootserver/status"
	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// TestOnNode: a Node seen after the machine's boot began marks node-registered, then node-ready once
// its Ready condition turned true; a Node left from an earlier boot marks nothing.
func TestOnNode(t *testing.T) {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	st, err := status.Open(db, status.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	s := &Server{status: st}
	mac := hwaddr.MAC{0x52, 0x54, 0, 0, 0, 1}
	st.SetIdentity(mac, "worker-1", "worker", true)
	st.Record(mac, status.Event{Event: bootstatus.Event{Phase: status.PhaseDHCP, State: bootstatus.StateStart}, StartsBoot: true})
	boot := time.Now()
	old := metav1.NewTime(boot.Add(-time.Hour))
	now := metav1.NewTime(boot.Add(2 * time.Second))
	node := func(created, heartbeat metav1.Time, ready corev1.ConditionStatus, transition metav1.Time) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "worker-1", CreationTimestamp: created},
			Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: ready, LastHeartbeatTime: heartbeat, LastTransitionTime: transition}}}}
	}
	phases := func() map[string]bool {
		m, _ := st.Get(mac)
		got := map[string]bool{}
		for _, p := range m.Phases {
			got[p.Phase] = true
		}
		return got
	}
	s.onNode(node(old, old, corev1.ConditionTrue, old)) // the previous boot's Node
	if p := phases(); p[status.PhaseNodeRegistered] || p[bootstatus.PhaseNodeReady] {
		t.Fatalf("a stale Node marked this boot: %v", p)
	}
	s.onNode(node(old, now, corev1.ConditionFalse, old)) // re-registered, not Ready yet
	if p := phases(); !p[status.PhaseNodeRegistered] || p[bootstatus.PhaseNodeReady] {
		t.Fatalf("after re-registration: %v", p)
	}
	s.onNode(node(old, now, corev1.ConditionTrue, now))
	if p := phases(); !p[bootstatus.PhaseNodeReady] {
		t.Fatalf("after Ready: %v", p)
	}
	s.onNode(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "other", CreationTimestamp: now}})
}

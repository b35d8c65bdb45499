package statussync

import (
	"context"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/pxejoin/pxejoin/bootserver/machineapi"
	"github.com/pxejoin/pxejoin/bootserver/status"
	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
	labeventually "github.com/pxejoin/pxejoin/lab/eventually"
)

// TestReimageAnnotationCleared: once a machine's agent reports the wipe its re-image request
// carried, the writer shows it in status.install and removes the Machine's pxejoin.io/reimage
// annotation; a newer request (another value) made meanwhile is left in place.
func TestReimageAnnotationCleared(t *testing.T) {
	cp, admin := setup(t)
	ctx := context.Background()
	machines := admin.Resource(machineapi.GVR)
	annotate := func(name, req string) {
		t.Helper()
		patch := `{"metadata":{"annotations":{"` + machineapi.AnnotationReimage + `":"` + req + `"}}}`
		if _, err := machines.Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	annotation := func(name string) string {
		t.Helper()
		m, err := machines.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return m.GetAnnotations()[machineapi.AnnotationReimage]
	}
	done, newer := hwaddr.MAC{0x52, 0x54, 0, 0x5e, 0x10, 1}, hwaddr.MAC{0x52, 0x54, 0, 0x5e, 0x10, 2}
	names := map[hwaddr.MAC]string{done: "ss-reimage-1", newer: "ss-reimage-2"}
	f := newFixture(t, cp, Options{}, names)
	wipe := status.Event{Event: bootstatus.Event{Phase: bootstatus.PhaseDisk, State: bootstatus.StateDone, Detail: "wiped /dev/vda: reimage"}, Source: status.SourceAgent}
	for mac, name := range names {
		createMachine(t, admin, name, mac)
		annotate(name, "r1")
		f.st.Record(mac, ev(status.PhaseScript, bootstatus.StateDone, true))
		if req, err := f.st.ReimageForScript(mac, "r1"); err != nil || req != "r1" {
			t.Fatalf("ReimageForScript: %q, %v", req, err)
		}
	}
	annotate(names[newer], "r2") // asked again after its script went out
	for mac := range names {
		f.st.Record(mac, wipe)
	}
	labeventually.True(t, "the done request's annotation is removed and the wipe shows in status", func() bool {
		st := machineStatusOf(t, admin, names[done])
		return annotation(names[done]) == "" && st.Install != nil && st.Install.Reimaged == "r1" && st.Install.Installed
	})
	labeventually.True(t, "the other machine's wipe reaches its status", func() bool {
		st := machineStatusOf(t, admin, names[newer])
		return st.Install != nil && st.Install.Reimaged == "r1"
	})
	if got := annotation(names[newer]); got != "r2" {
		t.Errorf("the newer request's annotation is %q, want r2", got)
	}
}

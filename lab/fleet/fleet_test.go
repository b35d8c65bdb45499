package fleet

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pxejoin/pxejoin/lab/testenv"
)

// TestRunSmall runs the whole benchmark with three machines: every machine of both runs gets its
// credentials, each through every stage; the boot server's writes are counted and its tokens are all
// deleted afterwards.
func TestRunSmall(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireK8s(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "bootserver")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/pxejoin/pxejoin/bootserver").CombinedOutput(); err != nil {
		t.Fatalf("go build bootserver: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	res, err := Run(ctx, Options{N: 3, Bootserver: bin, Dir: dir, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", res)
	if res.Fleet.Failed > 0 || res.Reference == nil || res.Reference.Failed > 0 {
		t.Fatalf("failed: fleet %v, reference %+v", res.Fleet.Err, res.Reference)
	}
	if len(res.Fleet.Stages) != len(Stages) || len(res.Reference.Stages) != 1 {
		t.Errorf("stages: fleet %+v, reference %+v", res.Fleet.Stages, res.Reference.Stages)
	}
	for _, w := range []string{"POST secrets", "DELETE secrets", "POST certificatesigningrequests"} {
		if res.Fleet.Writes[w] < 3 {
			t.Errorf("fleet writes %q: %v", w, res.Fleet.Writes[w])
		}
	}
	if res.Reference.Writes["POST secrets"] != 0 {
		t.Errorf("the reference's tokens were counted as its writes: %v", res.Reference.Writes)
	}
	if res.BootServerPeakRSS == 0 || (res.Fleet.CPU["bootserver"] == 0 && res.Fleet.CPU["kube-apiserver"] == 0) {
		t.Errorf("no RSS or CPU measured: %d %v", res.BootServerPeakRSS, res.Fleet.CPU)
	}
	if !strings.Contains(res.String(), "bottleneck: ") {
		t.Errorf("report:\n%s", res)
	}
}

package initmode

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/unit"
	"github.com/spf13/pflag"

	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/internal/joinconfig"
	"github.com/pxejoin/pxejoin/nodeagent/join"
)

const certificateKey = "0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c"

const controlPlaneJoinFile = `apiVersion: kubeadm.k8s.io/v1beta4
kind: JoinConfiguration
nodeRegistration:
  name: cp-b
discovery:
  bootstrapToken:
    token: ` + token + `
    apiServerEndpoint: 10.77.0.1:6443
    caCertHashes: ["sha256:0000000000000000000000000000000000000000000000000000000000000000"]
controlPlane:
  localAPIEndpoint:
    advertiseAddress: 10.77.0.51
    bindPort: 6443
  certificateKey: ` + certificateKey + `
`

// TestControlPlaneSplit: every phase of the join runs exactly once, either in the initramfs or in the
// unit, and the initramfs's phases all come before the unit's (the unit cannot run what the
// initramfs needs first).
func TestControlPlaneSplit(t *testing.T) {
	var top []string
	for _, p := range join.Phases {
		top = append(top, p.Name)
	}
	split := append(append([]string{}, ControlPlaneInitramfsPhases...), ControlPlaneUnitPhases...)
	if !slices.Equal(split, top) {
		t.Fatalf("initramfs phases %v + unit phases %v != the join's phases %v, in order",
			ControlPlaneInitramfsPhases, ControlPlaneUnitPhases, top)
	}
	for _, s := range controlPlaneSkip() {
		if slices.Contains(ControlPlaneInitramfsPhases, s) {
			t.Errorf("the initramfs skips %s, which nobody else runs", s)
		}
	}
}

// TestControlPlaneUnit parses the image's pxejoin-control-plane.service: it runs after the kubelet,
// only when a join file was left, skips exactly the initramfs's phases, removes the join file once the
// join finished, and the image build enables it.
func TestControlPlaneUnit(t *testing.T) {
	const path = "../../images/rootfs/etc/systemd/system/" + controlPlaneUnit
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	opts, err := unit.DeserializeOptions(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	get := func(section, name string) []string {
		var vs []string
		for _, o := range opts {
			if o.Section == section && o.Name == name {
				vs = append(vs, o.Value)
			}
		}
		return vs
	}
	if v := get("Unit", "ConditionPathExists"); !slices.Equal(v, []string{ControlPlaneJoinFile}) {
		t.Errorf("ConditionPathExists = %v, want %s (workers have no join file)", v, ControlPlaneJoinFile)
	}
	if v := strings.Join(get("Unit", "After"), " "); !slices.Contains(strings.Fields(v), "kubelet.service") {
		t.Errorf("After = %q, want kubelet.service", v)
	}
	if v := get("Install", "WantedBy"); !slices.Equal(v, []string{"multi-user.target"}) {
		t.Errorf("WantedBy = %v", v)
	}
	exec := get("Service", "ExecStart")
	if len(exec) != 1 {
		t.Fatalf("ExecStart = %v, want one", exec)
	}
	args := strings.Fields(exec[0])
	if len(args) < 2 || args[0] != "/usr/bin/nodeagent" || args[1] != "join" {
		t.Fatalf("ExecStart = %q, want /usr/bin/nodeagent join …", exec[0])
	}
	fs := pflag.NewFlagSet("join", pflag.ContinueOnError)
	config := fs.String("config", "", "")
	skip := fs.StringSlice("skip-phases", nil, "")
	if err := fs.Parse(args[2:]); err != nil || fs.NArg() != 0 {
		t.Fatalf("ExecStart flags %q: %v (args %v)", args[2:], err, fs.Args())
	}
	if *config != ControlPlaneJoinFile {
		t.Errorf("--config %q, want %s", *config, ControlPlaneJoinFile)
	}
	if !slices.Equal(*skip, ControlPlaneInitramfsPhases) {
		t.Errorf("--skip-phases %v, want the initramfs's phases %v", *skip, ControlPlaneInitramfsPhases)
	}
	if v := get("Service", "ExecStartPost"); len(v) != 1 || !strings.HasPrefix(v[0], "/bin/rm -f ") || strings.Fields(v[0])[2] != ControlPlaneJoinFile {
		t.Errorf("ExecStartPost = %v, want the join file (certificate key) removed", v)
	}
	build, err := os.ReadFile("../../images/build.sh")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(build), "systemctl enable") || !strings.Contains(string(build), controlPlaneUnit) {
		t.Errorf("images/build.sh does not enable %s", controlPlaneUnit)
	}
}

// TestAgentControlPlane: a control-plane join file makes the initramfs skip the unit's phases and
// leave the join file, 0600, in the node's root; without a root image it is refused with what to do.
func TestAgentControlPlane(t *testing.T) {
	for _, image := range []bool{true, false} {
		t.Run(fmt.Sprintf("image=%v", image), func(t *testing.T) {
			bs := &bootServer{}
			mux := http.NewServeMux()
			mux.HandleFunc("GET /join/{mac}", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, controlPlaneJoinFile) })
			mux.Handle("/", bs.handler(t))
			srv := httptest.NewServer(mux)
			defer srv.Close()
			line := "BOOTIF=01-52-54-00-12-34-56 pxejoin.url=" + srv.URL + "/join/52:54:00:12:34:56"
			if image {
				line += " pxejoin.image=" + srv.URL + "/images/root.squashfs"
			}
			cl, err := ParseCmdline(line)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			var skipped []string
			joins := 0
			a := &Agent{
				Cmdline: cl,
				System:  &fakeSystem{cancel: cancel},
				Report:  &Reporter{URL: cl.StatusURL, RetryEvery: 10 * time.Millisecond},
				Backoff: Backoff{Initial: time.Second, Max: time.Second, Factor: 1},
				WorkDir: t.TempDir(),
				NewRoot: filepath.Join(t.TempDir(), "newroot"),
				Sleep: func(ctx context.Context, d time.Duration) {
					cancel() // no image: the refusal is reported once, then stop
				},
				Join: func(ctx context.Context, cfg *joinconfig.JoinConfiguration, rootfs string, skip []string, observe func(bootstatus.Event)) error {
					joins++
					skipped = skip
					return nil
				},
			}
			err = a.Run(ctx)
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Run = %v", err)
			}
			a.Report.Flush(context.Background())
			if !image {
				if joins != 0 {
					t.Errorf("joined %d times without a root image", joins)
				}
				found := false
				for _, body := range bs.bodies {
					found = found || strings.Contains(body, "a control-plane join needs the node's root image")
					if strings.Contains(body, certificateKey) {
						t.Errorf("a status report holds the certificate key: %s", body)
					}
				}
				if !found {
					t.Errorf("the refusal was not reported: %v", bs.bodies)
				}
				return
			}
			if want := []string{"kubelet-start/start", "etcd-join", "kubelet-wait-bootstrap", "control-plane-join", "wait-control-plane"}; !slices.Equal(skipped, want) {
				t.Errorf("the initramfs skipped %v, want %v", skipped, want)
			}
			p := filepath.Join(a.NewRoot, ControlPlaneJoinFile)
			fi, err := os.Stat(p)
			if err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("join file for the unit: %v %v", fi, err)
			}
			if b, _ := os.ReadFile(p); string(b) != controlPlaneJoinFile {
				t.Errorf("join file for the unit = %q, want the one fetched", b)
			}
			for _, body := range bs.bodies {
				if strings.Contains(body, certificateKey) {
					t.Errorf("a status report holds the certificate key: %s", body)
				}
			}
		})
	}
}

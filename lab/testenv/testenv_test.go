package testenv

import (
	"fmt"
	"strings"
	"testing"
)

// recorder is a testing.TB that records a failure instead of ending the test.
type recorder struct {
	testing.TB
	failed string
}

func (r *recorder) Helper()                      {}
func (r *recorder) Fatal(args ...any)            { r.failed = fmt.Sprint(args...) }
func (r *recorder) Fatalf(f string, args ...any) { r.failed = fmt.Sprintf(f, args...) }

// TestMissingFails: what is missing fails with what to do, not a skip.
func TestMissingFails(t *testing.T) {
	cases := []struct {
		name string
		call func(tb testing.TB)
	}{
		{"tool", func(tb testing.TB) { RequireTool(tb, "pxejoin-no-such-tool") }},
		{"file", func(tb testing.TB) { RequireFile(tb, "/nonexistent/pxejoin") }},
	}
	for _, tc := range cases {
		r := &recorder{TB: t}
		tc.call(r)
		if !strings.Contains(r.failed, "run make deps") {
			t.Errorf("%s: failure %q, want one that says run make deps", tc.name, r.failed)
		}
	}
	r := &recorder{TB: t}
	if RequireTool(r, "sh") == "" || r.failed != "" {
		t.Errorf("sh: %q", r.failed)
	}
}

func TestK8sBinDir(t *testing.T) {
	t.Setenv("PXEJOIN_K8S_BIN", "")
	t.Setenv("PXEJOIN_CACHE", "/c")
	if got := K8sBinDir(); got != "/c/k8s/"+K8sVersion {
		t.Errorf("K8sBinDir() = %q", got)
	}
	t.Setenv("PXEJOIN_K8S_BIN", "/bin/k8s")
	if got := K8sBinDir(); got != "/bin/k8s" {
		t.Errorf("K8sBinDir() = %q", got)
	}
}

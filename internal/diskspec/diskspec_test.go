package diskspec

import (
	"strings"
	"testing"
)

func TestParamsRoundTrip(t *testing.T) {
	for _, s := range []Spec{
		{Path: "/dev/disk/by-path/pci-0000:00:04.0", Policy: PolicyWipe},
		{MinSizeGiB: 20},
		{Path: "/dev/disk/by-id/virtio-state", MinSizeGiB: 8, Policy: PolicyInstall},
	} {
		var got Spec
		for _, p := range s.Params() {
			k, v, _ := strings.Cut(p, "=")
			if ok, err := got.Set(k, v); !ok || err != nil {
				t.Fatalf("Set(%q, %q) = %v, %v", k, v, ok, err)
			}
		}
		if want := (Spec{Path: s.Path, MinSizeGiB: s.MinSizeGiB, Policy: s.EffectivePolicy()}); got != want {
			t.Errorf("round trip of %+v gave %+v", want, got)
		}
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		spec Spec
		err  string
	}{
		{Spec{Path: "/dev/disk/by-id/x"}, ""},
		{Spec{MinSizeGiB: 1, Policy: PolicyWipe}, ""},
		{Spec{}, "needs path"},
		{Spec{Path: "/dev/sda"}, "not a stable name"},
		{Spec{Path: "/dev/disk/by-id/a b"}, "space"},
		{Spec{MinSizeGiB: 1, Policy: "always"}, "policy"},
	} {
		err := tc.spec.Validate()
		if (tc.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("Validate(%+v) = %v, want %q", tc.spec, err, tc.err)
		}
	}
}

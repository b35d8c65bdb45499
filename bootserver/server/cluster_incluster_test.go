package server

import (
	"strings"
	"testing"
)

// TestHostPort: cluster-info's server URL becomes the endpoint machines dial, with https's port when
// it names none; anything else is an error that says what to set.
func TestHostPort(t *testing.T) {
	for _, tc := range []struct{ server, want, wantErr string }{
		{"https://10.0.0.2:6443", "10.0.0.2:6443", ""},
		{"https://cp.example", "cp.example:443", ""},
		{"https://[fd00::2]:6443", "[fd00::2]:6443", ""},
		{"https://[fd00::2]", "[fd00::2]:443", ""},
		{"10.0.0.2:6443", "", "is not a URL"},
		{"", "", "is not a URL"},
	} {
		got, err := hostPort(tc.server)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%q: %q, %v; want an error containing %q", tc.server, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: %q, %v; want %q", tc.server, got, err, tc.want)
		}
	}
}

package bootstatus_test

import (
	"slices"
	"testing"

	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/nodeagent/join"
)

// TestJoinPhases: the protocol lists exactly the phases nodeagent/join has (it cannot import them:
// join imports this package).
func TestJoinPhases(t *testing.T) {
	want := append([]string{"discovery"}, join.PhaseNames()...)
	if !slices.Equal(bootstatus.JoinPhases, want) {
		t.Errorf("bootstatus.JoinPhases = %q\nnodeagent/join has %q", bootstatus.JoinPhases, want)
	}
}

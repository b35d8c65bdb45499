// Package eventually is the tests' one way to wait for something that happens on its own time (a
// packet answered, a metric counted): poll a condition instead of sleeping before an assertion.
package eventually

import (
	"testing"
	"time"
)

// Patience is how long True waits: long enough for a loaded CI machine, and only ever spent when
// the test is failing.
const Patience = 30 * time.Second

// True polls cond until it holds and fails the test (saying what) if it does not within Patience.
func True(t testing.TB, what string, cond func() bool) {
	t.Helper()
	if !Within(Patience, cond) {
		t.Fatalf("still not true after %v: %s", Patience, what)
	}
}

// Within polls cond until it holds or d has passed; it reports whether cond held.
func Within(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for wait := time.Millisecond; ; wait = min(2*wait, 50*time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(wait)
	}
}

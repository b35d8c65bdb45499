package initmode

import (
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	b := Backoff{Initial: 2 * time.Second, Max: time.Minute, Factor: 2}
	for _, tc := range []struct {
		n    int
		want time.Duration
	}{
		{0, 2 * time.Second}, {1, 2 * time.Second}, {2, 4 * time.Second}, {3, 8 * time.Second},
		{5, 32 * time.Second}, {6, time.Minute}, {1000, time.Minute},
	} {
		if got := b.Delay(tc.n); got != tc.want {
			t.Errorf("Delay(%d) = %v, want %v", tc.n, got, tc.want)
		}
	}
	j := Backoff{Initial: 10 * time.Second, Max: time.Minute, Factor: 2, Jitter: 0.2}
	for _, tc := range []struct {
		r    float64
		want time.Duration
	}{{0, 8 * time.Second}, {0.5, 10 * time.Second}, {0.999999, 12 * time.Second}} {
		j.Rand = func() float64 { return tc.r }
		if got := j.Delay(1); got.Round(time.Millisecond) != tc.want {
			t.Errorf("jitter r=%v: %v, want %v", tc.r, got, tc.want)
		}
	}
}

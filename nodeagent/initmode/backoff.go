package initmode

import (
	"math/rand/v2"
	"time"
)

// Backoff is the wait before retry number n (n ≥ 1): Initial·Factor^(n-1), capped at Max, then spread
// by ±Jitter (a fraction) so that a rack of machines that failed together does not retry together.
type Backoff struct {
	Initial time.Duration
	Max     time.Duration
	Factor  float64
	Jitter  float64
	// Rand returns a number in [0,1); nil uses math/rand/v2 (which does not need the kernel's entropy).
	Rand func() float64
}

// DefaultBackoff retries after 2 s, 4 s, 8 s, … up to a minute, ±20 %.
var DefaultBackoff = Backoff{Initial: 2 * time.Second, Max: time.Minute, Factor: 2, Jitter: 0.2}

// Delay returns the wait before retry n.
func (b Backoff) Delay(n int) time.Duration {
	if n < 1 {
		n = 1
	}
	d := float64(b.Initial)
	for i := 1; i < n && d < float64(b.Max); i++ {
		d *= b.Factor
	}
	if d > float64(b.Max) {
		d = float64(b.Max)
	}
	if b.Jitter > 0 {
		r := b.Rand
		if r == nil {
			r = rand.Float64
		}
		d *= 1 + b.Jitter*(2*r()-1)
	}
	return time.Duration(d)
}

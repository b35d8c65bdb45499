package statussync

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// TestQueue: one entry per machine however often it changes; important ones first, even when
// queued later or raised; the others only once they have waited the delay; a change during a
// write queues the machine again; past the bound a new machine is refused.
func TestQueue(t *testing.T) {
	now := time.Unix(1000, 0)
	q := newQueue(3, 10*time.Second, func() time.Time { return now })
	a, b, c, d := hwaddr.MAC{1}, hwaddr.MAC{2}, hwaddr.MAC{3}, hwaddr.MAC{4}
	for range 100 {
		q.add(a, false)
	}
	q.add(b, false)
	q.add(c, true)
	if q.add(d, true) || q.len() != 3 {
		t.Fatalf("a full queue took a new machine (len %d)", q.len())
	}
	q.add(b, true) // raised
	want := []hwaddr.MAC{c, b}
	for _, w := range want {
		if mac, _, _, ok := q.take(); !ok || mac != w {
			t.Fatalf("took %v %v, want %v", mac, ok, w)
		}
	}
	if _, _, wait, ok := q.take(); ok || wait != 10*time.Second {
		t.Fatalf("a took before its delay (wait %v)", wait)
	}
	now = now.Add(10 * time.Second)
	mac, since, _, ok := q.take()
	if !ok || mac != a || !since.Equal(time.Unix(1000, 0)) {
		t.Fatalf("took %v %v since %v, want a since its first change", mac, ok, since)
	}
	q.add(a, true) // changed during its write
	q.done(a, false, false, since)
	if mac, _, _, ok := q.take(); !ok || mac != a {
		t.Fatal("a change during the write must queue the machine again")
	}
	q.done(a, true, false, since) // failed: retried
	if mac, s, _, ok := q.take(); !ok || mac != a || !s.Equal(since) {
		t.Fatal("a failed write is retried with its age")
	}
	q.done(a, false, false, since)
	q.done(b, false, false, since)
	q.done(c, false, false, since)
	if !q.idle() {
		t.Fatal("not idle")
	}
}

func TestCut(t *testing.T) {
	for _, s := range []string{"short", strings.Repeat("é", 200), strings.Repeat("x", 300)} {
		got := cut(s, 256)
		if len(got) > 256 || !utf8.ValidString(got) || (len(s) <= 256 && got != s) {
			t.Errorf("cut(%d bytes) = %d bytes, valid %v", len(s), len(got), utf8.ValidString(got))
		}
	}
}

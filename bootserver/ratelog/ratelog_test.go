package ratelog

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestLogger(t *testing.T) {
	var buf bytes.Buffer
	l := New(slog.New(slog.NewTextHandler(&buf, nil)), time.Second)
	now := time.Unix(1000, 0)
	l.now = func() time.Time { return now }
	steps := []struct {
		advance time.Duration
		msg     string
		logged  bool
	}{
		{0, "pool exhausted", true},
		{0, "pool exhausted", false},
		{500 * time.Millisecond, "pool exhausted", false},
		{0, "other", true}, // each message has its own budget
		{500 * time.Millisecond, "pool exhausted", true},
		{0, "pool exhausted", false},
	}
	for i, s := range steps {
		now = now.Add(s.advance)
		if got := l.Warn(s.msg, "k", i); got != s.logged {
			t.Fatalf("step %d: logged %v, want %v", i, got, s.logged)
		}
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 || !strings.Contains(lines[2], "suppressed=2") || strings.Contains(lines[0], "suppressed") {
		t.Fatalf("lines:\n%s", buf.String())
	}
}

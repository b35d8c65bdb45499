// Package ratelog rate-limits the log lines that network input triggers: a flood of bad packets
// must not become a flood of log lines. Each message logs at most once per interval; the lines
// held back are counted and the next line of that message says how many there were.
package ratelog

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// DefaultInterval is the interval of New(log, 0).
const DefaultInterval = 10 * time.Second

// Logger logs each message at most once per interval. Messages are the constant first argument
// of Warn/Info (never built from input), so the set it tracks is bounded by the code. It is safe for
// concurrent use.
type Logger struct {
	log      *slog.Logger
	interval time.Duration
	now      func() time.Time

	mu   sync.Mutex
	seen map[string]*state
}

type state struct {
	last       time.Time
	suppressed int
}

// New wraps log; an interval of zero means DefaultInterval. A nil log discards.
func New(log *slog.Logger, interval time.Duration) *Logger {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if interval <= 0 {
		interval = DefaultInterval
	}
	return &Logger{log: log, interval: interval, now: time.Now, seen: map[string]*state{}}
}

// Warn logs msg at Warn unless msg was logged less than an interval ago; it reports whether it logged.
func (l *Logger) Warn(msg string, args ...any) bool { return l.Log(slog.LevelWarn, msg, args...) }

// Info logs msg at Info unless msg was logged less than an interval ago; it reports whether it logged.
func (l *Logger) Info(msg string, args ...any) bool { return l.Log(slog.LevelInfo, msg, args...) }

// Log logs msg at level unless msg was logged less than an interval ago; a line logged after
// some were held back carries suppressed=<how many>. It returns whether it logged.
func (l *Logger) Log(level slog.Level, msg string, args ...any) bool {
	if !l.log.Enabled(context.Background(), level) {
		return false
	}
	now := l.now()
	l.mu.Lock()
	st := l.seen[msg]
	if st == nil {
		st = &state{}
		l.seen[msg] = st
	} else if now.Sub(st.last) < l.interval {
		st.suppressed++
		l.mu.Unlock()
		return false
	}
	n := st.suppressed
	st.last, st.suppressed = now, 0
	l.mu.Unlock()
	if n > 0 {
		args = append(args, "suppressed", n)
	}
	l.log.Log(context.Background(), level, msg, args...)
	return true
}

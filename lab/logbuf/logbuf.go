// Package logbuf captures the output of code running in other goroutines (a server's slog handler, a
// join's progress lines) so a test can read it while that code still writes.
package logbuf

import (
	"bytes"
	"sync"
)

// Buffer is an io.Writer that is safe for concurrent use; the zero value is empty and ready.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns everything written so far.
func (l *Buffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

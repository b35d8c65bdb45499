package vm

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// Chunk is one read from the serial console, with its time since the VM started.
type Chunk struct {
	At   time.Duration
	Text string
}

// Console records a VM's serial output: in memory (for Wait) and in a file where every line starts
// with the seconds since qemu started ("[  12.345] …").
type Console struct {
	start time.Time
	file  *os.File

	mu      sync.Mutex
	chunks  []Chunk
	all     strings.Builder
	changed chan struct{}
	lineBeg bool
	closed  bool
}

func newConsole(path string, start time.Time) (*Console, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	return &Console{start: start, file: f, changed: make(chan struct{}), lineBeg: true}, nil
}

// copyFrom reads r until it ends.
func (c *Console) copyFrom(r io.Reader) {
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			c.add(time.Since(c.start), string(buf[:n]))
		}
		if err != nil {
			break
		}
	}
	c.mu.Lock()
	c.closed = true
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
	c.file.Close()
}

func (c *Console) add(at time.Duration, s string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.chunks = append(c.chunks, Chunk{At: at, Text: s})
	c.all.WriteString(s)
	var b bytes.Buffer
	stamp := fmt.Sprintf("[%8.3f] ", at.Seconds())
	for _, r := range strings.ReplaceAll(s, "\r", "") {
		if c.lineBeg {
			b.WriteString(stamp)
			c.lineBeg = false
		}
		b.WriteRune(r)
		if r == '\n' {
			c.lineBeg = true
		}
	}
	c.file.Write(b.Bytes())
	close(c.changed)
	c.changed = make(chan struct{})
}

// Text is everything printed so far.
func (c *Console) Text() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.all.String()
}

// Chunks returns the timestamped chunks so far.
func (c *Console) Chunks() []Chunk {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Chunk(nil), c.chunks...)
}

// FirstSeen is when the console first printed s (the end of the chunk that completed it).
func (c *Console) FirstSeen(s string) (time.Duration, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var acc strings.Builder
	for _, ch := range c.chunks {
		acc.WriteString(ch.Text)
		if strings.Contains(acc.String(), s) {
			return ch.At, true
		}
	}
	return 0, false
}

// Wait waits until the console has printed s, the console closes (qemu ended) or ctx ends.
func (c *Console) Wait(ctx context.Context, s string) (time.Duration, error) {
	for {
		c.mu.Lock()
		found := strings.Contains(c.all.String(), s)
		closed, ch := c.closed, c.changed
		c.mu.Unlock()
		if found {
			at, _ := c.FirstSeen(s)
			return at, nil
		}
		if closed {
			return 0, fmt.Errorf("console closed (VM ended) before %q appeared", s)
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("waiting for %q on the console: %w", s, ctx.Err())
		case <-ch:
		}
	}
}

// Tail is the last n lines printed.
func (c *Console) Tail(n int) string {
	lines := strings.Split(strings.ReplaceAll(c.Text(), "\r", ""), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

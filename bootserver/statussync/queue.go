package statussync

import (
	"sync"
	"time"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// queue holds the machines waiting for a status write: one entry per machine however often it
// changes (a write carries the latest timeline, not each event), important ones first, the others
// only once they have waited delay (so that a boot's many small steps become few writes).
type queue struct {
	mu      sync.Mutex
	wake    chan struct{} // a receive is a hint that get may find work
	delay   time.Duration
	max     int
	pending map[hwaddr.MAC]*entry // queued, not yet taken
	urgent  []hwaddr.MAC          // FIFO; may hold entries taken already (skipped)
	normal  []hwaddr.MAC          // FIFO by since; may hold entries taken or moved to urgent
	busy    map[hwaddr.MAC]*entry // being written; a change meanwhile marks it again
	now     func() time.Time
}

type entry struct {
	urgent bool
	since  time.Time // the oldest change not yet written
	again  bool      // changed while busy: queue again when done
}

func newQueue(max int, delay time.Duration, now func() time.Time) *queue {
	return &queue{wake: make(chan struct{}, 1), delay: delay, max: max, now: now,
		pending: map[hwaddr.MAC]*entry{}, busy: map[hwaddr.MAC]*entry{}}
}

// add queues mac (or raises its priority); false if the queue is full and mac was not in it.
func (q *queue) add(mac hwaddr.MAC, urgent bool) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.addLocked(mac, urgent, q.now())
}

func (q *queue) addLocked(mac hwaddr.MAC, urgent bool, since time.Time) bool {
	if e := q.busy[mac]; e != nil {
		if !e.again {
			e.since = since
		}
		e.again, e.urgent = true, e.urgent || urgent
		return true
	}
	if e := q.pending[mac]; e != nil {
		if urgent && !e.urgent {
			e.urgent = true
			q.urgent = append(q.urgent, mac)
			q.signal()
		}
		return true
	}
	if len(q.pending) >= q.max {
		return false
	}
	q.pending[mac] = &entry{urgent: urgent, since: since}
	if urgent {
		q.urgent = append(q.urgent, mac)
	} else {
		q.normal = append(q.normal, mac)
	}
	q.signal()
	return true
}

func (q *queue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// take returns the next machine to write and when its oldest unwritten change was, or how long
// to wait before one is due (ok false).
func (q *queue) take() (mac hwaddr.MAC, since time.Time, wait time.Duration, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.urgent) > 0 {
		mac, q.urgent = q.urgent[0], q.urgent[1:]
		if e := q.pending[mac]; e != nil && e.urgent {
			return mac, q.start(mac, e), 0, true
		}
	}
	now := q.now()
	for len(q.normal) > 0 {
		mac = q.normal[0]
		e := q.pending[mac]
		if e == nil || e.urgent { // taken already, or waiting among the urgent ones
			q.normal = q.normal[1:]
			continue
		}
		if due := e.since.Add(q.delay); now.Before(due) {
			return mac, time.Time{}, due.Sub(now), false
		}
		q.normal = q.normal[1:]
		return mac, q.start(mac, e), 0, true
	}
	return mac, time.Time{}, -1, false
}

func (q *queue) start(mac hwaddr.MAC, e *entry) time.Time {
	delete(q.pending, mac)
	q.busy[mac] = &entry{}
	return e.since
}

// done ends mac's write; retry queues it again (after a failed write, with its priority and age).
// A change that came during the write queues it again too.
func (q *queue) done(mac hwaddr.MAC, retry, urgent bool, since time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	e := q.busy[mac]
	if e == nil {
		return
	}
	delete(q.busy, mac)
	switch {
	case retry:
		q.addLocked(mac, urgent || e.urgent, since)
	case e.again:
		q.addLocked(mac, e.urgent, e.since)
	}
}

// len is the number of machines waiting.
func (q *queue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.pending)
}

// idle reports whether no machine waits or is being written.
func (q *queue) idle() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.pending) == 0 && len(q.busy) == 0
}

package dhcpd

import (
	"net/netip"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// EventKind says what an Event reports.
type EventKind int

// Event kinds.
const (
	// EventDiscover: a DISCOVER was seen (before any decision about it).
	EventDiscover EventKind = iota + 1
	// EventOffer: an OFFER was sent.
	EventOffer
	// EventAck: an ACK was sent (in full mode, the lease is durable).
	EventAck
)

func (k EventKind) String() string {
	switch k {
	case EventDiscover:
		return "discover"
	case EventOffer:
		return "offer"
	case EventAck:
		return "ack"
	}
	return "unknown"
}

// Event is a step of a client's DHCP exchange, for boot timelines.
type Event struct {
	Kind EventKind
	MAC  hwaddr.MAC
	// VendorClass is the request's option 60 ("PXEClient:Arch:00007:…" from firmware PXE).
	VendorClass string
	// IP is the address offered or acknowledged; invalid for a DISCOVER and in proxy mode.
	IP netip.Addr
	// File is the boot file sent with an OFFER or ACK ("" if none).
	File string
}

// String is the event as one line: kind, then the vendor class (DISCOVER) or the address and
// "file=…" (OFFER, ACK).
func (e Event) String() string {
	s := e.Kind.String()
	if e.Kind == EventDiscover {
		if e.VendorClass != "" {
			s += " " + e.VendorClass
		}
		return s
	}
	if e.IP.IsValid() {
		s += " " + e.IP.String()
	}
	if e.File != "" {
		s += " file=" + e.File
	}
	return s
}

// EventFunc receives boot events. It is called from one goroutine, in order, never on the packet
// path: events queue in a buffer and are dropped (and counted in pxejoin_dhcp_events_dropped_total)
// when the callback falls behind. Keep it fast and non-blocking.
type EventFunc func(Event)

// event queues a boot event without blocking; a full queue drops it.
func (s *Server) event(e Event) {
	if s.events == nil {
		return
	}
	select {
	case s.events <- e:
	default:
		s.metrics.EventsDropped.Inc()
	}
}

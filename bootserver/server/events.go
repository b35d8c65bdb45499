package server

import (
	"bufio"
	"net/netip"
	"os"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/pxejoin/pxejoin/bootserver/dhcpd"
	"github.com/pxejoin/pxejoin/bootserver/status"
	"github.com/pxejoin/pxejoin/bootserver/tftpd"
	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// dhcpPhases are the phases a DHCP exchange can be part of, newest last.
var dhcpPhases = []string{status.PhaseDHCP, status.PhaseIPXEDHCP, status.PhaseAgentDHCP}

// onDHCP turns dhcpd events into timeline phases: a firmware DISCOVER (vendor class PXEClient, or
// HTTPClient for UEFI HTTP boot) starts "dhcp" (and a new boot if the machine already got its script), iPXE's own DISCOVER after
// the NBP starts "ipxe-dhcp", anything else "agent-dhcp"; an ACK ends the phase under way.
func (s *Server) onDHCP(e dhcpd.Event) {
	mac := e.MAC
	switch e.Kind {
	case dhcpd.EventDiscover:
		m, _ := s.status.Get(mac)
		phase := status.PhaseAgentDHCP
		if strings.HasPrefix(e.VendorClass, "PXEClient") || strings.HasPrefix(e.VendorClass, "HTTPClient") {
			phase = status.PhaseDHCP
			if hasPhase(m, status.PhaseNBP) && !hasPhase(m, status.PhaseScript) {
				phase = status.PhaseIPXEDHCP
			}
		}
		if p := lastPhase(m, phase); p != nil && p.State == bootstatus.StateStart {
			return // a retransmission
		}
		boot := s.status.Record(mac, status.Event{Event: bootstatus.Event{Phase: phase, State: bootstatus.StateStart, Detail: e.VendorClass},
			Source: status.SourceDHCP, StartsBoot: phase == status.PhaseDHCP})
		// A firmware DISCOVER is the first sight of a boot: an inventory machine's token is minted
		// now, so that its join file is ready when its agent asks, seconds later. An installed
		// machine resumes from its disk without one (it is minted if its agent asks).
		if phase == status.PhaseDHCP && s.tokens != nil {
			if a, ok := s.inv.Current().Lookup(mac, s.uuids.of(mac)); ok && a.Known && !(a.Disk != nil && s.status.Resumes(mac, a.Reimage)) {
				s.tokens.MintAhead(mac, a.NodeName, boot)
			}
		}
	case dhcpd.EventAck:
		m, _ := s.status.Get(mac)
		phase := status.PhaseDHCP
		for _, p := range dhcpPhases {
			if q := lastPhase(m, p); q != nil && q.State == bootstatus.StateStart {
				phase = p
			}
		}
		detail := strings.TrimPrefix(e.String(), e.Kind.String()+" ") // "10.0.0.5 file=…"
		s.status.Record(mac, status.Event{Event: bootstatus.Event{Phase: phase, State: bootstatus.StateDone, Detail: detail}, Source: status.SourceDHCP})
	}
}

// onTFTP records the NBP download of the machine at e.Remote (found by its DHCP lease, else the
// kernel's ARP table).
func (s *Server) onTFTP(e tftpd.Event) {
	ip := e.Remote.Addr().Unmap()
	mac, ok := s.macOf(ip)
	if !ok {
		s.log.Debug("tftp transfer from an address with no known MAC", "remote", ip, "file", e.File)
		return
	}
	state := map[tftpd.EventKind]string{tftpd.EventStart: bootstatus.StateStart, tftpd.EventDone: bootstatus.StateDone, tftpd.EventError: bootstatus.StateError}[e.Kind]
	if state == "" {
		return
	}
	ev := status.Event{Event: bootstatus.Event{Phase: status.PhaseNBP, State: state, Detail: e.File}, Source: status.SourceTFTP}
	if state == bootstatus.StateError {
		ev.Error = "transfer of " + e.File + " failed"
	}
	s.status.Record(mac, ev)
}

func (s *Server) macOf(ip netip.Addr) (hwaddr.MAC, bool) {
	if s.leases != nil {
		if l, ok := s.leases.ByIP(ip); ok {
			return l.MAC, true
		}
	}
	return arpLookup("/proc/net/arp", ip)
}

// arpLookup finds ip's MAC in a /proc/net/arp table.
func arpLookup(path string, ip netip.Addr) (hwaddr.MAC, bool) {
	f, err := os.Open(path)
	if err != nil {
		return hwaddr.MAC{}, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 4 && fields[0] == ip.String() {
			if mac, err := hwaddr.Parse(fields[3]); err == nil && !mac.IsZero() {
				return mac, true
			}
		}
	}
	return hwaddr.MAC{}, false
}

func hasPhase(m status.Machine, phase string) bool { return lastPhase(m, phase) != nil }

func lastPhase(m status.Machine, phase string) *status.Phase {
	for i := range m.Phases {
		if m.Phases[i].Phase == phase {
			return &m.Phases[i]
		}
	}
	return nil
}

// onNode records a machine's Node in its timeline: node-registered once the Node exists or heartbeats
// after this boot began, node-ready once its Ready condition turned true after that.
func (s *Server) onNode(n *corev1.Node) {
	for _, m := range s.status.All() {
		if m.NodeName != n.Name || m.BootStarted.IsZero() {
			continue
		}
		since := m.BootStarted.Add(-time.Second) // API timestamps have 1 s resolution
		var ready *corev1.NodeCondition
		fresh := !n.CreationTimestamp.Time.Before(since)
		for i := range n.Status.Conditions {
			c := &n.Status.Conditions[i]
			if !c.LastHeartbeatTime.Time.Before(since) {
				fresh = true
			}
			if c.Type == corev1.NodeReady {
				ready = c
			}
		}
		if fresh && !hasPhase(m, status.PhaseNodeRegistered) {
			s.status.Record(m.MAC, status.Event{Event: bootstatus.Event{Phase: status.PhaseNodeRegistered, State: bootstatus.StateDone, Detail: n.Name}, Source: status.SourceCluster})
		}
		if ready != nil && ready.Status == corev1.ConditionTrue && !ready.LastTransitionTime.Time.Before(since) && !hasPhase(m, bootstatus.PhaseNodeReady) {
			s.status.Record(m.MAC, status.Event{Event: bootstatus.Event{Phase: bootstatus.PhaseNodeReady, State: bootstatus.StateDone, Detail: n.Name}, Source: status.SourceCluster})
		}
	}
}

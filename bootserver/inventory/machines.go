package inventory

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/bootserver/machineapi"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// Machine states a snapshot counts (the pxejoin_inventory_machines gauge).
const (
	StateServed       = "served"        // answered by this server
	StateDisabled     = "disabled"      // spec.disabled: no answer
	StateConflict     = "conflict"      // a MAC, UUID or ipv4 also claimed by another Machine: no answer
	StateInvalid      = "invalid"       // a field the boot server cannot use (a profile it lacks, a bad label): no answer
	StateOtherSegment = "other_segment" // spec.segment names another server's segment: ignored
)

// Built is a snapshot made from Machine objects, with what the Kubernetes source reports about it.
type Built struct {
	Inventory *Inventory
	// Conflicts maps the name of each Machine in conflict (of any segment) to the message of its
	// Conflict condition.
	Conflicts map[string]string
	// Problems maps the name of each invalid Machine to what is wrong with it and what to do.
	Problems map[string]string
	// States counts the Machines by state (StateServed, ...).
	States map[string]int
	// Considered are the names of the Machines of this server's segment (their Conflict
	// condition is this server's to keep).
	Considered []string
}

// FromMachines builds the snapshot of the Machines this server answers: those of its segment
// (config's segment) and those with none. base holds the configuration's profiles (withProfiles).
//
// A MAC, UUID or ipv4 reservation claimed by two Machines that one server could both answer (the
// same segment, or either without one) leaves both unanswered (silent, even for the unknown
// machines' profile), because the server cannot tell which one is booting; disabled Machines
// count as claimants too, so disabling one of two does not pick the other. Every server sees
// every Machine, so all compute the same conflicts and write the same conditions.
func FromMachines(base *Inventory, segment string, ms []*machineapi.Machine) Built {
	inv := base.empty()
	b := Built{Inventory: inv, Conflicts: map[string]string{}, Problems: map[string]string{}, States: map[string]int{}}
	slices.SortFunc(ms, func(x, y *machineapi.Machine) int { return strings.Compare(x.Name, y.Name) })

	type entry struct {
		src *machineapi.Machine
		m   *Machine
	}
	var entries []entry                          // this server's Machines
	claims := map[string][]*machineapi.Machine{} // "MAC x" / "UUID y" / "ipv4 z" → every Machine claiming it
	for _, src := range ms {
		ours := src.Spec.Segment == "" || src.Spec.Segment == segment
		m, err := convert(src)
		if ours {
			b.Considered = append(b.Considered, src.Name)
			if err == nil && inv.profiles[m.Profile] == nil {
				err = fmt.Errorf("profile %q is not defined in this boot server's configuration: add it under profiles, or change spec.profile", m.Profile)
			}
			if err == nil && m.Disk != nil && inv.profiles[m.Profile].Disk == nil {
				err = fmt.Errorf("spec.disk overrides the disk of profile %q, which is diskless: give the profile a disk in the boot server's configuration, or remove spec.disk", m.Profile)
			}
			if err != nil {
				b.Problems[src.Name] = err.Error()
			}
		} else {
			b.States[StateOtherSegment]++
		}
		if m == nil {
			if ours {
				b.States[StateInvalid]++
			}
			continue
		}
		if ours {
			entries = append(entries, entry{src, m})
		}
		for _, mac := range m.MACs {
			claims["MAC "+mac.String()] = append(claims["MAC "+mac.String()], src)
		}
		if m.UUID != "" {
			claims["UUID "+m.UUID] = append(claims["UUID "+m.UUID], src)
		}
		if m.IPv4.IsValid() {
			claims["ipv4 "+m.IPv4.String()] = append(claims["ipv4 "+m.IPv4.String()], src)
		}
	}
	for _, what := range slices.Sorted(maps.Keys(claims)) {
		for _, x := range claims[what] {
			var others []string
			for _, y := range claims[what] {
				if y != x && (x.Spec.Segment == y.Spec.Segment || x.Spec.Segment == "" || y.Spec.Segment == "") {
					others = append(others, y.Name)
				}
			}
			if len(others) == 0 {
				continue
			}
			msg := fmt.Sprintf("%s is also claimed by Machine %s", what, strings.Join(others, ", "))
			if prev, ok := b.Conflicts[x.Name]; ok {
				msg = prev + "; " + msg
			}
			b.Conflicts[x.Name] = msg
		}
	}
	for _, e := range entries {
		_, conflict := b.Conflicts[e.src.Name]
		_, invalid := b.Problems[e.src.Name]
		switch {
		case conflict:
			b.States[StateConflict]++
		case invalid:
			b.States[StateInvalid]++
		case e.src.Spec.Disabled:
			b.States[StateDisabled]++
		default:
			b.States[StateServed]++
			inv.add(e.m)
			continue
		}
		inv.silence(e.m)
	}
	// A MAC or UUID silenced for one Machine stays silent even if another indexed it.
	for mac := range inv.silentMACs {
		delete(inv.byMAC, mac)
	}
	for u := range inv.silentUUIDs {
		delete(inv.byUUID, u)
	}
	return b
}

// convert reads a Machine's spec. A nil Machine means there is nothing to index (no usable
// identifier); a non-nil one with an error is indexed only to be silenced.
func convert(src *machineapi.Machine) (*Machine, error) {
	s := src.Spec
	m := &Machine{Name: src.Name, Profile: s.Profile, Labels: s.Labels, Taints: s.Taints, Disk: s.Disk,
		Reimage: src.Annotations[machineapi.AnnotationReimage]}
	var errs []string
	if s.Disk != nil {
		if err := s.Disk.Validate(); err != nil {
			errs = append(errs, fmt.Sprintf("spec.disk: %v", err))
		}
	}
	for _, v := range s.MACs {
		mac, err := hwaddr.Parse(v)
		if err != nil {
			errs = append(errs, fmt.Sprintf("spec.macs: %v", err))
			continue
		}
		m.MACs = append(m.MACs, mac)
	}
	if len(m.MACs) > 0 {
		m.MAC = m.MACs[0]
	}
	if s.UUID != "" {
		u, ok := config.CanonicalUUID(s.UUID)
		if !ok {
			errs = append(errs, fmt.Sprintf("spec.uuid %q is not a UUID", s.UUID))
		} else {
			m.UUID = u
		}
	}
	if s.IPv4 != "" {
		a, err := netip.ParseAddr(s.IPv4)
		if err != nil || !a.Is4() {
			errs = append(errs, fmt.Sprintf("spec.ipv4 %q is not an IPv4 address", s.IPv4))
		} else {
			m.IPv4 = a
		}
	}
	for _, k := range slices.Sorted(maps.Keys(s.Labels)) {
		if e := validation.IsQualifiedName(k); len(e) > 0 {
			errs = append(errs, fmt.Sprintf("spec.labels: key %q: %s", k, strings.Join(e, "; ")))
		}
		if e := validation.IsValidLabelValue(s.Labels[k]); len(e) > 0 {
			errs = append(errs, fmt.Sprintf("spec.labels: value %q: %s", s.Labels[k], strings.Join(e, "; ")))
		}
	}
	if len(m.MACs) == 0 && m.UUID == "" {
		return nil, fmt.Errorf("no usable MAC or UUID (%s): fix spec.macs or spec.uuid", strings.Join(errs, "; "))
	}
	if len(errs) > 0 {
		return m, fmt.Errorf("%s: fix the Machine", strings.Join(errs, "; "))
	}
	return m, nil
}

// empty is a new inventory with b's profiles and unknown profile and no machines. The profile
// maps are shared: no snapshot changes them.
func (b *Inventory) empty() *Inventory {
	return &Inventory{
		profiles:    b.profiles,
		files:       b.files,
		unknown:     b.unknown,
		byMAC:       map[hwaddr.MAC]*Machine{},
		byUUID:      map[string]*Machine{},
		silentMACs:  map[hwaddr.MAC]bool{},
		silentUUIDs: map[string]bool{},
	}
}

// silence makes m's MACs and UUID get no answer.
func (inv *Inventory) silence(m *Machine) {
	for _, mac := range m.MACs {
		inv.silentMACs[mac] = true
	}
	if m.UUID != "" {
		inv.silentUUIDs[m.UUID] = true
	}
}

// Reservations returns the served machines' reserved addresses, by each machine's first MAC.
func (inv *Inventory) Reservations() map[hwaddr.MAC]netip.Addr {
	out := map[hwaddr.MAC]netip.Addr{}
	for mac, m := range inv.byMAC {
		if m.IPv4.IsValid() && mac == m.MAC {
			out[mac] = m.IPv4
		}
	}
	return out
}

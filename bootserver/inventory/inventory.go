// Package inventory answers "what does this machine boot, and as which node?" from the machines
// (by MAC address and/or SMBIOS UUID), the configuration's profiles and the profile for unknown
// machines.
//
// An Inventory is an immutable snapshot. A Source hands out the current one: the configuration
// file's inventory is its own Source (it never changes); the Kubernetes source (kubernetes.go)
// builds a new snapshot from the Machine objects on every change and swaps it in atomically, so
// the DHCP, TFTP and HTTP paths read memory and never call the API.
package inventory

import (
	"bytes"
	"fmt"
	"net/netip"
	"path"
	"sort"
	"strings"
	"text/template"

	corev1 "k8s.io/api/core/v1"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/internal/diskspec"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// Profile is a boot profile with its cmdline template parsed.
type Profile struct {
	Name      string
	Kernel    string   // local path
	Initrds   []string // local paths
	RootImage string   // local path or http(s) URL; may be empty
	// ControlPlane, if set, makes the profile's machines join as control-plane nodes.
	ControlPlane *config.ControlPlaneProfile
	// Disk is the persistent profile's disk; nil: diskless.
	Disk    *diskspec.Spec
	cmdline *template.Template
}

// File is a local file a profile serves over HTTP.
type File struct {
	Kind string // "kernel", "initrd" or "root-image"
	Path string // local path
}

// URLPath is where the profile's file at local path p is served: /images/<profile>/<file name>.
// iPXE names an image by the last part of its URL, which the kernel line's initrd= refers to.
func (p *Profile) URLPath(local string) string {
	return "/images/" + p.Name + "/" + path.Base(local)
}

// Files maps the profile's URL paths to the files behind them.
func (p *Profile) Files() map[string]File {
	m := map[string]File{p.URLPath(p.Kernel): {Kind: "kernel", Path: p.Kernel}}
	for _, f := range p.Initrds {
		m[p.URLPath(f)] = File{Kind: "initrd", Path: f}
	}
	if p.RootImage != "" && !p.RemoteRootImage() {
		m[p.URLPath(p.RootImage)] = File{Kind: "root-image", Path: p.RootImage}
	}
	return m
}

// RemoteRootImage reports whether the root image is an http(s) URL served elsewhere.
func (p *Profile) RemoteRootImage() bool {
	return strings.HasPrefix(p.RootImage, "http://") || strings.HasPrefix(p.RootImage, "https://")
}

// Cmdline renders the kernel command line.
func (p *Profile) Cmdline(f config.CmdlineFields) (string, error) {
	var b strings.Builder
	if err := p.cmdline.Execute(&b, f); err != nil {
		return "", fmt.Errorf("profile %s: cmdline: %w", p.Name, err)
	}
	s := b.String()
	if strings.ContainsAny(s, "\r\n") {
		return "", fmt.Errorf("profile %s: the rendered cmdline has a line break", p.Name)
	}
	return s, nil
}

// Machine is an inventory entry.
type Machine struct {
	MAC     hwaddr.MAC // zero for a machine known by UUID only; the first of MACs
	MACs    []hwaddr.MAC
	UUID    string // lower-case or ""
	Name    string // node name; may be empty (derived from the MAC)
	Profile string
	Labels  map[string]string
	// Taints are the taints the Node registers with (the join file's registerWithTaints).
	Taints []corev1.Taint
	// IPv4 is the machine's reserved address (full DHCP mode); invalid when it has none.
	IPv4 netip.Addr
	// Disk overrides its profile's disk; nil: the profile's.
	Disk *diskspec.Spec
	// Reimage is the Machine's re-image request (annotation machineapi.AnnotationReimage); empty:
	// none.
	Reimage string
}

// Assignment is what one machine gets.
type Assignment struct {
	MAC      hwaddr.MAC
	NodeName string
	Profile  *Profile
	Labels   map[string]string
	Taints   []corev1.Taint
	// Known is true for a machine in the inventory, false for one booting the default profile.
	Known bool
	// Disk is the machine's persistent disk (its override, else its profile's); nil: diskless.
	Disk *diskspec.Spec
	// Reimage is the inventory's re-image request for the machine (Machine.Reimage).
	Reimage string
}

// Source hands out the current inventory snapshot; callers look a machine up in what Current
// returns and never keep it past the request at hand.
type Source interface {
	Current() *Inventory
}

// Inventory looks machines up. It is immutable and safe for concurrent use.
type Inventory struct {
	profiles map[string]*Profile
	byMAC    map[hwaddr.MAC]*Machine
	byUUID   map[string]*Machine
	unknown  *Profile
	files    map[string]File
	// silentMACs and silentUUIDs get no answer at all, not even the unknown machines' profile:
	// their Machine is disabled, or they are claimed by two Machines.
	silentMACs  map[hwaddr.MAC]bool
	silentUUIDs map[string]bool
}

// Current returns inv: a file's inventory never changes, so it is its own Source.
func (inv *Inventory) Current() *Inventory { return inv }

// New builds the inventory of a validated configuration.
func New(c *config.Config) (*Inventory, error) {
	inv, err := withProfiles(c)
	if err != nil {
		return nil, err
	}
	for _, m := range c.Machines {
		m := &Machine{MAC: m.MAC, UUID: m.UUID, Name: m.Name, Profile: m.Profile, Labels: m.Labels, Disk: m.Disk}
		if inv.profiles[m.Profile] == nil {
			return nil, fmt.Errorf("machine %s %s: profile %q is not defined", m.MAC, m.UUID, m.Profile)
		}
		if !m.MAC.IsZero() {
			m.MACs = []hwaddr.MAC{m.MAC}
		}
		inv.add(m)
	}
	return inv, nil
}

// withProfiles starts an inventory with the configuration's profiles and no machines.
func withProfiles(c *config.Config) (*Inventory, error) {
	inv := &Inventory{
		profiles:    map[string]*Profile{},
		byMAC:       map[hwaddr.MAC]*Machine{},
		byUUID:      map[string]*Machine{},
		files:       map[string]File{},
		silentMACs:  map[hwaddr.MAC]bool{},
		silentUUIDs: map[string]bool{},
	}
	for name, p := range c.Profiles {
		t, err := template.New(name).Option("missingkey=error").Parse(p.Cmdline)
		if err != nil {
			return nil, fmt.Errorf("profile %s: cmdline: %w", name, err)
		}
		prof := &Profile{Name: name, Kernel: p.Kernel, Initrds: append([]string(nil), p.Initrds...), RootImage: p.RootImage,
			ControlPlane: p.ControlPlane, Disk: p.Disk, cmdline: t}
		inv.profiles[name] = prof
		for k, f := range prof.Files() {
			inv.files[k] = f
		}
	}
	if c.Unknown.Profile != "" {
		inv.unknown = inv.profiles[c.Unknown.Profile]
		if inv.unknown == nil {
			return nil, fmt.Errorf("unknownMachines.profile %q is not defined", c.Unknown.Profile)
		}
	}
	return inv, nil
}

// add indexes m by its MACs and UUID.
func (inv *Inventory) add(m *Machine) {
	for _, mac := range m.MACs {
		inv.byMAC[mac] = m
	}
	if m.UUID != "" {
		inv.byUUID[m.UUID] = m
	}
}

// Silent reports whether the machine must get no answer at all: its Machine is disabled, or its
// MAC or UUID is claimed by two Machines.
func (inv *Inventory) Silent(mac hwaddr.MAC, uuid string) bool {
	if inv.silentMACs[mac] {
		return true
	}
	if uuid == "" || inv.byMAC[mac] != nil {
		return false
	}
	u, _ := config.CanonicalUUID(uuid)
	return inv.silentUUIDs[u]
}

// Lookup finds the machine with MAC mac or, failing that, with SMBIOS UUID uuid (may be empty). A
// machine not in the inventory gets the unknown-machines profile if there is one; ok is false when
// the machine gets nothing.
func (inv *Inventory) Lookup(mac hwaddr.MAC, uuid string) (a Assignment, ok bool) {
	if inv.Silent(mac, uuid) {
		return Assignment{MAC: mac}, false
	}
	m := inv.byMAC[mac]
	if m == nil && uuid != "" {
		if u, valid := config.CanonicalUUID(uuid); valid {
			m = inv.byUUID[u]
		}
	}
	if m != nil {
		name := m.Name
		if name == "" {
			name = NodeName(mac)
		}
		p := inv.profiles[m.Profile]
		disk := p.Disk
		if m.Disk != nil && disk != nil {
			disk = m.Disk
		}
		return Assignment{MAC: mac, NodeName: name, Profile: p, Labels: m.Labels, Taints: m.Taints, Known: true, Disk: disk, Reimage: m.Reimage}, true
	}
	if inv.unknown != nil {
		return Assignment{MAC: mac, NodeName: NodeName(mac), Profile: inv.unknown, Disk: inv.unknown.Disk}, true
	}
	return Assignment{MAC: mac}, false
}

// Known reports whether a machine is in the inventory by MAC or UUID.
func (inv *Inventory) Known(mac hwaddr.MAC, uuid string) bool {
	a, ok := inv.Lookup(mac, uuid)
	return ok && a.Known
}

// Boots reports whether a machine gets a profile (known, or unknown with a default profile).
func (inv *Inventory) Boots(mac hwaddr.MAC, uuid string) bool {
	_, ok := inv.Lookup(mac, uuid)
	return ok
}

// File returns the profile file served at URL path p.
func (inv *Inventory) File(p string) (File, bool) {
	f, ok := inv.files[p]
	return f, ok
}

// Profiles returns the profiles sorted by name.
func (inv *Inventory) Profiles() []*Profile {
	out := make([]*Profile, 0, len(inv.profiles))
	for _, p := range inv.profiles {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Machines returns the inventory's machines sorted by MAC then UUID.
func (inv *Inventory) Machines() []Machine {
	seen := map[*Machine]bool{}
	var out []Machine
	for _, m := range inv.byMAC {
		seen[m] = true
		out = append(out, *m)
	}
	for _, m := range inv.byUUID {
		if !seen[m] {
			seen[m] = true
			out = append(out, *m)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if c := bytes.Compare(out[i].MAC[:], out[j].MAC[:]); c != 0 {
			return c < 0
		}
		return out[i].UUID < out[j].UUID
	})
	return out
}

// NodeName is the node name of a machine the inventory names not: "node-" and the MAC's hex digits.
func NodeName(mac hwaddr.MAC) string {
	return "node-" + mac.Hex()
}

// SMBIOSUUID formats the 16 bytes of a DHCP client machine identifier (option 97, type 0 stripped)
// the way dmidecode prints the SMBIOS UUID: the first three fields are little-endian (SMBIOS 2.6).
// Deviation: RFC 4578 leaves the byte order open; firmware sends the SMBIOS bytes as stored, so
// this matches what an operator reads from dmidecode or the BIOS setup screen.
func SMBIOSUUID(b []byte) string {
	if len(b) == 17 && b[0] == 0 {
		b = b[1:]
	}
	if len(b) != 16 {
		return ""
	}
	return fmt.Sprintf("%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
		b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15])
}

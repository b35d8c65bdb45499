package config

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"text/template"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// locator maps a field path to a line (0 if unknown) and a field name for messages.
type locator func(path []any) (line int, field string)

type checker struct {
	file string
	loc  locator
	errs []error
}

func (ck *checker) fail(path []any, format string, args ...any) {
	line, field := ck.loc(path)
	ck.errs = append(ck.errs, &Error{File: ck.file, Line: line, Field: field, Msg: fmt.Sprintf(format, args...)})
}

// ProfileNameRE is what a profile name may be: it appears in URLs.
var ProfileNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$`)

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// CanonicalUUID lowercases an SMBIOS UUID and checks its form; ok is false if it is not one.
func CanonicalUUID(s string) (string, bool) {
	s = strings.ToLower(strings.TrimSpace(s))
	return s, uuidRE.MatchString(s)
}

// validate fills defaults and parsed fields and checks everything; errors carry lines via loc.
func (c *Config) validate(file string, loc locator) error {
	ck := &checker{file: file, loc: loc}
	if c.Listen.HTTP == "" {
		c.Listen.HTTP = DefaultHTTPAddr
	}
	if c.Listen.TFTP == "" {
		c.Listen.TFTP = DefaultTFTPAddr
	}
	if c.TFTP.Root == "" {
		c.TFTP.Root = DefaultTFTPRoot
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.DHCP.Mode == "" {
		c.DHCP.Mode = DHCPProxy
	}
	for _, a := range []struct {
		key, v string
	}{{"http", c.Listen.HTTP}, {"tftp", c.Listen.TFTP}, {"dhcp", c.Listen.DHCP}} {
		if a.v == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a.v); err != nil {
			ck.fail([]any{"listen", a.key}, "%q is not host:port (e.g. \":8080\" or \"10.0.0.1:8080\")", a.v)
		}
	}
	if c.ServerURL != "" {
		u, err := url.Parse(c.ServerURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
			ck.fail([]any{"serverURL"}, "%q is not an http:// URL without a path (e.g. http://10.0.0.1:8080)", c.ServerURL)
		}
		c.ServerURL = strings.TrimSuffix(c.ServerURL, "/")
	}
	c.validateLimits(ck)
	c.validateDHCP(ck)
	if !c.TFTP.Disabled {
		if fi, err := os.Stat(c.TFTP.Root); err != nil || !fi.IsDir() {
			ck.fail([]any{"tftp", "root"}, "%q is not a directory (install Debian's ipxe package or name the directory of the iPXE binaries)", c.TFTP.Root)
		}
	}
	c.validateCluster(ck)
	c.validateApproval(ck)
	c.validateAPI(ck)
	for _, name := range slices.Sorted(maps.Keys(c.Profiles)) {
		c.validateProfile(ck, name)
	}
	if c.Unknown.Profile != "" {
		if _, ok := c.Profiles[c.Unknown.Profile]; !ok {
			ck.fail([]any{"unknownMachines", "profile"}, "profile %q is not defined under profiles", c.Unknown.Profile)
		}
	}
	if c.Unknown.MaxTimelines < 0 {
		ck.fail([]any{"unknownMachines", "maxTimelines"}, "%d is negative: give a number of machines, or leave it out for the default (1024)", c.Unknown.MaxTimelines)
	}
	c.validateMachines(ck)
	c.validateInventory(ck)
	return errors.Join(ck.errs...)
}

func (c *Config) validateInventory(ck *checker) {
	if c.Segment != "" {
		if errs := validation.IsDNS1123Label(c.Segment); len(errs) > 0 {
			ck.fail([]any{"segment"}, "%q is not a segment name (lower-case letters, digits and '-', as a Machine's spec.segment): %s", c.Segment, strings.Join(errs, "; "))
		}
	}
	switch c.Inventory.Source {
	case "":
		c.Inventory.Source = InventoryFile
	case InventoryFile:
	case InventoryKubernetes:
		if c.Cluster.Kubeconfig == "" {
			ck.fail([]any{"inventory", "source"}, "kubernetes needs cluster.kubeconfig (--kubeconfig): the Machines are read from that cluster")
		}
		if len(c.Machines) > 0 {
			ck.fail([]any{"machines"}, "the machines come from the cluster (inventory.source kubernetes): move them there with `bootserver import FILE`, then remove them here")
		}
	default:
		ck.fail([]any{"inventory", "source"}, "%q is not one of file, kubernetes", c.Inventory.Source)
	}
}

// validateLimits fills the defaults of the limits left out and refuses negative ones.
func (c *Config) validateLimits(ck *checker) {
	durations := []struct {
		key string
		v   *time.Duration
		def time.Duration
	}{
		{"readHeaderTimeout", &c.HTTP.ReadHeaderTimeout, DefaultReadHeaderTimeout},
		{"idleTimeout", &c.HTTP.IdleTimeout, DefaultIdleTimeout},
	}
	for _, d := range durations {
		if *d.v < 0 {
			ck.fail([]any{"http", d.key}, "%s is negative (leave it out for %s)", *d.v, d.def)
		} else if *d.v == 0 {
			*d.v = d.def
		}
	}
	counts := []struct {
		path []any
		v    *int
		def  int
	}{
		{[]any{"http", "maxHeaderBytes"}, &c.HTTP.MaxHeaderBytes, DefaultMaxHeaderBytes},
		{[]any{"http", "maxConnsPerClient"}, &c.HTTP.MaxConnsPerClient, DefaultMaxConnsPerClient},
		{[]any{"unknownMachines", "maxTokens"}, &c.Unknown.MaxTokens, DefaultUnknownMaxTokens},
		{[]any{"unknownMachines", "tokensPerMinute"}, &c.Unknown.TokensPerMinute, DefaultUnknownTokensPerMinute},
	}
	for _, n := range counts {
		if *n.v < 0 {
			ck.fail(n.path, "%d is negative (leave it out for %d)", *n.v, n.def)
		} else if *n.v == 0 {
			*n.v = n.def
		}
	}
}

func (c *Config) validateDHCP(ck *checker) {
	switch c.DHCP.Mode {
	case DHCPFull, DHCPProxy, DHCPOff:
	default:
		ck.fail([]any{"dhcp", "mode"}, "%q is not one of full, proxy, off", c.DHCP.Mode)
		return
	}
	if c.DHCP.Mode != DHCPOff && c.Interface == "" {
		ck.fail([]any{"interface"}, "required when dhcp.mode is %s: name the interface of the boot network", c.DHCP.Mode)
	}
	if c.DHCP.Mode == DHCPOff && c.Interface == "" && c.ServerURL == "" {
		ck.fail([]any{"serverURL"}, "required when there is no interface to take the server's address from")
	}
	if c.DHCP.LeaseTime != "" {
		if d, err := time.ParseDuration(c.DHCP.LeaseTime); err != nil || d < time.Minute {
			ck.fail([]any{"dhcp", "leaseTime"}, "%q is not a duration of at least 1m (e.g. 1h)", c.DHCP.LeaseTime)
		}
	}
	for _, f := range []struct {
		key string
		v   int
	}{{"maxUnknownLeases", c.DHCP.MaxUnknownLeases}, {"maxInFlight", c.DHCP.MaxInFlight}} {
		if f.v < 0 {
			ck.fail([]any{"dhcp", f.key}, "%d is negative: leave it out for the default", f.v)
		}
	}
	if c.TFTP.MaxTransfers < 0 || c.TFTP.MaxTransfersPerClient < 0 {
		ck.fail([]any{"tftp"}, "maxTransfers and maxTransfersPerClient must not be negative: leave them out for the defaults")
	}
	p := c.DHCP.Pool
	if c.DHCP.Mode != DHCPFull {
		if p.Start != "" || p.End != "" {
			ck.fail([]any{"dhcp", "pool"}, "a pool is used only with mode full (mode is %s)", c.DHCP.Mode)
		}
		return
	}
	start, err1 := netip.ParseAddr(p.Start)
	if err1 != nil || !start.Is4() {
		ck.fail([]any{"dhcp", "pool", "start"}, "%q is not an IPv4 address (full mode needs a pool)", p.Start)
	}
	end, err2 := netip.ParseAddr(p.End)
	if err2 != nil || !end.Is4() {
		ck.fail([]any{"dhcp", "pool", "end"}, "%q is not an IPv4 address (full mode needs a pool)", p.End)
	}
	if err1 == nil && err2 == nil && end.Less(start) {
		ck.fail([]any{"dhcp", "pool", "end"}, "%s comes before the start %s", end, start)
	}
	if p.Subnet != "" {
		pfx, err := netip.ParsePrefix(p.Subnet)
		if err != nil || !pfx.Addr().Is4() {
			ck.fail([]any{"dhcp", "pool", "subnet"}, "%q is not an IPv4 CIDR (e.g. 10.0.0.0/24)", p.Subnet)
		} else if err1 == nil && err2 == nil && (!pfx.Contains(start) || !pfx.Contains(end)) {
			ck.fail([]any{"dhcp", "pool", "subnet"}, "%s does not contain the pool %s-%s", pfx, start, end)
		}
	}
	if p.Router != "" {
		if a, err := netip.ParseAddr(p.Router); err != nil || !a.Is4() {
			ck.fail([]any{"dhcp", "pool", "router"}, "%q is not an IPv4 address", p.Router)
		}
	}
	for i, d := range p.DNS {
		if a, err := netip.ParseAddr(d); err != nil || !a.Is4() {
			ck.fail([]any{"dhcp", "pool", "dns", i}, "%q is not an IPv4 address", d)
		}
	}
}

func (c *Config) validateCluster(ck *checker) {
	switch {
	case !c.UsesCluster():
		// No cluster: machines boot, join files answer 503.
		for _, f := range []struct{ key, v string }{{"apiServerEndpoint", c.Cluster.APIServerEndpoint}, {"tokenTTL", c.Cluster.TokenTTL}} {
			if f.v != "" {
				ck.fail([]any{"cluster", f.key}, "has no effect without cluster.kubeconfig (--kubeconfig): set the kubeconfig too, or leave both out")
			}
		}
	case c.Cluster.Kubeconfig == "":
		// In a pod: the ServiceAccount's credentials (bootserver/server.LoadInCluster).
	default:
		if fi, err := os.Stat(c.Cluster.Kubeconfig); err != nil || fi.IsDir() {
			ck.fail([]any{"cluster", "kubeconfig"}, "cannot read %q: name a kubeconfig allowed to manage bootstrap tokens (e.g. /etc/kubernetes/admin.conf)", c.Cluster.Kubeconfig)
		}
	}
	if e := c.Cluster.APIServerEndpoint; e != "" {
		if h, p, err := net.SplitHostPort(e); err != nil || h == "" || p == "" {
			ck.fail([]any{"cluster", "apiServerEndpoint"}, "%q is not host:port (e.g. 10.0.0.2:6443)", e)
		}
	}
	c.TokenTTL = DefaultTokenTTL
	if c.Cluster.TokenTTL != "" {
		d, err := time.ParseDuration(c.Cluster.TokenTTL)
		if err != nil || d < MinTokenTTL || d > MaxTokenTTL {
			ck.fail([]any{"cluster", "tokenTTL"}, "%q is not a duration between %s and %s (e.g. 30m)", c.Cluster.TokenTTL, MinTokenTTL, MaxTokenTTL)
		} else {
			c.TokenTTL = d
		}
	}
}

// CmdlineFields are the fields a profile's cmdline template may use; CheckCmdline executes it with them.
type CmdlineFields struct {
	JoinURL, StatusURL, MAC, NodeName, ServerURL, RootImageURL, Profile string
}

func (c *Config) validateProfile(ck *checker, name string) {
	p := c.Profiles[name]
	at := func(k ...any) []any { return append([]any{"profiles", name}, k...) }
	if !ProfileNameRE.MatchString(name) {
		ck.fail([]any{"profiles", name}, "profile name %q must be lower-case letters, digits, '.', '-' or '_'", name)
	}
	checkFile := func(path []any, f, what string) {
		if f == "" {
			ck.fail(path, "required: the %s's file", what)
		} else if fi, err := os.Stat(f); err != nil || !fi.Mode().IsRegular() {
			ck.fail(path, "%s %q is not a readable file", what, f)
		}
	}
	checkFile(at("kernel"), p.Kernel, "kernel")
	if len(p.Initrds) == 0 {
		ck.fail(at("initrds"), "at least one initrd is needed (the initramfs with nodeagent)")
	}
	seen := map[string]bool{}
	for i, f := range p.Initrds {
		checkFile(at("initrds", i), f, "initrd")
		base := baseName(f)
		if seen[base] {
			ck.fail(at("initrds", i), "two initrds named %q: iPXE names them by file name, so names must differ", base)
		}
		seen[base] = true
	}
	if p.RootImage != "" && !strings.HasPrefix(p.RootImage, "http://") && !strings.HasPrefix(p.RootImage, "https://") {
		checkFile(at("rootImage"), p.RootImage, "root image")
	}
	c.validateControlPlane(ck, name, p)
	if p.Disk != nil {
		if err := p.Disk.Validate(); err != nil {
			ck.fail(at("disk"), "%v", err)
		}
	}
	tmpl, err := template.New(name).Option("missingkey=error").Parse(p.Cmdline)
	if err != nil {
		ck.fail(at("cmdline"), "not a valid template: %v", err)
		return
	}
	var b strings.Builder
	if err := tmpl.Execute(&b, CmdlineFields{}); err != nil {
		ck.fail(at("cmdline"), "the template fails: %v (fields: .JoinURL .StatusURL .MAC .NodeName .ServerURL .RootImageURL .Profile)", err)
	}
	if strings.ContainsAny(p.Cmdline, "\n\r") {
		ck.fail(at("cmdline"), "a kernel command line is one line")
	}
}

func (c *Config) validateMachines(ck *checker) {
	macs, uuids, names := map[hwaddr.MAC]int{}, map[string]int{}, map[string]int{}
	for i := range c.Machines {
		m := &c.Machines[i]
		at := func(k ...any) []any { return append([]any{"machines", i}, k...) }
		if m.MAC.IsZero() && m.UUID == "" {
			ck.fail(at(), "a machine needs a mac or a uuid")
		}
		if !m.MAC.IsZero() {
			if j, dup := macs[m.MAC]; dup {
				ck.fail(at("mac"), "%s is also machines[%d]", m.MAC, j)
			} else {
				macs[m.MAC] = i
			}
		}
		if m.UUID != "" {
			u, ok := CanonicalUUID(m.UUID)
			if !ok {
				ck.fail(at("uuid"), "%q is not a UUID (want 8-4-4-4-12 hex digits, as dmidecode -s system-uuid prints)", m.UUID)
			} else if j, dup := uuids[u]; dup {
				ck.fail(at("uuid"), "%s is also machines[%d]", u, j)
			} else {
				m.UUID, uuids[u] = u, i
			}
		}
		if m.Name != "" {
			if errs := validation.IsDNS1123Subdomain(m.Name); len(errs) > 0 {
				ck.fail(at("name"), "%q is not a valid node name: %s", m.Name, strings.Join(errs, "; "))
			} else if j, dup := names[m.Name]; dup {
				ck.fail(at("name"), "%q is also machines[%d]", m.Name, j)
			} else {
				names[m.Name] = i
			}
		}
		switch {
		case m.Profile != "":
			if _, ok := c.Profiles[m.Profile]; !ok {
				ck.fail(at("profile"), "profile %q is not defined under profiles", m.Profile)
			}
		case c.Unknown.Profile != "":
			m.Profile = c.Unknown.Profile
		case len(c.Profiles) == 1:
			m.Profile = slices.Sorted(maps.Keys(c.Profiles))[0]
		default:
			ck.fail(at(), "no profile: name one (there are %d profiles and no unknownMachines.profile)", len(c.Profiles))
		}
		if m.Disk != nil {
			if err := m.Disk.Validate(); err != nil {
				ck.fail(at("disk"), "%v", err)
			} else if p, ok := c.Profiles[m.Profile]; ok && p.Disk == nil {
				ck.fail(at("disk"), "profile %q is diskless: give the profile a disk (profiles.%s.disk), then override it here", m.Profile, m.Profile)
			}
		}
		for _, k := range slices.Sorted(maps.Keys(m.Labels)) {
			if errs := validation.IsQualifiedName(k); len(errs) > 0 {
				ck.fail(at("labels", k), "label key %q: %s", k, strings.Join(errs, "; "))
			}
			if errs := validation.IsValidLabelValue(m.Labels[k]); len(errs) > 0 {
				ck.fail(at("labels", k), "label value %q: %s", m.Labels[k], strings.Join(errs, "; "))
			}
		}
	}
}

func baseName(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}

package config

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
)

// Defaults of dhcp.ha. The Lease timings are client-go leader election's usual ones; MCLT (ISC
// failover's maximum client lead time) bounds the lease a binding gets before it is mirrored into
// the API, and is how long a server that adopts a shard waits before reusing addresses of that
// shard that look free.
const (
	DefaultHAShards         = 12 // divides evenly among 1, 2, 3, 4 or 6 servers
	DefaultHAMCLT           = 2 * time.Minute
	DefaultHALeaseDuration  = 15 * time.Second
	DefaultHARenewDeadline  = 10 * time.Second
	DefaultHARetryPeriod    = 2 * time.Second
	DefaultHAMirrorInterval = time.Second
	DefaultHATakeoverAfter  = 2 * time.Second // dhcpd.DefaultTakeoverAfter
	DefaultHANamespace      = "pxejoin-system"
	maxHAShards             = 256
)

// HA runs several boot servers on one segment (dhcp.ha). Addresses of machines outside the
// inventory come from pool shards, each owned by one server at a time through a Lease
// (coordination.k8s.io) in Namespace; the owner mirrors its shard's bindings into the API so that
// another server can take the shard over when it dies. Leave it out for a single server: the local
// store alone then holds the leases.
type HA struct {
	// Shards is the number of contiguous parts the pool is cut into; each server holds about
	// Shards / live servers of them. Every server of a segment must use the same pool and Shards.
	// Default 12, at most 256 and at most the pool's size.
	Shards int `yaml:"shards"`
	// MCLT is the longest lease given for a binding not yet mirrored into the API, and how long a
	// server that adopts a shard waits before handing out that shard's addresses that look free.
	// Default 2m; at least the renew deadline plus two mirror intervals.
	MCLT time.Duration `yaml:"mclt"`
	// LeaseDuration is how long a shard's Lease holds without renewal before another server may take
	// it (client-go leader election's LeaseDuration); default 15s.
	LeaseDuration time.Duration `yaml:"leaseDuration"`
	// RenewDeadline is how long the holder retries renewing before it stops allocating from the
	// shard; it must be shorter than LeaseDuration. Default 10s.
	RenewDeadline time.Duration `yaml:"renewDeadline"`
	// RetryPeriod is how often a Lease is renewed or tried; default 2s.
	RetryPeriod time.Duration `yaml:"retryPeriod"`
	// MirrorInterval is how often a shard's bindings are written to the API (when they changed);
	// default 1s.
	MirrorInterval time.Duration `yaml:"mirrorInterval"`
	// TakeoverAfter: each DISCOVER is answered at once by one live server (RFC 3074's hash of the
	// MAC picks it); the others answer a machine that is still DISCOVERing this long after they
	// first left it to that server. Default 2s.
	TakeoverAfter time.Duration `yaml:"takeoverAfter"`
	// Namespace holds the shard Leases and the mirrored bindings; default pxejoin-system.
	Namespace string `yaml:"namespace"`
	// NamePrefix starts the names of the shard Leases and binding ConfigMaps (<prefix><shard>);
	// default "pxejoin-dhcp-<segment>-" ("default" for an unnamed segment).
	NamePrefix string `yaml:"namePrefix"`
	// Identity is this server's name as Lease holder; default api.serverName (the host name).
	// Every server of a segment needs its own.
	Identity string `yaml:"identity"`
	// Claims, if set, is the range inventory machines without spec.ipv4 get their address from:
	// claimed once through the API on the machine's first boot (an IPAddress object named after
	// the address) and recorded in its Machine's status, so every server answers it the same
	// (bootserver/addrclaim). It lies in the pool's subnet, outside the pool's range, and needs
	// inventory.source kubernetes. Every server of a segment must use the same range.
	Claims *ClaimRange `yaml:"claims"`
}

// ClaimRange is dhcp.ha.claims: a range of addresses, both ends included.
type ClaimRange struct {
	Start string `yaml:"start"`
	End   string `yaml:"end"`
}

// Range returns the validated range's ends.
func (r *ClaimRange) Range() (start, end netip.Addr) {
	return netip.MustParseAddr(r.Start), netip.MustParseAddr(r.End)
}

// validateClaims checks dhcp.ha.claims.
func (c *Config) validateClaims(ck *checker) {
	r := c.DHCP.HA.Claims
	if r == nil {
		return
	}
	at := func(k string) []any { return []any{"dhcp", "ha", "claims", k} }
	if c.Inventory.Source != InventoryKubernetes {
		ck.fail([]any{"dhcp", "ha", "claims"}, "needs inventory.source kubernetes: a claim is recorded in the machine's Machine object")
	}
	start, err1 := netip.ParseAddr(r.Start)
	end, err2 := netip.ParseAddr(r.End)
	if err1 != nil || !start.Is4() {
		ck.fail(at("start"), "%q is not an IPv4 address", r.Start)
	}
	if err2 != nil || !end.Is4() {
		ck.fail(at("end"), "%q is not an IPv4 address", r.End)
	}
	if err1 != nil || err2 != nil || !start.Is4() || !end.Is4() {
		return
	}
	if end.Less(start) {
		ck.fail(at("end"), "%s comes before start %s", end, start)
		return
	}
	ps, e1 := netip.ParseAddr(c.DHCP.Pool.Start)
	pe, e2 := netip.ParseAddr(c.DHCP.Pool.End)
	if e1 == nil && e2 == nil && !end.Less(ps) && !pe.Less(start) {
		ck.fail([]any{"dhcp", "ha", "claims"}, "%s-%s overlaps the pool %s-%s: claims and the shards of the pool must not share addresses; move one of them",
			start, end, ps, pe)
	}
	if sub, err := netip.ParsePrefix(c.DHCP.Pool.Subnet); err == nil && (!sub.Contains(start) || !sub.Contains(end)) {
		ck.fail([]any{"dhcp", "ha", "claims"}, "%s-%s is not inside the pool's subnet %s", start, end, sub)
	}
}

// validateHA fills dhcp.ha's defaults and checks it; it runs after validateAPI (Identity's default
// is api.serverName).
func (c *Config) validateHA(ck *checker) {
	h := c.DHCP.HA
	if h == nil {
		return
	}
	at := func(k string) []any { return []any{"dhcp", "ha", k} }
	if c.DHCP.Mode != DHCPFull {
		ck.fail([]any{"dhcp", "ha"}, "needs dhcp.mode full (mode is %s): shards cut the pool of addresses", c.DHCP.Mode)
		return
	}
	if !c.UsesCluster() {
		ck.fail([]any{"dhcp", "ha"}, "needs the Kubernetes API: set cluster.kubeconfig (--kubeconfig) or run in a pod; the shards' Leases and bindings live there")
	}
	durations := []struct {
		key string
		v   *time.Duration
		def time.Duration
	}{
		{"mclt", &h.MCLT, DefaultHAMCLT},
		{"leaseDuration", &h.LeaseDuration, DefaultHALeaseDuration},
		{"renewDeadline", &h.RenewDeadline, DefaultHARenewDeadline},
		{"retryPeriod", &h.RetryPeriod, DefaultHARetryPeriod},
		{"mirrorInterval", &h.MirrorInterval, DefaultHAMirrorInterval},
		{"takeoverAfter", &h.TakeoverAfter, DefaultHATakeoverAfter},
	}
	bad := false
	for _, d := range durations {
		if *d.v < 0 {
			ck.fail(at(d.key), "%s is negative (leave it out for %s)", *d.v, d.def)
			bad = true
		} else if *d.v == 0 {
			*d.v = d.def
		}
	}
	if !bad {
		// client-go's leaderelection refuses these too, but only at start and without naming the field.
		if h.LeaseDuration%time.Second != 0 {
			// A Lease records whole seconds: the others would count a shorter duration than the holder.
			ck.fail(at("leaseDuration"), "%s is not a whole number of seconds (a Lease records seconds)", h.LeaseDuration)
		}
		if h.RenewDeadline >= h.LeaseDuration {
			ck.fail(at("renewDeadline"), "%s is not shorter than leaseDuration %s: the holder must stop before another server may take the shard", h.RenewDeadline, h.LeaseDuration)
		}
		if float64(h.RenewDeadline) <= 1.2*float64(h.RetryPeriod) {
			ck.fail(at("retryPeriod"), "%s leaves no retry within renewDeadline %s: make it at most renewDeadline/1.2", h.RetryPeriod, h.RenewDeadline)
		}
		if min := h.RenewDeadline + 2*h.MirrorInterval; h.MCLT < min {
			ck.fail(at("mclt"), "%s is shorter than renewDeadline + 2 mirror intervals (%s): bindings made before a server stops could outlive it", h.MCLT, min)
		}
	}
	if h.Shards == 0 {
		h.Shards = DefaultHAShards
	}
	if h.Shards < 0 || h.Shards > maxHAShards {
		ck.fail(at("shards"), "%d is not between 1 and %d (leave it out for %d)", h.Shards, maxHAShards, DefaultHAShards)
	} else if n, ok := poolSize(c.DHCP.Pool); ok && h.Shards > n {
		ck.fail(at("shards"), "%d shards do not fit a pool of %d addresses: use fewer shards or a larger pool", h.Shards, n)
	}
	if h.Namespace == "" {
		h.Namespace = DefaultHANamespace
	}
	if errs := validation.IsDNS1123Label(h.Namespace); len(errs) > 0 {
		ck.fail(at("namespace"), "%q is not a namespace name: %s", h.Namespace, strings.Join(errs, "; "))
	}
	if h.NamePrefix == "" {
		seg := c.Segment
		if seg == "" {
			seg = "default"
		}
		h.NamePrefix = "pxejoin-dhcp-" + seg + "-"
	}
	if errs := validation.IsDNS1123Subdomain(h.NamePrefix + "0"); len(errs) > 0 || len(h.NamePrefix) > 60 {
		ck.fail(at("namePrefix"), "%q does not start a valid object name (lower-case letters, digits, '-', '.', at most 60 characters): %s", h.NamePrefix, strings.Join(errs, "; "))
	}
	if h.Identity == "" {
		h.Identity = c.API.ServerName
	}
	if len(h.Identity) > 128 {
		ck.fail(at("identity"), "%s is longer than 128 characters", fmt.Sprintf("%.20q…", h.Identity))
	}
	c.validateClaims(ck)
}

// poolSize is the number of addresses of a valid pool.
func poolSize(p Pool) (int, bool) {
	start, err1 := netip.ParseAddr(p.Start)
	end, err2 := netip.ParseAddr(p.End)
	if err1 != nil || err2 != nil || !start.Is4() || !end.Is4() || end.Less(start) {
		return 0, false
	}
	s, e := start.As4(), end.As4()
	u := func(b [4]byte) int { return int(b[0])<<24 | int(b[1])<<16 | int(b[2])<<8 | int(b[3]) }
	return u(e) - u(s) + 1, true
}

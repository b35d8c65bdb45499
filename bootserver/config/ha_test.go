package config

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// withHA puts a dhcp.ha section (line 9) after the pool of valid.
func withHA(ha string) func(string) string {
	return func(s string) string {
		return strings.Replace(s, "    end: 10.0.0.200\n", "    end: 10.0.0.200\n  ha: "+ha+"\n", 1)
	}
}

func TestHADefaults(t *testing.T) {
	_, expand := files(t)
	c, err := Parse("bootserver.yaml", []byte(expand(withHA("{}")(valid))))
	if err != nil {
		t.Fatal(err)
	}
	want := HA{Shards: DefaultHAShards, MCLT: DefaultHAMCLT, LeaseDuration: DefaultHALeaseDuration,
		RenewDeadline: DefaultHARenewDeadline, RetryPeriod: DefaultHARetryPeriod, MirrorInterval: DefaultHAMirrorInterval, TakeoverAfter: DefaultHATakeoverAfter,
		Namespace: DefaultHANamespace, NamePrefix: "pxejoin-dhcp-default-", Identity: c.API.ServerName}
	if c.DHCP.HA == nil || *c.DHCP.HA != want {
		t.Errorf("ha defaults: got %+v, want %+v", c.DHCP.HA, want)
	}
	c, err = Parse("bootserver.yaml", []byte(expand(valid)))
	if err != nil || c.DHCP.HA != nil {
		t.Errorf("no ha: section gives %+v, %v; want nil (one server)", c.DHCP.HA, err)
	}
	c, err = Parse("bootserver.yaml", []byte(expand(strings.Replace(withHA("{shards: 4, mclt: 30s, identity: bs-a}")(valid), "stateDir:", "segment: rack-7\nstateDir:", 1))))
	if err != nil {
		t.Fatal(err)
	}
	if h := c.DHCP.HA; h.Shards != 4 || h.MCLT != 30*time.Second || h.Identity != "bs-a" || h.NamePrefix != "pxejoin-dhcp-rack-7-" {
		t.Errorf("ha: %+v", h)
	}
}

func TestHAErrors(t *testing.T) {
	_, expand := files(t)
	tests := []struct {
		name    string
		edit    func(string) string
		line    int
		message string
	}{
		{"too many shards", withHA("{shards: 102}"), 9, "dhcp.ha.shards: 102 shards do not fit a pool of 101 addresses"},
		{"negative shards", withHA("{shards: -1}"), 9, "dhcp.ha.shards: -1 is not between 1 and 256"},
		{"renew deadline too long", withHA("{leaseDuration: 10s, renewDeadline: 10s}"), 9, "dhcp.ha.renewDeadline: 10s is not shorter than leaseDuration 10s"},
		{"retry period too long", withHA("{renewDeadline: 3s, retryPeriod: 3s}"), 9, "dhcp.ha.retryPeriod: 3s leaves no retry"},
		{"mclt too short", withHA("{mclt: 5s}"), 9, "dhcp.ha.mclt: 5s is shorter than renewDeadline + 2 mirror intervals (12s)"},
		{"fractional lease duration", withHA("{leaseDuration: 1500ms, renewDeadline: 1s, retryPeriod: 200ms, mclt: 5s}"), 9, "dhcp.ha.leaseDuration: 1.5s is not a whole number of seconds"},
		{"negative mclt", withHA("{mclt: -1s}"), 9, "dhcp.ha.mclt: -1s is negative"},
		{"bad namespace", withHA("{namespace: Kube_System}"), 9, `dhcp.ha.namespace: "Kube_System" is not a namespace name`},
		{"bad prefix", withHA("{namePrefix: Shard_}"), 9, `dhcp.ha.namePrefix: "Shard_" does not start a valid object name`},
		{"proxy mode", func(s string) string {
			s = strings.Replace(s, "  mode: full\n  pool:\n    start: 10.0.0.100\n    end: 10.0.0.200\n", "  mode: proxy\n  ha: {}\n", 1)
			return s
		}, 6, "dhcp.ha: needs dhcp.mode full (mode is proxy)"},
		{"claims overlap the pool", withHA("{claims: {start: 10.0.0.200, end: 10.0.0.220}}"), 9,
			"dhcp.ha.claims: 10.0.0.200-10.0.0.220 overlaps the pool 10.0.0.100-10.0.0.200"},
		{"claims without Machines", withHA("{claims: {start: 10.0.0.201, end: 10.0.0.220}}"), 9,
			"dhcp.ha.claims: needs inventory.source kubernetes"},
		{"claims reversed", withHA("{claims: {start: 10.0.0.220, end: 10.0.0.201}}"), 9,
			"dhcp.ha.claims.end: 10.0.0.201 comes before start 10.0.0.220"},
		{"claims not an address", withHA("{claims: {start: 10.0.0.300, end: 10.0.0.201}}"), 9,
			`dhcp.ha.claims.start: "10.0.0.300" is not an IPv4 address`},
		{"no cluster", func(s string) string {
			s = strings.Replace(s, "cluster:\n  kubeconfig: $D/admin.conf\n  tokenTTL: 20m\n", "", 1)
			return withHA("{}")(s)
		}, 9, "dhcp.ha: needs the Kubernetes API: set cluster.kubeconfig"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("bootserver.yaml", []byte(expand(tt.edit(valid))))
			if err == nil {
				t.Fatal("accepted")
			}
			want := "bootserver.yaml:" + strconv.Itoa(tt.line) + ": "
			found := false
			for _, line := range strings.Split(err.Error(), "\n") {
				if strings.HasPrefix(line, want) && strings.Contains(line, tt.message) {
					found = true
				}
			}
			if !found {
				t.Errorf("error %q\nwants a line starting %q containing %q", err, want, tt.message)
			}
		})
	}
}

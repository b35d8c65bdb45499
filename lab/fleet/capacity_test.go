package fleet

import (
	"strings"
	"testing"
	"time"
)

func TestParseStatCPU(t *testing.T) {
	for _, tc := range []struct {
		name, stat string
		want       time.Duration
		err        bool
	}{
		// Fields 14 and 15 (utime 250, stime 40 ticks); cutime and cstime (16, 17) are children's.
		{"plain", "4242 (bootserver) S 1 4242 4242 0 -1 4194560 1200 0 0 0 250 40 7000 9000 20 0 9 0 100 0 0", 2900 * time.Millisecond, false},
		{"name with spaces and parentheses", "7 (a) b (c) R 1 7 7 0 -1 0 0 0 0 0 3 4 5 6 20 0 1 0 1 0 0", 70 * time.Millisecond, false},
		{"no name", "7 a R 1", 0, true},
		{"short", "7 (a) R 1 7 7 0 -1 0 0 0 0 0 3", 0, true},
		{"not a number", "7 (a) R 1 7 7 0 -1 0 0 0 0 0 x 4 5 6", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStatCPU([]byte(tc.stat))
			if (err != nil) != tc.err || got != tc.want {
				t.Errorf("parseStatCPU = %v, %v; want %v, error %v", got, err, tc.want, tc.err)
			}
		})
	}
}

func TestParseMachineBusy(t *testing.T) {
	// user nice system idle iowait irq softirq steal guest guest_nice: busy = 100+2+30+0+4+1.
	got, err := parseMachineBusy([]byte("cpu  100 2 30 5000 70 0 4 1 9 0\ncpu0 50 1 15 2500 35 0 2 0 0 0\n"))
	if err != nil || got != 1370*time.Millisecond {
		t.Errorf("parseMachineBusy = %v, %v; want 1.37s", got, err)
	}
	for _, bad := range []string{"", "cpu0 1 2 3 4 5 6 7 8", "cpu 1 2 3", "cpu 1 2 3 4 5 6 x 8"} {
		if _, err := parseMachineBusy([]byte(bad)); err == nil {
			t.Errorf("parseMachineBusy(%q): no error", bad)
		}
	}
}

func TestParseRcvbufErrors(t *testing.T) {
	snmp := `Ip: Forwarding DefaultTTL
Ip: 1 64
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 2496752 893 37 2498450 36 0 0 0 0
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
UdpLite: 0 0 0 0 99 0 0 0 0
`
	if n, err := parseRcvbufErrors([]byte(snmp)); err != nil || n != 36 {
		t.Errorf("parseRcvbufErrors = %d, %v; want 36", n, err)
	}
	if _, err := parseRcvbufErrors([]byte("Ip: Forwarding\nIp: 1\n")); err == nil {
		t.Error("no Udp lines: no error")
	}
}

func TestQuantile(t *testing.T) {
	ms := func(v ...int) (ds []time.Duration) {
		for _, x := range v {
			ds = append(ds, time.Duration(x)*time.Millisecond)
		}
		return ds
	}
	hundred := make([]int, 100) // 100 ms, 99 ms, ..., 1 ms: unsorted
	for i := range hundred {
		hundred[i] = 100 - i
	}
	for _, tc := range []struct {
		ds   []time.Duration
		q    float64
		want time.Duration
	}{
		{nil, 0.5, 0},
		{ms(7), 0.99, 7 * time.Millisecond},
		{ms(3, 1, 2), 0.5, 2 * time.Millisecond},
		{ms(hundred...), 0.5, 51 * time.Millisecond}, // nearest rank: index 49.5 rounds to 50
		{ms(hundred...), 0.99, 99 * time.Millisecond},
		{ms(hundred...), 1, 100 * time.Millisecond},
	} {
		if got := quantile(tc.ds, tc.q); got != tc.want {
			t.Errorf("quantile(%d values, %v) = %v, want %v", len(tc.ds), tc.q, got, tc.want)
		}
	}
}

// TestHAResultString: the report gives each setup's capacity and CPU figures, the burst as a time
// (not a rate), the ratios against the target, and says when a capacity figure is not one.
func TestHAResultString(t *testing.T) {
	one := &Capacity{Machines: 6000, InFlight: 32, Elapsed: 3 * time.Second, P50: 15 * time.Millisecond, P99: 40 * time.Millisecond,
		ServerCPU: []time.Duration{2 * time.Second}, Idle: 5 * time.Millisecond, ClientCPU: time.Second, Busy: 5400 * time.Millisecond, Cores: 2}
	two := &Capacity{Machines: 6000, InFlight: 32, Elapsed: 4 * time.Second, P50: 20 * time.Millisecond, P99: 90 * time.Millisecond, Retransmits: 3, ClientDrops: 2,
		ServerCPU: []time.Duration{1500 * time.Millisecond, 1500 * time.Millisecond}, Idle: 20 * time.Millisecond, ClientCPU: time.Second, Busy: 8 * time.Second, Cores: 2}
	oneHA := &Capacity{Machines: 6000, InFlight: 32, Elapsed: 3 * time.Second, ServerCPU: []time.Duration{2400 * time.Millisecond}, Cores: 2}
	r := &HAResult{N: 1000, Known: 500, One: HASetup{Capacity: one, Burst: 3100 * time.Millisecond}, OneHA: HASetup{Capacity: oneHA, Burst: time.Second},
		Two: HASetup{Capacity: two, Burst: 1300 * time.Millisecond, Failed: 4}, KillFailed: 40, Adopted: 8500 * time.Millisecond, Limit: 9 * time.Second}
	got := r.String()
	for _, want := range []string{
		"capacity: 6000 machines, 32 in flight: 2000 DORA/s, DORA p50 15ms, p99 40ms, 0 exchanges retransmitted\n",
		"server CPU 2.00 s: 3000 DORA per server CPU-second (idle: 5ms CPU/s); client 1.00 s CPU; machine 1.8 of 2 cores busy",
		"burst: all 1000 leased in 3.1 s",
		"1500 DORA/s, DORA p50 20ms, p99 90ms, 3 exchanges retransmitted (datagrams dropped for a full socket buffer: 2 by the client, 0 by the servers) (not a capacity figure: lower -inflight)",
		"server CPU 3.00 s (1.50 + 1.50): 2000 DORA per server CPU-second",
		"burst: 996 of 1000 leased in 1.3 s, 4 without a lease",
		"one server with dhcp.ha (shards, their Leases and mirror):\n    capacity: 6000 machines, 32 in flight: 2000 DORA/s",
		"sharding alone (one server with dhcp.ha / without): capacity 1.00×, DORA per server CPU-second 0.83× (target ≥ 0.9×",
		"two servers / one, on the same 2 cores: capacity 0.75×, DORA per server CPU-second 0.67× (target ≥ 0.9×",
		"3000 DORA per CPU-second with one server, 2500 with one with dhcp.ha, 2000 with two",
		"survivor held every shard 8.5s after the kill (target ≤ lease duration + MCLT = 9s)",
		"40 after the burst, 0 after booting again",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("report lacks %q:\n%s", want, got)
		}
	}
	if strings.Count(got, "not a capacity figure") != 1 {
		t.Errorf("only the two servers' figure has retransmits:\n%s", got)
	}
}

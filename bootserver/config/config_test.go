package config

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// files creates the kernel, initrd and kubeconfig a valid file names, in a temp dir.
func files(t *testing.T) (dir string, expand func(string) string) {
	t.Helper()
	dir = t.TempDir()
	for _, f := range []string{"vmlinuz", "initramfs.cpio.gz", "admin.conf", "root.squashfs"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(f), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir, func(s string) string { return strings.ReplaceAll(s, "$D", dir) }
}

const valid = `interface: eth1
listen:
  http: ":8080"
dhcp:
  mode: full
  pool:
    start: 10.0.0.100
    end: 10.0.0.200
tftp:
  root: $D
cluster:
  kubeconfig: $D/admin.conf
  tokenTTL: 20m
stateDir: $D/state
unknownMachines:
  profile: worker
profiles:
  worker:
    kernel: $D/vmlinuz
    initrds: [$D/initramfs.cpio.gz]
    cmdline: console=ttyS0 pxejoin.url={{.JoinURL}} pxejoin.status={{.StatusURL}}
    rootImage: $D/root.squashfs
machines:
  - mac: 52:54:00:00:00:01
    name: worker-1
    labels: {rack: r1}
  - uuid: 4C4C4544-0000-1000-8000-000000000001
    profile: worker
`

func TestParseValid(t *testing.T) {
	_, expand := files(t)
	c, err := Parse("bootserver.yaml", []byte(expand(valid)))
	if err != nil {
		t.Fatal(err)
	}
	if c.TokenTTL != 20*time.Minute {
		t.Errorf("TokenTTL = %s", c.TokenTTL)
	}
	if c.Approval != (Approval{Mode: ApprovalPxejoin, SelfCheck: SelfCheckStrict}) {
		t.Errorf("approval defaults: %+v", c.Approval)
	}
	if c.Machines[1].UUID != "4c4c4544-0000-1000-8000-000000000001" || c.Machines[0].Profile != "worker" {
		t.Errorf("machines not canonicalised: %+v", c.Machines)
	}
	persistent := strings.Replace(valid, "    rootImage: $D/root.squashfs\n", "    rootImage: $D/root.squashfs\n    disk: {minSizeGiB: 20}\n", 1)
	persistent = strings.Replace(persistent, "    name: worker-1\n", "    name: worker-1\n    disk: {path: /dev/disk/by-id/virtio-a, policy: wipe}\n", 1)
	if p, err := Parse("bootserver.yaml", []byte(expand(persistent))); err != nil {
		t.Errorf("a persistent profile: %v", err)
	} else if d := p.Profiles["worker"].Disk; d == nil || d.MinSizeGiB != 20 || p.Machines[0].Disk.Policy != "wipe" {
		t.Errorf("disks: profile %+v, machine %+v", d, p.Machines[0].Disk)
	}
	if c.Listen.TFTP != DefaultTFTPAddr {
		t.Errorf("tftp default not applied: %q", c.Listen.TFTP)
	}
	wantHTTP := HTTP{ReadHeaderTimeout: DefaultReadHeaderTimeout, IdleTimeout: DefaultIdleTimeout, MaxHeaderBytes: DefaultMaxHeaderBytes, MaxConnsPerClient: DefaultMaxConnsPerClient}
	if c.HTTP != wantHTTP || c.Unknown.MaxTokens != DefaultUnknownMaxTokens || c.Unknown.TokensPerMinute != DefaultUnknownTokensPerMinute {
		t.Errorf("limit defaults not applied: %+v %+v", c.HTTP, c.Unknown)
	}
	wantAPI := API{Budget: Budget{DefaultAPIQPS, DefaultAPIBurst}, TokenCreates: Budget{DefaultTokenCreateQPS, DefaultTokenCreateBurst},
		TokenDeletes: Budget{DefaultTokenDeleteQPS, DefaultTokenDeleteBurst}, StatusWrites: Budget{DefaultStatusWriteQPS, DefaultStatusWriteBurst},
		Claims:      Budget{DefaultClaimQPS, DefaultClaimBurst},
		StatusQueue: DefaultStatusQueue, ServerName: c.API.ServerName}
	if c.API != wantAPI || c.API.ServerName == "" {
		t.Errorf("api defaults not applied: %+v", c.API)
	}
	limits := strings.Replace(valid, "  profile: worker\nprofiles:", "  profile: worker\n  maxTokens: 5\nhttp: {readHeaderTimeout: 3s, maxConnsPerClient: 2}\napi: {qps: 50, tokenCreates: {qps: 30, burst: 5}}\nprofiles:", 1)
	if c, err = Parse("bootserver.yaml", []byte(expand(limits))); err != nil {
		t.Fatal(err)
	}
	if c.HTTP.ReadHeaderTimeout != 3*time.Second || c.HTTP.MaxConnsPerClient != 2 || c.HTTP.IdleTimeout != DefaultIdleTimeout || c.Unknown.MaxTokens != 5 {
		t.Errorf("limits: %+v %+v", c.HTTP, c.Unknown)
	}
	if c.API.Budget != (Budget{50, 50}) || c.API.TokenCreates != (Budget{30, 5}) || c.API.TokenDeletes.QPS != DefaultTokenDeleteQPS {
		t.Errorf("api budgets: %+v", c.API)
	}
}

// TestParseErrors checks that each bad file is refused with the line and the reason.
func TestParseErrors(t *testing.T) {
	_, expand := files(t)
	tests := []struct {
		name    string
		edit    func(string) string
		line    int
		message string
	}{
		{"unknown top-level field", func(s string) string { return strings.Replace(s, "stateDir:", "statedir:", 1) }, 14, "unknown field statedir in the top level"},
		{"unknown field in a machine", func(s string) string { return strings.Replace(s, "    name: worker-1", "    nmae: worker-1", 1) }, 25, "unknown field nmae in a machine"},
		{"bad MAC", func(s string) string { return strings.Replace(s, "52:54:00:00:00:01", "52:54:00:zz:00:01", 1) }, 24, `machines[0].mac: "52:54:00:zz:00:01" is not a MAC address`},
		{"bad UUID", func(s string) string { return strings.Replace(s, "4C4C4544-0000", "4C4C4544-00", 1) }, 27, "machines[1].uuid: "},
		{"undefined profile", func(s string) string { return strings.Replace(s, "    profile: worker", "    profile: gpu", 1) }, 28, `machines[1].profile: profile "gpu" is not defined`},
		{"bad dhcp mode", func(s string) string { return strings.Replace(s, "mode: full", "mode: fulll", 1) }, 5, `dhcp.mode: "fulll" is not one of`},
		{"pool end before start", func(s string) string { return strings.Replace(s, "end: 10.0.0.200", "end: 10.0.0.1", 1) }, 8, "dhcp.pool.end: 10.0.0.1 comes before"},
		{"bad token TTL", func(s string) string { return strings.Replace(s, "tokenTTL: 20m", "tokenTTL: 20", 1) }, 13, `cluster.tokenTTL: "20" is not a duration`},
		{"missing kernel file", func(s string) string { return strings.Replace(s, "$D/vmlinuz", "$D/nope", 1) }, 19, "profiles.worker.kernel: kernel"},
		{"bad cmdline template", func(s string) string { return strings.Replace(s, "{{.JoinURL}}", "{{.JoinUrl}}", 1) }, 21, "profiles.worker.cmdline: the template fails"},
		{"bad label", func(s string) string { return strings.Replace(s, "{rack: r1}", "{rack: r1/2}", 1) }, 26, `machines[0].labels.rack: label value "r1/2"`},
		{"syntax error", func(s string) string { return strings.Replace(s, "  http: \":8080\"", "\thttp: x", 1) }, 3, "found character that cannot start any token"},
		{"wrong type", func(s string) string { return strings.Replace(s, "initrds: [$D/initramfs.cpio.gz]", "initrds: 3", 1) }, 20, "cannot unmarshal !!int `3` into []string"},
		{"duplicate MAC", func(s string) string {
			return s + "  - mac: 52-54-00-00-00-01\n"
		}, 29, "machines[2].mac: 52:54:00:00:00:01 is also machines[0]"},
		{"negative timeline budget", func(s string) string {
			return strings.Replace(s, "  profile: worker\nprofiles:", "  profile: worker\n  maxTimelines: -1\nprofiles:", 1)
		}, 17, "unknownMachines.maxTimelines: -1 is negative"},
		{"negative dhcp limit", func(s string) string {
			return strings.Replace(s, "  mode: full\n", "  mode: full\n  maxUnknownLeases: -1\n", 1)
		}, 6, "dhcp.maxUnknownLeases: -1 is negative"},
		{"negative tftp limit", func(s string) string {
			return strings.Replace(s, "  root: $D\n", "  root: $D\n  maxTransfersPerClient: -2\n", 1)
		}, 9, "tftp: maxTransfers and maxTransfersPerClient must not be negative"},
		{"token TTL without a kubeconfig", func(s string) string { return strings.Replace(s, "  kubeconfig: $D/admin.conf\n", "", 1) }, 12, "cluster.tokenTTL: has no effect without cluster.kubeconfig"},
		{"missing kubeconfig file", func(s string) string { return strings.Replace(s, "$D/admin.conf", "$D/nope.conf", 1) }, 12, `cluster.kubeconfig: cannot read`},
		{"negative limit", func(s string) string {
			return strings.Replace(s, "  profile: worker\nprofiles:", "  profile: worker\n  maxTokens: -1\nprofiles:", 1)
		}, 17, "unknownMachines.maxTokens: -1 is negative"},
		{"negative api budget", func(s string) string {
			return strings.Replace(s, "stateDir:", "api: {qps: 50, tokenDeletes: {qps: -1}}\nstateDir:", 1)
		}, 14, "api.tokenDeletes.qps: -1 is not a rate between 0 and 10000"},
		{"bad duration", func(s string) string { return strings.Replace(s, "stateDir:", "http: {idleTimeout: 2}\nstateDir:", 1) }, 14, "cannot unmarshal !!int `2` into time.Duration"},
		{"unknown inventory source", func(s string) string {
			return strings.Replace(s, "stateDir:", "inventory: {source: etcd}\nstateDir:", 1)
		}, 14, `inventory.source: "etcd" is not one of file, kubernetes`},
		{"kubernetes inventory and machines", func(s string) string {
			return strings.Replace(s, "stateDir:", "inventory: {source: kubernetes}\nstateDir:", 1)
		}, 24, "machines: the machines come from the cluster (inventory.source kubernetes): move them there with `bootserver import FILE`"},
		{"kubernetes inventory without a cluster", func(s string) string {
			s = strings.Replace(s, "cluster:\n  kubeconfig: $D/admin.conf\n  tokenTTL: 20m\n", "", 1)
			return strings.Replace(s, "stateDir:", "inventory: {source: kubernetes}\nstateDir:", 1)
		}, 11, "inventory.source: kubernetes needs cluster.kubeconfig"},
		{"bad segment", func(s string) string { return strings.Replace(s, "stateDir:", "segment: Rack_1\nstateDir:", 1) }, 14, `segment: "Rack_1" is not a segment name`},
		{"bad approval mode", func(s string) string {
			return strings.Replace(s, "stateDir:", "approval: {mode: kubadm}\nstateDir:", 1)
		}, 14, `approval.mode: "kubadm" is not pxejoin or kubeadm`},
		{"bad self-check", func(s string) string {
			return strings.Replace(s, "stateDir:", "approval: {selfCheck: off}\nstateDir:", 1)
		}, 14, `approval.selfCheck: "off" is not strict or warn`},
		{"disk path not stable", func(s string) string {
			return strings.Replace(s, "    rootImage: $D/root.squashfs\n", "    rootImage: $D/root.squashfs\n    disk: {path: /dev/sda}\n", 1)
		}, 23, `profiles.worker.disk: path "/dev/sda" is not a stable name`},
		{"disk without path or size", func(s string) string {
			return strings.Replace(s, "    rootImage: $D/root.squashfs\n", "    rootImage: $D/root.squashfs\n    disk:\n      policy: install\n", 1)
		}, 23, "profiles.worker.disk: a disk needs path"},
		{"disk policy", func(s string) string {
			return strings.Replace(s, "    rootImage: $D/root.squashfs\n", "    rootImage: $D/root.squashfs\n    disk: {minSizeGiB: 20, policy: always}\n", 1)
		}, 23, `profiles.worker.disk: policy "always"`},
		{"unknown disk field", func(s string) string {
			return strings.Replace(s, "    rootImage: $D/root.squashfs\n", "    rootImage: $D/root.squashfs\n    disk: {minSize: 20}\n", 1)
		}, 23, "unknown field minSize in a disk"},
		{"machine disk on a diskless profile", func(s string) string {
			return strings.Replace(s, "    name: worker-1\n", "    name: worker-1\n    disk: {path: /dev/disk/by-id/virtio-a}\n", 1)
		}, 26, `machines[0].disk: profile "worker" is diskless`},
		{"bad domain", func(s string) string {
			return strings.Replace(s, "stateDir:", "approval: {domain: Rack_1}\nstateDir:", 1)
		}, 14, `approval.domain: "Rack_1" is not a DNS domain`},
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

func TestQuick(t *testing.T) {
	dir, _ := files(t)
	q := Quick{
		Interface: "eth1", DHCPMode: "proxy", Kernel: dir + "/vmlinuz", Initrds: []string{dir + "/initramfs.cpio.gz"},
		Cmdline: "pxejoin.url={{.JoinURL}}", Kubeconfig: dir + "/admin.conf", TFTPRoot: dir,
	}
	c, err := FromQuick(q)
	if err != nil {
		t.Fatal(err)
	}
	if c.Unknown.Profile != QuickProfile {
		t.Errorf("quick mode must boot every machine with %q", QuickProfile)
	}
	q.DHCPMode = "full"
	q.Kernel = dir + "/missing"
	_, err = FromQuick(q)
	if err == nil || !strings.Contains(err.Error(), "flags: --kernel: kernel") || !strings.Contains(err.Error(), "--pool-start") {
		t.Errorf("want errors naming --kernel and --pool-start, got %v", err)
	}
}

// TestNoCluster: a file without a cluster section is valid (machines boot, join files answer 503).
func TestNoCluster(t *testing.T) {
	_, expand := files(t)
	noCluster := strings.Replace(valid, "cluster:\n  kubeconfig: $D/admin.conf\n  tokenTTL: 20m\n", "", 1)
	c, err := Parse("bootserver.yaml", []byte(expand(noCluster)))
	if err != nil {
		t.Fatal(err)
	}
	if c.Cluster.Kubeconfig != "" {
		t.Errorf("kubeconfig %q", c.Cluster.Kubeconfig)
	}
}

// TestQuickCmdline: quick mode's command line carries the agent's parameters, the user's own first.
func TestQuickCmdline(t *testing.T) {
	tests := []struct {
		user      string
		rootImage bool
		want      string
	}{
		{"", false, "pxejoin.url={{.JoinURL}} pxejoin.status={{.StatusURL}} pxejoin.mac={{.MAC}}"},
		{"", true, "pxejoin.url={{.JoinURL}} pxejoin.status={{.StatusURL}} pxejoin.mac={{.MAC}} pxejoin.image={{.RootImageURL}}"},
		{" console=ttyS0  quiet ", false, "console=ttyS0  quiet pxejoin.url={{.JoinURL}} pxejoin.status={{.StatusURL}} pxejoin.mac={{.MAC}}"},
		{"console=ttyS0 pxejoin.url={{.JoinURL}} BOOTIF=01-aa", false, "console=ttyS0 pxejoin.url={{.JoinURL}} BOOTIF=01-aa pxejoin.status={{.StatusURL}}"},
		{"pxejoin.url=http://x/j pxejoin.status=http://x/s pxejoin.mac=aa pxejoin.image=http://x/i", true, "pxejoin.url=http://x/j pxejoin.status=http://x/s pxejoin.mac=aa pxejoin.image=http://x/i"},
		{"xpxejoin.url=1", false, "xpxejoin.url=1 pxejoin.url={{.JoinURL}} pxejoin.status={{.StatusURL}} pxejoin.mac={{.MAC}}"},
	}
	for _, tt := range tests {
		if got := QuickCmdline(tt.user, tt.rootImage); got != tt.want {
			t.Errorf("QuickCmdline(%q, %v) = %q\nwant %q", tt.user, tt.rootImage, got, tt.want)
		}
	}
	// Quick mode without --cmdline and without --kubeconfig is valid and gets them.
	dir, _ := files(t)
	c, err := FromQuick(Quick{Interface: "eth1", DHCPMode: "proxy", Kernel: dir + "/vmlinuz", Initrds: []string{dir + "/initramfs.cpio.gz"}, TFTPRoot: dir})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Profiles[QuickProfile].Cmdline; got != QuickCmdline("", false) {
		t.Errorf("cmdline %q", got)
	}
}

// TestExampleFile keeps bootserver.example.yaml valid (its paths moved to a temp dir).
func TestExampleFile(t *testing.T) {
	dir, _ := files(t)
	raw, err := os.ReadFile("../bootserver.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"initramfs.img"} {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s := strings.NewReplacer("/srv/pxejoin/images/worker", dir, "/run/credentials/bootserver.service/kubeconfig", dir+"/admin.conf",
		"/usr/lib/ipxe", dir).Replace(string(raw))
	c, err := Parse("bootserver.example.yaml", []byte(s))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(c.Profiles["worker"].Cmdline, "console=ttyS0 pxejoin.url={{.JoinURL}} ") || strings.Contains(c.Profiles["worker"].Cmdline, "\n") {
		t.Errorf("cmdline %q", c.Profiles["worker"].Cmdline)
	}
}

// TestInCluster: in a pod (KUBERNETES_SERVICE_HOST set) a file without cluster.kubeconfig connects
// with the ServiceAccount, so cluster settings are valid there; outside a pod they are not.
func TestInCluster(t *testing.T) {
	_, expand := files(t)
	file := []byte(expand(strings.Replace(valid, "  kubeconfig: $D/admin.conf\n", "", 1)))
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if _, err := Parse("bootserver.yaml", file); err == nil || !strings.Contains(err.Error(), "has no effect without cluster.kubeconfig") {
		t.Errorf("outside a pod: %v", err)
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
	c, err := Parse("bootserver.yaml", file)
	if err != nil {
		t.Fatalf("in a pod: %v", err)
	}
	if !c.UsesCluster() || c.TokenTTL != 20*time.Minute {
		t.Errorf("in a pod: UsesCluster %v, TokenTTL %v", c.UsesCluster(), c.TokenTTL)
	}
}

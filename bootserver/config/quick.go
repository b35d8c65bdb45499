package config

import (
	"strings"
)

// QuickProfile is the name of the one profile quick mode builds.
const QuickProfile = "default"

// Quick holds quick mode's flags (as `pixiecore boot` offers): one profile for every PXE client,
// no inventory file.
type Quick struct {
	Interface  string
	DHCPMode   string
	PoolStart  string
	PoolEnd    string
	Kernel     string
	Initrds    []string
	Cmdline    string
	RootImage  string
	Kubeconfig string
	APIServer  string
	TokenTTL   string
	HTTPAddr   string
	TFTPAddr   string
	TFTPRoot   string
	ServerURL  string
	StateDir   string
}

// quickFlags names the flag behind each field path, for error messages.
var quickFlags = map[string]string{
	"interface":                  "--interface",
	"serverURL":                  "--server-url",
	"listen.http":                "--http-addr",
	"listen.tftp":                "--tftp-addr",
	"dhcp.mode":                  "--dhcp-mode",
	"dhcp.pool":                  "--pool-start",
	"dhcp.pool.start":            "--pool-start",
	"dhcp.pool.end":              "--pool-end",
	"tftp.root":                  "--tftp-root",
	"cluster.kubeconfig":         "--kubeconfig",
	"cluster.apiServerEndpoint":  "--apiserver",
	"cluster.tokenTTL":           "--token-ttl",
	"profiles.default.kernel":    "--kernel",
	"profiles.default.initrds":   "--initrd",
	"profiles.default.cmdline":   "--cmdline",
	"profiles.default.rootImage": "--root-image",
	"unknownMachines.profile":    "--kernel",
	"profiles.default":           "--kernel",
	"dhcp.leaseTime":             "--lease-time",
	"listen.dhcp":                "--dhcp-addr",
}

// FromQuick builds and validates the configuration of quick mode: every machine boots profile
// "default"; errors name the flag.
func FromQuick(q Quick) (*Config, error) {
	c := &Config{
		Interface: q.Interface,
		ServerURL: q.ServerURL,
		Listen:    Listen{HTTP: q.HTTPAddr, TFTP: q.TFTPAddr},
		DHCP:      DHCP{Mode: q.DHCPMode, Pool: Pool{Start: q.PoolStart, End: q.PoolEnd}},
		TFTP:      TFTP{Root: q.TFTPRoot},
		Cluster:   Cluster{Kubeconfig: q.Kubeconfig, APIServerEndpoint: q.APIServer, TokenTTL: q.TokenTTL},
		StateDir:  q.StateDir,
		Unknown:   Unknown{Profile: QuickProfile},
		Profiles: map[string]Profile{QuickProfile: {
			Kernel: q.Kernel, Initrds: q.Initrds, Cmdline: QuickCmdline(q.Cmdline, q.RootImage != ""), RootImage: q.RootImage,
		}},
	}
	if c.DHCP.Mode == "" {
		c.DHCP.Mode = "(empty)"
	}
	loc := func(path []any) (int, string) {
		p := pathString(path)
		if f, ok := quickFlags[p]; ok {
			return 0, f
		}
		if strings.HasPrefix(p, "profiles.default.initrds") {
			return 0, "--initrd"
		}
		return 0, strings.ReplaceAll(p, ".", "-")
	}
	if err := c.validate("flags", loc); err != nil {
		return nil, err
	}
	return c, nil
}

// QuickCmdline is quick mode's kernel command line: the user's, followed by each parameter of the
// initramfs's agent that it does not set itself (pxejoin.url, pxejoin.status, pxejoin.mac unless
// BOOTIF= is given, and pxejoin.image when there is a root image), so that machines join without the
// user knowing the template fields.
func QuickCmdline(user string, rootImage bool) string {
	params := []struct{ key, value string }{
		{"pxejoin.url", "{{.JoinURL}}"},
		{"pxejoin.status", "{{.StatusURL}}"},
		{"pxejoin.mac", "{{.MAC}}"},
	}
	if rootImage {
		params = append(params, struct{ key, value string }{"pxejoin.image", "{{.RootImageURL}}"})
	}
	has := func(key string) bool {
		for _, f := range strings.Fields(user) {
			if strings.HasPrefix(f, key+"=") {
				return true
			}
		}
		return false
	}
	out := []string{strings.TrimSpace(user)}
	if out[0] == "" {
		out = nil
	}
	for _, p := range params {
		if has(p.key) || (p.key == "pxejoin.mac" && has("BOOTIF")) {
			continue
		}
		out = append(out, p.key+"="+p.value)
	}
	return strings.Join(out, " ")
}

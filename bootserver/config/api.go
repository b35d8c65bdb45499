package config

import (
	"fmt"
	"os"
)

// Defaults of the API write budgets (api:). They are sized by the fleet measurements of issue 14:
// at client-go's default 5 QPS the join files of 1,000 machines waited on token creations, and the
// control plane itself approves about 10 CSRs a second (kube-controller-manager's 20 QPS, two
// writes per CSR), so 25 creations a second keep ahead of it. Deletions get as much as creations so
// that live tokens stay about the machines in flight.
const (
	DefaultAPIQPS           = 20
	DefaultAPIBurst         = 40
	DefaultTokenCreateQPS   = 25
	DefaultTokenCreateBurst = 50
	DefaultTokenDeleteQPS   = 25
	DefaultTokenDeleteBurst = 50
	DefaultStatusWriteQPS   = 10
	DefaultStatusWriteBurst = 20
	DefaultClaimQPS         = 25
	DefaultClaimBurst       = 50
	DefaultStatusQueue      = 4096
	DefaultServerName       = "bootserver"
	maxBudgetQPS            = 10000
	maxStatusQueue          = 1 << 20
)

// API bounds what the boot server asks of the Kubernetes API. Each writer has a client of its own
// with its own budget (client-go's rate limiter), so that one kind of write never waits behind
// another: token deletions keep up with creations, and status writes never delay a join file.
type API struct {
	// Budget bounds every other request (the watches' lists, lookups); default 20 QPS, burst 40.
	Budget `yaml:",inline"`
	// TokenCreates bounds bootstrap token creations; default 25 QPS, burst 50.
	TokenCreates Budget `yaml:"tokenCreates"`
	// TokenDeletes bounds bootstrap token deletions; default 25 QPS, burst 50.
	TokenDeletes Budget `yaml:"tokenDeletes"`
	// StatusWrites bounds the writes of Machine.status; default 10 QPS, burst 20.
	StatusWrites Budget `yaml:"statusWrites"`
	// Claims bounds first-boot address claims (dhcp.ha.claims: an IPAddress and the Machine's
	// status.claimedIPv4, two or three requests each); default 25 QPS, burst 50.
	Claims Budget `yaml:"claims"`
	// StatusQueue bounds the machines waiting for a status write (one entry per machine, holding
	// no copy of its timeline); past it a change is dropped and counted. Default 4096.
	StatusQueue int `yaml:"statusQueue"`
	// ServerName is this boot server's name in Machine.status.servedBy; default the host name,
	// else "bootserver".
	ServerName string `yaml:"serverName"`
}

// Budget is a client's request rate: QPS requests a second on average, up to Burst at once.
type Budget struct {
	QPS   float32 `yaml:"qps"`
	Burst int     `yaml:"burst"`
}

// validateAPI fills the budgets' defaults and refuses nonsense.
func (c *Config) validateAPI(ck *checker) {
	for _, b := range []struct {
		key        string
		b          *Budget
		qps, burst int
	}{
		{"", &c.API.Budget, DefaultAPIQPS, DefaultAPIBurst},
		{"tokenCreates", &c.API.TokenCreates, DefaultTokenCreateQPS, DefaultTokenCreateBurst},
		{"tokenDeletes", &c.API.TokenDeletes, DefaultTokenDeleteQPS, DefaultTokenDeleteBurst},
		{"statusWrites", &c.API.StatusWrites, DefaultStatusWriteQPS, DefaultStatusWriteBurst},
		{"claims", &c.API.Claims, DefaultClaimQPS, DefaultClaimBurst},
	} {
		path := []any{"api"}
		if b.key != "" {
			path = append(path, b.key)
		}
		switch {
		case b.b.QPS < 0 || b.b.QPS > maxBudgetQPS:
			ck.fail(append(path, "qps"), "%g is not a rate between 0 and %d requests a second (leave it out for %d)", b.b.QPS, maxBudgetQPS, b.qps)
		case b.b.QPS == 0:
			b.b.QPS = float32(b.qps)
		}
		switch {
		case b.b.Burst < 0:
			ck.fail(append(path, "burst"), "%d is negative (leave it out for %d)", b.b.Burst, b.burst)
		case b.b.Burst == 0:
			b.b.Burst = max(b.burst, int(b.b.QPS))
		}
	}
	switch {
	case c.API.StatusQueue < 0 || c.API.StatusQueue > maxStatusQueue:
		ck.fail([]any{"api", "statusQueue"}, "%d is not a number of machines between 0 and %d (leave it out for %d)", c.API.StatusQueue, maxStatusQueue, DefaultStatusQueue)
	case c.API.StatusQueue == 0:
		c.API.StatusQueue = DefaultStatusQueue
	}
	if c.API.ServerName == "" {
		if h, err := os.Hostname(); err == nil && h != "" {
			c.API.ServerName = h
		} else {
			c.API.ServerName = DefaultServerName
		}
	}
	if len(c.API.ServerName) > 253 {
		ck.fail([]any{"api", "serverName"}, "%s is longer than 253 characters (Machine.status.servedBy's limit)", fmt.Sprintf("%.20q…", c.API.ServerName))
	}
}

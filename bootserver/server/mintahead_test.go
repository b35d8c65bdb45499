package server

import (
	"context"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/bootserver/dhcpd"
	"github.com/pxejoin/pxejoin/bootserver/inventory"
	"github.com/pxejoin/pxejoin/bootserver/status"
	"github.com/pxejoin/pxejoin/bootserver/tokens"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
	labeventually "github.com/pxejoin/pxejoin/lab/eventually"
)

// TestMintAheadOnDHCP: an inventory machine's firmware DISCOVER mints the token of its boot (the
// agent's join file then finds it ready); a reboot's DISCOVER mints the next boot's; strangers and
// iPXE's or the agent's DISCOVERs mint nothing. (The fake clientset: the mint itself is tested
// against the real apiserver in bootserver/tokens.)
func TestMintAheadOnDHCP(t *testing.T) {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "s.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	st, err := status.Open(db, status.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	known, stranger := hwaddr.MAC{0x52, 0x54, 0, 0, 0, 1}, hwaddr.MAC{0x52, 0x54, 0, 0, 0, 9}
	inv, err := inventory.New(&config.Config{
		Profiles: map[string]config.Profile{"worker": {Kernel: "k", Initrds: []string{"i"}}},
		Unknown:  config.Unknown{Profile: "worker"},
		Machines: []config.Machine{{MAC: known, Name: "w1", Profile: "worker"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	tk, err := tokens.New(tokens.Options{Client: fake.NewClientset(), DB: db})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { _ = tk.Run(ctx); close(ran) }()
	defer func() { cancel(); <-ran }()
	s := &Server{status: st, inv: inv, tokens: tk, log: nopLogger()}
	discover := func(mac hwaddr.MAC, vendor string) {
		s.onDHCP(dhcpd.Event{Kind: dhcpd.EventDiscover, MAC: mac, VendorClass: vendor})
	}
	boots := func() (n []int) {
		for _, r := range tk.Records() {
			if r.MAC != known || r.Node != "w1" {
				t.Errorf("token minted for %s (%s)", r.MAC, r.Node)
			}
			n = append(n, r.Boot)
		}
		return n
	}

	discover(stranger, "PXEClient:Arch:00000:UNDI:002001")
	discover(known, "PXEClient:Arch:00000:UNDI:002001")
	labeventually.True(t, "the firmware DISCOVER mints the boot's token", func() bool { b := boots(); return len(b) == 1 && b[0] == 1 })
	s.onDHCP(dhcpd.Event{Kind: dhcpd.EventAck, MAC: known})
	discover(known, "") // the agent's DHCP, same boot
	st.Record(known, status.Event{Event: evt(status.PhaseScript, "done"), Source: status.SourceHTTP, StartsBoot: true})
	discover(known, "PXEClient:Arch:00007:UNDI:003016") // rebooted
	labeventually.True(t, "the reboot's DISCOVER mints boot 2's token in place of boot 1's", func() bool { b := boots(); return len(b) == 1 && b[0] == 2 })
}

// TestMintAheadBurst: a rack powering on at once (200 firmware DISCOVERs in a burst) gets every
// machine's token minted ahead, not only the first few (the mints used to be skipped while 16 were
// under way).
func TestMintAheadBurst(t *testing.T) {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "s.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	st, err := status.Open(db, status.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	const n = 200
	c := &config.Config{Profiles: map[string]config.Profile{"worker": {Kernel: "k", Initrds: []string{"i"}}}}
	for i := range n {
		c.Machines = append(c.Machines, config.Machine{MAC: hwaddr.MAC{0x52, 0x54, 0, 1, byte(i >> 8), byte(i)}, Profile: "worker"})
	}
	inv, err := inventory.New(c)
	if err != nil {
		t.Fatal(err)
	}
	tk, err := tokens.New(tokens.Options{Client: fake.NewClientset(), DB: db})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { _ = tk.Run(ctx); close(ran) }()
	defer func() { cancel(); <-ran }()
	s := &Server{status: st, inv: inv, tokens: tk, log: nopLogger()}
	for _, m := range c.Machines {
		s.onDHCP(dhcpd.Event{Kind: dhcpd.EventDiscover, MAC: m.MAC, VendorClass: "PXEClient:Arch:00000:UNDI:002001"})
	}
	labeventually.True(t, "every machine of the burst has its token", func() bool { return len(tk.Records()) == n })
}

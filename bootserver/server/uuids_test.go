package server

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/bootserver/inventory"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
	"github.com/pxejoin/pxejoin/lab/netlab"
	"github.com/pxejoin/pxejoin/lab/testenv"
)

// TestUUIDIndexBounded: DHCP packets from 20,000 new MACs (random UUIDs, or the UUID of an inventory
// machine copied) leave at most one pair per inventory UUID, and the inventory machine's UUID is still
// found from its MAC. The index used to keep every MAC's UUID for good (~246 bytes each).
func TestUUIDIndexBounded(t *testing.T) {
	const known = "4c4c4544-0000-1000-8000-000000000001"
	inv, err := inventory.New(&config.Config{
		Profiles: map[string]config.Profile{"worker": {Kernel: "k", Initrds: []string{"i"}}},
		Unknown:  config.Unknown{Profile: "worker"},
		Machines: []config.Machine{{UUID: known, Profile: "worker"}, {MAC: hwaddr.MAC{0x52, 0x54, 0, 0, 0, 2}, Profile: "worker"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{inv: inv}
	real := hwaddr.MAC{0x52, 0x54, 0, 0, 0, 1}
	s.noteUUID(real, known)
	for i := range 10000 {
		s.noteUUID(hwaddr.MAC{2, 0, 0, byte(i >> 16), byte(i >> 8), byte(i)}, fmt.Sprintf("00000000-0000-0000-0000-%012x", i))
		s.noteUUID(hwaddr.MAC{0x52, 0x54, 0, 0, 0, 2}, fmt.Sprintf("00000000-0000-0000-0001-%012x", i)) // an inventory MAC with any UUID
	}
	if got := s.uuids.of(real); got != known {
		t.Errorf("the inventory machine's UUID: %q, want %s", got, known)
	}
	for i := range 10000 { // strangers copy the inventory machine's UUID
		s.noteUUID(hwaddr.MAC{2, 1, 0, byte(i >> 16), byte(i >> 8), byte(i)}, known)
	}
	s.noteUUID(real, known) // the machine's next DHCP packet takes its UUID back
	if n := s.uuids.len(); n > 1 {
		t.Errorf("the index holds %d MACs, want at most 1 (the inventory's UUIDs)", n)
	}
	if got := s.uuids.of(real); got != known {
		t.Errorf("after the flood, the inventory machine's UUID: %q, want %s", got, known)
	}
}

// TestUUIDFloodOverLink: over a veth link, 3,000 PXE DISCOVERs from new MACs (random UUIDs, and the
// UUID of an inventory machine copied) reach a proxy-mode boot server; the index stays at the
// inventory's size and the machine known by its UUID still gets its own script.
func TestUUIDFloodOverLink(t *testing.T) {
	testenv.RequireRoot(t)
	srvNS, cliNS := netlab.New(t, "bsus"), netlab.New(t, "bsuc")
	netlab.Veth(t, srvNS, "eth0", "10.80.52.1/24", cliNS, "eth0", "10.80.52.2/24")
	dir := t.TempDir()
	for _, f := range []string{"vmlinuz", "initrd.img"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(f), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeKubeconfig(t, filepath.Join(dir, "admin.conf"), "certificate-authority-data: "+
		base64.StdEncoding.EncodeToString(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: selfSigned(t)})))
	const known = "4c4c4544-0000-1000-8000-000000000001"
	cfg, err := config.Parse("uuid.yaml", []byte(fmt.Sprintf(`interface: eth0
listen: {http: ":8080"}
dhcp: {mode: proxy}
tftp: {disabled: true}
cluster: {kubeconfig: %[1]s/admin.conf}
stateDir: %[1]s/state
profiles:
  worker: {kernel: %[1]s/vmlinuz, initrds: [%[1]s/initrd.img]}
machines:
  - {uuid: %[2]s, name: by-uuid}
`, dir, known)))
	if err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	s, err := New(Options{Config: cfg, Logger: nopLogger(), InNetns: srvNS.Do, Ready: func() { close(ready) }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx) }()
	defer func() { cancel(); <-served }()
	select {
	case <-ready:
	case err := <-served:
		t.Fatalf("Serve: %v", err)
	}

	var conn *net.UDPConn
	if err := cliNS.Do(func() (err error) { conn, err = server4.NewIPv4UDPConn("eth0", &net.UDPAddr{Port: 68}); return err }); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	discover := func(mac net.HardwareAddr, uuid []byte) {
		t.Helper()
		m, err := dhcpv4.NewDiscovery(mac, dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
			dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, append([]byte{0}, uuid...)))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.WriteTo(m.ToBytes(), &net.UDPAddr{IP: net.IPv4bcast, Port: 67}); err != nil {
			t.Fatal(err)
		}
	}
	// SMBIOS byte order: the first three fields little-endian (inventory.SMBIOSUUID).
	knownBytes := []byte{0x44, 0x45, 0x4c, 0x4c, 0, 0, 0, 0x10, 0x80, 0, 0, 0, 0, 0, 0, 1}
	for i := range 3000 {
		mac := net.HardwareAddr{0x02, 0, 0, byte(i >> 16), byte(i >> 8), byte(i)}
		uuid := make([]byte, 16)
		rand.Read(uuid)
		if i%3 == 0 {
			uuid = knownBytes
		}
		discover(mac, uuid)
	}
	if n := s.uuids.len(); n > 1 {
		t.Errorf("after the flood the index holds %d MACs, want at most 1", n)
	}
	// The machine retries as firmware does until its script is its own.
	real := net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}
	url := s.URL() + "/boot/" + real.String() + ".ipxe"
	var script string
	eventually(t, 30*time.Second, func() bool {
		discover(real, knownBytes)
		out, _ := cliNS.Exec("curl", "-sS", "--max-time", "5", url)
		script = string(out)
		return strings.Contains(script, "/worker/vmlinuz")
	})
	if n := s.uuids.len(); n > 1 {
		t.Errorf("the index holds %d MACs, want at most 1", n)
	}
}

// len is the number of pairs held (tests).
func (x *uuidIndex) len() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return len(x.byMAC)
}

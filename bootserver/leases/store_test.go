package leases

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

func mac(i int) hwaddr.MAC {
	return hwaddr.MAC{0x02, 0x00, byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)}
}

func ip(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 78, byte(i >> 8), byte(i)})
}

func openT(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestCommitGetReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	s := openT(t, path)
	exp := time.Now().Add(time.Hour).Round(0)
	tests := []struct {
		name string
		l    Lease
	}{
		{"plain", Lease{MAC: mac(1), IP: ip(10), Expiry: exp}},
		{"hostname", Lease{MAC: mac(2), IP: ip(11), Expiry: exp, Hostname: "node-2"}},
	}
	for _, tt := range tests {
		if err := s.Commit(tt.l); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
	}
	if err := s.Commit(Lease{IP: ip(1)}); err == nil {
		t.Error("Commit with no hardware address succeeded")
	}
	if err := s.Commit(Lease{MAC: mac(9), IP: netip.MustParseAddr("::1")}); err == nil {
		t.Error("Commit with an IPv6 address succeeded")
	}
	check := func(s *Store) {
		t.Helper()
		for _, tt := range tests {
			got, ok := s.Get(tt.l.MAC)
			if !ok || got.IP != tt.l.IP || !got.Expiry.Equal(tt.l.Expiry) || got.Hostname != tt.l.Hostname {
				t.Errorf("%s: Get = %v %v, want %v", tt.name, got, ok, tt.l)
			}
			if h, ok := s.HolderOf(tt.l.IP, time.Now()); !ok || h != tt.l.MAC {
				t.Errorf("%s: HolderOf(%v) = %v %v", tt.name, tt.l.IP, h, ok)
			}
		}
		if n := len(s.All()); n != len(tests) {
			t.Errorf("All has %d leases, want %d", n, len(tests))
		}
	}
	check(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(tests[0].l); err != ErrClosed {
		t.Errorf("Commit after Close = %v, want ErrClosed", err)
	}
	s = openT(t, path)
	defer s.Close()
	check(s)
}

func TestMoveReleaseDelete(t *testing.T) {
	s := openT(t, filepath.Join(t.TempDir(), "leases.db"))
	defer s.Close()
	now := time.Now()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.Commit(Lease{MAC: mac(1), IP: ip(1), Expiry: now.Add(-time.Minute)}))
	// Another client takes the expired address: the old record goes.
	must(s.Commit(Lease{MAC: mac(2), IP: ip(1), Expiry: now.Add(time.Hour)}))
	if _, ok := s.Get(mac(1)); ok {
		t.Error("the previous holder's lease survived")
	}
	// A client moving to another address frees the old one.
	must(s.Commit(Lease{MAC: mac(2), IP: ip(2), Expiry: now.Add(time.Hour)}))
	if _, ok := s.ByIP(ip(1)); ok {
		t.Error("old address still indexed")
	}
	if got := s.Active(now); got != 1 {
		t.Errorf("Active = %d, want 1", got)
	}
	must(s.Release(mac(2)))
	l, ok := s.Get(mac(2))
	if !ok || l.Active(time.Now().Add(time.Millisecond)) {
		t.Errorf("after Release: %v %v, want an expired record", l, ok)
	}
	if _, ok := s.HolderOf(ip(2), time.Now().Add(time.Millisecond)); ok {
		t.Error("released address still held")
	}
	must(s.Delete(mac(2)))
	if _, ok := s.Get(mac(2)); ok {
		t.Error("Delete left the lease")
	}
}

// TestGroupCommit checks that concurrent writers share transactions: far fewer commits than writes.
func TestGroupCommit(t *testing.T) {
	s := openT(t, filepath.Join(t.TempDir(), "leases.db"))
	defer s.Close()
	before := s.txns.Load()
	const writers, each = 32, 20
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				n := w*each + i
				if err := s.Commit(Lease{MAC: mac(n), IP: ip(n), Expiry: time.Now().Add(time.Hour)}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if n := len(s.All()); n != writers*each {
		t.Fatalf("%d leases, want %d", n, writers*each)
	}
	txs := s.txns.Load() - before
	t.Logf("%d commits in %d transactions", writers*each, txs)
	if txs > writers*each/2 {
		t.Errorf("%d transactions for %d concurrent commits: no group commit", txs, writers*each)
	}
}

// The kill -9 test: a child process commits leases from many goroutines and prints "ACK <n>" after
// each Commit returns; the parent SIGKILLs it mid-stream, reopens the file and wants every printed
// lease there. The second round starts from the file the first one left.
const childEnv = "PXEJOIN_LEASES_CRASH_CHILD" // the lease file's path

func TestCrashChild(t *testing.T) {
	path := os.Getenv(childEnv)
	if path == "" {
		t.Skip("helper process for TestKill9KeepsAcknowledgedLeases")
	}
	s, err := Open(path)
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	out := bufio.NewWriter(os.Stdout)
	var outMu sync.Mutex
	var n atomic.Int64
	fmt.Println("READY")
	var wg sync.WaitGroup
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(n.Add(1))
				if i > 60000 {
					return
				}
				if err := s.Commit(Lease{MAC: mac(i), IP: ip(i), Expiry: time.Now().Add(time.Hour), Hostname: fmt.Sprint("h", i)}); err != nil {
					outMu.Lock()
					fmt.Fprintln(out, "ERR", err)
					out.Flush()
					outMu.Unlock()
					return
				}
				outMu.Lock()
				fmt.Fprintln(out, "ACK", i)
				out.Flush()
				outMu.Unlock()
			}
		}()
	}
	wg.Wait()
	os.Exit(0)
}

func TestKill9KeepsAcknowledgedLeases(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	for round := 0; round < 2; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), childEnv+"="+path)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		acked := map[int]bool{}
		sc := bufio.NewScanner(stdout)
		killAt := 300 + round*1500
		killed := false
		for sc.Scan() {
			line := sc.Text()
			var i int
			if _, err := fmt.Sscanf(line, "ACK %d", &i); err == nil {
				acked[i] = true
			} else if strings.HasPrefix(line, "ERR") {
				t.Fatalf("child: %s", line)
			}
			if !killed && len(acked) >= killAt {
				// Kill while writers are mid-commit; keep reading what it printed before dying.
				_ = cmd.Process.Signal(syscall.SIGKILL)
				killed = true
			}
		}
		err = cmd.Wait()
		if !killed {
			t.Fatalf("child ended before being killed (%v) with %d acks", err, len(acked))
		}
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("child was not killed by SIGKILL: %v", err)
		}
		s := openT(t, path)
		missing := 0
		for i := range acked {
			l, ok := s.Get(mac(i))
			if !ok || l.IP != ip(i) || l.Hostname != fmt.Sprint("h", i) {
				missing++
			}
		}
		total := len(s.All())
		t.Logf("round %d: %d acknowledged before SIGKILL, %d in the store, %d missing", round, len(acked), total, missing)
		s.Close()
		if missing > 0 {
			t.Fatalf("%d acknowledged leases lost", missing)
		}
		if total < len(acked) {
			t.Fatalf("store has %d leases, fewer than %d acknowledged", total, len(acked))
		}
	}
}

// TestIndexMatchesFile: writers that fight over a few addresses and hardware addresses, from many
// goroutines so that they share transactions, leave the index in memory as the file has it (the
// index applies transactions in commit order, whatever order bbolt runs their handlers in), and
// each address has one holder.
func TestIndexMatchesFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	s := openT(t, path)
	const writers, each = 32, 50
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				n := w*each + i
				var err error
				switch n % 5 {
				case 4:
					err = s.Delete(mac(n % 7))
				case 3:
					err = s.Release(mac(n % 7))
				default:
					err = s.Commit(Lease{MAC: mac(n % 7), IP: ip(n % 5), Expiry: time.Now().Add(time.Hour), Hostname: fmt.Sprint("h", n)})
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	mem := state(s)
	txns := s.txns.Load()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openT(t, path)
	defer s.Close()
	if disk := state(s); disk != mem {
		t.Errorf("index:\n%s\nfile:\n%s", mem, disk)
	}
	seen := map[netip.Addr]bool{}
	for _, l := range s.All() {
		if seen[l.IP] {
			t.Errorf("%v has two holders", l.IP)
		}
		seen[l.IP] = true
	}
	t.Logf("%d writes in %d transactions; %d leases left", writers*each, txns, len(s.All()))
}

// TestIndexInCommitOrder: bbolt runs a transaction's commit handlers after the next transaction may
// start, so the handler of a later transaction can run first. The index must still end as the file
// does: here the first transaction's handler is held until the second's has started.
func TestIndexInCommitOrder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	s := openT(t, path)
	first := s.applied + 1
	blocked, next := make(chan struct{}), make(chan struct{})
	s.hook = func(id uint64) {
		switch id {
		case first:
			close(blocked)
			<-next
		case first + 1:
			close(next)
		}
	}
	exp := time.Now().Add(time.Hour)
	done := make(chan error)
	go func() { done <- s.Commit(Lease{MAC: mac(1), IP: ip(1), Expiry: exp}) }()
	<-blocked
	// mac(1)'s transaction is committed but not yet in the index; mac(2) takes the address after it.
	if err := s.Commit(Lease{MAC: mac(2), IP: ip(1), Expiry: exp}); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if h, ok := s.HolderOf(ip(1), time.Now()); !ok || h.String() != mac(2).String() {
		t.Errorf("HolderOf = %v %v, want %v", h, ok, mac(2))
	}
	if _, ok := s.Get(mac(1)); ok {
		t.Error("the first holder's lease is still in the index")
	}
	mem := state(s)
	s.Close()
	s = openT(t, path)
	defer s.Close()
	if disk := state(s); disk != mem {
		t.Errorf("index:\n%s\nfile:\n%s", mem, disk)
	}
}

// state is a store's content, for comparing.
func state(s *Store) string {
	var b strings.Builder
	for _, l := range s.All() {
		fmt.Fprintln(&b, l.String())
	}
	return b.String()
}

package dhcpd

import (
	"bufio"
	"context"
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

	"github.com/pxejoin/pxejoin/bootserver/leases"
	"github.com/pxejoin/pxejoin/lab/netlab"
)

const crashChildEnv = "PXEJOIN_DHCPD_CRASH_CHILD" // "<netns> <lease file>"

func crashConfig(st *leases.Store) Config {
	return Config{Interface: "s0", Mode: ModeFull, Leases: st,
		Pools: []Pool{{Subnet: netip.MustParsePrefix("10.78.16.0/21"), Start: netip.MustParseAddr("10.78.17.0"),
			End: netip.MustParseAddr("10.78.23.250"), LeaseTime: time.Hour}}}
}

// TestDHCPCrashChild is the server process of TestKill9DuringDORA.
func TestDHCPCrashChild(t *testing.T) {
	env := os.Getenv(crashChildEnv)
	if env == "" {
		t.Skip("helper process for TestKill9DuringDORA")
	}
	nsName, path, _ := strings.Cut(env, " ")
	st, err := leases.Open(path)
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	s, err := New(crashConfig(st))
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	go func() {
		<-s.Ready()
		fmt.Println("READY")
	}()
	err = (&netlab.NS{Name: nsName}).Do(func() error { return s.Serve(context.Background()) })
	fmt.Println("ERR", err)
	os.Exit(1)
}

// TestKill9DuringDORA runs the server in a child process, drives DORAs at it from the client
// namespace, SIGKILLs it mid-load, and wants every address a client got an ACK for in the lease file.
func TestKill9DuringDORA(t *testing.T) {
	needNetns(t)
	l := newLink(t, "10.78.16.1/21")
	path := filepath.Join(t.TempDir(), "leases.db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestDHCPCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+l.srv.Name+" "+path)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	sc := bufio.NewScanner(stdout)
	if !sc.Scan() || sc.Text() != "READY" {
		t.Fatalf("child: %q", sc.Text())
	}
	c := newUDPClient(t, l.cli, l.cliIf)

	var mu sync.Mutex
	acked := map[string]string{} // MAC → address
	var next atomic.Int64
	var killed atomic.Bool
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !killed.Load() {
				i := int(next.Add(1))
				if i > 1500 {
					return
				}
				ack, err := c.dora(benchMAC(i))
				if err != nil {
					continue
				}
				mu.Lock()
				acked[benchMAC(i).String()] = ack.YourIPAddr.String()
				n := len(acked)
				mu.Unlock()
				if n >= 300 && killed.CompareAndSwap(false, true) {
					_ = cmd.Process.Signal(syscall.SIGKILL)
				}
			}
		}()
	}
	wg.Wait()
	if !killed.Load() {
		t.Fatalf("only %d DORAs succeeded before the load ended", len(acked))
	}
	_ = cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("server process did not die of SIGKILL: %v", cmd.ProcessState)
	}
	st, err := leases.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, got := range st.All() {
		if want, ok := acked[got.MAC.String()]; ok && want == got.IP.String() {
			delete(acked, got.MAC.String())
		}
	}
	missing := len(acked)
	t.Logf("%d leases in the file after SIGKILL; %d acknowledged leases missing", len(st.All()), missing)
	if missing > 0 {
		t.Fatalf("%d acknowledged leases lost, e.g. %v", missing, acked)
	}
}

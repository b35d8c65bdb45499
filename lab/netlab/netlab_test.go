package netlab

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

func TestVethAndDo(t *testing.T) {
	a, b := New(t, "nltA"), New(t, "nltB")
	Veth(t, a, "eth0", "10.201.0.1/24", b, "eth0", "10.201.0.2/24")
	var ln net.Listener
	if err := a.Do(func() (err error) { ln, err = net.Listen("tcp", "10.201.0.1:0"); return }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Write([]byte("hello"))
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	var got string
	if err := b.Do(func() error {
		c, err := net.Dial("tcp", net.JoinHostPort("10.201.0.1", itoa(port)))
		if err != nil {
			return err
		}
		defer c.Close()
		buf := make([]byte, 5)
		_, err = c.Read(buf)
		got = string(buf)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if got != "hello" {
		t.Fatalf("got %q", got)
	}
	// The address lives only in the namespace: the host has no route to it on that interface.
	out := a.MustExec(t, "ip", "-o", "addr", "show", "dev", "eth0")
	if !strings.Contains(string(out), "10.201.0.1/24") {
		t.Fatalf("address missing: %s", out)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestStaleOwner(t *testing.T) {
	for _, tc := range []struct {
		name string
		pid  int
		ok   bool
	}{
		{"pxe-123-1", 123, true},
		{"pxe-123-45", 123, true},
		{"pxelab-123-1", 0, false},
		{"pxe-123", 0, false},
		{"pxe-0123-1", 0, false},
		{"pxe-123-0", 0, false},
		{"pxe-123-1-2", 0, false},
		{"pxe--1-1", 0, false},
		{"other", 0, false},
	} {
		pid, ok := staleOwner("pxe", tc.name)
		if pid != tc.pid || ok != tc.ok {
			t.Errorf("staleOwner(pxe, %q) = %d, %v; want %d, %v", tc.name, pid, ok, tc.pid, tc.ok)
		}
	}
}

// TestSweepStale leaves a namespace as a killed test would, and one owned by a live process, and
// checks that the next Create removes only the first.
func TestSweepStale(t *testing.T) {
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := fmt.Sprintf("nltS-%d-1", dead.Process.Pid)
	live := "nltS-1-1" // pid 1 is always alive
	for _, name := range []string{stale, live} {
		if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
			t.Fatalf("ip netns add %s: %v: %s", name, err, out)
		}
	}
	t.Cleanup(func() {
		(&NS{Name: stale}).Delete()
		(&NS{Name: live}).Delete()
	})
	New(t, "nltS")
	if _, err := os.Stat("/run/netns/" + stale); !os.IsNotExist(err) {
		t.Errorf("namespace %s of a dead process is still there (stat: %v)", stale, err)
	}
	if _, err := os.Stat("/run/netns/" + live); err != nil {
		t.Errorf("namespace %s of a live process was removed: %v", live, err)
	}
}

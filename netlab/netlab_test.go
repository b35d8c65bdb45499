package netlab

import (
	"net"
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

// Package netns runs a function on an OS thread switched into another network namespace, so the
// sockets it opens live there (and stay there after it returns). netlab's test hosts and the TFTP
// server's per-transfer sockets both use it.
package netns

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// Run runs f in the network namespace open as nsfd and returns f's error. If the thread cannot switch
// back it stays locked and ends with its goroutine, so no other code ever runs in the wrong namespace.
func Run(nsfd int, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			return
		}
		defer self.Close()
		if err := unix.Setns(nsfd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("entering network namespace: %w", err)
			return
		}
		ferr := f()
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("cannot return from a network namespace: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// RunNamed runs f in the named namespace (/var/run/netns/NAME, as `ip netns add` makes them).
func RunNamed(name string, f func() error) error {
	ns, err := os.Open("/var/run/netns/" + name)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", name, err)
	}
	defer ns.Close()
	return Run(int(ns.Fd()), f)
}

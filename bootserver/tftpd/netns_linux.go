package tftpd

import (
	"fmt"
	"os"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// inSocketNetns runs f on an OS thread in the network namespace of the socket c, so that the
// sockets f opens (one per transfer, by this package and by pin/tftp) and the interfaces it looks
// up live beside c. When that is the namespace the process runs in (always, for the daemon), f
// just runs. The case that matters is a listening socket made inside another namespace (tests,
// or a boot server that serves a lab namespace): goroutines are not tied to a thread, so without
// this the transfer sockets would open in whatever namespace the running thread is in.
func inSocketNetns(c syscall.Conn, f func() error) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return f()
	}
	nsfd, ioerr := -1, error(nil)
	if err := rc.Control(func(fd uintptr) { nsfd, ioerr = unix.IoctlRetInt(int(fd), unix.SIOCGSKNS) }); err != nil || ioerr != nil {
		return f() // no SIOCGSKNS (kernel < 4.9) or no CAP_NET_ADMIN: the process's namespace
	}
	defer unix.Close(nsfd)
	var want, have unix.Stat_t
	if unix.Fstat(nsfd, &want) != nil || unix.Stat("/proc/thread-self/ns/net", &have) != nil ||
		(want.Dev == have.Dev && want.Ino == have.Ino) {
		return f()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// If switching back fails the thread stays locked and ends with the goroutine.
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			return
		}
		defer self.Close()
		if err := unix.Setns(nsfd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("tftpd: entering the socket's network namespace: %w", err)
			return
		}
		ferr := f()
		if unix.Setns(int(self.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- ferr
	}()
	return <-errc
}

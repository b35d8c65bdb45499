package tftpd

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/pxejoin/pxejoin/internal/netns"
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
	if err := netns.Run(nsfd, f); err != nil {
		return fmt.Errorf("tftpd: in the socket's network namespace: %w", err)
	}
	return nil
}

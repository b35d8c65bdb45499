package leases

import (
	"os"
	"syscall"
)

// datasync flushes f's data, and only the metadata needed to read it back (fdatasync): appends into
// the preallocated log change no such metadata, so this is one device flush.
func datasync(f *os.File) error {
	for {
		err := syscall.Fdatasync(int(f.Fd()))
		if err != syscall.EINTR {
			return err
		}
	}
}

// preallocate reserves n bytes of f from off (best effort: the caller writes them anyway).
func preallocate(f *os.File, off, n int64) {
	_ = syscall.Fallocate(int(f.Fd()), 0, off, n)
}

// openDirect opens path for writes that bypass the page cache and return once durable. tmpfs, for
// one, refuses O_DIRECT (EINVAL).
func openDirect(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_WRONLY|syscall.O_DIRECT|syscall.O_DSYNC, 0)
}

package leases

import (
	"fmt"
	"os"
	"unsafe"
)

// Log appends reach the disk one of two ways. Where the file system takes O_DIRECT (ext4, xfs,
// btrfs), through a second descriptor opened O_DIRECT|O_DSYNC: each append is one pwrite of the
// whole blocks it touches, from an aligned buffer, and returns once the device has it (one flush, or
// a FUA write where the device offers it). That skips the page cache and the separate fdatasync; on
// the virtio disk of our lab it cuts a durable 64-byte append from about 185 µs to about 110 µs
// (measured with pwrite+fdatasync against O_DIRECT|O_DSYNC on the same preallocated file). Elsewhere
// (tmpfs refuses O_DIRECT), an ordinary pwrite followed by fdatasync.
//
// A direct append rewrites the acknowledged records that share its first block with the same bytes
// (kept in memory as the tail) and fills the rest of its last block with zeros. A torn write can
// therefore only tear the new records: every sector of the tail is written with the content it
// already has. The buffered path has the same property, since the kernel writes back whole pages.

// directBlock is the alignment of direct writes: a multiple of every logical block size in use.
const directBlock = 4096

// writeDurable writes p at off in lf and returns once it is on stable storage. Writes to one file
// are sequential within a generation: each starts where the previous one ended, or at a block
// boundary (a new generation's first record, or the header at 0).
func (lf *logFile) writeDurable(p []byte, off int64) error {
	if lf.direct == nil {
		if _, err := lf.f.WriteAt(p, off); err != nil {
			return fmt.Errorf("leases: log write: %w", err)
		}
		// After a failed fdatasync the kernel may have dropped the dirty pages: nothing written since
		// the last successful one can be trusted, hence the callers' sticky error rather than a retry.
		if err := datasync(lf.f); err != nil {
			return fmt.Errorf("leases: log sync: %w", err)
		}
		return nil
	}
	start := off &^ (directBlock - 1)
	if off == start {
		lf.tail = lf.tail[:0]
	} else if lf.tailStart != start || int64(len(lf.tail)) != off-start {
		return fmt.Errorf("leases: log write at %d does not follow the previous one (%d+%d)", off, lf.tailStart, len(lf.tail))
	}
	n := len(lf.tail) + len(p)
	padded := (n + directBlock - 1) &^ (directBlock - 1)
	buf := lf.aligned(padded)
	copy(buf, lf.tail)
	copy(buf[len(lf.tail):], p)
	clear(buf[n:])
	if _, err := lf.direct.WriteAt(buf, start); err != nil {
		return fmt.Errorf("leases: log write: %w", err)
	}
	keep := n % directBlock
	lf.tailStart = start + int64(n-keep)
	lf.tail = append(lf.tail[:0], buf[n-keep:n]...)
	return nil
}

// aligned returns a directBlock-aligned scratch buffer of n bytes, reused across appends.
func (lf *logFile) aligned(n int) []byte {
	if cap(lf.scratch) < n {
		raw := make([]byte, n+directBlock)
		skip := int(directBlock-uintptr(unsafe.Pointer(&raw[0]))%directBlock) % directBlock
		lf.scratch = raw[skip : skip : skip+n]
	}
	return lf.scratch[:n]
}

// openDirectLog opens the writer of a log file: O_DIRECT|O_DSYNC where the file system allows it,
// nil (the buffered path) where it does not.
func openDirectLog(path string) *os.File {
	f, err := openDirect(path)
	if err != nil {
		return nil
	}
	return f
}

// DirectIO reports whether the log is appended with O_DIRECT|O_DSYNC (else write and fdatasync).
func (s *Store) DirectIO() bool { return s.batch || s.logs[0].direct != nil && s.logs[1].direct != nil }

func (lf *logFile) close() error {
	if lf.direct != nil {
		lf.direct.Close()
	}
	return lf.f.Close()
}

// writeHeader starts generation gen in lf: its header, alone in the first block, made durable.
func (lf *logFile) writeHeader(gen uint64) error {
	h := make([]byte, logHeaderSize)
	copy(h, encodeHeader(gen))
	return lf.writeDurable(h, 0)
}

//go:build !linux

package leases

import (
	"errors"
	"os"
)

// datasync flushes f to stable storage.
func datasync(f *os.File) error { return f.Sync() }

// preallocate is a no-op here: the caller writes the zeros that allocate the blocks.
func preallocate(f *os.File, off, n int64) {}

// openDirect is not offered here: appends take the buffered path.
func openDirect(path string) (*os.File, error) { return nil, errors.ErrUnsupported }

// Package initramfs builds the initramfs of a pxejoin node image: nodeagent as /init, the NIC drivers
// and diskless-root modules (loop, squashfs, overlay) of one kernel with their dependencies and a
// modules.dep that u-root's kmodule reads, an optional CA bundle, and nothing else (no shell, no
// busybox). The archive is newc cpio compressed with zstd (Debian's kernel has CONFIG_RD_ZSTD=y).
// The command is initramfs/cmd/initramfs.
package initramfs

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"

	"github.com/klauspost/compress/zstd"
	"github.com/u-root/u-root/pkg/cpio"
)

// NewestKernel is the highest version in /lib/modules ("" if none).
func NewestKernel() string {
	ents, _ := os.ReadDir("/lib/modules")
	var v []string
	for _, e := range ents {
		v = append(v, e.Name())
	}
	slices.Sort(v)
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

// ReadArchive decompresses and reads an initramfs built by Build.
func ReadArchive(path string) ([]cpio.Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var b []byte
	if CompressionOf(path) == XZ {
		cmd := exec.Command("xz", "-dc")
		cmd.Stdin = f
		if b, err = cmd.Output(); err != nil {
			return nil, fmt.Errorf("xz -d %s: %w", path, err)
		}
	} else {
		zr, err := zstd.NewReader(f)
		if err != nil {
			return nil, err
		}
		defer zr.Close()
		if b, err = io.ReadAll(zr); err != nil {
			return nil, err
		}
	}
	return cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(b)))
}

// List writes the contents of the initramfs at path to w, one file a line: mode, size, name.
func List(w io.Writer, path string) error {
	recs, err := ReadArchive(path)
	if err != nil {
		return err
	}
	for _, r := range recs {
		fmt.Fprintf(w, "%s %10d %s\n", os.FileMode(r.Mode&0o777), r.FileSize, r.Name)
	}
	return nil
}

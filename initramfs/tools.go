package initramfs

import (
	"debug/elf"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/u-root/u-root/pkg/cpio"
)

// DiskTools are the Debian programs nodeagent prepares a persistent node's disk with (package
// nodeagent/disk): util-linux's wipefs and sfdisk (packages util-linux, fdisk) and e2fsprogs'
// mkfs.ext4, with mke2fs.conf. Build carries them with their shared libraries and the loader.
var DiskTools = []string{"/usr/sbin/wipefs", "/usr/sbin/sfdisk", "/usr/sbin/mkfs.ext4"}

// DiskToolFiles are configuration files the disk tools read, carried at the same path.
var DiskToolFiles = []string{"/etc/mke2fs.conf"}

// ToolDir is where the initramfs carries tools; nodeagent's init mode puts it on PATH.
const ToolDir = "usr/sbin"

// libDirs are where the loader finds libraries on Debian amd64 (its built-in search path, used
// when there is no /etc/ld.so.cache as in the initramfs).
var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"}

// toolRecords are the records of the tools (host paths, carried as ToolDir/<name>), every shared
// library they need (transitively, at the path the loader searches), their loader, and files.
func toolRecords(root string, tools, files []string) ([]cpio.Record, error) {
	var recs []cpio.Record
	done := map[string]bool{}
	add := func(name, hostPath string, mode uint64) error {
		if done[name] {
			return nil
		}
		done[name] = true
		b, err := os.ReadFile(filepath.Join(root, hostPath)) // follows symlinks: mkfs.ext4 → mke2fs
		if err != nil {
			return fmt.Errorf("%w (run make deps: it installs fdisk and e2fsprogs)", err)
		}
		recs = append(recs, cpio.StaticFile(name, string(b), mode))
		return nil
	}
	loaders := map[string]bool{} // base names of the loaders: libc names one too
	queue := append([]string(nil), tools...)
	for i := 0; i < len(queue); i++ {
		p := queue[i]
		name := strings.TrimPrefix(p, "/")
		if i < len(tools) {
			name = path.Join(ToolDir, path.Base(p))
		}
		if err := add(name, p, 0o755); err != nil {
			return nil, err
		}
		interp, needed, err := dynamic(filepath.Join(root, p))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		if interp != "" && !loaders[path.Base(interp)] {
			loaders[path.Base(interp)] = true
			queue = append(queue, interp)
		}
		for _, lib := range needed {
			if loaders[lib] {
				continue // carried once, at its PT_INTERP path
			}
			found := ""
			for _, d := range libDirs {
				if _, err := os.Stat(filepath.Join(root, d, lib)); err == nil {
					found = path.Join(d, lib)
					break
				}
			}
			if found == "" {
				return nil, fmt.Errorf("%s needs %s, which is in none of %s", p, lib, strings.Join(libDirs, ", "))
			}
			if !done[strings.TrimPrefix(found, "/")] && !slices.Contains(queue, found) {
				queue = append(queue, found)
			}
		}
	}
	for _, f := range files {
		if err := add(strings.TrimPrefix(f, "/"), f, 0o644); err != nil {
			return nil, err
		}
	}
	return recs, nil
}

// dynamic returns an ELF file's loader (PT_INTERP, "" for a library or a static program) and the
// libraries it names (DT_NEEDED).
func dynamic(p string) (string, []string, error) {
	f, err := elf.Open(p)
	if err != nil {
		return "", nil, err
	}
	defer f.Close()
	interp := ""
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			b := make([]byte, prog.Filesz)
			if _, err := prog.ReadAt(b, 0); err != nil {
				return "", nil, err
			}
			interp = strings.TrimRight(string(b), "\x00")
		}
	}
	needed, err := f.ImportedLibraries()
	if err != nil {
		return "", nil, err
	}
	return interp, needed, nil
}

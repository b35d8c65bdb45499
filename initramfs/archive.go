// Command initramfs builds the initramfs of a pxejoin node image: nodeagent as /init, the NIC drivers
// and diskless-root modules (loop, squashfs, overlay) of one kernel with their dependencies and a
// modules.dep that u-root's kmodule reads, an optional CA bundle, and nothing else (no shell, no
// busybox). The archive is newc cpio compressed with zstd (Debian's kernel has CONFIG_RD_ZSTD=y).
//
//	go run ./initramfs -agent bin/nodeagent -kernel-version 6.1.0-56-amd64 -o out.cpio.zst
//	go run ./initramfs -list out.cpio.zst
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/u-root/u-root/pkg/cpio"
)

func main() {
	var s Spec
	var out, mods, list string
	flag.StringVar(&s.Agent, "agent", "bin/nodeagent", "the nodeagent binary (static) that becomes /init")
	flag.StringVar(&s.KernelVersion, "kernel-version", newestKernel(), "kernel whose modules to carry (/lib/modules/<version>)")
	flag.StringVar(&s.ModulesRoot, "modules-root", "/", "root holding lib/modules")
	flag.StringVar(&mods, "modules", strings.Join(DefaultModules, ","), "comma-separated module names (dependencies are added)")
	flag.StringVar(&s.CABundle, "ca-bundle", "/etc/ssl/certs/ca-certificates.crt", "CA bundle to carry for https discovery files (empty: none)")
	flag.StringVar(&out, "o", "initramfs.cpio.zst", "output file")
	flag.StringVar(&list, "list", "", "list the contents of this initramfs instead of building one")
	flag.Parse()
	if list != "" {
		if err := listArchive(list); err != nil {
			fmt.Fprintln(os.Stderr, "initramfs:", err)
			os.Exit(1)
		}
		return
	}
	if s.CABundle != "" {
		if _, err := os.Stat(s.CABundle); err != nil {
			fmt.Fprintf(os.Stderr, "initramfs: no CA bundle at %s, carrying none\n", s.CABundle)
			s.CABundle = ""
		}
	}
	s.Modules = strings.FieldsFunc(mods, func(r rune) bool { return r == ',' || r == ' ' })
	if err := Build(s, out); err != nil {
		fmt.Fprintln(os.Stderr, "initramfs:", err)
		os.Exit(1)
	}
	st, err := os.Stat(out)
	if err != nil {
		fmt.Fprintln(os.Stderr, "initramfs:", err)
		os.Exit(1)
	}
	fmt.Printf("%s: %.1f MB (kernel %s)\n", out, float64(st.Size())/1e6, s.KernelVersion)
}

// newestKernel is the highest version in /lib/modules ("" if none).
func newestKernel() string {
	ents, _ := os.ReadDir("/lib/modules")
	var v []string
	for _, e := range ents {
		v = append(v, e.Name())
	}
	sort.Strings(v)
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
	zr, err := zstd.NewReader(f)
	if err != nil {
		return nil, err
	}
	defer zr.Close()
	b, err := io.ReadAll(zr)
	if err != nil {
		return nil, err
	}
	return cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(b)))
}

func listArchive(path string) error {
	recs, err := ReadArchive(path)
	if err != nil {
		return err
	}
	for _, r := range recs {
		fmt.Printf("%s %10d %s\n", os.FileMode(r.Mode&0o777), r.FileSize, r.Name)
	}
	return nil
}

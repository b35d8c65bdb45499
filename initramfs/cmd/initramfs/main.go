// Command initramfs builds the initramfs of a pxejoin node image (see package initramfs).
//
//	go run ./initramfs/cmd/initramfs -agent bin/nodeagent -kernel-version 6.1.0-56-amd64 -o out.cpio.zst
//	go run ./initramfs/cmd/initramfs -list out.cpio.zst
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/pxejoin/pxejoin/initramfs"
)

func main() {
	var s initramfs.Spec
	var out, mods, list, tools, files string
	flag.StringVar(&s.Agent, "agent", "bin/nodeagent", "the nodeagent binary (static) that becomes /init")
	flag.StringVar(&s.KernelVersion, "kernel-version", initramfs.NewestKernel(), "kernel whose modules to carry (/lib/modules/<version>)")
	flag.StringVar(&s.ModulesRoot, "modules-root", "/", "root holding lib/modules")
	flag.StringVar(&mods, "modules", strings.Join(initramfs.DefaultModules, ","), "comma-separated module names (dependencies are added)")
	flag.StringVar(&s.CABundle, "ca-bundle", "/etc/ssl/certs/ca-certificates.crt", "CA bundle to carry for https discovery files (empty: none)")
	flag.StringVar(&tools, "tools", strings.Join(initramfs.DiskTools, ","), "comma-separated programs to carry with their shared libraries (empty: none)")
	flag.StringVar(&files, "tool-files", strings.Join(initramfs.DiskToolFiles, ","), "comma-separated files the tools read")
	flag.StringVar(&out, "o", "initramfs.cpio.zst", "output file")
	flag.StringVar(&list, "list", "", "list the contents of this initramfs instead of building one")
	flag.Parse()
	if list != "" {
		if err := initramfs.List(os.Stdout, list); err != nil {
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
	split := func(v string) []string {
		return strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' })
	}
	s.Modules, s.Tools, s.ToolFiles = split(mods), split(tools), split(files)
	if err := initramfs.Build(s, out); err != nil {
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

package initramfs

import (
	"bufio"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
)

// DefaultModules are the kernel modules an initramfs carries unless -modules says otherwise: NIC drivers
// (virtio and the common server NICs), what the diskless root needs (loop, squashfs, overlay) and what a
// persistent node's disk needs (virtio_blk, nvme, ext4; SATA's ahci and sd_mod, 1.7 MB with libata and
// scsi_mod, are left to -modules to keep the initramfs small).
// virtio_net does not depend on virtio_pci in modules.dep (the bus driver binds the device), so both are
// listed; ext4 needs the crc32c crypto driver (a softdep in modules.softdep, which Build does not
// follow: without it the mount fails with "Cannot load crc32c driver"), so crc32c_generic is listed.
var DefaultModules = []string{
	"virtio_pci", "virtio_net", "e1000", "e1000e", "igb", "ixgbe", "i40e", "ice", "mlx5_core", "bnxt_en",
	"virtio_rng", "loop", "squashfs", "overlay",
	"virtio_blk", "nvme", "crc32c_generic", "ext4",
}

// DepGraph is a parsed modules.dep: module paths (relative to /lib/modules/<version>) and their
// dependencies, as depmod wrote them.
type DepGraph struct {
	deps   map[string][]string // path → dependency paths
	byName map[string]string   // normalized module name → path
}

// ModuleName turns a module path or name ("kernel/drivers/net/virtio_net.ko.xz", "virtio-net") into the
// kernel's name for it ("virtio_net").
func ModuleName(p string) string {
	b := path.Base(p)
	for _, ext := range []string{".gz", ".xz", ".zst"} {
		b = strings.TrimSuffix(b, ext)
	}
	b = strings.TrimSuffix(b, ".ko")
	return strings.ReplaceAll(b, "-", "_")
}

// ParseModulesDep reads a modules.dep ("path: dep dep …" per line).
func ParseModulesDep(r io.Reader) (*DepGraph, error) {
	g := &DepGraph{deps: map[string][]string{}, byName: map[string]string{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		mod, rest, ok := strings.Cut(line, ":")
		mod = strings.TrimSpace(mod)
		if !ok || mod == "" {
			return nil, fmt.Errorf("modules.dep line %d: no \"module:\" in %q", n, line)
		}
		g.deps[mod] = strings.Fields(rest)
		g.byName[ModuleName(mod)] = mod
	}
	return g, sc.Err()
}

// Path returns the path of a module given by name.
func (g *DepGraph) Path(name string) (string, bool) {
	p, ok := g.byName[ModuleName(name)]
	return p, ok
}

// Resolve returns the paths of the named modules and everything they depend on, dependencies before the
// modules that need them (a valid load order). Unknown names are an error unless they are in builtin
// (compiled into the kernel), in which case they are left out.
func (g *DepGraph) Resolve(names []string, builtin map[string]bool) ([]string, error) {
	var order []string
	state := map[string]int{} // 0 new, 1 visiting, 2 done
	var visit func(p string, via []string) error
	visit = func(p string, via []string) error {
		switch state[p] {
		case 1:
			return fmt.Errorf("dependency cycle: %s → %s", strings.Join(via, " → "), p)
		case 2:
			return nil
		}
		deps, ok := g.deps[p]
		if !ok {
			return fmt.Errorf("%s (needed by %s) is not in modules.dep", p, strings.Join(via, " → "))
		}
		state[p] = 1
		for _, d := range deps {
			if err := visit(d, append(via, p)); err != nil {
				return err
			}
		}
		state[p] = 2
		order = append(order, p)
		return nil
	}
	for _, n := range names {
		p, ok := g.Path(n)
		if !ok {
			if builtin[ModuleName(n)] {
				continue
			}
			return nil, fmt.Errorf("module %q is neither in modules.dep nor built in", n)
		}
		if err := visit(p, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// Subset writes a modules.dep holding only the given modules (which must be closed under dependencies),
// sorted, each line "path:" or "path: dep dep" (no trailing space: u-root's kmodule reads a trailing
// space as an empty dependency).
func (g *DepGraph) Subset(paths []string) string {
	sorted := append([]string(nil), paths...)
	sort.Strings(sorted)
	var b strings.Builder
	for _, p := range sorted {
		b.WriteString(p)
		b.WriteString(":")
		if d := g.deps[p]; len(d) > 0 {
			b.WriteString(" ")
			b.WriteString(strings.Join(d, " "))
		}
		b.WriteString("\n")
	}
	return b.String()
}

// ParseBuiltin reads modules.builtin (one path per line) into a set of module names.
func ParseBuiltin(r io.Reader) (map[string]bool, error) {
	m := map[string]bool{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			m[ModuleName(l)] = true
		}
	}
	return m, sc.Err()
}

package initramfs

import (
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/u-root/u-root/pkg/cpio"
)

// Spec says what goes into an initramfs.
type Spec struct {
	// Agent is the statically linked nodeagent binary; it becomes /init.
	Agent string
	// KernelVersion names /lib/modules/<KernelVersion> under ModulesRoot.
	KernelVersion string
	// ModulesRoot is where lib/modules lives ("/" for the host's linux-image-amd64).
	ModulesRoot string
	// Modules are module names to carry with their dependencies (DefaultModules if nil).
	Modules []string
	// CABundle, if set, is copied to /etc/ssl/certs/ca-certificates.crt (https discovery files).
	CABundle string
	// Tools are programs of the build host (dynamically linked ones too) carried as ToolDir/<name>
	// with their shared libraries and loader (DiskTools for a persistent node's disk).
	Tools []string
	// ToolFiles are build host files the tools read, carried at the same path (DiskToolFiles).
	ToolFiles []string
	// ToolsRoot is the root the tools, libraries and files are read from ("/" if empty).
	ToolsRoot string
}

// ModuleListPath is the file in the initramfs that lists the modules to load, in load order (one module
// path relative to /lib/modules/<version> per line). nodeagent's init mode reads it.
const ModuleListPath = "etc/pxejoin/modules"

// Records builds the archive's records, sorted and reproducible (owner root, mtime 0).
func Records(s Spec) ([]cpio.Record, error) {
	agent, err := os.ReadFile(s.Agent)
	if err != nil {
		return nil, err
	}
	if err := checkStatic(agent); err != nil {
		return nil, fmt.Errorf("%s: %w", s.Agent, err)
	}
	root := s.ModulesRoot
	if root == "" {
		root = "/"
	}
	modDir := filepath.Join(root, "lib/modules", s.KernelVersion)
	depFile, err := os.Open(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w (is linux-image for it installed?)", s.KernelVersion, err)
	}
	g, err := ParseModulesDep(depFile)
	depFile.Close()
	if err != nil {
		return nil, err
	}
	builtinText, err := os.ReadFile(filepath.Join(modDir, "modules.builtin"))
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	builtin, err := ParseBuiltin(bytes.NewReader(builtinText))
	if err != nil {
		return nil, err
	}
	mods := s.Modules
	if mods == nil {
		mods = DefaultModules
	}
	order, err := g.Resolve(mods, builtin)
	if err != nil {
		return nil, err
	}

	kdir := "lib/modules/" + s.KernelVersion
	recs := []cpio.Record{
		cpio.StaticFile("init", string(agent), 0o755),
		cpio.CharDev("dev/console", 0o600, 5, 1),
		cpio.CharDev("dev/null", 0o666, 1, 3),
		cpio.StaticFile(kdir+"/modules.dep", g.Subset(order), 0o644),
		cpio.StaticFile(ModuleListPath, strings.Join(order, "\n")+"\n", 0o644),
	}
	if len(builtinText) > 0 {
		recs = append(recs, cpio.StaticFile(kdir+"/modules.builtin", string(builtinText), 0o644))
	}
	for _, d := range []string{"proc", "sys", "run", "tmp", "newroot", "root"} {
		recs = append(recs, cpio.Directory(d, 0o755))
	}
	for _, p := range order {
		b, err := os.ReadFile(filepath.Join(modDir, p))
		if err != nil {
			return nil, err
		}
		recs = append(recs, cpio.StaticFile(kdir+"/"+p, string(b), 0o644))
	}
	if s.CABundle != "" {
		b, err := os.ReadFile(s.CABundle)
		if err != nil {
			return nil, err
		}
		recs = append(recs, cpio.StaticFile("etc/ssl/certs/ca-certificates.crt", string(b), 0o644))
	}
	if len(s.Tools) > 0 || len(s.ToolFiles) > 0 {
		troot := s.ToolsRoot
		if troot == "" {
			troot = "/"
		}
		tools, err := toolRecords(troot, s.Tools, s.ToolFiles)
		if err != nil {
			return nil, err
		}
		recs = append(recs, tools...)
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].Name < recs[j].Name })
	cpio.MakeAllReproducible(recs)
	return recs, nil
}

// checkStatic refuses a dynamically linked /init: there is no loader or libc in the initramfs.
func checkStatic(b []byte) error {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("not an ELF executable: %w", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("dynamically linked (build it with CGO_ENABLED=0)")
		}
	}
	return nil
}

// Compression is how an initramfs is compressed; the file name's extension says which (.xz: XZ,
// otherwise Zstd). Debian's kernel unpacks both (CONFIG_RD_ZSTD, CONFIG_RD_XZ with the x86 BCJ
// filter).
type Compression string

const (
	// Zstd (klauspost/compress, best level) is the fastest to unpack.
	Zstd Compression = "zstd"
	// XZ is Debian's xz (xz-utils) at -9e with the x86 BCJ filter and the CRC32 check the kernel's
	// unxz requires: about 2.3 MB smaller than Zstd for the real nodeagent, which keeps the
	// initramfs within the 15 MB budget (README, "Persistent nodes"; the unpack's cost measured there).
	XZ Compression = "xz"
)

// CompressionOf is the compression the file name path asks for.
func CompressionOf(path string) Compression {
	if strings.HasSuffix(path, ".xz") {
		return XZ
	}
	return Zstd
}

// xzArgs make the kernel-readable xz stream; -T1 keeps it one block and reproducible.
var xzArgs = []string{"--format=xz", "--check=crc32", "--x86", "--lzma2=preset=9e", "-T1", "-c"}

// Write writes the records as a newc cpio archive (parent directories added) compressed with c.
func Write(w io.Writer, recs []cpio.Record, c Compression) error {
	var (
		zw   io.WriteCloser
		wait = func() error { return nil }
	)
	switch c {
	case Zstd:
		enc, err := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedBestCompression), zstd.WithEncoderConcurrency(1))
		if err != nil {
			return err
		}
		zw = enc
	case XZ:
		cmd := exec.Command("xz", xzArgs...)
		cmd.Stdout = w
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		in, err := cmd.StdinPipe()
		if err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("xz: %w (run make deps: it installs xz-utils)", err)
		}
		zw = in
		wait = func() error {
			if err := cmd.Wait(); err != nil {
				return fmt.Errorf("xz: %v: %s", err, stderr.Bytes())
			}
			return nil
		}
	default:
		return fmt.Errorf("initramfs: unknown compression %q", c)
	}
	cw := cpio.Newc.Writer(zw)
	err := cpio.WriteRecordsAndDirs(cw, recs)
	if err == nil {
		err = cpio.WriteTrailer(cw)
	}
	if cerr := zw.Close(); err == nil {
		err = cerr
	}
	if werr := wait(); err == nil {
		err = werr
	}
	return err
}

// Build writes the initramfs for s to path (atomically: a temporary file renamed into place).
func Build(s Spec, path string) error {
	recs, err := Records(s)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".initramfs-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := Write(tmp, recs, CompressionOf(path)); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// Package nodefiles writes the files a joined worker needs (the ones kubeadm writes) under a root
// directory: each file atomically (temporary file, fsync, rename, fsync of the directory), keys 0600, so
// a crash or a failed join never leaves a half-written file.
package nodefiles

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Paths kubeadm uses on a worker, relative to the root.
const (
	KubeletConf          = "/etc/kubernetes/kubelet.conf"
	BootstrapKubeletConf = "/etc/kubernetes/bootstrap-kubelet.conf"
	KubeletConfig        = "/var/lib/kubelet/config.yaml"
	KubeletFlags         = "/var/lib/kubelet/kubeadm-flags.env"
	KubeletPKI           = "/var/lib/kubelet/pki"
	KubeletClientCurrent = KubeletPKI + "/kubelet-client-current.pem"
	// BootstrapKey is the TLS-bootstrap private key, kept until its certificate is issued; the kubelet's
	// own bootstrap uses the same name, so either of them reuses it.
	BootstrapKey = KubeletPKI + "/kubelet-client.key.tmp"
)

// File is one file to write.
type File struct {
	Path string // absolute path on the node, e.g. /etc/kubernetes/kubelet.conf
	Data []byte
	Mode os.FileMode
	// Link, when set, makes Path a symlink to Link (relative to Path's directory) instead of a file.
	Link string
	// Secret marks contents never to print (keys, certificates with keys, credentials).
	Secret bool
}

// Root is a node's filesystem root ("/" on an installed machine, a mounted image otherwise).
type Root string

// Join returns the host path of a node path.
func (r Root) Join(p string) string { return filepath.Join(string(r), filepath.Clean("/"+p)) }

// Write writes files in order, each atomically. Parents are created 0755.
func (r Root) Write(files ...File) error {
	for _, f := range files {
		if err := r.writeOne(f); err != nil {
			return fmt.Errorf("writing %s: %w", f.Path, err)
		}
	}
	return nil
}

func (r Root) writeOne(f File) error {
	dst := r.Join(f.Path)
	dir := filepath.Dir(dst)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmpName := filepath.Join(dir, "."+filepath.Base(dst)+".pxejoin-tmp")
	_ = os.Remove(tmpName)
	if f.Link != "" {
		if err := os.Symlink(f.Link, tmpName); err != nil {
			return err
		}
	} else {
		mode := f.Mode
		if mode == 0 {
			mode = 0o644
		}
		tmp, err := os.OpenFile(tmpName, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
		if err != nil {
			return err
		}
		_, werr := tmp.Write(f.Data)
		if werr == nil {
			werr = tmp.Chmod(mode) // umask-proof
		}
		if werr == nil {
			werr = tmp.Sync()
		}
		if cerr := tmp.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			os.Remove(tmpName)
			return werr
		}
	}
	if err := os.Rename(tmpName, dst); err != nil {
		os.Remove(tmpName)
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Exists reports whether a node path exists under the root.
func (r Root) Exists(p string) bool {
	_, err := os.Lstat(r.Join(p))
	return err == nil
}

// Read reads a node path under the root.
func (r Root) Read(p string) ([]byte, error) { return os.ReadFile(r.Join(p)) }

// Print describes files for --dry-run: paths, modes and contents, with secrets withheld.
func Print(w io.Writer, files ...File) {
	for _, f := range files {
		switch {
		case f.Link != "":
			fmt.Fprintf(w, "[dryrun] Would create symlink %s -> %s\n", f.Path, f.Link)
		case f.Secret:
			fmt.Fprintf(w, "[dryrun] Would write file %s (mode %04o, %d bytes, contents withheld: holds a key or credentials)\n", f.Path, f.Mode.Perm(), len(f.Data))
		default:
			fmt.Fprintf(w, "[dryrun] Would write file %s (mode %04o) with content:\n", f.Path, modeOr(f.Mode).Perm())
			for _, l := range strings.Split(strings.TrimRight(string(f.Data), "\n"), "\n") {
				fmt.Fprintf(w, "\t%s\n", l)
			}
		}
	}
}

func modeOr(m os.FileMode) os.FileMode {
	if m == 0 {
		return 0o644
	}
	return m
}

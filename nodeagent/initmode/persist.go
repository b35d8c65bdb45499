package initmode

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/pxejoin/pxejoin/internal/diskspec"
	"github.com/pxejoin/pxejoin/nodeagent/disk"
)

// Storage is what a persistent node needs from the machine: its disk prepared and mounts.
type Storage interface {
	// Prepare selects the profile's disk, applies the policy and returns the state partition.
	Prepare(ctx context.Context, spec diskspec.Spec, reimage bool) (disk.Result, error)
	// Mount mounts the state partition (ext4) at dir.
	Mount(dev, dir string) error
	// Bind bind-mounts src onto dst.
	Bind(src, dst string) error
}

// PersistDirs are the node's directories kept on a persistent node's disk (bind-mounted from
// <state>/root into the node's root): credentials and kubelet state, containerd's images and
// containers, the join file of a control-plane join, and /var/lib/pxejoin for the node's own data
// (hostPath volumes). The rest of the root is the image under a tmpfs, fresh at every boot, so that
// a new root image applies whole.
var PersistDirs = []string{"etc/kubernetes", "etc/pxejoin", "var/lib/kubelet", "var/lib/containerd", "var/lib/pxejoin"}

// nodeNameFile keeps the node's name on the disk (under etc/pxejoin): a resumed boot fetches no
// join file to learn it from.
const nodeNameFile = "etc/pxejoin/node-name"

// stateRoot is the node's persisted directories on the disk.
func (a *Agent) stateRoot() string { return filepath.Join(a.StateDir, "root") }

// refusedNext is what a machine whose disk is refused does (a disk error in diskspec.DiskRefused's
// words). It never runs diskless instead: the profile asked for the node's state to be kept, and a
// node that silently lost it at every boot would be worse than one that waits to be fixed.
const refusedNext = "Nothing was written to any disk; the machine stays in its initramfs and retries the disk phase " +
	"(a disk may show up late), and a changed profile applies at its next boot"

// disk prepares and mounts the profile's disk (phase disk).
func (a *Agent) disk(ctx context.Context) (string, error) {
	if a.stateMounted {
		return "already mounted", nil
	}
	r, err := a.Storage.Prepare(ctx, *a.Cmdline.Disk, a.Cmdline.Reimage)
	if err != nil && diskspec.DiskRefusal(err.Error()) != "" {
		return "", fmt.Errorf("%w. %s", err, refusedNext)
	}
	if err != nil {
		return "", err
	}
	if err := a.Storage.Mount(r.Partition, a.StateDir); err != nil {
		return "", fmt.Errorf("mounting %s (ext4) at %s: %w", r.Partition, a.StateDir, err)
	}
	a.stateMounted = true
	return diskspec.DiskDetail(string(r.Plan.Action), r.Disk.Dev, r.Plan.Reason), nil
}

// resume checks the credentials on the disk (phase resume): done means no join this boot.
func (a *Agent) resume(ctx context.Context) (string, error) {
	if a.Cmdline.SkipJoin {
		return diskspec.ResumeSkipped(diskspec.ResumeNoJoin, "pxejoin.join=skip"), errSkipped
	}
	if a.Cmdline.Reimage {
		return diskspec.ResumeSkipped(diskspec.ResumeReimage, diskspec.KeyReimage+"=1: joining fresh"), errSkipped
	}
	detail, err := CheckResume(a.stateRoot(), a.Cmdline.CAHashes, time.Now())
	if err != nil {
		return err.Error(), errSkipped
	}
	name, err := os.ReadFile(filepath.Join(a.stateRoot(), nodeNameFile))
	if err != nil {
		return diskspec.ResumeSkipped(diskspec.ResumeInvalid, fmt.Sprintf("credentials valid but no %s on the disk: joining again", nodeNameFile)), errSkipped
	}
	a.nodeName = strings.TrimSpace(string(name))
	if err := a.System.SetHostname(a.nodeName); err != nil {
		return "", fmt.Errorf("set host name %q: %w", a.nodeName, err)
	}
	a.resumed = true
	return fmt.Sprintf("node %q: %s", a.nodeName, detail), nil
}

// persist bind-mounts PersistDirs from the disk into the mounted root. A directory new on the disk
// first gets what the image holds there.
func (a *Agent) persist() error {
	for _, d := range PersistDirs {
		src, dst := filepath.Join(a.stateRoot(), d), filepath.Join(a.NewRoot, d)
		if _, err := os.Stat(src); os.IsNotExist(err) {
			if err := os.MkdirAll(filepath.Dir(src), 0o755); err != nil {
				return err
			}
			tmp := src + ".new"
			os.RemoveAll(tmp)
			if err := os.MkdirAll(tmp, 0o755); err != nil {
				return err
			}
			if _, err := os.Stat(dst); err == nil {
				if err := copyTree(dst, tmp); err != nil {
					return fmt.Errorf("copying the image's /%s to the disk: %w", d, err)
				}
			}
			if err := os.Rename(tmp, src); err != nil {
				return err
			}
		}
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
		if err := a.Storage.Bind(src, dst); err != nil {
			return fmt.Errorf("bind-mounting the disk's /%s: %w", d, err)
		}
	}
	return dropFstab(filepath.Join(a.NewRoot, "etc/fstab"), PersistDirs)
}

// dropFstab removes the fstab entries that would mount over a persisted directory (the image's
// tmpfs for /var/lib/containerd): the root's /etc is the image's under a tmpfs, so this changes
// this boot only.
func dropFstab(fstab string, dirs []string) error {
	b, err := os.ReadFile(fstab)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	var keep []string
	changed := false
	for _, line := range strings.SplitAfter(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && !strings.HasPrefix(f[0], "#") {
			mp := strings.TrimPrefix(filepath.Clean(f[1]), "/")
			if slices.Contains(dirs, mp) {
				keep = append(keep, "# on the persistent disk (nodeagent): "+line)
				changed = true
				continue
			}
		}
		keep = append(keep, line)
	}
	if !changed {
		return nil
	}
	return os.WriteFile(fstab, []byte(strings.Join(keep, "")), 0o644)
}

// imageSource is where the root image on the disk came from: a later boot downloads it again only
// when the URL changed or the server says it was modified.
type imageSource struct {
	URL          string `json:"url"`
	ETag         string `json:"etag,omitempty"`
	LastModified string `json:"lastModified,omitempty"`
}

// cachedImage returns the root image kept on the disk, downloading it when the profile's image
// URL changed or the server has a newer one (a conditional GET: If-None-Match, If-Modified-Since),
// from the next boot server when its own does not answer or breaks off (fetch).
func (a *Agent) cachedImage(ctx context.Context) (path, detail string, err error) {
	dir := filepath.Join(a.StateDir, "image")
	img, srcFile := filepath.Join(dir, "root.squashfs"), filepath.Join(dir, "source.json")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	var src imageSource
	if b, err := os.ReadFile(srcFile); err == nil {
		_ = json.Unmarshal(b, &src)
	}
	_, statErr := os.Stat(img)
	cached := src.URL == a.Cmdline.ImageURL && statErr == nil
	header := http.Header{}
	if cached {
		if src.ETag != "" {
			header.Set("If-None-Match", src.ETag)
		}
		if src.LastModified != "" {
			header.Set("If-Modified-Since", src.LastModified)
		}
	}
	tmp := img + ".download"
	defer os.Remove(tmp)
	var n int64
	notModified := false
	got := imageSource{URL: a.Cmdline.ImageURL}
	err = a.fetch(ctx, a.Cmdline.ImageURL, header, func(resp *http.Response) error {
		if resp.StatusCode == http.StatusNotModified && cached {
			notModified = true
			return nil
		}
		if err := checkOK(a.Cmdline.ImageURL, resp); err != nil {
			return err
		}
		f, err := os.Create(tmp)
		if err != nil {
			return err
		}
		n, err = io.Copy(f, resp.Body)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		got.ETag, got.LastModified = resp.Header.Get("ETag"), resp.Header.Get("Last-Modified")
		return err
	})
	switch {
	case err != nil:
		return "", "", err
	case notModified:
		return img, "kept on the disk, not modified since " + firstOf(src.LastModified, src.ETag), nil
	}
	if err := os.Rename(tmp, img); err != nil {
		return "", "", err
	}
	b, _ := json.Marshal(got)
	if err := os.WriteFile(srcFile, b, 0o644); err != nil {
		return "", "", err
	}
	return img, fmt.Sprintf("%.1f MB from %s, kept on the disk", float64(n)/1e6, a.Cmdline.ImageURL), nil
}

func firstOf(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}

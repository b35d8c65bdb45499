package httpd

import (
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path"
	"path/filepath"

	"github.com/pxejoin/pxejoin/bootserver/inventory"
	"github.com/pxejoin/pxejoin/bootserver/status"
	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

var fileKinds = map[string]string{"kernel": KindKernel, "initrd": KindInitrd, "root-image": KindImage}

// phaseOfKind maps a file kind to the timeline phase its download is (the agent reports the root
// image itself).
var phaseOfKind = map[string]string{"kernel": status.PhaseKernel, "initrd": status.PhaseInitrd}

// serveFile serves a profile's file by /images/<profile>/<file>, or by
// /files/<mac>/<profile>/<file> and then records the download in the machine's timeline.
func (h *Handler) serveFile(w http.ResponseWriter, r *http.Request) {
	f, ok := h.cfg.Inventory.Current().File("/images/" + r.PathValue("profile") + "/" + r.PathValue("file"))
	if !ok {
		http.NotFound(w, r)
		return
	}
	setKind(w, fileKinds[f.Kind])
	mac, err := hwaddr.Parse(r.PathValue("mac"))
	phase := phaseOfKind[f.Kind]
	if err != nil || phase == "" {
		h.sendFile(w, r, f)
		return
	}
	h.cfg.Status.Record(mac, phaseEvent(phase, bootstatus.StateStart, path.Base(f.Path), ""))
	n, code, err := h.sendFile(w, r, f)
	if err != nil || code >= 400 {
		msg := fmt.Sprintf("HTTP %d", code)
		if err != nil {
			msg = err.Error()
		}
		h.cfg.Status.Record(mac, phaseEvent(phase, bootstatus.StateError, path.Base(f.Path), msg))
		return
	}
	h.cfg.Status.Record(mac, phaseEvent(phase, bootstatus.StateDone, fmt.Sprintf("%s, %d bytes", path.Base(f.Path), n), ""))
}

// sendFile serves a local file with http.ServeContent (Content-Length, Range, If-Modified-Since,
// sendfile). It returns the bytes sent and the status code.
func (h *Handler) sendFile(w http.ResponseWriter, r *http.Request, f inventory.File) (int64, int, error) {
	fh, err := os.Open(f.Path)
	if err != nil {
		h.log.Error("cannot open a profile file", "path", f.Path, "err", err)
		http.Error(w, "file unavailable", http.StatusInternalServerError)
		return 0, http.StatusInternalServerError, err
	}
	defer fh.Close()
	fi, err := fh.Stat()
	if err != nil {
		http.Error(w, "file unavailable", http.StatusInternalServerError)
		return 0, http.StatusInternalServerError, err
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	rec, _ := w.(*recorder)
	http.ServeContent(w, r, path.Base(f.Path), fi.ModTime(), fh)
	if rec == nil {
		return fi.Size(), http.StatusOK, nil
	}
	code := rec.code
	if code == 0 {
		code = http.StatusOK
	}
	return rec.n, code, nil
}

// serveIPXE serves an iPXE binary (UEFI HTTP boot) from the iPXE directory: one of its top-level
// symlinks (RootLinks), or a file os.Root keeps inside it.
func (h *Handler) serveIPXE(w http.ResponseWriter, r *http.Request) {
	if h.ipxe == nil {
		http.NotFound(w, r)
		return
	}
	name := r.PathValue("file")
	var fh *os.File
	var err error
	if target, ok := h.ipxeLinks[name]; ok {
		fh, err = os.Open(target)
	} else {
		fh, err = h.ipxe.Open(name)
	}
	if err != nil {
		http.NotFound(w, r)
		return
	}
	defer fh.Close()
	fi, err := fh.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/efi")
	mac, ok := h.ipxeMAC(r)
	if !ok {
		http.ServeContent(w, r, name, fi.ModTime(), fh)
		return
	}
	h.cfg.Status.Record(mac, phaseEvent(status.PhaseNBP, bootstatus.StateStart, name, ""))
	rec, _ := w.(*recorder)
	http.ServeContent(w, r, name, fi.ModTime(), fh)
	if rec != nil && rec.code >= 400 {
		h.cfg.Status.Record(mac, phaseEvent(status.PhaseNBP, bootstatus.StateError, name, fmt.Sprintf("HTTP %d", rec.code)))
		return
	}
	h.cfg.Status.Record(mac, phaseEvent(status.PhaseNBP, bootstatus.StateDone, name, ""))
}

// ipxeMAC is the MAC of the machine that asks for an iPXE binary (Config.MACOf), if one is known.
func (h *Handler) ipxeMAC(r *http.Request) (hwaddr.MAC, bool) {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if h.cfg.MACOf == nil || err != nil {
		return hwaddr.MAC{}, false
	}
	return h.cfg.MACOf(ap.Addr().Unmap())
}

// RootLinks returns dir's top-level symlinks to regular files, by name, each resolved to the file it
// names. Debian's ipxe package links /usr/lib/ipxe/ipxe.efi to /boot/ipxe.efi, which an os.Root of
// the directory refuses as a link out of it; TFTP and /ipxe/ serve these links, resolved once at
// start. Request paths still cannot leave the directory: only what the administrator's directory
// links to at start is served. A dangling link, or one to a directory, is left out.
func RootLinks(dir string) (map[string]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	links := map[string]string{}
	for _, e := range entries {
		if e.Type()&os.ModeSymlink == 0 {
			continue
		}
		target, err := filepath.EvalSymlinks(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		if fi, err := os.Stat(target); err == nil && fi.Mode().IsRegular() {
			links[e.Name()] = target
		}
	}
	return links, nil
}

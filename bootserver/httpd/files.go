package httpd

import (
	"fmt"
	"net/http"
	"os"
	"path"

	"github.com/pxejoin/pxejoin/bootserver/inventory"
	"github.com/pxejoin/pxejoin/bootserver/status"
	"github.com/pxejoin/pxejoin/internal/bootstatus"
)

var fileKinds = map[string]string{"kernel": KindKernel, "initrd": KindInitrd, "root-image": KindImage}

// phaseOfKind maps a file kind to the timeline phase its download is (the agent reports the root
// image itself).
var phaseOfKind = map[string]string{"kernel": status.PhaseKernel, "initrd": status.PhaseInitrd}

// serveFile serves a profile's file by /images/<profile>/<file>.
func (h *Handler) serveFile(w http.ResponseWriter, r *http.Request) {
	f, ok := h.cfg.Inventory.File("/images/" + r.PathValue("profile") + "/" + r.PathValue("file"))
	if !ok {
		http.NotFound(w, r)
		return
	}
	setKind(w, fileKinds[f.Kind])
	h.sendFile(w, r, f)
}

// serveMachineFile serves a profile's file and records the download in the machine's timeline.
func (h *Handler) serveMachineFile(w http.ResponseWriter, r *http.Request) {
	f, ok := h.cfg.Inventory.File("/images/" + r.PathValue("profile") + "/" + r.PathValue("file"))
	if !ok {
		http.NotFound(w, r)
		return
	}
	setKind(w, fileKinds[f.Kind])
	mac, _, _, err := h.machineOf(r, r.PathValue("mac"))
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

// serveIPXE serves an iPXE binary (UEFI HTTP boot) from the iPXE directory; os.Root keeps names
// inside it.
func (h *Handler) serveIPXE(w http.ResponseWriter, r *http.Request) {
	if h.ipxe == nil {
		http.NotFound(w, r)
		return
	}
	name := r.PathValue("file")
	fh, err := h.ipxe.Open(name)
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
	http.ServeContent(w, r, name, fi.ModTime(), fh)
}

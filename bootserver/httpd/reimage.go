package httpd

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/pxejoin/pxejoin/bootserver/inventory"
	"github.com/pxejoin/pxejoin/bootserver/status"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// ReimageResponse is the answer to POST /machines/<mac|node>/reimage.
type ReimageResponse struct {
	MAC      hwaddr.MAC `json:"mac"`
	NodeName string     `json:"nodeName"`
	Profile  string     `json:"profile"`
	// Request names the re-image request (its time, RFC 3339): the machine's Install.Reimage and,
	// with the Machine inventory, the Machine's pxejoin.io/reimage annotation.
	Request string `json:"request"`
}

// serveReimage serves POST /machines/<mac|node>/reimage (`bootserver reimage`): the machine's next
// boots carry pxejoin.reimage=1, so its agent wipes the disk and joins afresh, until it reports the
// wipe. The request is on disk (and, with the Machine inventory, on the Machine: Config.Reimage)
// before the answer. Only clients on the boot server's own host may ask: the boot network must
// not be able to wipe machines.
func (h *Handler) serveReimage(w http.ResponseWriter, r *http.Request) {
	if ip := remoteAddr(r); !ip.IsLoopback() {
		http.Error(w, "a re-image is asked for from the boot server's own host only (bootserver reimage talks to 127.0.0.1); "+
			"with the Machine inventory, annotate the Machine instead: kubectl annotate pxm NODE pxejoin.io/reimage=now", http.StatusForbidden)
		return
	}
	id := r.PathValue("machine")
	mac, a, ok := h.findMachine(id)
	if !ok {
		http.Error(w, fmt.Sprintf("no machine with MAC address or node name %q in the inventory: `bootserver machines` lists them", id), http.StatusNotFound)
		return
	}
	if a.Disk == nil {
		http.Error(w, fmt.Sprintf("machine %s (node %s) boots profile %s, which is diskless: every boot joins afresh, there is no disk to re-image "+
			"(give the profile a disk: to make it persistent)", mac, a.NodeName, a.Profile.Name), http.StatusConflict)
		return
	}
	req := time.Now().UTC().Format(time.RFC3339Nano)
	if err := h.cfg.Status.RequestReimage(mac, status.Identity{NodeName: a.NodeName, Profile: a.Profile.Name, Known: a.Known}, req); err != nil {
		h.log.Error("cannot record a re-image", "mac", mac, "err", err)
		http.Error(w, "cannot record the re-image in the state store: see the boot server's log", http.StatusInternalServerError)
		return
	}
	if h.cfg.Reimage != nil && a.Known {
		ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
		err := h.cfg.Reimage(ctx, a.NodeName, req)
		cancel()
		if err != nil {
			h.log.Error("cannot annotate a Machine for its re-image", "machine", a.NodeName, "err", err)
			http.Error(w, fmt.Sprintf("this boot server will re-image %s at its next boot, but the Machine %s could not be annotated, so other boot servers "+
				"do not know: %v; ask again, or run kubectl annotate pxm %s pxejoin.io/reimage=now", mac, a.NodeName, err, a.NodeName), http.StatusServiceUnavailable)
			return
		}
	}
	h.log.Info("re-image requested: the machine's next boot wipes its disk and joins afresh", "mac", mac, "node", a.NodeName, "request", req)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(ReimageResponse{MAC: mac, NodeName: a.NodeName, Profile: a.Profile.Name, Request: req})
}

// findMachine finds a machine by MAC address (any machine that boots a profile) or by node name
// (an inventory machine, or a machine the boot server has a timeline of).
func (h *Handler) findMachine(id string) (hwaddr.MAC, inventory.Assignment, bool) {
	inv := h.cfg.Inventory.Current()
	if mac, err := hwaddr.Parse(id); err == nil {
		a, ok := inv.Lookup(mac, "")
		return mac, a, ok
	}
	for _, m := range inv.Machines() {
		if mac := m.MAC; !mac.IsZero() && (m.Name == id || (m.Name == "" && inventory.NodeName(mac) == id)) {
			a, ok := inv.Lookup(mac, "")
			return mac, a, ok
		}
	}
	for _, m := range h.cfg.Status.All() {
		if m.NodeName == id {
			a, ok := inv.Lookup(m.MAC, "")
			return m.MAC, a, ok && a.NodeName == id
		}
	}
	return hwaddr.MAC{}, inventory.Assignment{}, false
}

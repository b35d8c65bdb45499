package httpd

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"strings"
	"time"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/bootserver/inventory"
	"github.com/pxejoin/pxejoin/bootserver/status"
	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/internal/diskspec"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// machineOf parses a MAC from a request path segment and looks the machine up (by MAC, then by the
// UUID in ?uuid= or the one seen in DHCP).
func (h *Handler) machineOf(r *http.Request, raw string) (mac hwaddr.MAC, a inventory.Assignment, boots bool, err error) {
	mac, err = hwaddr.Parse(raw)
	if err != nil {
		return mac, a, false, err
	}
	a, boots = h.cfg.Inventory.Current().Lookup(mac, h.uuidOf(r, mac))
	return mac, a, boots, nil
}

// ScriptData is what an iPXE script is rendered from.
type ScriptData struct {
	MAC, NodeName, Profile string
	KernelURL              string
	InitrdURLs             []string
	InitrdNames            []string
	Cmdline                string
}

// Script renders the iPXE script that boots a profile. The kernel line names each initrd with
// initrd=<name>: Debian's iPXE under UEFI needs it, or the kernel finds no initramfs.
func Script(d ScriptData) string {
	var b strings.Builder
	b.Grow(512 + len(d.Cmdline) + 2*len(d.KernelURL)*(1+len(d.InitrdURLs)))
	fmt.Fprintf(&b, "#!ipxe\n# pxejoin: machine %s, node %s, profile %s\n", d.MAC, d.NodeName, d.Profile)
	b.WriteString(":retry\n")
	b.WriteString("kernel " + d.KernelURL)
	for _, n := range d.InitrdNames {
		b.WriteString(" initrd=" + n)
	}
	if d.Cmdline != "" {
		b.WriteString(" " + d.Cmdline)
	}
	b.WriteString(" || goto failed\n")
	for _, u := range d.InitrdURLs {
		b.WriteString("initrd " + u + " || goto failed\n")
	}
	b.WriteString("boot || goto failed\n")
	b.WriteString(":failed\necho pxejoin: loading the boot images failed; trying again in 10 s\nsleep 10\ngoto retry\n")
	return b.String()
}

// UnknownScript is served to a machine that is not in the inventory when there is no profile for
// unknown machines: it says so and exits, so the firmware goes on to its next boot device.
func UnknownScript(mac hwaddr.MAC) string {
	return "#!ipxe\n# pxejoin: machine " + mac.String() + " is not in the inventory and unknown machines get no profile\n" +
		"echo pxejoin: this machine (" + mac.String() + ") is not in the boot server's inventory; add it to the configuration\n" +
		"echo pxejoin: going on with the next boot device in 10 s\nsleep 10\nexit 1\n"
}

// fileURL is the per-machine URL of a profile file: the last segment is the file's name, which iPXE
// takes as the image name.
func (h *Handler) fileURL(mac hwaddr.MAC, p *inventory.Profile, local string) string {
	return h.cfg.ServerURL + "/files/" + mac.String() + "/" + p.Name + "/" + url.PathEscape(path.Base(local))
}

// CmdlineFields are the template fields of mac's cmdline.
func (h *Handler) cmdlineFields(mac hwaddr.MAC, a inventory.Assignment) config.CmdlineFields {
	f := config.CmdlineFields{
		JoinURL:   h.cfg.ServerURL + "/join/" + mac.String(),
		StatusURL: h.cfg.ServerURL + "/status/" + mac.String(),
		MAC:       mac.String(),
		NodeName:  a.NodeName,
		ServerURL: h.cfg.ServerURL,
		Profile:   a.Profile.Name,
	}
	switch {
	case a.Profile.RemoteRootImage():
		f.RootImageURL = a.Profile.RootImage
	case a.Profile.RootImage != "":
		f.RootImageURL = h.fileURL(mac, a.Profile, a.Profile.RootImage) + imageVersion(a.Profile.RootImage)
	}
	return f
}

// imageVersion is the query that versions a local root image's URL: "?v=" and the file's
// modification time and size (hex), "" if the file cannot be read (its download then fails and
// says so). A persistent machine keeps its root image on its disk and downloads it again only
// when the URL changes: a new image file (written anew, or replaced by rename) changes the URL,
// so it is applied on the next boot without a wipe. Hashing the content would cost a read of
// the whole image per script; the time and size are as good for files that are replaced, not
// edited in place within the same nanosecond. A remote image (http(s) URL) is the operator's to
// version: give it a new URL for new content.
func imageVersion(local string) string {
	fi, err := os.Stat(local)
	if err != nil {
		return ""
	}
	return fmt.Sprintf("?v=%x-%x", fi.ModTime().UnixNano(), fi.Size())
}

func (h *Handler) serveScript(w http.ResponseWriter, r *http.Request) {
	raw, ok := strings.CutSuffix(r.PathValue("script"), ".ipxe")
	if !ok {
		http.NotFound(w, r)
		return
	}
	mac, a, boots, err := h.machineOf(r, raw)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	start := status.Event{Event: bootstatus.Event{Phase: status.PhaseScript, State: bootstatus.StateStart, Time: time.Now()}, Source: status.SourceHTTP, StartsBoot: true}
	if !boots {
		start.State, start.Error = bootstatus.StateError, "not in the inventory and no profile for unknown machines"
		h.cfg.Status.RecordAs(mac, nil, start)
		h.log.Info("unknown machine asked for a script", "mac", mac, "remote", r.RemoteAddr)
		_, _ = io.WriteString(w, UnknownScript(mac))
		return
	}
	id := status.Identity{NodeName: a.NodeName, Profile: a.Profile.Name, Known: a.Known}
	reimage := false
	if a.Disk != nil {
		// On disk before the script goes out, so that the agent's wipe report completes the
		// request even across a restart; if it cannot be written, this boot does not wipe.
		req, err := h.cfg.Status.ReimageForScript(mac, a.Reimage)
		if err != nil {
			h.log.Error("cannot record a re-image in the state store; this boot does not wipe its disk", "mac", mac, "err", err)
		}
		reimage = req != "" && err == nil
	}
	body, err := h.renderScript(mac, a, reimage)
	if err != nil {
		h.log.Error("cannot render a cmdline", "mac", mac, "err", err)
		h.cfg.Status.RecordAs(mac, &id, start, phaseEvent(status.PhaseScript, bootstatus.StateError, "", err.Error()))
		http.Error(w, "cannot render this machine's kernel command line: see the boot server's log", http.StatusInternalServerError)
		return
	}
	// The phase is the request (rendering takes microseconds): done carries the start's time.
	done := status.Event{Event: bootstatus.Event{Phase: status.PhaseScript, State: bootstatus.StateDone, Detail: "profile " + a.Profile.Name, Time: start.Time}, Source: status.SourceHTTP}
	boot := h.cfg.Status.RecordAs(mac, &id, start, done)
	_, _ = io.WriteString(w, body)
	// Only inventory machines get a token ahead: a stranger's comes from the unknown machines' budget,
	// spent only when its agent asks for its join file. An installed machine resumes from its disk
	// without a token: it gets one only if its agent asks for a join file (a re-join).
	switch {
	case a.Disk != nil && h.cfg.Status.Resumes(mac, a.Reimage):
		h.resumes.Inc()
	case a.Known && h.cfg.MintAhead && h.cfg.Tokens != nil:
		h.mintAhead(mac, a.NodeName, boot)
	}
}

// mintAhead mints mac's token for this boot in the background, unless maxMintAhead mints are under
// way already.
func (h *Handler) mintAhead(mac hwaddr.MAC, node string, boot int) {
	select {
	case h.minting <- struct{}{}:
	default:
		return
	}
	go func() {
		defer func() { <-h.minting }()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := h.cfg.Tokens.Token(ctx, mac, node, boot, true); err != nil {
			// err names the token id at most, never the secret.
			h.log.Warn("cannot mint a bootstrap token ahead of the join file; it will be minted on request", "mac", mac, "err", err)
		}
	}()
}

// uuidOf is the SMBIOS UUID a lookup of mac uses: ?uuid= or the one seen in DHCP.
func (h *Handler) uuidOf(r *http.Request, mac hwaddr.MAC) string {
	uuid := r.URL.Query().Get("uuid")
	if uuid == "" && h.cfg.UUIDOf != nil {
		uuid = h.cfg.UUIDOf(mac)
	}
	return uuid
}

// renderScript renders the script of machine mac, assigned a; reimage adds pxejoin.reimage=1.
func (h *Handler) renderScript(mac hwaddr.MAC, a inventory.Assignment, reimage bool) (string, error) {
	cmdline, err := a.Profile.Cmdline(h.cmdlineFields(mac, a))
	if err != nil {
		return "", err
	}
	if params := h.diskParams(a, reimage); len(params) > 0 {
		cmdline = strings.TrimSpace(cmdline + " " + strings.Join(params, " "))
	}
	d := ScriptData{MAC: mac.String(), NodeName: a.NodeName, Profile: a.Profile.Name, KernelURL: h.fileURL(mac, a.Profile, a.Profile.Kernel), Cmdline: cmdline}
	for _, f := range a.Profile.Initrds {
		d.InitrdURLs = append(d.InitrdURLs, h.fileURL(mac, a.Profile, f))
		d.InitrdNames = append(d.InitrdNames, path.Base(f))
	}
	return Script(d), nil
}

// diskParams are the kernel command line parameters of a persistent machine, which the boot
// server appends to the profile's cmdline: the disk (diskspec.Spec.Params), the CA pins the join
// file carries (credentials on the disk resume only if their CA matches one) and, while a
// re-image is pending, pxejoin.reimage=1. None for a diskless machine.
func (h *Handler) diskParams(a inventory.Assignment, reimage bool) []string {
	if a.Disk == nil {
		return nil
	}
	p := a.Disk.Params()
	if len(h.cfg.CACertHashes) > 0 {
		p = append(p, diskspec.KeyCAHash+"="+strings.Join(h.cfg.CACertHashes, ","))
	}
	if reimage {
		p = append(p, diskspec.KeyReimage+"=1")
	}
	return p
}

func phaseEvent(phase, state, detail, errText string) status.Event {
	return status.Event{Event: bootstatus.Event{Phase: phase, State: state, Detail: detail, Error: errText}, Source: status.SourceHTTP}
}

package httpd

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/bootserver/httpfast"
	"github.com/pxejoin/pxejoin/bootserver/inventory"
	"github.com/pxejoin/pxejoin/bootserver/status"
	"github.com/pxejoin/pxejoin/internal/bootstatus"
)

// machineOf parses a MAC from a request path segment and looks the machine up (by MAC, then by the
// UUID in ?uuid= or the one seen in DHCP).
func (h *Handler) machineOf(r *http.Request, raw string) (mac string, a inventory.Assignment, boots bool, err error) {
	mac, err = canonicalMAC(raw)
	if err != nil {
		return "", a, false, err
	}
	a, boots = h.cfg.Inventory.Lookup(mac, h.uuidOf(r.URL.RawQuery, mac))
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
func UnknownScript(mac string) string {
	return "#!ipxe\n# pxejoin: machine " + mac + " is not in the inventory and unknown machines get no profile\n" +
		"echo pxejoin: this machine (" + mac + ") is not in the boot server's inventory; add it to the configuration\n" +
		"echo pxejoin: going on with the next boot device in 10 s\nsleep 10\nexit 1\n"
}

// fileURL is the per-machine URL of a profile file: the last segment is the file's name, which iPXE
// takes as the image name.
func (h *Handler) fileURL(mac string, p *inventory.Profile, local string) string {
	return h.cfg.ServerURL + "/files/" + mac + "/" + p.Name + "/" + url.PathEscape(path.Base(local))
}

// CmdlineFields are the template fields of mac's cmdline.
func (h *Handler) cmdlineFields(mac string, a inventory.Assignment) config.CmdlineFields {
	f := config.CmdlineFields{
		JoinURL:   h.cfg.ServerURL + "/join/" + mac,
		StatusURL: h.cfg.ServerURL + "/status/" + mac,
		MAC:       mac,
		NodeName:  a.NodeName,
		ServerURL: h.cfg.ServerURL,
		Profile:   a.Profile.Name,
	}
	switch {
	case a.Profile.RemoteRootImage():
		f.RootImageURL = a.Profile.RootImage
	case a.Profile.RootImage != "":
		f.RootImageURL = h.fileURL(mac, a.Profile, a.Profile.RootImage)
	}
	return f
}

// Header values of a script response, shared by every response (net/http never changes them).
var (
	scriptContentType  = []string{"text/plain; charset=utf-8"}
	scriptCacheControl = []string{"no-store"}
)

func (h *Handler) serveScript(w http.ResponseWriter, r *http.Request) {
	seg := r.PathValue("script")
	if seg == "" { // routed by ServeHTTP, not the mux: the path is /boot/<segment>, unescaped
		seg = strings.TrimPrefix(r.URL.Path, "/boot/")
	}
	raw, ok := strings.CutSuffix(seg, ".ipxe")
	if !ok {
		http.NotFound(w, r)
		return
	}
	mac, err := canonicalMAC(raw)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	hdr := w.Header()
	hdr["Content-Type"], hdr["Cache-Control"] = scriptContentType, scriptCacheControl
	key := scriptKey{mac: mac, uuid: h.uuidOf(r.URL.RawQuery, mac)}
	rs, err := h.cachedScript(key)
	if err != nil {
		h.log.Error("cannot render a cmdline", "mac", mac, "err", err)
		start := status.Event{Event: bootstatus.Event{Phase: status.PhaseScript, State: bootstatus.StateStart, Time: time.Now()}, Source: status.SourceHTTP, StartsBoot: true}
		h.cfg.Status.Record(mac, start)
		h.cfg.Status.SetIdentity(mac, rs.identity.NodeName, rs.identity.Profile, rs.identity.Known)
		h.cfg.Status.Record(mac, phaseEvent(status.PhaseScript, bootstatus.StateError, "", err.Error()))
		http.Error(w, "cannot render this machine's kernel command line: see the boot server's log", http.StatusInternalServerError)
		return
	}
	boot := h.recordScript(mac, rs, r.RemoteAddr)
	_, _ = w.Write(rs.body)
	if rs.boots && h.cfg.MintAhead {
		h.mintAhead(mac, rs.identity.NodeName, boot)
	}
}

// scriptHeader is a script response's header lines for httpfast: those serveScript sets, in
// net/http's (sorted) order.
var scriptHeader = []byte("Cache-Control: " + scriptCacheControl[0] + "\r\nContent-Type: " + scriptContentType[0] + "\r\n")

// ServeFast implements httpfast.Handler: it answers GET and HEAD /boot/<mac>.ipxe as ServeHTTP does
// when the answer is the script (a 200), with the same recording, metrics and logs. Everything else
// it declines, before doing anything, and net/http serves it: other paths, a path ServeHTTP would
// not dispatch directly, a MAC that does not parse (400), a cmdline that does not render (500).
func (h *Handler) ServeFast(r *httpfast.Request) (httpfast.Response, bool) {
	seg, ok := strings.CutPrefix(r.Path, "/boot/")
	if !ok || seg == "" || seg == "." || seg == ".." || strings.IndexByte(seg, '/') >= 0 {
		return httpfast.Response{}, false
	}
	raw, ok := strings.CutSuffix(seg, ".ipxe")
	if !ok {
		return httpfast.Response{}, false
	}
	mac, err := canonicalMAC(raw)
	if err != nil {
		return httpfast.Response{}, false
	}
	rs, err := h.cachedScript(scriptKey{mac: mac, uuid: h.uuidOf(r.RawQuery, mac)})
	if err != nil {
		return httpfast.Response{}, false
	}
	debug := h.log.Enabled(context.Background(), slog.LevelDebug)
	var start time.Time
	if debug {
		start = time.Now()
	}
	boot := h.recordScript(mac, rs, r.RemoteAddr)
	if rs.boots && h.cfg.MintAhead {
		h.mintAhead(mac, rs.identity.NodeName, boot)
	}
	h.scriptOK.inc()
	if debug {
		h.log.Debug("http", "method", r.Method, "path", r.Path, "remote", r.RemoteAddr,
			"kind", KindScript, "code", http.StatusOK, "bytes", len(rs.body), "seconds", time.Since(start).Seconds())
	}
	return httpfast.Response{Header: scriptHeader, Body: rs.body}, true
}

// cachedScript returns the script of the machine at k, rendering and caching it if needed. On a
// cmdline error it returns the (uncached) partial result with the machine's identity.
func (h *Handler) cachedScript(k scriptKey) (*renderedScript, error) {
	if rs := h.scripts.get(k); rs != nil {
		return rs, nil
	}
	rs, err := h.renderScript(k)
	if err == nil {
		h.scripts.put(k, rs)
	}
	return rs, err
}

// recordScript records that mac fetched its script rs and returns the boot it starts.
func (h *Handler) recordScript(mac string, rs *renderedScript, remote string) int {
	now := time.Now()
	evs := [2]status.Event{{Event: bootstatus.Event{Phase: status.PhaseScript, State: bootstatus.StateStart, Time: now}, Source: status.SourceHTTP, StartsBoot: true}}
	if !rs.boots {
		evs[0].State, evs[0].Error = bootstatus.StateError, "not in the inventory and no profile for unknown machines"
		h.cfg.Status.RecordAs(mac, nil, evs[:1]...)
		h.log.Info("unknown machine asked for a script", "mac", mac, "remote", remote)
		return 0
	}
	// The phase is the request (rendering takes microseconds): done carries the start's time.
	evs[1] = status.Event{Event: bootstatus.Event{Phase: status.PhaseScript, State: bootstatus.StateDone, Detail: rs.detail, Time: now}, Source: status.SourceHTTP}
	return h.cfg.Status.RecordAs(mac, &rs.identity, evs[:]...)
}

// mintAhead mints mac's token for this boot in the background, unless maxMintAhead mints are under
// way already.
func (h *Handler) mintAhead(mac, node string, boot int) {
	select {
	case h.minting <- struct{}{}:
	default:
		return
	}
	go func() {
		defer func() { <-h.minting }()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := h.cfg.Tokens.Token(ctx, mac, node, boot); err != nil {
			// err names the token id at most, never the secret.
			h.log.Warn("cannot mint a bootstrap token ahead of the join file; it will be minted on request", "mac", mac, "err", err)
		}
	}()
}

// uuidOf is the SMBIOS UUID a lookup of mac uses: ?uuid= or the one seen in DHCP.
func (h *Handler) uuidOf(rawQuery, mac string) string {
	uuid := ""
	if rawQuery != "" {
		q, _ := url.ParseQuery(rawQuery) // as net/http's URL.Query: what parses counts
		uuid = q.Get("uuid")
	}
	if uuid == "" && h.cfg.UUIDOf != nil {
		uuid = h.cfg.UUIDOf(mac)
	}
	return uuid
}

// renderScript renders the script of the machine at k. On a cmdline error it returns the
// (uncachable) partial result with the machine's identity.
func (h *Handler) renderScript(k scriptKey) (*renderedScript, error) {
	a, boots := h.cfg.Inventory.Lookup(k.mac, k.uuid)
	if !boots {
		return &renderedScript{body: []byte(UnknownScript(k.mac))}, nil
	}
	rs := &renderedScript{boots: true, identity: status.Identity{NodeName: a.NodeName, Profile: a.Profile.Name, Known: a.Known},
		detail: "profile " + a.Profile.Name}
	cmdline, err := a.Profile.Cmdline(h.cmdlineFields(k.mac, a))
	if err != nil {
		return rs, err
	}
	d := ScriptData{MAC: k.mac, NodeName: a.NodeName, Profile: a.Profile.Name, KernelURL: h.fileURL(k.mac, a.Profile, a.Profile.Kernel), Cmdline: cmdline}
	for _, f := range a.Profile.Initrds {
		d.InitrdURLs = append(d.InitrdURLs, h.fileURL(k.mac, a.Profile, f))
		d.InitrdNames = append(d.InitrdNames, path.Base(f))
	}
	rs.body = []byte(Script(d))
	return rs, nil
}

func phaseEvent(phase, state, detail, errText string) status.Event {
	return status.Event{Event: bootstatus.Event{Phase: phase, State: state, Detail: detail, Error: errText}, Source: status.SourceHTTP}
}

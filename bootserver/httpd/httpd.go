// Package httpd is the boot server's HTTP side: iPXE scripts rendered from each machine's profile,
// kernels/initrds/images (with Range), the per-machine kubeadm JoinConfiguration, the agent's status
// reports, the machines' timelines (JSON and an HTML page), Prometheus metrics and a health check.
//
// Routes:
//
//	GET  /boot/<mac>.ipxe                 iPXE script (?uuid=<smbios uuid> optional)
//	GET  /files/<mac>/<profile>/<file>    a profile's kernel/initrd/root image, recorded in <mac>'s timeline
//	GET  /images/<profile>/<file>         the same file, not tied to a machine
//	GET  /ipxe/<file>                     iPXE binaries (UEFI HTTP boot)
//	GET  /join/<mac>                      JoinConfiguration v1beta4 (Cache-Control: no-store, never logged)
//	POST /status/<mac>                    []bootstatus.Event
//	GET  /machines                        machines and timelines, JSON
//	GET  /                                the same as a page
//	GET  /metrics, /healthz
package httpd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pxejoin/pxejoin/bootserver/inventory"
	"github.com/pxejoin/pxejoin/bootserver/status"
)

// Tokens mints and revokes machine tokens (bootserver/tokens.Manager).
type Tokens interface {
	// Token returns mac's token for its boot, minting one if needed.
	Token(ctx context.Context, mac, node string, boot int) (string, error)
	// RevokeMAC deletes mac's tokens.
	RevokeMAC(ctx context.Context, mac, reason string) error
}

// DefaultMaxStatusBody bounds a POST /status body.
const DefaultMaxStatusBody = 64 << 10

// MaxStatusEvents bounds the events of one POST /status.
const MaxStatusEvents = 256

// Config configures the handler.
type Config struct {
	Inventory *inventory.Inventory
	Status    *status.Store
	Tokens    Tokens
	// ServerURL is how machines reach this server, e.g. http://10.0.0.1:8080 (no trailing slash).
	ServerURL string
	// APIServerEndpoint (host:port) and CACertHashes go into every join file.
	APIServerEndpoint string
	CACertHashes      []string
	// IPXEDir holds the iPXE binaries served at /ipxe/; empty serves none.
	IPXEDir string
	// MintAhead mints a machine's token in the background when it fetches its script, so that when its
	// agent asks for the join file seconds later the token exists and the controller manager has
	// already signed cluster-info with it: discovery does not wait for the signer. The join file
	// still mints on demand when the token is not there (busy, failed, or no script fetched).
	MintAhead bool
	// UUIDOf, if set, gives the SMBIOS UUID a MAC sent in DHCP, for inventory lookups by UUID.
	UUIDOf func(mac string) string
	// MaxStatusBody bounds a POST /status body; default DefaultMaxStatusBody.
	MaxStatusBody int64
	// Logger; default discards. Request lines go at Debug.
	Logger *slog.Logger
	// Registerer gets pxejoin_http_* metrics; Gatherer is served at /metrics (nil: no /metrics).
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
}

// Handler is the HTTP handler.
type Handler struct {
	cfg      Config
	log      *slog.Logger
	mux      *http.ServeMux
	ipxe     *os.Root
	requests *prometheus.CounterVec
	rejects  *prometheus.CounterVec
	scripts  scriptCache
	script   http.HandlerFunc // GET /boot/{script}, wrapped by route
	scriptOK *okCounter       // its requests answered 200 (ServeFast counts there too)
	minting  chan struct{}    // bounds the background mints of MintAhead
}

// maxMintAhead bounds the tokens minted ahead at once; past it, join files mint on demand.
const maxMintAhead = 8

// Request kinds (label of pxejoin_http_requests_total).
const (
	KindScript   = "script"
	KindKernel   = "kernel"
	KindInitrd   = "initrd"
	KindImage    = "root-image"
	KindIPXE     = "ipxe"
	KindJoin     = "join"
	KindStatus   = "status"
	KindMachines = "machines"
	KindPage     = "page"
	KindMetrics  = "metrics"
	KindHealth   = "healthz"
	KindOther    = "other"
)

// New builds the handler.
func New(cfg Config) (*Handler, error) {
	if cfg.Inventory == nil || cfg.Status == nil || cfg.Tokens == nil {
		return nil, errors.New("httpd: Inventory, Status and Tokens are required")
	}
	if cfg.ServerURL == "" || cfg.APIServerEndpoint == "" || len(cfg.CACertHashes) == 0 {
		return nil, errors.New("httpd: ServerURL, APIServerEndpoint and CACertHashes are required")
	}
	if cfg.MaxStatusBody <= 0 {
		cfg.MaxStatusBody = DefaultMaxStatusBody
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	h := &Handler{cfg: cfg, log: cfg.Logger, mux: http.NewServeMux(), minting: make(chan struct{}, maxMintAhead)}
	if cfg.IPXEDir != "" {
		root, err := os.OpenRoot(cfg.IPXEDir)
		if err != nil {
			return nil, fmt.Errorf("httpd: iPXE directory: %w", err)
		}
		h.ipxe = root
	}
	h.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pxejoin_http_requests_total", Help: "HTTP requests by kind and status code.",
	}, []string{"kind", "code"})
	h.rejects = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pxejoin_status_reports_rejected_total", Help: "POST /status bodies refused, by reason.",
	}, []string{"reason"})
	if r := cfg.Registerer; r != nil {
		for _, c := range []prometheus.Collector{h.requests, h.rejects} {
			if err := r.Register(c); err != nil {
				return nil, err
			}
		}
	}
	h.script, h.scriptOK = h.routeOK("GET /boot/{script}", KindScript, h.serveScript)
	h.route("GET /files/{mac}/{profile}/{file}", KindOther, h.serveMachineFile)
	h.route("GET /images/{profile}/{file}", KindOther, h.serveFile)
	h.route("GET /ipxe/{file}", KindIPXE, h.serveIPXE)
	h.route("GET /join/{mac}", KindJoin, h.serveJoin)
	h.route("POST /status/{mac}", KindStatus, h.postStatus)
	h.route("GET /machines", KindMachines, h.serveMachines)
	h.route("GET /{$}", KindPage, h.servePage)
	h.route("GET /healthz", KindHealth, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "ok\n")
	})
	if cfg.Gatherer != nil {
		prom := promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{})
		h.route("GET /metrics", KindMetrics, prom.ServeHTTP)
	}
	h.route("/", KindOther, http.NotFound)
	return h, nil
}

// Close releases the iPXE directory.
func (h *Handler) Close() error {
	if h.ipxe != nil {
		return h.ipxe.Close()
	}
	return nil
}

// ServeHTTP implements http.Handler. A script request, the one every booting machine makes, goes
// straight to its handler when its path is one the mux would route there unchanged (clean, no
// escapes).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if (r.Method == http.MethodGet || r.Method == http.MethodHead) && r.URL.RawPath == "" {
		if seg, ok := strings.CutPrefix(r.URL.Path, "/boot/"); ok && seg != "" && seg != "." && seg != ".." && strings.IndexByte(seg, '/') < 0 {
			h.script(w, r)
			return
		}
	}
	h.mux.ServeHTTP(w, r)
}

// route registers a handler that counts and logs its requests. A handler may change the kind (for
// files) through the recorder.
func (h *Handler) route(pattern, kind string, f http.HandlerFunc) {
	h.routeOK(pattern, kind, f)
}

// okCounter is a kind's counter of 200s, resolved at its first use (the series appears then).
type okCounter struct {
	vec  *prometheus.CounterVec
	kind string
	c    atomic.Pointer[prometheus.Counter]
}

func (o *okCounter) inc() {
	c := o.c.Load()
	if c == nil {
		c = new(prometheus.Counter)
		*c = o.vec.WithLabelValues(o.kind, "200")
		o.c.Store(c)
	}
	(*c).Inc()
}

// routeOK is route, returning the wrapped handler and its counter of 200s.
func (h *Handler) routeOK(pattern, kind string, f http.HandlerFunc) (http.HandlerFunc, *okCounter) {
	ok200 := &okCounter{vec: h.requests, kind: kind}
	wrapped := func(w http.ResponseWriter, r *http.Request) {
		debug := h.log.Enabled(r.Context(), slog.LevelDebug)
		var start time.Time
		if debug {
			start = time.Now()
		}
		rec := &recorder{ResponseWriter: w, kind: kind}
		f(rec, r)
		code := rec.code
		if code == 0 {
			code = http.StatusOK
		}
		if code == http.StatusOK && rec.kind == kind {
			ok200.inc()
		} else {
			h.requests.WithLabelValues(rec.kind, codeLabel(code)).Inc()
		}
		if debug {
			// The path never holds a secret; the join file's body is never logged.
			h.log.Debug("http", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr,
				"kind", rec.kind, "code", code, "bytes", rec.n, "seconds", time.Since(start).Seconds())
		}
	}
	h.mux.HandleFunc(pattern, wrapped)
	return wrapped, ok200
}

func codeLabel(code int) string {
	switch code {
	case 200:
		return "200"
	case 204:
		return "204"
	case 206:
		return "206"
	case 304:
		return "304"
	case 404:
		return "404"
	}
	return fmt.Sprintf("%dxx", code/100)
}

// recorder notes the status code and bytes written; it keeps io.ReaderFrom so that
// http.ServeContent of a file still uses sendfile.
type recorder struct {
	http.ResponseWriter
	kind string
	code int
	n    int64
}

func (r *recorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(b)
	r.n += int64(n)
	return n, err
}

func (r *recorder) ReadFrom(src io.Reader) (int64, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	n, err := io.Copy(r.ResponseWriter, src) // the ResponseWriter's ReadFrom: sendfile for files
	r.n += n
	return n, err
}

// Unwrap lets http.ResponseController reach the connection.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// setKind changes the metric kind of the request being served.
func setKind(w http.ResponseWriter, kind string) {
	if r, ok := w.(*recorder); ok {
		r.kind = kind
	}
}

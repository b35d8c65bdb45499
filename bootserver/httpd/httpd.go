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
//	POST /machines/<mac|node>/reimage     re-image the machine at its next boot (from loopback only)
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
	"net/netip"
	"os"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/bootserver/inventory"
	"github.com/pxejoin/pxejoin/bootserver/status"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// Tokens mints and revokes machine tokens (bootserver/tokens.Manager).
type Tokens interface {
	// Token returns mac's token for its boot, minting one if needed; known says the machine is in the
	// inventory. An error with a RetryAfter() time.Duration method is a refusal to mint now (a limit
	// on unknown machines): its message is the reason, for the client.
	Token(ctx context.Context, mac hwaddr.MAC, node string, boot int, known bool) (string, error)
	// RevokeMAC deletes mac's tokens.
	RevokeMAC(ctx context.Context, mac hwaddr.MAC, reason string) error
}

// Config configures the handler.
type Config struct {
	// Inventory gives the current inventory snapshot (a file's inventory is its own Source).
	Inventory inventory.Source
	Status    *status.Store
	// Tokens mints the join files' tokens; nil means the boot server has no cluster: join files are
	// then refused with the reason, and the page says so.
	Tokens Tokens
	// ServerURL is how machines reach this server, e.g. http://10.0.0.1:8080 (no trailing slash).
	ServerURL string
	// APIServerEndpoint (host:port) and CACertHashes go into every join file (required with Tokens).
	APIServerEndpoint string
	CACertHashes      []string
	// IPXEDir holds the iPXE binaries served at /ipxe/ (its top-level symlinks too, as TFTP serves
	// them); empty serves none.
	IPXEDir string
	// MintAhead mints an inventory machine's token in the background when it fetches its script, so
	// that when its agent asks for the join file seconds later the token exists and the controller
	// manager has already signed cluster-info with it: discovery does not wait for the signer. The
	// join file still mints on demand when the token is not there (busy, failed, or no script
	// fetched). Machines not in the inventory never get a token ahead: theirs come from a small
	// budget, spent only on a join file's request.
	MintAhead bool
	// UUIDOf, if set, gives the SMBIOS UUID a MAC sent in DHCP, for inventory lookups by UUID.
	UUIDOf func(mac hwaddr.MAC) string
	// MACOf, if set, gives the MAC of the machine at an address (its DHCP lease), so that a download
	// from /ipxe/ (UEFI HTTP boot's NBP) is recorded as its nbp phase; false records nothing.
	MACOf func(ip netip.Addr) (hwaddr.MAC, bool)
	// LeaseHolder, if set (full DHCP mode), gives the MAC whose DHCP lease holds an address: a join
	// file then goes only to the address holding that MAC's lease (403 otherwise, counted).
	LeaseHolder func(ip netip.Addr) (hwaddr.MAC, bool)
	// OncePerBoot hands a machine's join file out once per boot: a second fetch gets 409 with the
	// reason (counted), unless the machine's agent reported a failed join since (it then fetches
	// again). The memory of what was served does not survive a restart.
	OncePerBoot bool
	// Reimage, if set (the Machine inventory), puts a re-image request on the Machine named node
	// (annotation machineapi.AnnotationReimage, value req), so that every boot server carries it.
	Reimage func(ctx context.Context, node, req string) error
	// Limits bound what clients may hold of the server that Serve runs; zero fields take
	// bootserver/config's defaults.
	Limits config.HTTP
	// Logger; default discards. Request lines go at Debug.
	Logger *slog.Logger
	// Registerer gets pxejoin_http_* metrics; Gatherer is served at /metrics (nil: no /metrics).
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
}

// Handler is the HTTP handler.
type Handler struct {
	cfg       Config
	log       *slog.Logger
	mux       *http.ServeMux
	ipxe      *os.Root
	ipxeLinks map[string]string // the iPXE directory's top-level symlinks: name → the file
	requests  *prometheus.CounterVec
	rejects   *prometheus.CounterVec
	refused   prometheus.Counter // connections over a client's cap
	minting   chan struct{}      // bounds the background mints of MintAhead
	gate      *joinGate          // who may have a join file, and where each went
	// unavailable counts join files answered 503 because no token could be minted.
	unavailable *prometheus.CounterVec
	// rejoins counts join files served to installed machines, by reason; resumes counts the
	// scripts of installed machines, which get no token ahead.
	rejoins *prometheus.CounterVec
	resumes prometheus.Counter
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
	KindReimage  = "reimage"
	KindPage     = "page"
	KindMetrics  = "metrics"
	KindHealth   = "healthz"
	KindOther    = "other"
)

// New builds the handler.
func New(cfg Config) (*Handler, error) {
	if cfg.Inventory == nil || cfg.Status == nil || cfg.ServerURL == "" {
		return nil, errors.New("httpd: Inventory, Status and ServerURL are required")
	}
	if cfg.Tokens != nil && (cfg.APIServerEndpoint == "" || len(cfg.CACertHashes) == 0) {
		return nil, errors.New("httpd: APIServerEndpoint and CACertHashes are required with Tokens")
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
		if h.ipxeLinks, err = RootLinks(cfg.IPXEDir); err != nil {
			root.Close()
			return nil, fmt.Errorf("httpd: iPXE directory: %w", err)
		}
	}
	h.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pxejoin_http_requests_total", Help: "HTTP requests by kind and status code.",
	}, []string{"kind", "code"})
	h.rejects = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pxejoin_status_reports_rejected_total", Help: "POST /status bodies refused, by reason.",
	}, []string{"reason"})
	h.refused = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "pxejoin_http_connections_refused_total",
		Help: "HTTP connections closed at once because their client address held http.maxConnsPerClient connections already.",
	})
	h.unavailable = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pxejoin_join_unavailable_total",
		Help: "Join files answered 503 with Retry-After because no token could be minted, by reason (api-unreachable: the cluster's API is down, unreachable or overloaded; api-error: it refused).",
	}, []string{"reason"})
	h.rejoins = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pxejoin_rejoins_total",
		Help: "Join files served to installed (persistent) machines, which join again instead of resuming, by reason (reimage, expired, ca-changed, disk-replaced, not-resumed, other).",
	}, []string{"reason"})
	for _, r := range status.RejoinReasons {
		h.rejoins.WithLabelValues(r)
	}
	h.resumes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "pxejoin_script_resume_total",
		Help: "Scripts served to installed machines expected to resume from their disk: no token is minted ahead for them.",
	})
	var err error
	if h.gate, err = newJoinGate(&h.cfg); err != nil {
		return nil, err
	}
	if r := cfg.Registerer; r != nil {
		for _, c := range []prometheus.Collector{h.requests, h.rejects, h.refused, h.unavailable, h.rejoins, h.resumes} {
			if err := r.Register(c); err != nil {
				return nil, err
			}
		}
	}
	h.route("GET /boot/{script}", KindScript, h.serveScript)
	h.route("GET /files/{mac}/{profile}/{file}", KindOther, h.serveFile)
	h.route("GET /images/{profile}/{file}", KindOther, h.serveFile)
	h.route("GET /ipxe/{file}", KindIPXE, h.serveIPXE)
	h.route("GET /join/{mac}", KindJoin, h.serveJoin)
	h.route("POST /status/{mac}", KindStatus, h.postStatus)
	h.route("GET /machines", KindMachines, h.serveMachines)
	h.route("POST /machines/{machine}/reimage", KindReimage, h.serveReimage)
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

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// route registers a handler that counts and logs its requests. A handler may change the kind (for
// files) through the recorder.
func (h *Handler) route(pattern, kind string, f http.HandlerFunc) {
	h.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &recorder{ResponseWriter: w, kind: kind}
		f(rec, r)
		code := rec.code
		if code == 0 {
			code = http.StatusOK
		}
		h.requests.WithLabelValues(rec.kind, strconv.Itoa(code)).Inc()
		// The path never holds a secret; the join file's body is never logged.
		h.log.Debug("http", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr,
			"kind", rec.kind, "code", code, "bytes", rec.n, "seconds", time.Since(start).Seconds())
	})
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

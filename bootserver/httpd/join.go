package httpd

import (
	"context"
	"errors"
	"maps"
	"math"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/pxejoin/pxejoin/bootserver/inventory"
	"github.com/pxejoin/pxejoin/bootserver/status"
	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/internal/bootstraptoken"
	"github.com/pxejoin/pxejoin/internal/joinconfig"
)

// JoinConfig builds the JoinConfiguration of a machine with its token.
func JoinConfig(a inventory.Assignment, token, endpoint string, pins []string) *joinconfig.JoinConfiguration {
	jc := &joinconfig.JoinConfiguration{
		CACertPath: joinconfig.DefaultCACertPath,
		NodeRegistration: joinconfig.NodeRegistrationOptions{
			Name:            a.NodeName,
			CRISocket:       joinconfig.DefaultCRI,
			ImagePullPolicy: "IfNotPresent",
		},
		Discovery: joinconfig.Discovery{
			BootstrapToken: &joinconfig.BootstrapTokenDiscovery{
				Token:             token,
				APIServerEndpoint: endpoint,
				CACertHashes:      append([]string(nil), pins...),
			},
			TLSBootstrapToken: token,
		},
	}
	if len(a.Taints) > 0 {
		jc.NodeRegistration.Taints = slices.Clone(a.Taints)
	}
	if len(a.Labels) > 0 {
		var kv []string
		for _, k := range slices.Sorted(maps.Keys(a.Labels)) {
			kv = append(kv, k+"="+a.Labels[k])
		}
		jc.NodeRegistration.KubeletExtraArgs = []joinconfig.Arg{{Name: "node-labels", Value: strings.Join(kv, ",")}}
	}
	return jc
}

// controlPlane is the join file's controlPlane section for a machine of a control-plane profile (nil
// for a worker): the certificate key, read now (a new key is used without a restart), the bind port,
// and as advertise address the one the machine holds a DHCP lease for (the join gate checked the
// request comes from it); without leases (proxy DHCP) the agent picks the address of its default
// route, as kubeadm does.
func (h *Handler) controlPlane(r *http.Request, a inventory.Assignment) (*joinconfig.JoinControlPlane, error) {
	p := a.Profile.ControlPlane
	if p == nil {
		return nil, nil
	}
	key, err := p.ReadCertificateKey()
	if err != nil {
		return nil, err
	}
	cp := &joinconfig.JoinControlPlane{CertificateKey: key, LocalAPIEndpoint: joinconfig.APIEndpoint{BindPort: p.BindPort}}
	if h.cfg.LeaseHolder != nil {
		if ip := remoteAddr(r); ip.Is4() {
			cp.LocalAPIEndpoint.AdvertiseAddress = ip.String()
		}
	}
	return cp, nil
}

// NoClusterReason is the answer to a join file's request when the boot server has no cluster.
const NoClusterReason = "this boot server has no cluster configured, so it serves no join files: start it with " +
	"--kubeconfig (or cluster.kubeconfig in its configuration file) naming a kubeconfig allowed to manage bootstrap tokens"

// Reasons a join file is answered 503 because no token could be minted (label of
// pxejoin_join_unavailable_total).
const (
	// JoinUnavailableAPIUnreachable: the cluster's API did not answer (down, unreachable, timed
	// out) or said it is overloaded (429, 503, 504).
	JoinUnavailableAPIUnreachable = "api-unreachable"
	// JoinUnavailableAPIError: the API answered with another error (e.g. 403: the boot server's
	// RBAC), or the local store failed.
	JoinUnavailableAPIError = "api-error"
)

// APIUnreachableReason is the body of a join file's 503 while the cluster's API is out of reach.
const APIUnreachableReason = "the boot server cannot reach the cluster's API server, so it cannot mint this machine's bootstrap token now; " +
	"the join file is served as soon as the API answers again (ask again after Retry-After). Check that kube-apiserver is running and " +
	"reachable from the boot server (kubectl --kubeconfig <the boot server's kubeconfig> get --raw /readyz) and the boot server's log"

// MintFailedReason is the body of a join file's 503 when the API refused to make the token.
const MintFailedReason = "cannot mint a bootstrap token for this machine now: the cluster's API refused it; see the boot server's log"

// MintRetryAfter is the Retry-After of a join file's 503 when no token could be minted: the agent
// comes back then rather than after its own backoff.
const MintRetryAfter = 10 * time.Second

// mintTimeout bounds the minting of one join file's token, so that an API that accepts connections
// but does not answer turns into a 503 the agent retries, not a request held open.
const mintTimeout = 30 * time.Second

// apiUnreachable says whether err means the cluster's API is out of reach or overloaded (come back
// later) rather than a refusal or a local failure: a transport error (client-go wraps them in
// *url.Error: connection refused or reset, dial and TLS timeouts), the mint's deadline, or a status
// that asks the client to wait (429, 503, 504).
func apiUnreachable(err error) bool {
	var transport *url.Error
	var netErr net.Error
	if errors.As(err, &transport) || errors.As(err, &netErr) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	return apierrors.IsServiceUnavailable(err) || apierrors.IsTooManyRequests(err) ||
		apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err)
}

// serveJoin serves GET /join/<mac>: the one place a token ever leaves the boot server. The body is
// never logged and the response is never cached.
func (h *Handler) serveJoin(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
	mac, a, boots, err := h.machineOf(r, r.PathValue("mac"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if !boots {
		h.log.Info("unknown machine asked for a join file", "mac", mac, "remote", r.RemoteAddr)
		http.Error(w, "this machine is not in the boot server's inventory", http.StatusNotFound)
		return
	}
	if h.cfg.Tokens == nil {
		http.Error(w, NoClusterReason, http.StatusServiceUnavailable)
		return
	}
	boot := h.cfg.Status.Boot(mac)
	if code, reason, msg := h.gate.check(r, mac, boot); code != 0 {
		h.log.Warn("join file refused", "mac", mac, "remote", r.RemoteAddr, "reason", reason)
		h.cfg.Status.Record(mac, phaseEvent(bootstatus.PhaseJoinFile, bootstatus.StateError, "", "refused to "+r.RemoteAddr+": "+reason))
		http.Error(w, msg, code)
		return
	}
	boot, _ = h.cfg.Status.RecordSync(mac, phaseEvent(bootstatus.PhaseJoinFile, bootstatus.StateStart, "", ""))
	h.cfg.Status.SetIdentity(mac, a.NodeName, a.Profile.Name, a.Known)
	// Before the token is minted, so that an unreadable key wastes none.
	cp, err := h.controlPlane(r, a)
	if err != nil {
		// err names the file, never the key.
		h.gate.refused.WithLabelValues(JoinRefusedNoCertificateKey).Inc()
		h.log.Error("cannot serve a control-plane join file", "mac", mac, "profile", a.Profile.Name, "err", err)
		h.cfg.Status.Record(mac, phaseEvent(bootstatus.PhaseJoinFile, bootstatus.StateError, "", "the boot server cannot read the certificate key of profile "+a.Profile.Name))
		w.Header().Set("Retry-After", "30")
		http.Error(w, "the boot server cannot read this machine's control-plane certificate key now: see the boot server's log", http.StatusServiceUnavailable)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), mintTimeout)
	tok, err := h.cfg.Tokens.Token(ctx, mac, a.NodeName, boot, a.Known)
	cancel()
	var limit interface{ RetryAfter() time.Duration }
	if errors.As(err, &limit) {
		// A limit on unknown machines' tokens, not a failure: the client is told why and when to
		// come back; the refusal is counted by the token manager.
		h.cfg.Status.Record(mac, phaseEvent(bootstatus.PhaseJoinFile, bootstatus.StateError, "", err.Error()))
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(limit.RetryAfter().Seconds()))))
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	if err != nil {
		// err names the token id at most, never the secret.
		h.log.Error("cannot mint a bootstrap token", "mac", mac, "node", a.NodeName, "err", err)
		reason, msg := JoinUnavailableAPIError, MintFailedReason
		if apiUnreachable(err) {
			reason, msg = JoinUnavailableAPIUnreachable, APIUnreachableReason
		}
		h.unavailable.WithLabelValues(reason).Inc()
		h.cfg.Status.Record(mac, phaseEvent(bootstatus.PhaseJoinFile, bootstatus.StateError, "", msg))
		w.Header().Set("Retry-After", strconv.Itoa(int(MintRetryAfter/time.Second)))
		http.Error(w, msg, http.StatusServiceUnavailable)
		return
	}
	jc := JoinConfig(a, tok, h.cfg.APIServerEndpoint, h.cfg.CACertHashes)
	jc.ControlPlane = cp
	body, err := joinconfig.Marshal(jc)
	if err != nil {
		h.log.Error("cannot marshal a join file", "mac", mac)
		http.Error(w, "cannot build the join file", http.StatusInternalServerError)
		return
	}
	if reason, ok := h.cfg.Status.Rejoin(mac); ok {
		h.rejoins.WithLabelValues(reason).Inc()
		h.log.Info("an installed machine joins again", "mac", mac, "node", a.NodeName, "reason", reason)
	}
	w.Header().Set("Content-Type", "application/yaml")
	h.gate.record(r, mac, boot)
	_, _ = w.Write(body)
	h.cfg.Status.Record(mac, status.Event{Event: bootstatus.Event{Phase: bootstatus.PhaseJoinFile, State: bootstatus.StateDone,
		Detail: "node " + a.NodeName + ", token " + bootstraptoken.ID(tok)}, Source: status.SourceHTTP})
	h.log.Info("join file served", "mac", mac, "node", a.NodeName, "token_id", bootstraptoken.ID(tok), "remote", r.RemoteAddr)
}

// Package tokens mints one bootstrap token per machine boot and deletes it as soon as it has done its
// job: when the machine's CSR is issued (a CSR whose user is system:bootstrap:<id> gets a
// certificate), when its Node registers, or when its agent reports node-ready.
//
// Lifecycle (decided here, relied on by httpd):
//   - A token belongs to (MAC, boot). Asking again within the same boot returns the same token while
//     it is live (known, and more than a minute from expiring), so an agent that retries its join
//     file fetch gets the same credentials. A new boot of the machine deletes the old token and
//     mints a new one.
//   - Token ids, machines and expiry are kept in the state store (bbolt, bucket "tokens"); secrets
//     only in memory. The token Secrets carry labels (shared.go) by which any server, or this one
//     after a restart, finds a machine's live token and hands it out again, or deletes it.
//   - Creations and deletions have clients (and API budgets) of their own; the CSR and Node watches
//     hand deletions to Deleters goroutines, so used tokens go as fast as the CSRs are issued.
//   - Machines not in the inventory ("unknown") get tokens from a budget of their own: at most
//     Options.MaxUnknown live at once, minted one at a time at Options.UnknownPerMinute. Past it Token
//     refuses with a *LimitError (counted in pxejoin_tokens_refused_total) instead of creating a
//     Secret. Inventory machines never wait on that budget: a flood of strangers' join files
//     neither crowds them out nor queues ahead of them on the API client.
//   - No secret is ever logged, returned in an error or written to disk.
package tokens

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/time/rate"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/internal/bootstraptoken"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// Reasons a token is deleted (label of pxejoin_tokens_deleted_total).
const (
	ReasonCSRIssued      = "csr-issued"
	ReasonNodeRegistered = "node-registered"
	ReasonNodeReady      = "node-ready"
	ReasonNewBoot        = "new-boot"
	ReasonReplaced       = "replaced"
	ReasonExpired        = "expired"
)

// LabelManagedBy marks the Secrets this package creates (ManagedBy; shared.go lists the others).
const LabelManagedBy = "app.kubernetes.io/managed-by"

var bucket = []byte("tokens")

// Record is what is kept of a token: never its secret.
type Record struct {
	ID      string     `json:"id"`
	MAC     hwaddr.MAC `json:"mac"`
	Node    string     `json:"node"`
	Boot    int        `json:"boot"`
	Created time.Time  `json:"created"`
	Expires time.Time  `json:"expires"`
	// Unknown: minted for a machine not in the inventory, from the unknown machines' budget.
	Unknown bool `json:"unknown,omitempty"`
}

// Reasons a token is refused (label of pxejoin_tokens_refused_total).
const (
	RefusedUnknownCap  = "unknown-cap"
	RefusedUnknownRate = "unknown-rate"
)

// LimitError is Token's refusal to mint for an unknown machine now. Its message says why and what to
// do; it holds no secret.
type LimitError struct {
	Reason string
	// Wait is how long the client should wait before asking again.
	Wait time.Duration
}

func (e *LimitError) Error() string { return e.Reason }

// RetryAfter is how long the client should wait before asking again.
func (e *LimitError) RetryAfter() time.Duration { return e.Wait }

// Options configure a Manager.
type Options struct {
	// Client watches CSRs and Nodes (and does what Creates and Deletes leave to it).
	Client kubernetes.Interface
	// Creates creates the token Secrets and Deletes deletes them; default Client. Give each a client
	// of its own (client-go rate-limits per client) so that deletions never wait behind a burst of
	// creations: live tokens then stay about the machines in flight.
	Creates, Deletes kubernetes.Interface
	// DB is the state store; the Manager uses bucket "tokens".
	DB *bolt.DB
	// TTL of each token; default 30m.
	TTL time.Duration
	// Logger; default discards.
	Logger *slog.Logger
	// Registerer gets pxejoin_tokens_* metrics.
	Registerer prometheus.Registerer
	// MaxUnknown bounds the live tokens of machines not in the inventory; default
	// config.DefaultUnknownMaxTokens.
	MaxUnknown int
	// UnknownPerMinute is the rate tokens are minted for machines not in the inventory, in bursts of
	// up to 10 seconds' worth; default config.DefaultUnknownTokensPerMinute.
	UnknownPerMinute int
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Groups are the tokens' extra groups (auth-extra-groups); empty means kubeadm's
	// (bootstraptoken.DefaultGroup). The boot server gives bootstraptoken.PxejoinGroup.
	Groups []string
	// Informers, if set, is the informer factory Run takes its CSR and Node informers from (so
	// that the approver shares them); default: Run makes its own.
	Informers informers.SharedInformerFactory
	// OnNode, if set, sees every Node the watch sees (added or updated), after token handling. It runs
	// on the informer's goroutine: keep it quick.
	OnNode func(*corev1.Node)
}

// Manager mints and deletes machine tokens. It is safe for concurrent use.
type Manager struct {
	opts    Options
	log     *slog.Logger
	mu      sync.Mutex
	byID    map[string]*Record
	secrets map[string]string       // id → secret, memory only
	macLock map[hwaddr.MAC]*lockRef // only MACs with a Token call under way
	minted  prometheus.Counter
	deleted *prometheus.CounterVec
	refused *prometheus.CounterVec

	unknownTurn sync.Mutex    // one unknown machine's mint at a time
	unknownRate *rate.Limiter // of unknown machines' mints

	ahead        chan mintRequest // for the mint-ahead workers (Run)
	aheadSkipped prometheus.Counter

	deletions chan deletion   // for the deleters (Run)
	deleting  map[string]bool // ids queued or being deleted

	shared  cache.SharedIndexInformer // every boot server's token Secrets (shared.go)
	adopted prometheus.Counter
	// gone holds the tokens deleted here in the last goneFor, which the informer may still show.
	gone map[string]time.Time
}

// deletion is a token to delete, and why.
type deletion struct{ id, reason string }

// lockRef is a MAC's lock with the number of Token calls holding or awaiting it.
type lockRef struct {
	sync.Mutex
	refs int
}

// New loads the token records and registers the metrics. Run starts the watches.
func New(opts Options) (*Manager, error) {
	if opts.Client == nil || opts.DB == nil {
		return nil, fmt.Errorf("tokens: Client and DB are required")
	}
	if opts.Creates == nil {
		opts.Creates = opts.Client
	}
	if opts.Deletes == nil {
		opts.Deletes = opts.Client
	}
	if opts.TTL <= 0 {
		opts.TTL = 30 * time.Minute
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.MaxUnknown <= 0 {
		opts.MaxUnknown = config.DefaultUnknownMaxTokens
	}
	if opts.UnknownPerMinute <= 0 {
		opts.UnknownPerMinute = config.DefaultUnknownTokensPerMinute
	}
	m := &Manager{opts: opts, log: opts.Logger, byID: map[string]*Record{}, secrets: map[string]string{}, macLock: map[hwaddr.MAC]*lockRef{},
		unknownRate: rate.NewLimiter(rate.Limit(float64(opts.UnknownPerMinute)/60), max(1, opts.UnknownPerMinute/6)),
		ahead:       make(chan mintRequest, MintAheadQueue),
		deletions:   make(chan deletion, deleteQueue), deleting: map[string]bool{}, gone: map[string]time.Time{}}
	err := opts.DB.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucket)
		if err != nil {
			return err
		}
		return b.ForEach(func(k, v []byte) error {
			var r Record
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("token record %s: %w", k, err)
			}
			m.byID[r.ID] = &r
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("tokens: cannot load the token records: %w", err)
	}
	m.minted = prometheus.NewCounter(prometheus.CounterOpts{Name: "pxejoin_tokens_minted_total", Help: "Bootstrap tokens created for machines."})
	m.deleted = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pxejoin_tokens_deleted_total", Help: "Bootstrap tokens deleted (or forgotten once expired), by reason."}, []string{"reason"})
	m.refused = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pxejoin_tokens_refused_total",
		Help: "Join files refused a token for a machine not in the inventory, by limit (unknown-cap: unknownMachines.maxTokens live; unknown-rate: unknownMachines.tokensPerMinute)."}, []string{"reason"})
	live := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "pxejoin_tokens_live", Help: "Machine tokens minted and not yet deleted."},
		func() float64 { m.mu.Lock(); defer m.mu.Unlock(); return float64(len(m.byID)) })
	if err := m.newShared(); err != nil {
		return nil, err
	}
	m.adopted = prometheus.NewCounter(prometheus.CounterOpts{Name: "pxejoin_tokens_adopted_total",
		Help: "Live tokens of a machine's boot that another boot server (or this one before a restart) minted, taken over instead of minting."})
	m.aheadSkipped = prometheus.NewCounter(prometheus.CounterOpts{Name: "pxejoin_tokens_mint_ahead_skipped_total",
		Help: "Tokens not minted ahead of a machine's join file because MintAheadQueue machines waited for theirs (the join file's request mints it)."})
	if r := opts.Registerer; r != nil {
		for _, c := range []prometheus.Collector{m.minted, m.deleted, m.refused, live, m.aheadSkipped, m.adopted} {
			if err := r.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// Token returns the token of mac's boot, minting one if it has none that is live. node names the
// machine in the Secret's description; known says it is in the inventory. An unknown machine's
// mint may be refused with a *LimitError (see the package's doc).
func (m *Manager) Token(ctx context.Context, mac hwaddr.MAC, node string, boot int, known bool) (string, error) {
	defer m.lockMAC(mac)()

	now := m.opts.Now()
	m.mu.Lock()
	var stale []*Record
	for _, r := range m.byID {
		if r.MAC != mac {
			continue
		}
		if sec, ok := m.secrets[r.ID]; ok && r.Boot == boot && r.Expires.Sub(now) > m.margin() {
			m.mu.Unlock()
			return r.ID + "." + sec, nil
		}
		stale = append(stale, r)
	}
	m.mu.Unlock()
	adopted, others, err := m.adopt(mac, node, boot, known, now)
	if err != nil {
		return "", err
	}
	if adopted == "" && !known {
		release, err := m.admitUnknown(mac, now)
		if err != nil {
			return "", err
		}
		defer release()
	}
	for _, r := range stale {
		reason := ReasonReplaced
		if r.Boot != boot {
			reason = ReasonNewBoot
		}
		if err := m.delete(ctx, r.ID, reason); err != nil {
			m.log.Warn("cannot delete a machine's previous token", "mac", mac, "token_id", r.ID, "err", err)
		}
	}
	for _, id := range others {
		if err := m.deleteShared(ctx, id, ReasonReplaced); err != nil {
			m.log.Warn("cannot delete a machine's previous token", "mac", mac, "token_id", id, "err", err)
		}
	}
	if adopted != "" {
		return adopted, nil
	}
	tok, err := bootstraptoken.Create(ctx, m.opts.Creates, bootstraptoken.Options{
		TTL:         m.opts.TTL,
		Groups:      m.opts.Groups,
		Description: fmt.Sprintf("pxejoin boot server: machine %s, node %s, boot %d", mac, node, boot),
		Labels:      labels(mac, node, boot),
		Annotations: map[string]string{AnnotationNode: node},
	})
	if err != nil {
		return "", err
	}
	id, secret, _ := strings.Cut(tok, ".")
	r := &Record{ID: id, MAC: mac, Node: node, Boot: boot, Created: now, Expires: now.Add(m.opts.TTL), Unknown: !known}
	if err := m.put(r); err != nil {
		// Without its record the token could outlive its use: take it back.
		_ = bootstraptoken.Delete(ctx, m.opts.Deletes, id)
		return "", fmt.Errorf("tokens: cannot record token %s: %w", id, err)
	}
	m.mu.Lock()
	m.byID[id] = r
	m.secrets[id] = secret
	m.mu.Unlock()
	m.minted.Inc()
	m.log.Info("bootstrap token minted", "mac", mac, "node", node, "boot", boot, "token_id", id, "expires", r.Expires.UTC().Format(time.RFC3339))
	return tok, nil
}

// margin is how close to expiry a token stops being handed out again.
func (m *Manager) margin() time.Duration {
	if d := m.opts.TTL / 10; d < time.Minute {
		return d
	}
	return time.Minute
}

// lockMAC locks mac's Token calls and returns the unlock; the lock is forgotten when no call holds
// or awaits it, so that the MACs the network sends do not pile up.
func (m *Manager) lockMAC(mac hwaddr.MAC) (unlock func()) {
	m.mu.Lock()
	l := m.macLock[mac]
	if l == nil {
		l = &lockRef{}
		m.macLock[mac] = l
	}
	l.refs++
	m.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		m.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(m.macLock, mac)
		}
		m.mu.Unlock()
	}
}

// admitUnknown gives an unknown machine its turn to mint: one at a time, so that strangers never
// have more than one request ahead of an inventory machine's on the API client; under MaxUnknown
// live tokens (mac's own, about to be replaced, not counted); within the rate. It returns the end
// of the turn, or a *LimitError.
func (m *Manager) admitUnknown(mac hwaddr.MAC, now time.Time) (release func(), err error) {
	m.unknownTurn.Lock()
	defer func() {
		if err != nil {
			m.unknownTurn.Unlock()
		}
	}()
	m.mu.Lock()
	live, soonest := 0, now.Add(m.opts.TTL)
	for _, r := range m.byID {
		if r.Unknown && r.MAC != mac {
			live++
			soonest = minTime(soonest, r.Expires)
		}
	}
	m.mu.Unlock()
	if live >= m.opts.MaxUnknown {
		m.refused.WithLabelValues(RefusedUnknownCap).Inc()
		return nil, &LimitError{Wait: min(max(soonest.Sub(now), time.Second), time.Minute), Reason: fmt.Sprintf(
			"the boot server holds %d bootstrap tokens for machines not in its inventory, its limit (unknownMachines.maxTokens): "+
				"add this machine to the inventory, or retry when those machines have joined or their tokens expired", live)}
	}
	if res := m.unknownRate.ReserveN(now, 1); res.DelayFrom(now) > 0 {
		wait := res.DelayFrom(now)
		res.CancelAt(now)
		m.refused.WithLabelValues(RefusedUnknownRate).Inc()
		return nil, &LimitError{Wait: max(wait, time.Second), Reason: fmt.Sprintf(
			"the boot server mints at most %d bootstrap tokens a minute for machines not in its inventory (unknownMachines.tokensPerMinute): "+
				"retry later, or add this machine to the inventory", m.opts.UnknownPerMinute)}
	}
	return m.unknownTurn.Unlock, nil
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// RevokeMAC deletes every token of mac (e.g. when its agent reports node-ready).
func (m *Manager) RevokeMAC(ctx context.Context, mac hwaddr.MAC, reason string) error {
	return m.revokeWhere(ctx, reason, func(r *Record) bool { return r.MAC == mac })
}

// RevokeID deletes the token with id: this manager's, or another boot server's (a Secret with
// pxejoin's labels; Lookup found it).
func (m *Manager) RevokeID(ctx context.Context, id, reason string) error {
	if len(m.idsWhere(func(r *Record) bool { return r.ID == id })) > 0 {
		return m.delete(ctx, id, reason)
	}
	return m.deleteShared(ctx, id, reason)
}

// RevokeNode deletes the tokens minted for node before registered (the Node's creation time).
func (m *Manager) RevokeNode(ctx context.Context, node string, registered time.Time, reason string) error {
	return m.revokeWhere(ctx, reason, mintedBefore(node, registered))
}

// mintedBefore matches the tokens minted for node before registered (the Node's creation time,
// which the API gives to the second).
func mintedBefore(node string, registered time.Time) func(*Record) bool {
	return func(r *Record) bool { return r.Node == node && !registered.Before(r.Created.Truncate(time.Second)) }
}

func (m *Manager) revokeWhere(ctx context.Context, reason string, match func(*Record) bool) error {
	var firstErr error
	for _, id := range m.idsWhere(match) {
		if err := m.delete(ctx, id, reason); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

// idsWhere returns the ids of the records that match.
func (m *Manager) idsWhere(match func(*Record) bool) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var ids []string
	for id, r := range m.byID {
		if match(r) {
			ids = append(ids, id)
		}
	}
	return ids
}

// delete removes the Secret, then the record.
func (m *Manager) delete(ctx context.Context, id, reason string) error {
	if reason != ReasonExpired {
		if err := bootstraptoken.Delete(ctx, m.opts.Deletes, id); err != nil {
			return err
		}
	}
	m.mu.Lock()
	r, ok := m.byID[id]
	delete(m.byID, id)
	delete(m.secrets, id)
	m.gone[id] = m.opts.Now()
	m.mu.Unlock()
	if !ok {
		return nil
	}
	err := m.opts.DB.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Delete([]byte(id)) })
	m.deleted.WithLabelValues(reason).Inc()
	m.log.Info("bootstrap token deleted", "mac", r.MAC, "node", r.Node, "token_id", id, "reason", reason)
	return err
}

func (m *Manager) put(r *Record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return m.opts.DB.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put([]byte(r.ID), b) })
}

// Records returns the live token records (ids, never secrets), sorted by MAC.
func (m *Manager) Records() []Record {
	m.mu.Lock()
	out := make([]Record, 0, len(m.byID))
	for _, r := range m.byID {
		out = append(out, *r)
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if c := bytes.Compare(out[i].MAC[:], out[j].MAC[:]); c != 0 {
			return c < 0
		}
		return out[i].Created.Before(out[j].Created)
	})
	return out
}

// sweep forgets records past their expiry: the cluster's token cleaner deletes those Secrets.
func (m *Manager) sweep(ctx context.Context) {
	now := m.opts.Now()
	m.mu.Lock()
	var ids []string
	for id, r := range m.byID {
		if now.After(r.Expires) {
			ids = append(ids, id)
		}
	}
	for id, t := range m.gone {
		if now.Sub(t) > goneFor {
			delete(m.gone, id)
		}
	}
	m.mu.Unlock()
	for _, id := range ids {
		_ = m.delete(ctx, id, ReasonExpired)
	}
}

package httpd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/pxejoin/pxejoin/bootserver/status"
	"github.com/pxejoin/pxejoin/bootserver/tokens"
	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// postStatus serves POST /status/<mac>: a JSON array of bootstatus.Event within the protocol's limits
// (bootstatus.MaxBody, bootstatus.MaxEvents, which the agent's client chunks to). Every event is
// validated (all or nothing), and the events are on disk before 204 is answered. A node-ready done
// event deletes the machine's token.
func (h *Handler) postStatus(w http.ResponseWriter, r *http.Request) {
	mac, err := hwaddr.Parse(r.PathValue("mac"))
	if err != nil {
		h.reject(w, "bad-mac", err.Error(), http.StatusBadRequest)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, bootstatus.MaxBody)
	var evs []bootstatus.Event
	dec := json.NewDecoder(r.Body)
	if err := dec.Decode(&evs); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			h.reject(w, "too-large", fmt.Sprintf("the body is larger than %d bytes: send fewer events per POST", bootstatus.MaxBody), http.StatusRequestEntityTooLarge)
			return
		}
		h.reject(w, "bad-json", "the body must be a JSON array of events", http.StatusBadRequest)
		return
	}
	if dec.More() {
		h.reject(w, "bad-json", "one JSON array, nothing after it", http.StatusBadRequest)
		return
	}
	if len(evs) == 0 || len(evs) > bootstatus.MaxEvents {
		h.reject(w, "event-count", fmt.Sprintf("send 1 to %d events per POST", bootstatus.MaxEvents), http.StatusBadRequest)
		return
	}
	now := time.Now()
	recs := make([]status.Event, 0, len(evs))
	ready := false
	for i := range evs {
		if err := evs[i].Validate(); err != nil {
			h.reject(w, "invalid-event", fmt.Sprintf("event %d: %v", i, err), http.StatusBadRequest)
			return
		}
		if evs[i].Time.IsZero() || evs[i].Time.After(now.Add(24*time.Hour)) {
			evs[i].Time = now
		}
		recs = append(recs, status.Event{Event: evs[i], Source: status.SourceAgent})
		ready = ready || (evs[i].Phase == bootstatus.PhaseNodeReady && evs[i].State == bootstatus.StateDone)
	}
	if _, err := h.cfg.Status.RecordSync(mac, recs...); err != nil {
		h.log.Error("cannot store status events", "mac", mac, "err", err)
		http.Error(w, "cannot store the events", http.StatusInternalServerError)
		return
	}
	if ready {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 30*time.Second)
		defer cancel()
		if err := h.cfg.Tokens.RevokeMAC(ctx, mac, tokens.ReasonNodeReady); err != nil {
			h.log.Warn("cannot delete the token of a ready node", "mac", mac, "err", err)
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *Handler) reject(w http.ResponseWriter, reason, msg string, code int) {
	h.rejects.WithLabelValues(reason).Inc()
	http.Error(w, msg, code)
}

package tokens

import (
	"context"
	"time"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// What Run does in the background besides the watches: the mints ahead and the deletions.

// MintAheadWorkers is how many mints ahead run at once: a burst of booting machines puts at most
// that many creations ahead of a join file's request on the creations' client.
const MintAheadWorkers = 16

// MintAheadQueue bounds the machines waiting for a mint ahead; past it MintAhead does nothing
// (counted) and the join file's request mints the token.
const MintAheadQueue = 4096

// mintRequest is a boot whose token is to be minted ahead.
type mintRequest struct {
	mac  hwaddr.MAC
	node string
	boot int
}

// MintAhead queues the mint of an inventory machine's token for its boot, so that its join file is
// ready when the agent asks for it (the boot server calls it when DHCP shows the machine booting).
// It never blocks. A burst of booting machines is minted in the order it showed up, at the
// creations' budget, by MintAheadWorkers (Run).
func (m *Manager) MintAhead(mac hwaddr.MAC, node string, boot int) {
	select {
	case m.ahead <- mintRequest{mac, node, boot}:
	default:
		m.aheadSkipped.Inc()
	}
}

// mintAheadLoop mints the queued tokens until ctx ends. A request that a newer boot of its machine
// overtook is dropped (minting it would replace the newer boot's token).
func (m *Manager) mintAheadLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-m.ahead:
			if len(m.idsWhere(func(rec *Record) bool { return rec.MAC == r.mac && rec.Boot > r.boot })) > 0 {
				continue
			}
			tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			if _, err := m.Token(tctx, r.mac, r.node, r.boot, true); err != nil && ctx.Err() == nil {
				// err names the token id at most, never the secret.
				m.log.Warn("cannot mint a bootstrap token ahead of the join file; it will be minted on request", "mac", r.mac, "err", err)
			}
			cancel()
		}
	}
}

// Deleters is how many token deletions run at once. The CSR and Node watches hand their deletions
// to them instead of making them one after the other: a deletion takes 10-300 ms while the
// apiserver is busy with a burst of joins (measured), so one at a time falls behind the CSRs the
// controller manager issues, and used tokens pile up (TestDeletionsKeepUp).
const Deleters = 8

// deleteQueue is how many deletions may wait for a deleter before the watch waits too.
const deleteQueue = 1024

// deleteLater queues the deletion of the tokens with ids (those this manager has a record of and
// does not already delete) for the deleters; it waits while the queue is full, or until ctx ends.
func (m *Manager) deleteLater(ctx context.Context, ids []string, reason string) {
	for _, id := range ids {
		m.mu.Lock()
		_, ok := m.byID[id]
		queue := (ok || m.sharedHas(id)) && !m.deleting[id]
		if queue {
			m.deleting[id] = true
		}
		m.mu.Unlock()
		if !queue {
			continue
		}
		select {
		case m.deletions <- deletion{id, reason}:
		case <-ctx.Done():
			return
		}
	}
}

// deleteLoop is a deleter: it deletes the queued tokens until ctx ends. A deletion that fails is
// logged and dropped: the next event about the token queues it again, and the cluster's token
// cleaner removes it at its expiry in any case.
func (m *Manager) deleteLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case d := <-m.deletions:
			m.mu.Lock()
			_, mine := m.byID[d.id]
			m.mu.Unlock()
			del := m.delete
			if !mine {
				del = m.deleteShared
			}
			if err := del(ctx, d.id, d.reason); err != nil && ctx.Err() == nil {
				m.log.Warn("cannot delete a used bootstrap token", "token_id", d.id, "reason", d.reason, "err", err)
			}
			m.mu.Lock()
			delete(m.deleting, d.id)
			m.mu.Unlock()
		}
	}
}

package tokens

// Lookup returns the record of the token with id and whether it is live: minted by this manager,
// not deleted and not past its expiry. The approver asks it which node a token was minted for.
func (m *Manager) Lookup(id string) (r Record, live bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.byID[id]
	if !ok {
		return Record{}, false
	}
	return *p, m.opts.Now().Before(p.Expires)
}

// Reasons the approver deletes a token (labels of pxejoin_tokens_deleted_total).
const (
	// ReasonCSRDenied: a CSR made with the token was denied (it asked for another node's name, or
	// not in the kubelet's form, or was not the token's first): the token is revoked.
	ReasonCSRDenied = "csr-denied"
)

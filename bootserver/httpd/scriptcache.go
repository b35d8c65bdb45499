package httpd

import (
	"sync"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/bootserver/status"
)

// maxCachedScripts bounds the rendered scripts kept (a script is ~0.5–1 KB; the UUID in ?uuid= comes
// from the network, so the key space is not).
const maxCachedScripts = 16384

// scriptKey is what a machine's script depends on besides the Handler's fixed configuration (the
// inventory, which is immutable, and ServerURL): the MAC and the UUID the lookup used.
type scriptKey struct{ mac, uuid string }

// renderedScript is a machine's script as served, with what serving it records.
type renderedScript struct {
	body     []byte
	boots    bool            // false: UnknownScript, nothing else is recorded
	identity status.Identity // what the inventory says of the machine
	detail   string          // the script phase's done detail ("profile <name>")
}

// scriptCache keeps rendered scripts. A script depends on the inventory's assignment for (MAC,
// UUID) and on the Handler's configuration, both fixed for the Handler's life, and on nothing per
// boot (no token, no boot number): an entry is never stale, so there is no invalidation beyond
// the bound. A new inventory (a changed profile, machine or template) means a new Handler, and with
// it an empty cache.
type scriptCache struct {
	mu sync.RWMutex
	m  map[scriptKey]*renderedScript
}

func (c *scriptCache) get(k scriptKey) *renderedScript {
	c.mu.RLock()
	s := c.m[k]
	c.mu.RUnlock()
	return s
}

func (c *scriptCache) put(k scriptKey, s *renderedScript) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[scriptKey]*renderedScript{}
	}
	if _, ok := c.m[k]; !ok && len(c.m) >= maxCachedScripts {
		for old := range c.m { // evict an arbitrary entry
			delete(c.m, old)
			break
		}
	}
	c.m[k] = s
}

func (c *scriptCache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}

// canonicalMAC is config.CanonicalMAC with a fast path, without allocating, for a MAC already in
// canonical form (aa:bb:cc:dd:ee:ff, lower case), as iPXE's ${mac} is.
func canonicalMAC(s string) (string, error) {
	if len(s) == 17 {
		ok := true
		for i := 0; i < 17 && ok; i++ {
			c := s[i]
			if i%3 == 2 {
				ok = c == ':'
			} else {
				ok = '0' <= c && c <= '9' || 'a' <= c && c <= 'f'
			}
		}
		if ok {
			return s, nil
		}
	}
	return config.CanonicalMAC(s)
}

package join

import (
	"context"
	"sync"

	"k8s.io/client-go/kubernetes"

	"github.com/pxejoin/pxejoin/nodeagent/nodefiles"
	"github.com/pxejoin/pxejoin/nodeagent/tlsbootstrap"
)

// csrRequest is the node's CSR in flight: sent by startCSR (in config) or by tls-bootstrap. Nothing but the bootstrap key (as the kubelet's own bootstrap keeps it) is written before the
// certificate is issued.
type csrRequest struct {
	done    chan struct{}
	cancel  context.CancelFunc
	certPEM []byte
	name    string
	err     error
}

// loadKey reads the key a previous attempt left at the bootstrap path (so a re-run sends the same
// CSR), or makes one.
func (d *data) loadKey() (string, error) {
	existing, _ := d.root.Read(nodefiles.BootstrapKey)
	key, keyPEM, isNew, err := tlsbootstrap.Key(existing)
	if err != nil {
		return "", err
	}
	d.key, d.keyPEM, d.keyIsNew = key, keyPEM, isNew
	return tlsbootstrap.CSRName(key.Public(), tlsbootstrap.Subject(d.nodeName))
}

// startCSR is tls-bootstrap's Early part: it sends the CSR as soon as the node may join (the CA is
// trusted and no Ready Node holds the name). A dry run sends nothing.
func startCSR(ctx context.Context, d *data) error {
	if d.dryRun() {
		return nil
	}
	c, err := d.bootstrapClient(ctx)
	if err != nil {
		return err
	}
	if err := d.checkExistingNode(ctx, c); err != nil {
		return err
	}
	return d.sendCSR(ctx, c)
}

// sendCSR keeps the key at the bootstrap path and sends the CSR in the background (once).
func (d *data) sendCSR(ctx context.Context, c kubernetes.Interface) error {
	if d.csr != nil {
		return nil
	}
	name, err := d.loadKey()
	if err != nil {
		return err
	}
	if d.keyIsNew {
		if err := d.root.Write(nodefiles.File{Path: nodefiles.BootstrapKey, Data: d.keyPEM, Mode: 0o600, Secret: true}); err != nil {
			return err
		}
	} else {
		d.printf("[kubelet-start] Reusing the node's key from %s", nodefiles.BootstrapKey)
	}
	d.printf("[kubelet-start] Sending the certificate signing request %s and waiting for it to be approved and issued", name)
	tctx, cancel := context.WithTimeout(ctx, d.cfg.TLSBootstrapTimeout())
	r := &csrRequest{done: make(chan struct{}), cancel: cancel}
	d.csr = r
	go func() {
		defer close(r.done)
		r.certPEM, r.name, r.err = tlsbootstrap.Run(tctx, tlsbootstrap.Request{
			Client: c, NodeName: d.nodeName, Key: d.key,
			Waiting: func(n string) {
				d.printf("[kubelet-start] The certificate signing request %s waits for an administrator to approve it. On the control plane run:\n\tkubectl certificate approve %s", n, n)
				d.event("kubelet-start/tls-bootstrap", "start", "waiting for approval of "+n, nil)
			},
		})
	}()
	return nil
}

// awaitCSR waits for the CSR sent by sendCSR; a failed one is forgotten, so a retry sends again.
func (d *data) awaitCSR(ctx context.Context) ([]byte, string, error) {
	r := d.csr
	select {
	case <-r.done:
	case <-ctx.Done():
		r.cancel()
		<-r.done
	}
	r.cancel()
	if r.err != nil {
		d.csr = nil
	}
	return r.certPEM, r.name, r.err
}

// finish abandons a CSR still in flight (the join failed before tls-bootstrap) and waits for the
// background Node registration.
func (d *data) finish() {
	if r := d.csr; r != nil {
		r.cancel()
		<-r.done
	}
	if d.registering != nil {
		<-d.registering
	}
}

// lockedWriter serializes writes: the CSR goroutine prints while a phase may.
type lockedWriter struct {
	mu *sync.Mutex
	w  interface{ Write([]byte) (int, error) }
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

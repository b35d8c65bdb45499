package tokens

import (
	"context"
	"strings"
	"sync"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
)

// Run watches CSRs and Nodes (client-go informers) and deletes a machine's token once its CSR is
// issued or its Node registers (Deleters at once); it also forgets expired records. It returns when
// ctx ends.
func (m *Manager) Run(ctx context.Context) error {
	f := m.opts.Informers
	if f == nil {
		f = informers.NewSharedInformerFactory(m.opts.Client, 10*time.Minute)
	}
	csrs := f.Certificates().V1().CertificateSigningRequests().Informer()
	nodes := f.Core().V1().Nodes().Informer()
	// Run returns without f.Shutdown, which waits for every informer goroutine: client-go's watch-list
	// backoff (reflector.go, up to 30 s while the cluster refuses connections) ignores the stop, so a
	// stop would outlast systemd's. Instead no handler runs once Run has returned: handlers hold a
	// read lock and look at stopped; the informers end on their own when their backoff does.
	var handlers sync.RWMutex
	stopped := false
	onCSR := func(obj any) {
		handlers.RLock()
		defer handlers.RUnlock()
		if csr, ok := obj.(*certificatesv1.CertificateSigningRequest); ok && !stopped {
			m.csrSeen(ctx, csr)
		}
	}
	onNode := func(obj any) {
		handlers.RLock()
		defer handlers.RUnlock()
		if n, ok := obj.(*corev1.Node); ok && !stopped {
			ids := m.idsWhere(mintedBefore(n.Name, n.CreationTimestamp.Time))
			m.deleteLater(ctx, append(ids, m.sharedMintedBefore(n.Name, n.CreationTimestamp.Time)...), ReasonNodeRegistered)
			if m.opts.OnNode != nil {
				m.opts.OnNode(n)
			}
		}
	}
	defer func() {
		handlers.Lock() // waits for a handler under way (its API calls end with ctx)
		stopped = true
		handlers.Unlock()
	}()
	if _, err := csrs.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    onCSR,
		UpdateFunc: func(_, obj any) { onCSR(obj) },
	}); err != nil {
		return err
	}
	if _, err := nodes.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    onNode,
		UpdateFunc: func(_, obj any) { onNode(obj) },
	}); err != nil {
		return err
	}
	for range Deleters {
		go m.deleteLoop(ctx)
	}
	for range MintAheadWorkers {
		go m.mintAheadLoop(ctx)
	}
	f.Start(ctx.Done())
	go m.shared.Run(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), csrs.HasSynced, nodes.HasSynced, m.shared.HasSynced) {
		return ctx.Err()
	}
	m.log.Info("watching CSRs and Nodes to delete used bootstrap tokens")
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			m.sweep(ctx)
		}
	}
}

// csrSeen queues the deletion of the token a CSR was made with once the CSR has its certificate.
func (m *Manager) csrSeen(ctx context.Context, csr *certificatesv1.CertificateSigningRequest) {
	if len(csr.Status.Certificate) == 0 {
		return
	}
	id, ok := strings.CutPrefix(csr.Spec.Username, bootstrapapi.BootstrapUserPrefix)
	if !ok {
		return
	}
	m.deleteLater(ctx, []string{id}, ReasonCSRIssued)
}

package tokens

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	certificatesv1 "k8s.io/api/certificates/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/certificate/csr"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
	"github.com/pxejoin/pxejoin/lab/controlplane"
	"github.com/pxejoin/pxejoin/lab/eventually"
	"github.com/pxejoin/pxejoin/lab/testenv"
)

func TestMain(m *testing.M) { os.Exit(controlplane.Run(m)) }

// writeCounter counts a client's requests by HTTP method.
type writeCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *writeCounter) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		c.mu.Lock()
		c.n[r.Method]++
		c.mu.Unlock()
		return rt.RoundTrip(r)
	})
}

func (c *writeCounter) get(method string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[method]
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// budgetedClient is an admin client with a rate limiter of its own, its requests counted.
func budgetedClient(t *testing.T, cp *controlplane.ControlPlane, qps float32, burst int) (kubernetes.Interface, *writeCounter) {
	t.Helper()
	rc := cp.AdminConfig()
	rc.QPS, rc.Burst = qps, burst
	w := &writeCounter{n: map[string]int{}}
	rc.Wrap(w.wrap)
	c, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return c, w
}

// TestDeletionsKeepUp: machines mint tokens in a burst that the creations' budget stretches over
// seconds while their CSRs get issued; each machine's token goes as soon as its CSR is issued, so
// the live tokens never exceed the machines in flight by more than a little slack. Each machine
// costs two token writes (create, delete). With deletions on the creations' client (Deletes unset,
// as before the budgets) they wait behind the whole burst and the test fails.
func TestDeletionsKeepUp(t *testing.T) {
	testenv.RequireRoot(t)
	cp := controlplane.Shared(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const machines, slack = 60, 10

	db, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	reads, _ := budgetedClient(t, cp, 50, 100)
	creates, created := budgetedClient(t, cp, 10, 10)
	deletes, deleted := budgetedClient(t, cp, 50, 50)
	m, err := New(Options{Client: reads, Creates: creates, Deletes: deletes, DB: db, TTL: 15 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- m.Run(runCtx) }()
	defer func() { stop(); <-ran }()

	// One machine first: the controller manager's CSR controllers are running once it is through.
	if err := joinOnce(ctx, cp, m, reads, machines, fleetMAC(machines)); err != nil {
		t.Fatalf("first machine: %v", err)
	}
	eventually.True(t, "the first machine's token is deleted once its CSR is issued", func() bool { return len(m.Records()) == 0 })

	// The sampler compares the token Secrets in the API with the machines still waiting for their
	// certificate (counted in flight from before their mint until after their certificate).
	var inFlight atomic.Int64
	var worst atomic.Int64
	sampling, sampled := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-sampling:
				return
			case <-time.After(50 * time.Millisecond):
			}
			l, err := reads.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{LabelSelector: LabelManagedBy + "=pxejoin-bootserver"})
			if err != nil {
				continue
			}
			if excess := int64(len(l.Items)) - inFlight.Load(); excess > worst.Load() {
				worst.Store(excess)
			}
		}
	}()

	var wg sync.WaitGroup
	errs := make(chan error, machines)
	for i := range machines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			inFlight.Add(1)
			defer inFlight.Add(-1)
			if err := joinOnce(ctx, cp, m, reads, i, fleetMAC(i)); err != nil {
				errs <- fmt.Errorf("machine %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	eventually.True(t, "every token is deleted once its CSR is issued", func() bool { return len(m.Records()) == 0 })
	close(sampling)
	<-sampled
	t.Logf("live tokens exceeded the machines in flight by at most %d; token writes: %d creations, %d deletions for %d machines",
		worst.Load(), created.get(http.MethodPost), deleted.get(http.MethodDelete), machines+1)
	if w := worst.Load(); w > slack {
		t.Errorf("live tokens exceeded the machines in flight by %d (slack %d): deletions did not keep up with creations", w, slack)
	}
	if c, d := created.get(http.MethodPost), deleted.get(http.MethodDelete); c != machines+1 || d != machines+1 {
		t.Errorf("token writes: %d creations and %d deletions for %d machines, want one of each per machine", c, d, machines+1)
	}
}

// joinOnce is one machine's use of its token: mint it, then make the kubelet's client CSR with it
// and wait until it is issued.
func joinOnce(ctx context.Context, cp *controlplane.ControlPlane, m *Manager, watcher kubernetes.Interface, i int, mac hwaddr.MAC) error {
	node := fmt.Sprintf("budget-%d", i)
	tok, err := m.Token(ctx, mac, node, 1, true)
	if err != nil {
		return err
	}
	tc, err := kubernetes.NewForConfig(&rest.Config{Host: "https://" + cp.Endpoint(), BearerToken: tok, TLSClientConfig: rest.TLSClientConfig{CAFile: cp.CAFile()}})
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "system:node:" + node, Organization: []string{"system:nodes"}}}, key)
	if err != nil {
		return err
	}
	csrPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	// The apiserver learns of a new token through its Secret informer: a 401 right after the mint
	// is retried, as the agent does.
	var name string
	var uid types.UID
	for {
		n, u, err := csr.RequestCertificate(tc, csrPEM, "", certificatesv1.KubeAPIServerClientKubeletSignerName,
			nil, []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth}, key)
		if err == nil {
			name, uid = n, u
			break
		}
		if !apierrors.IsUnauthorized(err) || ctx.Err() != nil {
			return fmt.Errorf("CSR: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Watched with the test's client: the token is deleted as soon as the certificate is issued.
	_, err = csr.WaitForCertificate(ctx, watcher, name, uid)
	return err
}

func fleetMAC(i int) hwaddr.MAC { return hwaddr.MAC{0x52, 0x54, 0x00, 0x77, byte(i >> 8), byte(i)} }

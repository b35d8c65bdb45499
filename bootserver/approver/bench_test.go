package approver

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/pxejoin/pxejoin/internal/bootstraptoken"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
	"github.com/pxejoin/pxejoin/lab/eventually"
)

// benchCSRs is how many machines ask for their client certificate at once.
const benchCSRs = 200

// BenchmarkApproval: 200 machines send their bootstrap CSRs at once, first with pxejoin tokens
// (approved by this approver, through the documented RBAC), then with kubeadm-group tokens
// (approved by kube-controller-manager's csrapproving controller), against the same control
// plane in the same run. Latency is CSR created (Create returned) → Approved condition seen on a
// watch; throughput is CSRs approved per second from the first Create to the last approval. It
// reports both and the ratios (> 1: pxejoin is faster). A CSR denied fails it at once. `make bench`
// runs it.
func BenchmarkApproval(b *testing.B) {
	b.StopTimer()
	h := newHarness(b)
	cp, ctx := h.cp, context.Background()
	if err := cp.SetAutoApprove(ctx, true); err != nil {
		b.Fatal(err)
	}
	tokenClients := func(toks []string) []kubernetes.Interface {
		var cs []kubernetes.Interface
		for _, tok := range toks {
			cs = append(cs, tokenClient(cp, tok))
		}
		// The apiserver's token authenticator reads Secrets through an informer: wait for the last.
		eventually.True(b, "the last token authenticates", func() bool {
			_, err := cs[len(cs)-1].AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
			return err == nil
		})
		return cs
	}
	for i := 0; i < b.N; i++ {
		var ours, theirs, oursNodes, theirNodes []string
		for m := 0; m < benchCSRs; m++ {
			node := fmt.Sprintf("bench-%d-p%d", i, m)
			tok, err := h.tokens.Token(ctx, hwaddr.MAC{0x52, 0x54, 0xbe, byte(i), byte(m >> 8), byte(m)}, node, 1, true)
			if err != nil {
				b.Fatal(err)
			}
			ours, oursNodes = append(ours, tok), append(oursNodes, node)
			tok, err = cp.CreateToken(ctx, 15*time.Minute)
			if err != nil {
				b.Fatal(err)
			}
			theirs, theirNodes = append(theirs, tok), append(theirNodes, fmt.Sprintf("bench-%d-k%d", i, m))
		}
		oursClients, theirClients := tokenClients(ours), tokenClients(theirs)
		b.StartTimer()
		oursLat, oursSpan := round(b, fmt.Sprintf("bench-%d-p-", i), cp.Admin(), oursClients, oursNodes)
		theirLat, theirSpan := round(b, fmt.Sprintf("bench-%d-k-", i), cp.Admin(), theirClients, theirNodes)
		b.StopTimer()
		for _, tok := range theirs {
			_ = bootstraptoken.Delete(ctx, cp.Admin(), tok)
		}
		rate := func(span time.Duration) float64 { return benchCSRs / span.Seconds() }
		b.Logf("%d concurrent bootstrap CSRs: pxejoin p50 %v p99 %v, %.0f/s; kube-controller-manager p50 %v p99 %v, %.0f/s; "+
			"latency ratio (KCM p50 / pxejoin p50) %.2f, throughput ratio (pxejoin / KCM) %.2f",
			benchCSRs, pct(oursLat, 0.5), pct(oursLat, 0.99), rate(oursSpan), pct(theirLat, 0.5), pct(theirLat, 0.99), rate(theirSpan),
			float64(pct(theirLat, 0.5))/float64(pct(oursLat, 0.5)), rate(oursSpan)/rate(theirSpan))
		b.ReportMetric(float64(pct(oursLat, 0.5).Microseconds())/1000, "pxejoin-p50-ms")
		b.ReportMetric(float64(pct(theirLat, 0.5).Microseconds())/1000, "kcm-p50-ms")
		b.ReportMetric(rate(oursSpan), "pxejoin-csr/s")
		b.ReportMetric(rate(theirSpan), "kcm-csr/s")
		b.ReportMetric(rate(oursSpan)/rate(theirSpan), "throughput-ratio")
	}
}

// round sends one CSR per token at once and returns each CSR's latency and the round's span.
func round(b *testing.B, prefix string, admin kubernetes.Interface, clients []kubernetes.Interface, nodes []string) ([]time.Duration, time.Duration) {
	b.Helper()
	ctx := context.Background()
	reqs := make([][]byte, len(clients))
	keys := make([]*ecdsa.PrivateKey, len(clients))
	for i := range clients {
		keys[i], _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: nodeSubj(nodes[i])}, keys[i])
		if err != nil {
			b.Fatal(err)
		}
		reqs[i] = pemBlock("CERTIFICATE REQUEST", der)
	}
	w, err := admin.CertificatesV1().CertificateSigningRequests().Watch(ctx, metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Stop()
	var mu sync.Mutex
	created := map[string]time.Time{}
	seen := map[string]time.Time{}
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, len(clients))
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := c.CertificatesV1().CertificateSigningRequests().Create(ctx, &certificatesv1.CertificateSigningRequest{
				ObjectMeta: metav1.ObjectMeta{GenerateName: prefix},
				Spec:       certificatesv1.CertificateSigningRequestSpec{Request: reqs[i], SignerName: clientSigner, Usages: clientUsagesEC},
			}, metav1.CreateOptions{})
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			created[got.Name] = time.Now()
			mu.Unlock()
		}()
	}
	timeout := time.After(5 * time.Minute)
	for {
		mu.Lock()
		n := len(seen)
		mu.Unlock()
		if n == len(clients) {
			break
		}
		select {
		case err := <-errs:
			b.Fatalf("creating a CSR: %v", err)
		case <-timeout:
			b.Fatalf("%d of %d CSRs approved after 5 minutes", n, len(clients))
		case ev, ok := <-w.ResultChan():
			if !ok {
				b.Fatal("the CSR watch ended")
			}
			csr, isCSR := ev.Object.(*certificatesv1.CertificateSigningRequest)
			if ev.Type != watch.Modified || !isCSR || !strings.HasPrefix(csr.Name, prefix) {
				continue
			}
			if decided(csr) && !approved(csr) {
				c := csr.Status.Conditions[len(csr.Status.Conditions)-1]
				b.Fatalf("CSR %s of %s: %s %s %q, want approved", csr.Name, csr.Spec.Username, c.Type, c.Reason, c.Message)
			}
			if !approved(csr) {
				continue
			}
			mu.Lock()
			if _, dup := seen[csr.Name]; !dup {
				seen[csr.Name] = time.Now()
			}
			mu.Unlock()
		}
	}
	span := time.Since(start)
	wg.Wait()
	var lat []time.Duration
	for name, at := range seen {
		c, ok := created[name]
		if !ok {
			b.Fatalf("CSR %s approved but not created by this round", name)
		}
		lat = append(lat, max(0, at.Sub(c)))
	}
	slices.Sort(lat)
	return lat, span
}

func pct(lat []time.Duration, p float64) time.Duration { return lat[int(float64(len(lat)-1)*p)] }

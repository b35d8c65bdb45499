package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/pxejoin/pxejoin/internal/pubkeypin"
)

// TestCAPins: every certificate of the kubeconfig's CA gives a pin; data with no certificate is an
// error that says what to do.
func TestCAPins(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kubernetes"},
		NotBefore: time.Unix(0, 0), NotAfter: time.Unix(1<<32, 0), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	other := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: []byte("x")})
	cases := []struct {
		name    string
		data    []byte
		pins    int
		wantErr string
	}{
		{"one", ca, 1, ""},
		{"two and a key", append(append(append([]byte(nil), ca...), other...), ca...), 2, ""},
		{"no certificate", other, 0, "use a kubeconfig that holds the cluster's CA"},
		{"empty", nil, 0, "use a kubeconfig that holds the cluster's CA"},
	}
	for _, tc := range cases {
		pins, err := caPins(&rest.Config{TLSClientConfig: rest.TLSClientConfig{CAData: tc.data}})
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.wantErr)
			}
			continue
		}
		if err != nil || len(pins) != tc.pins || pins[0] != pubkeypin.Hash(cert) {
			t.Errorf("%s: pins %v, %v; want %d of %s", tc.name, pins, err, tc.pins, pubkeypin.Hash(cert))
		}
	}
}

package server

import (
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"

	"k8s.io/client-go/rest"

	"github.com/pxejoin/pxejoin/internal/pubkeypin"
)

// TestCAPins: every certificate of the kubeconfig's CA gives a pin; data with no certificate is an
// error that says what to do.
func TestCAPins(t *testing.T) {
	der := selfSigned(t)
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

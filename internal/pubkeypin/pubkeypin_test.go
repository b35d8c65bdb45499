package pubkeypin

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"math/big"
	"strings"
	"testing"
	"time"
)

func selfSigned(t *testing.T) *x509.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestHashIsSHA256OfSPKI(t *testing.T) {
	c := selfSigned(t)
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	if got, want := Hash(c), "sha256:"+hex.EncodeToString(sum[:]); got != want {
		t.Fatalf("Hash = %s, want %s", got, want)
	}
}

func TestSet(t *testing.T) {
	a, b := selfSigned(t), selfSigned(t)
	cases := []struct {
		name    string
		pins    []string
		certs   []*x509.Certificate
		parseOK bool
		match   bool
	}{
		{"one pin matches", []string{Hash(a)}, []*x509.Certificate{a}, true, true},
		{"second pin matches", []string{Hash(b), Hash(a)}, []*x509.Certificate{a}, true, true},
		{"upper-case hex and format", []string{"SHA256:" + strings.ToUpper(strings.TrimPrefix(Hash(a), "sha256:"))}, []*x509.Certificate{a}, true, true},
		{"wrong pin", []string{Hash(b)}, []*x509.Certificate{a}, true, false},
		{"no colon", []string{"abc"}, nil, false, false},
		{"md5 format", []string{"md5:00"}, nil, false, false},
		{"short hex", []string{"sha256:abcd"}, nil, false, false},
		{"not hex", []string{"sha256:" + strings.Repeat("z", 64)}, nil, false, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := NewSet(tc.pins...)
			if (err == nil) != tc.parseOK {
				t.Fatalf("NewSet err = %v, want ok=%v", err, tc.parseOK)
			}
			if err != nil {
				return
			}
			if err := s.CheckAny(tc.certs); (err == nil) != tc.match {
				t.Fatalf("CheckAny err = %v, want match=%v", err, tc.match)
			}
		})
	}
}

// Package pubkeypin computes and checks kubeadm's CA public-key pins: "sha256:<hex>" over the
// certificate's DER-encoded Subject Public Key Info (RFC 7469), as --discovery-token-ca-cert-hash takes.
package pubkeypin

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"strings"
)

// FormatSHA256 is the only pin format kubeadm (and so pxejoin) supports.
const FormatSHA256 = "sha256"

// Hash returns the pin of cert, "sha256:<64 hex>".
func Hash(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return FormatSHA256 + ":" + hex.EncodeToString(sum[:])
}

// Set is a set of allowed pins.
type Set struct{ sha256 map[string]bool }

// NewSet parses pins; each must be "sha256:<64 hex>".
func NewSet(pins ...string) (*Set, error) {
	s := &Set{sha256: map[string]bool{}}
	for _, p := range pins {
		if err := s.add(p); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func (s *Set) add(pin string) error {
	format, value, ok := strings.Cut(pin, ":")
	if !ok {
		return fmt.Errorf("invalid CA certificate hash %q: it must look like %q followed by 64 hex digits "+
			"(compute it on the control plane with: openssl x509 -pubkey -in /etc/kubernetes/pki/ca.crt | "+
			"openssl rsa -pubin -outform der 2>/dev/null | openssl dgst -sha256 -hex)", pin, "sha256:")
	}
	if strings.ToLower(format) != FormatSHA256 {
		return fmt.Errorf("CA certificate hash %q uses the unsupported format %q: only %q is supported", pin, format, FormatSHA256)
	}
	value = strings.ToLower(value)
	if b, err := hex.DecodeString(value); err != nil || len(b) != sha256.Size {
		return fmt.Errorf("CA certificate hash %q is not 64 hex digits after %q", pin, "sha256:")
	}
	s.sha256[value] = true
	return nil
}

// Empty reports whether the set holds no pin.
func (s *Set) Empty() bool { return s == nil || len(s.sha256) == 0 }

// CheckAny returns nil if any of certs matches a pin of the set.
func (s *Set) CheckAny(certs []*x509.Certificate) error {
	var seen []string
	for _, c := range certs {
		h := Hash(c)
		if s.sha256[strings.TrimPrefix(h, FormatSHA256+":")] {
			return nil
		}
		seen = append(seen, h)
	}
	return fmt.Errorf("none of the given CA certificate hashes matches the cluster's CA (the cluster's CA has %s): "+
		"check --discovery-token-ca-cert-hash against the control plane's /etc/kubernetes/pki/ca.crt", strings.Join(seen, ", "))
}

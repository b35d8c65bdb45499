package server

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"

	"github.com/pxejoin/pxejoin/internal/bootstatus"
)

func csrPEMFor(key *ecdsa.PrivateKey, subject pkix.Name) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: subject}, key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

func nopLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func evt(phase, state string) bootstatus.Event { return bootstatus.Event{Phase: phase, State: state} }

package config

import (
	"encoding/hex"
	"fmt"
	"os"
	"strings"
)

// ControlPlaneProfile makes a profile's machines join as control-plane nodes: their join files carry
// the JoinConfiguration's controlPlane section, as `kubeadm join --control-plane` takes it.
type ControlPlaneProfile struct {
	// CertificateKeyFile holds the certificate key that `kubeadm init phase upload-certs
	// --upload-certs` printed (64 hex digits), e.g. a systemd credential
	// (/run/credentials/bootserver.service/certificate-key). It is a secret, so it is never in the
	// YAML; it is read at every join file, so that a new key (kubeadm-certs expires after two hours)
	// is used without a restart.
	CertificateKeyFile string `yaml:"certificateKeyFile"`
	// BindPort is the port the node's API server listens on; default 6443.
	BindPort int32 `yaml:"bindPort"`
}

// DefaultAPIServerBindPort is a control-plane node's API server port (kubeadm's default).
const DefaultAPIServerBindPort = 6443

// ReadCertificateKey reads and checks the certificate key file. Errors name the file, never its
// contents.
func (p *ControlPlaneProfile) ReadCertificateKey() (string, error) {
	b, err := os.ReadFile(p.CertificateKeyFile)
	if err != nil {
		return "", fmt.Errorf("cannot read the certificate key file: %w", err)
	}
	key := strings.TrimSpace(string(b))
	if raw, err := hex.DecodeString(key); err != nil || len(raw) != 32 {
		return "", fmt.Errorf("the certificate key file %s does not hold 64 hex digits (an AES-256 key): write the key `kubeadm init phase upload-certs --upload-certs` printed into it", p.CertificateKeyFile)
	}
	return key, nil
}

// HasControlPlaneProfile reports whether a profile makes control-plane nodes (their tokens then need
// to read the kubeadm-certs Secret).
func (c *Config) HasControlPlaneProfile() bool {
	for _, p := range c.Profiles {
		if p.ControlPlane != nil {
			return true
		}
	}
	return false
}

func (c *Config) validateControlPlane(ck *checker, name string, p Profile) {
	cp := p.ControlPlane
	if cp == nil {
		return
	}
	at := func(k ...any) []any { return append([]any{"profiles", name, "controlPlane"}, k...) }
	if cp.BindPort == 0 {
		cp.BindPort = DefaultAPIServerBindPort
	}
	if cp.BindPort < 1 || cp.BindPort > 65535 {
		ck.fail(at("bindPort"), "%d is not a port: 1-65535 (default 6443)", cp.BindPort)
	}
	if cp.CertificateKeyFile == "" {
		ck.fail(at("certificateKeyFile"), "required: the file holding the certificate key of `kubeadm init phase upload-certs --upload-certs` (never the key itself)")
	} else if _, err := cp.ReadCertificateKey(); err != nil {
		ck.fail(at("certificateKeyFile"), "%v", err)
	}
	if p.RootImage == "" {
		ck.fail([]any{"profiles", name, "rootImage"}, "a control-plane profile needs a root image: the node's systemd finishes the join (etcd-join onwards) after switch_root")
	}
}

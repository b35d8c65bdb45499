// Package certs holds a joining control-plane node's certificates: the shared CAs and keys it takes from
// the kubeadm-certs Secret (download-certs), and the leaf certificates it makes for itself, signed by
// those CAs (certs), as kubeadm's copycerts and certs phases do.
package certs

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/util/keyutil"

	"github.com/pxejoin/pxejoin/internal/joinconfig"
	"github.com/pxejoin/pxejoin/nodeagent/nodefiles"
)

// SecretName is the Secret in kube-system that `kubeadm init phase upload-certs --upload-certs` writes.
const SecretName = "kubeadm-certs"

// MissingSecretMessage is kubeadm's answer when the Secret is gone (it lives as long as its 2 h token).
var MissingSecretMessage = fmt.Sprintf("Secret %q was not found in the %q Namespace. This Secret might have expired. "+
	"Please, run `kubeadm init phase upload-certs --upload-certs` on a control plane to generate a new one", SecretName, "kube-system")

// Shared names the files control-plane nodes share: the Secret's key (the file name relative to the
// certificates directory, "/" → "-") and the node path it is written to.
func Shared(cc *joinconfig.ClusterConfiguration) map[string]string {
	dir := cc.CertificatesDir
	files := map[string]string{}
	for _, name := range []string{"ca.crt", "ca.key", "front-proxy-ca.crt", "front-proxy-ca.key", "sa.pub", "sa.key"} {
		files[name] = path.Join(dir, name)
	}
	if ext := cc.Etcd.External; ext != nil {
		files["external-etcd-ca.crt"] = ext.CAFile
		files["external-etcd.crt"] = ext.CertFile
		files["external-etcd.key"] = ext.KeyFile
	} else {
		files[secretKey("etcd/ca.crt")] = path.Join(dir, "etcd/ca.crt")
		files[secretKey("etcd/ca.key")] = path.Join(dir, "etcd/ca.key")
	}
	return files
}

func secretKey(name string) string { return strings.ReplaceAll(name, "/", "-") }

// Decrypt opens every entry of the kubeadm-certs Secret with the certificate key (64 hex digits) and
// returns the files to write: keys 0600, certificates and sa.pub 0644. It fails before anything is
// written when the key is wrong, an entry is missing, or an entry is neither a key nor a certificate.
// Entries that are empty in the Secret (an external etcd without TLS) are not written, as in kubeadm.
func Decrypt(secret *corev1.Secret, certificateKey string, cc *joinconfig.ClusterConfiguration) ([]nodefiles.File, error) {
	key, err := hex.DecodeString(certificateKey)
	if err != nil || len(key) != 32 {
		return nil, errors.New("the certificate key is not 64 hexadecimal digits (32 bytes): pass the key `kubeadm init phase upload-certs --upload-certs` printed, with --certificate-key or controlPlane.certificateKey")
	}
	gcm, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	shared := Shared(cc)
	var files []nodefiles.File
	for _, name := range slices.Sorted(maps.Keys(shared)) {
		enc, ok := secret.Data[name]
		if !ok {
			return nil, fmt.Errorf("the Secret %s does not include %s (for %s): run `kubeadm init phase upload-certs --upload-certs` on a control-plane node with all its certificates", SecretName, name, shared[name])
		}
		if len(enc) == 0 {
			continue
		}
		plain, err := open(gcm, enc)
		if err != nil {
			return nil, fmt.Errorf("cannot decrypt %s from the Secret %s with this certificate key: it is not the key this Secret was encrypted with; "+
				"pass the key the last `kubeadm init phase upload-certs --upload-certs` printed (a new upload makes a new key)", name, SecretName)
		}
		f := nodefiles.File{Path: shared[name], Data: plain, Mode: 0o644}
		if _, err := keyutil.ParsePrivateKeyPEM(plain); err == nil {
			f.Mode, f.Secret = 0o600, true
		} else if _, err := keyutil.ParsePublicKeysPEM(plain); err != nil {
			return nil, fmt.Errorf("the Secret %s holds %s, which is neither a PEM key nor a certificate", SecretName, name)
		}
		files = append(files, f)
	}
	return files, nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// open reverses kubeadm's EncryptBytes: nonce ‖ ciphertext ‖ tag, no additional data.
func open(gcm cipher.AEAD, data []byte) ([]byte, error) {
	n := gcm.NonceSize()
	if len(data) < n+gcm.Overhead() {
		return nil, errors.New("too short")
	}
	return gcm.Open(nil, data[:n], data[n:], nil)
}

package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const testCertificateKey = "0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c"

// TestControlPlaneProfile: a control-plane profile reads its certificate key from a file, checks it,
// and no error ever holds the file's contents.
func TestControlPlaneProfile(t *testing.T) {
	const notAKey = "s3cr3t-but-not-hex-0123456789abcdef0123456789abcdef0123456789ab"
	for _, tc := range []struct {
		name    string
		section string // the profile's controlPlane line
		key     string // the key file's contents; "" writes none
		noImage bool
		want    string // an error line's part; "" for valid
	}{
		{name: "valid", section: "{certificateKeyFile: $D/certificate-key}", key: testCertificateKey + "\n"},
		{name: "valid with a bind port", section: "{certificateKeyFile: $D/certificate-key, bindPort: 7443}", key: testCertificateKey},
		{name: "no key file named", section: "{bindPort: 6443}",
			want: "bootserver.yaml:23: profiles.worker.controlPlane.certificateKeyFile: required"},
		{name: "key file missing", section: "{certificateKeyFile: $D/certificate-key}",
			want: "bootserver.yaml:23: profiles.worker.controlPlane.certificateKeyFile: cannot read the certificate key file"},
		{name: "not a key", section: "{certificateKeyFile: $D/certificate-key}", key: notAKey,
			want: "does not hold 64 hex digits (an AES-256 key): write the key `kubeadm init phase upload-certs --upload-certs` printed into it"},
		{name: "short key", section: "{certificateKeyFile: $D/certificate-key}", key: testCertificateKey[:32],
			want: "does not hold 64 hex digits"},
		{name: "bad bind port", section: "{certificateKeyFile: $D/certificate-key, bindPort: 70000}", key: testCertificateKey,
			want: "bootserver.yaml:23: profiles.worker.controlPlane.bindPort: 70000 is not a port"},
		{name: "no root image", section: "{certificateKeyFile: $D/certificate-key}", key: testCertificateKey, noImage: true,
			want: "profiles.worker.rootImage: a control-plane profile needs a root image"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, expand := files(t)
			if tc.key != "" {
				if err := os.WriteFile(filepath.Join(dir, "certificate-key"), []byte(tc.key), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			y := strings.Replace(valid, "    rootImage: $D/root.squashfs\n", "    rootImage: $D/root.squashfs\n    controlPlane: "+tc.section+"\n", 1)
			if tc.noImage {
				y = strings.Replace(y, "    rootImage: $D/root.squashfs\n", "", 1)
			}
			c, err := Parse("bootserver.yaml", []byte(expand(y)))
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				cp := c.Profiles["worker"].ControlPlane
				key, err := cp.ReadCertificateKey()
				if err != nil || key != testCertificateKey {
					t.Errorf("ReadCertificateKey = %q, %v", key, err)
				}
				if cp.BindPort != 6443 && cp.BindPort != 7443 {
					t.Errorf("bindPort %d", cp.BindPort)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), notAKey) || strings.Contains(err.Error(), testCertificateKey[:16]) {
				t.Errorf("the error holds the key file's contents: %v", err)
			}
		})
	}
}

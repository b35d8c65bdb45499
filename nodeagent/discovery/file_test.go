package discovery

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/pem"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	certutil "k8s.io/client-go/util/cert"
)

func caPEM(t *testing.T) []byte {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	c, err := certutil.NewSelfSignedCACert(certutil.Config{CommonName: "ca"}, k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func TestFile(t *testing.T) {
	ca := caPEM(t)
	mk := func(mut func(*clientcmdapi.Config)) string {
		kc := clientcmdapi.NewConfig()
		kc.Clusters["k"] = &clientcmdapi.Cluster{Server: "https://10.0.0.1:6443", CertificateAuthorityData: ca}
		kc.AuthInfos["u"] = &clientcmdapi.AuthInfo{}
		kc.Contexts["c"] = &clientcmdapi.Context{Cluster: "k", AuthInfo: "u"}
		kc.CurrentContext = "c"
		if mut != nil {
			mut(kc)
		}
		p := filepath.Join(t.TempDir(), "kc")
		if err := clientcmd.WriteToFile(*kc, p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases := []struct {
		name     string
		location string
		err      string
		creds    bool
	}{
		{name: "no credentials", location: mk(nil)},
		{name: "token credentials", location: mk(func(c *clientcmdapi.Config) { c.AuthInfos["u"].Token = "x" }), creds: true},
		{name: "exec credentials", location: mk(func(c *clientcmdapi.Config) {
			c.AuthInfos["u"].Exec = &clientcmdapi.ExecConfig{Command: "get-token", APIVersion: "client.authentication.k8s.io/v1"}
		}), creds: true},
		{name: "no CA", location: mk(func(c *clientcmdapi.Config) { c.Clusters["k"].CertificateAuthorityData = nil }), err: "no certificate-authority-data"},
		{name: "no server", location: mk(func(c *clientcmdapi.Config) { c.Clusters["k"].Server = "" }), err: "names no server"},
		{name: "dangling context", location: mk(func(c *clientcmdapi.Config) { c.Contexts["c"].Cluster = "gone" }), err: "not in the file"},
		{name: "http refused", location: "http://10.0.0.1/kc", err: "refusing the discovery file"},
		{name: "ftp refused", location: "ftp://10.0.0.1/kc", err: "unsupported scheme"},
		{name: "missing file", location: "/nonexistent/kc", err: "cannot read the discovery file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res, err := File(context.Background(), tc.location)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (res.AuthInfo != nil) != tc.creds {
				t.Fatalf("credentials = %v, want %v", res.AuthInfo != nil, tc.creds)
			}
			if res.Server != "https://10.0.0.1:6443" {
				t.Fatal(res.Server)
			}
		})
	}
}

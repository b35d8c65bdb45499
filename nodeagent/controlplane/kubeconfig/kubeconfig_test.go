package kubeconfig

import (
	"crypto/x509"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	certutil "k8s.io/client-go/util/cert"

	"github.com/pxejoin/pxejoin/nodeagent/controlplane/certs"
	"github.com/pxejoin/pxejoin/nodeagent/nodefiles"
)

func testCA(t *testing.T) *certs.CA {
	t.Helper()
	key, err := certs.NewKey("ECDSA-P256")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := certutil.NewSelfSignedCACert(certutil.Config{CommonName: "kubernetes"}, key)
	if err != nil {
		t.Fatal(err)
	}
	return &certs.CA{Cert: cert, Key: key}
}

// TestJoinKubeconfigs: the three files kubeadm writes on a joining control-plane node, their servers
// and identities; a file is kept on a re-run only while it still fits.
func TestJoinKubeconfigs(t *testing.T) {
	root := nodefiles.Root(t.TempDir())
	ca := testCA(t)
	now := time.Now()
	want := map[string]struct{ server, user, org string }{
		Admin:             {"https://cp.example.test:6443", "kubernetes-admin", "kubeadm:cluster-admins"},
		ControllerManager: {"https://10.0.0.12:6443", "system:kube-controller-manager", ""},
		Scheduler:         {"https://10.0.0.12:6443", "system:kube-scheduler", ""},
	}
	specs := JoinSpecs("https://cp.example.test:6443", "https://10.0.0.12:6443")
	if len(specs) != len(want) {
		t.Fatalf("%d kubeconfigs, want %d", len(specs), len(want))
	}
	for _, spec := range specs {
		f, reused, err := Ensure(root, spec, "kubernetes", ca, "ECDSA-P256", time.Hour, now)
		if err != nil || reused {
			t.Fatalf("%s: reused=%v err=%v", spec.File, reused, err)
		}
		if f.Mode != 0o600 || !f.Secret || f.Path != Dir+"/"+spec.File {
			t.Errorf("%s: path %s mode %v secret %v", spec.File, f.Path, f.Mode, f.Secret)
		}
		c, err := clientcmd.Load(f.Data)
		if err != nil {
			t.Fatal(err)
		}
		w := want[spec.File]
		ctx := c.Contexts[c.CurrentContext]
		if c.CurrentContext != w.user+"@kubernetes" || ctx.Cluster != "kubernetes" || c.Clusters["kubernetes"].Server != w.server {
			t.Errorf("%s: context %s, server %s", spec.File, c.CurrentContext, c.Clusters["kubernetes"].Server)
		}
		cert, err := certutil.ParseCertsPEM(c.AuthInfos[w.user].ClientCertificateData)
		if err != nil {
			t.Fatal(err)
		}
		if cert[0].Subject.CommonName != w.user || (w.org != "" && (len(cert[0].Subject.Organization) != 1 || cert[0].Subject.Organization[0] != w.org)) ||
			cert[0].ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
			t.Errorf("%s: subject %s", spec.File, cert[0].Subject)
		}
		if err := root.Write(f); err != nil {
			t.Fatal(err)
		}
		if _, reused, _ := Ensure(root, spec, "kubernetes", ca, "ECDSA-P256", time.Hour, now); !reused {
			t.Errorf("%s: a valid file was not reused", spec.File)
		}
		moved := spec
		moved.Server = "https://10.0.0.99:6443"
		if _, reused, _ := Ensure(root, moved, "kubernetes", ca, "ECDSA-P256", time.Hour, now); reused {
			t.Errorf("%s: a file for another server was reused", spec.File)
		}
		if _, reused, _ := Ensure(root, spec, "kubernetes", testCA(t), "ECDSA-P256", time.Hour, now); reused {
			t.Errorf("%s: a file for another CA was reused", spec.File)
		}
	}
}

package controlplane

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"

	"github.com/pxejoin/pxejoin/lab/testenv"
)

// TestStart brings up the real control plane and checks what a join relies on: cluster-info, a token
// that the bootstrap signer signs, and kubeadm's ConfigMaps.
func TestStart(t *testing.T) {
	testenv.RequireK8s(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cp, err := Start(ctx, Options{StateDir: t.TempDir(), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Stop()
	tok, err := cp.CreateToken(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.WaitSigned(ctx, tok, 60*time.Second); err != nil {
		t.Fatalf("token never signed: %v\n%s", err, cp.LogTail("kube-controller-manager", 20))
	}
	cm, err := cp.Admin().CoreV1().ConfigMaps("kube-public").Get(ctx, bootstrapapi.ConfigMapClusterInfo, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cm.Data["kubeconfig"] == "" {
		t.Fatal("cluster-info has no kubeconfig")
	}
	for _, name := range []string{"kubelet-config", "kubeadm-config"} {
		if _, err := cp.Admin().CoreV1().ConfigMaps("kube-system").Get(ctx, name, metav1.GetOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := cp.SetServerTLSBootstrap(ctx, true); err != nil {
		t.Fatal(err)
	}
	kc, err := cp.Admin().CoreV1().ConfigMaps("kube-system").Get(ctx, "kubelet-config", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if k := kc.Data["kubelet"]; !strings.Contains(k, "serverTLSBootstrap: true") || !strings.Contains(k, "kind: KubeletConfiguration") || !strings.Contains(k, "cgroupDriver: cgroupfs") {
		t.Errorf("kubelet-config after SetServerTLSBootstrap:\n%s", k)
	}
}

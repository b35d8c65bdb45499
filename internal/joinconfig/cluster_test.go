package joinconfig

import (
	"slices"
	"strings"
	"testing"
)

// TestParseClusterConfiguration: both versions' extraArgs, kubeadm's defaults, and refusals.
func TestParseClusterConfiguration(t *testing.T) {
	v4, err := ParseClusterConfiguration([]byte(`apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
controlPlaneEndpoint: cp.example.test
apiServer:
  extraArgs: [{name: audit-log-path, value: /a}, {name: v, value: "2"}]
  certSANs: [x]
dns: {}
`))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(v4.APIServer.ExtraArgs, Args{{"audit-log-path", "/a"}, {"v", "2"}}) || v4.APIServer.CertSANs[0] != "x" {
		t.Errorf("apiServer %+v", v4.APIServer)
	}
	if v4.CertificatesDir != DefaultCertificatesDir || v4.Etcd.Local == nil || v4.Etcd.Local.DataDir != DefaultEtcdDataDir ||
		v4.Networking.ServiceSubnet != DefaultServiceSubnet || v4.ClusterName != "kubernetes" || v4.CertValidity() != DefaultCertValidity {
		t.Errorf("defaults %+v", v4)
	}
	if h, p, err := v4.ControlPlaneEndpointHostPort(6443); h != "cp.example.test" || p != 6443 || err != nil {
		t.Errorf("endpoint %s %d %v", h, p, err)
	}
	v3, err := ParseClusterConfiguration([]byte(`apiVersion: kubeadm.k8s.io/v1beta3
kind: ClusterConfiguration
controlPlaneEndpoint: "[fd00::1]:7443"
controllerManager: {extraArgs: {v: "2", bind-address: 0.0.0.0}}
etcd: {external: {endpoints: [https://e:2379], caFile: /ca, certFile: /c, keyFile: /k}}
`))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(v3.ControllerManager.ExtraArgs, Args{{"bind-address", "0.0.0.0"}, {"v", "2"}}) || v3.Etcd.Local != nil {
		t.Errorf("v1beta3 %+v", v3)
	}
	if h, p, err := v3.ControlPlaneEndpointHostPort(6443); h != "fd00::1" || p != 7443 || err != nil {
		t.Errorf("endpoint %s %d %v", h, p, err)
	}
	for doc, want := range map[string]string{
		"kind: InitConfiguration\n":            "expected a ClusterConfiguration",
		"apiVersion: kubeadm.k8s.io/v1beta2\n": "not supported",
		"apiServer: {extraArgs: 3}\n":          "extraArgs must be",
		"controlPlaneEndpoint: 'h:x'\n":        "",
		"networking: {serviceSubnet: [1]}\n":   "does not parse",
	} {
		c, err := ParseClusterConfiguration([]byte(doc))
		if want == "" {
			if _, _, err := c.ControlPlaneEndpointHostPort(6443); err == nil {
				t.Errorf("%q: a bad port passed", doc)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err = %v, want %q", doc, err, want)
		}
	}
}

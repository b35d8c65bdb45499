package bootstraptoken

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
)

func TestSecret(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	cases := []struct {
		name   string
		token  string
		opts   Options
		ok     bool
		expiry string
		groups string
	}{
		{"defaults", "abcdef.0123456789abcdef", Options{}, true, "2026-01-03T03:04:05Z", DefaultGroup},
		{"ttl and groups", "abcdef.0123456789abcdef", Options{TTL: time.Hour, Groups: []string{"system:bootstrappers:rack1"}}, true, "2026-01-02T04:04:05Z", "system:bootstrappers:rack1"},
		{"bad token", "abc.def", Options{}, false, "", ""},
		{"upper case", "ABCDEF.0123456789abcdef", Options{}, false, "", ""},
		{"bad group", "abcdef.0123456789abcdef", Options{Groups: []string{"admins"}}, false, "", ""},
		{"bad usage", "abcdef.0123456789abcdef", Options{Usages: []string{"root"}}, false, "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Secret(tc.token, tc.opts, now)
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
			if err != nil {
				if strings.Contains(err.Error(), "0123456789abcdef") {
					t.Fatalf("error leaks the secret: %v", err)
				}
				return
			}
			if s.Name != "bootstrap-token-abcdef" || s.Namespace != "kube-system" || s.Type != bootstrapapi.SecretTypeBootstrapToken {
				t.Fatalf("wrong identity: %s/%s %s", s.Namespace, s.Name, s.Type)
			}
			want := map[string]string{
				"token-id": "abcdef", "token-secret": "0123456789abcdef", "expiration": tc.expiry,
				"usage-bootstrap-authentication": "true", "usage-bootstrap-signing": "true", "auth-extra-groups": tc.groups,
			}
			for k, v := range want {
				if got := string(s.Data[k]); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
		})
	}
}

func TestCreateAndDelete(t *testing.T) {
	c := fake.NewClientset()
	ctx := context.Background()
	tok, err := Create(ctx, c, Options{Description: "machine 52:54:00:00:00:01"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CoreV1().Secrets("kube-system").Get(ctx, "bootstrap-token-"+ID(tok), metav1GetOptions()); err != nil {
		t.Fatal(err)
	}
	if err := Delete(ctx, c, tok); err != nil {
		t.Fatal(err)
	}
	if err := Delete(ctx, c, tok); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	if Username(tok) != "system:bootstrap:"+ID(tok) {
		t.Fatal(Username(tok))
	}
}

func metav1GetOptions() metav1.GetOptions { return metav1.GetOptions{} }

func TestScrub(t *testing.T) {
	cases := []struct{ in, want string }{
		{"", ""},
		{"join --token abcdef.0123456789abcdef --node-name n", "join --token abcdef.<redacted> --node-name n"},
		{"a abcdef.0123456789abcdef b 123456.abcdefabcdefabcd", "a abcdef.<redacted> b 123456.<redacted>"},
		{"abcdef.0123456789", "abcdef.0123456789"},
	}
	for _, tc := range cases {
		if got := Scrub(tc.in); got != tc.want {
			t.Errorf("Scrub(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

package join

import (
	"net/http"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestLeaseClock: the window is two of the kubelet's renew intervals of the Lease's duration, and a
// Lease's age is read on the API server's clock only (its last managedFields change against the Date
// of the response); an unknown either way counts as no age, so the whole window is watched.
func TestLeaseClock(t *testing.T) {
	seconds := func(s int32) *int32 { return &s }
	for _, tc := range []struct {
		duration *int32
		want     time.Duration
	}{{nil, 20 * time.Second}, {seconds(40), 20 * time.Second}, {seconds(8), 4 * time.Second}, {seconds(0), 20 * time.Second}} {
		if got := leaseWindow(&coordinationv1.Lease{Spec: coordinationv1.LeaseSpec{LeaseDurationSeconds: tc.duration}}); got != tc.want {
			t.Errorf("leaseWindow(%v) = %v, want %v", tc.duration, got, tc.want)
		}
	}

	server := time.Date(2026, 11, 30, 14, 0, 50, 0, time.UTC)
	at := func(sec int) *metav1.Time {
		m := metav1.NewTime(server.Add(time.Duration(sec) * time.Second))
		return &m
	}
	l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{ManagedFields: []metav1.ManagedFieldsEntry{
		{Manager: "kubelet", Time: at(-47)}, {Manager: "kube-controller-manager", Time: at(-300)}, {Manager: "none"}}}}
	if got := lastWrite(l); !got.Equal(server.Add(-47 * time.Second)) {
		t.Errorf("lastWrite = %v, want the newest entry", got)
	}
	for _, tc := range []struct {
		name string
		date string
		from time.Time
		want time.Duration
	}{
		{"server clock", server.Format(http.TimeFormat), lastWrite(l), 47 * time.Second},
		{"no Date header", "", lastWrite(l), 0},
		{"no managedFields", server.Format(http.TimeFormat), time.Time{}, 0},
		{"written after the Date (another API server's clock)", server.Format(http.TimeFormat), server.Add(time.Second), 0},
	} {
		d := &serverDate{}
		rt := d.wrap(roundTripper(func(*http.Request) (*http.Response, error) {
			h := http.Header{}
			if tc.date != "" {
				h.Set("Date", tc.date)
			}
			return &http.Response{StatusCode: 200, Header: h}, nil
		}))
		if _, err := rt.RoundTrip(&http.Request{}); err != nil {
			t.Fatal(err)
		}
		if got := d.since(tc.from); got != tc.want {
			t.Errorf("%s: since = %v, want %v", tc.name, got, tc.want)
		}
	}
}

package httpd

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/bootserver/httpfast"
)

// rawGet sends req on a new connection to addr and returns the response with its Date blanked.
func rawGet(t *testing.T, addr, req string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, req)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	resp.Header.Del("Date")
	var b strings.Builder
	b.WriteString(resp.Proto + " " + resp.Status + "\n")
	_ = resp.Header.Write(&b)
	b.WriteString("\n" + string(body))
	return b.String()
}

// TestServeFastSameAsServeHTTP fetches scripts through httpfast and straight from net/http, and
// compares the responses and what each records: timelines and request counts.
func TestServeFastSameAsServeHTTP(t *testing.T) {
	f := newFixture(t, "http://10.0.0.1:8080", 1<<10, false,
		config.Machine{MAC: "52:54:00:00:00:01", Name: "worker-1", Profile: "worker"},
		config.Machine{MAC: "52:54:00:00:00:02", Name: "worker-2", Profile: "worker"})
	fs, err := httpfast.New(httpfast.Config{HTTP: &http.Server{Handler: f.h}, Fast: f.h})
	if err != nil {
		t.Fatal(err)
	}
	fastLn, _ := net.Listen("tcp", "127.0.0.1:0")
	plainLn, _ := net.Listen("tcp", "127.0.0.1:0")
	plain := &http.Server{Handler: f.h}
	go fs.Serve(fastLn)
	go plain.Serve(plainLn)
	t.Cleanup(func() { fs.Close(); plain.Close() })

	count := func(kind, code string) float64 { return testutil.ToFloat64(f.h.requests.WithLabelValues(kind, code)) }
	for _, c := range []struct {
		name, fast, plain string // the two MACs, so that both timelines start alike
		req               string
		served            bool // by the fast path
	}{
		{"script", "52:54:00:00:00:01", "52:54:00:00:00:02", "GET /boot/%s.ipxe HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nConnection: close\r\n\r\n", true},
		{"head", "52:54:00:00:00:01", "52:54:00:00:00:02", "HEAD /boot/%s.ipxe HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nConnection: close\r\n\r\n", true},
		{"unknown machine", "52:54:00:00:00:03", "52:54:00:00:00:04", "GET /boot/%s.ipxe HTTP/1.0\r\n\r\n", true},
		{"escaped as iPXE sends it", "52%3A54%3A00%3A00%3A00%3A05", "52%3A54%3A00%3A00%3A00%3A06", "GET /boot/%s.ipxe HTTP/1.1\r\nConnection: keep-alive\r\nUser-Agent: iPXE/1.21.1\r\nHost: 10.0.0.1:8080\r\nConnection: close\r\n\r\n", true},
		{"upper-case MAC", "52:54:00:00:00:0A", "52:54:00:00:00:0B", "GET /boot/%s.ipxe HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", true},
		{"bad MAC", "zz", "zz", "GET /boot/%s.ipxe HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", false},
		{"not .ipxe", "52:54:00:00:00:01", "52:54:00:00:00:02", "GET /boot/%s.txt HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			ok0 := count(KindScript, "200")
			got := rawGet(t, fastLn.Addr().String(), strings.Replace(c.req, "%s", c.fast, 1))
			ok1 := count(KindScript, "200")
			want := rawGet(t, plainLn.Addr().String(), strings.Replace(c.req, "%s", c.plain, 1))
			ok2 := count(KindScript, "200")
			norm := func(s, mac string) string {
				mac = strings.ReplaceAll(mac, "%3A", ":")
				s = strings.ReplaceAll(strings.ReplaceAll(s, mac, "MAC"), strings.ToLower(mac), "MAC")
				return strings.NewReplacer("worker-1", "worker-N", "worker-2", "worker-N").Replace(s)
			}
			if g, w := norm(got, c.fast), norm(want, c.plain); g != w {
				t.Errorf("through httpfast:\n%s\nfrom net/http:\n%s", g, w)
			}
			if ok1-ok0 != ok2-ok1 {
				t.Errorf("script 200s counted: %v through httpfast, %v from net/http", ok1-ok0, ok2-ok1)
			}
			if !c.served {
				return
			}
			a, _ := f.store.Get(strings.ToLower(strings.ReplaceAll(c.fast, "%3A", ":")))
			b, _ := f.store.Get(strings.ToLower(strings.ReplaceAll(c.plain, "%3A", ":")))
			if a.Boot != b.Boot || a.Profile != b.Profile || a.Known != b.Known || (a.NodeName == "") != (b.NodeName == "") || len(a.Phases) != len(b.Phases) {
				t.Errorf("timelines differ: %+v\n%+v", a, b)
			}
			for i := range a.Phases {
				if a.Phases[i].Phase != b.Phases[i].Phase || a.Phases[i].State != b.Phases[i].State || a.Phases[i].Detail != b.Phases[i].Detail || a.Phases[i].Error != b.Phases[i].Error {
					t.Errorf("phase %d: %+v, %+v", i, a.Phases[i], b.Phases[i])
				}
			}
		})
	}
}

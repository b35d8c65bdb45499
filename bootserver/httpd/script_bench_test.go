package httpd

import (
	"fmt"
	"log/slog"
	"net/http/httptest"
	"testing"
)

// BenchmarkScript renders iPXE scripts for many machines in process (no network): the handler's own
// cost per request.
func BenchmarkScript(b *testing.B) {
	f := newFixtureLevel(b, slog.LevelInfo, "http://10.80.0.1:8080", 16, true)
	paths := make([]string, 1000)
	for i := range paths {
		paths[i] = fmt.Sprintf("/boot/52:54:02:00:%02x:%02x.ipxe", i>>8, i&0xff)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		w := httptest.NewRecorder()
		f.h.ServeHTTP(w, httptest.NewRequest("GET", paths[i%len(paths)], nil))
		if w.Code != 200 {
			b.Fatal(w.Code)
		}
	}
}

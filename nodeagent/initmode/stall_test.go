package initmode

import (
	"bytes"
	"context"
	"crypto/rand"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestDownloadSurvivesABrokenServer: the first boot server stops answering or sending partway (a
// stopped process, a death mid-body): the root image (in RAM, and on a persistent node's disk) and
// the join file come whole from the next server of pxejoin.servers=, the file started afresh. Without the idle limit a stalled server
// held the download until TCP keepalive gave up (never, for a stopped process).
func TestDownloadSurvivesABrokenServer(t *testing.T) {
	body := make([]byte, 1<<20)
	if _, err := rand.Read(body); err != nil {
		t.Fatal(err)
	}
	half := len(body) / 2
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := "http://" + ln.Addr().String()
	ln.Close()

	const (
		refuses     = "refuses"     // nothing listens
		stallsFirst = "stalls"      // accepts, never answers
		stallsHalf  = "stalls half" // sends half the body, then nothing
		diesHalf    = "dies half"   // sends half the body, then closes the connection
	)
	tests := []struct {
		name    string
		first   string
		noNext  bool // no other server: the error must say what happened
		wantErr string
	}{
		{"connection refused", refuses, false, ""},
		{"stalls before the answer", stallsFirst, false, ""},
		{"stalls mid-body", stallsHalf, false, ""},
		{"dies mid-body", diesHalf, false, ""},
		{"stalls before the answer, no other server", stallsFirst, true, "no answer for 1s: the boot server stalled"},
		{"stalls mid-body, no other server", stallsHalf, true, "no byte for 1s after 524288 bytes: the boot server stalled"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			first := refused
			var firstAsked atomic.Int32
			if tc.first != refuses {
				// A stalled handler waits for the subtest's end, as a stopped server would.
				release := make(chan struct{})
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					firstAsked.Add(1)
					if tc.first != stallsFirst {
						w.Header().Set("Content-Length", strconv.Itoa(len(body)))
						_, _ = w.Write(body[:half])
						w.(http.Flusher).Flush()
					}
					if tc.first == diesHalf {
						panic(http.ErrAbortHandler)
					}
					<-release
				}))
				defer srv.Close()
				defer close(release)
				first = srv.URL
			}
			var asked atomic.Int32
			next := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				asked.Add(1)
				_, _ = w.Write(body)
			}))
			defer next.Close()
			a := &Agent{Cmdline: Cmdline{JoinURL: first + "/join/m", Servers: []string{next.URL}}, Idle: time.Second}
			if tc.noNext {
				a.Cmdline.Servers = nil
			}
			path := filepath.Join(t.TempDir(), "root.squashfs")
			n, err := a.download(context.Background(), first+"/image/root.squashfs", path)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("download: %v; want an error saying %q", err, tc.wantErr)
				}
				return
			}
			got, rerr := os.ReadFile(path)
			if err != nil || rerr != nil || n != int64(len(body)) || !bytes.Equal(got, body) {
				t.Fatalf("download: %d bytes, %v; file of %d bytes (%v), equal %v; want the whole body from the next server",
					n, err, len(got), rerr, bytes.Equal(got, body))
			}
			join, err := a.get(context.Background(), a.Cmdline.JoinURL, 2<<20)
			if err != nil || !bytes.Equal(join, body) {
				t.Fatalf("join file: %d bytes, %v; want the whole body from the next server", len(join), err)
			}
			// A persistent node's image, kept on its disk.
			a.StateDir, a.Cmdline.ImageURL = t.TempDir(), first+"/image/root.squashfs"
			img, _, err := a.cachedImage(context.Background())
			if err != nil {
				t.Fatalf("image for the disk: %v", err)
			}
			if got, err := os.ReadFile(img); err != nil || !bytes.Equal(got, body) {
				t.Fatalf("image on the disk: %d bytes, %v; want the whole body from the next server", len(got), err)
			}
			if asked.Load() != 3 {
				t.Errorf("the next server was asked %d times, want 3", asked.Load())
			}
			// The server that answered is asked first from then on: the broken one costs its
			// idle limit once.
			if firstAsked.Load() > 1 {
				t.Errorf("the broken server was asked %d times, want 1", firstAsked.Load())
			}
		})
	}
}

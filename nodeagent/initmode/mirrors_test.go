package initmode

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestGetFromTheNextServer: the join file's server is dead (nothing listens): the agent gets it from
// the next boot server; a server that answers, even with an error, is not passed over.
func TestGetFromTheNextServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String()
	ln.Close()
	var asked []string
	alive := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked = append(asked, r.URL.Path)
		if r.URL.Path == "/join/refused" {
			http.Error(w, "already handed out", http.StatusConflict)
			return
		}
		_, _ = w.Write([]byte("join file"))
	}))
	defer alive.Close()
	second := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("a refusal was passed over to the next server: %s", r.URL.Path)
	}))
	defer second.Close()

	a := &Agent{Cmdline: Cmdline{JoinURL: dead + "/join/m", Servers: []string{alive.URL, second.URL}}}
	body, err := a.get(context.Background(), a.Cmdline.JoinURL, 1<<10)
	if err != nil || string(body) != "join file" {
		t.Fatalf("from the next server: %q, %v", body, err)
	}
	// Other machines (an Agent asks the server that last answered first).
	a = &Agent{Cmdline: Cmdline{JoinURL: alive.URL + "/join/refused", Servers: []string{second.URL}}}
	if _, err := a.get(context.Background(), a.Cmdline.JoinURL, 1<<10); err == nil || !strings.Contains(err.Error(), "409") {
		t.Fatalf("refusal: %v", err)
	}
	a = &Agent{Cmdline: Cmdline{JoinURL: dead + "/join/m"}}
	if _, err := a.get(context.Background(), a.Cmdline.JoinURL, 1<<10); err == nil {
		t.Fatal("no server alive, yet an answer")
	}
	if len(asked) != 2 {
		t.Errorf("alive server asked %v", asked)
	}
}

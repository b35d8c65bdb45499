package httpd

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/lab/netlab"
	"github.com/pxejoin/pxejoin/lab/testenv"
)

// lab is a server namespace and a client namespace joined by a veth pair.
type lab struct {
	server, client *netlab.NS
	serverIP       string
}

var labNet = 0

func newLab(t testing.TB) *lab {
	t.Helper()
	testenv.RequireRoot(t)
	labNet++
	subnet := "10.80." + strconv.Itoa(labNet) + "."
	l := &lab{server: netlab.New(t, "bshs"), client: netlab.New(t, "bshc"), serverIP: subnet + "1"}
	netlab.Veth(t, l.server, "eth0", subnet+"1/24", l.client, "eth0", subnet+"2/24")
	return l
}

// serve runs h on addr inside the server namespace until the test ends, as bootserver/server does.
func (l *lab) serve(t testing.TB, h *Handler, port string) {
	t.Helper()
	var ln net.Listener
	if err := l.server.Do(func() (err error) { ln, err = net.Listen("tcp", l.serverIP+":"+port); return err }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
}

// TestCurlFromClientNamespace fetches a script, a byte range of the kernel and the whole kernel
// with curl from another namespace over a veth link.
func TestCurlFromClientNamespace(t *testing.T) {
	l := newLab(t)
	url := "http://" + l.serverIP + ":8080"
	f := newFixture(t, url, 3<<20+17, false, config.Machine{MAC: mustMAC("52:54:00:00:00:01"), Name: "worker-1", Profile: "worker"})
	l.serve(t, f.h, "8080")

	script := string(l.client.MustExec(t, "curl", "-sS", "--fail", "--retry", "3", "--retry-connrefused", url+"/boot/52:54:00:00:00:01.ipxe"))
	if !strings.HasPrefix(script, "#!ipxe\n") || !strings.Contains(script, "kernel "+url+"/files/52:54:00:00:00:01/worker/vmlinuz initrd=initramfs.cpio.gz") {
		t.Fatalf("script:\n%s", script)
	}
	kernelURL := url + "/files/52:54:00:00:00:01/worker/vmlinuz"
	out := l.client.MustExec(t, "sh", "-c", "curl -sS -r 1000-1999 -o /dev/stdout -w '\n%{http_code} %{size_download}' "+kernelURL)
	body, trailer, _ := cutLast(string(out), "\n")
	if trailer != "206 1000" || body != string(f.kernel[1000:2000]) {
		t.Fatalf("range request: %q, %d bytes", trailer, len(body))
	}
	sum := strings.Fields(string(l.client.MustExec(t, "sh", "-c", "curl -sS --fail "+kernelURL+" | sha256sum")))[0]
	want := sha256.Sum256(f.kernel)
	if sum != hex.EncodeToString(want[:]) {
		t.Fatalf("sha256 of the download %s, want %s", sum, hex.EncodeToString(want[:]))
	}
	head := string(l.client.MustExec(t, "curl", "-sS", "-I", kernelURL))
	if !strings.Contains(head, "Content-Length: 3145745") || !strings.Contains(head, "Accept-Ranges: bytes") {
		t.Errorf("HEAD:\n%s", head)
	}
	m, _ := f.store.Get(mustMAC("52:54:00:00:00:01"))
	var phases []string
	for _, p := range m.Phases {
		phases = append(phases, p.Phase+"/"+p.State)
	}
	if strings.Join(phases, " ") != "script/done kernel/done" {
		t.Errorf("timeline %v", phases)
	}
}

func cutLast(s, sep string) (string, string, bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}

package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/bootserver/tokens"
	"github.com/pxejoin/pxejoin/internal/joinconfig"
	"github.com/pxejoin/pxejoin/lab/netlab"
)

// TestUnknownJoinFlood runs the whole server against the real control plane with a profile for
// unknown machines and floods it over a veth link with join file requests for new MACs: the
// Secrets minted for them stay within unknownMachines.maxTokens, the others are refused with 503
// and Retry-After and counted, and an inventory machine (another address) gets its join file during
// the flood.
func TestUnknownJoinFlood(t *testing.T) {
	needControlPlane(t)
	const (
		maxTokens = 8
		flood     = 300
		workers   = 12 // connections from the flooding address, under its cap of 16
		known     = "52:54:00:57:00:01"
		macPrefix = "52:54:01:57:" // of the flood's MACs
	)
	srvNS, cliNS := netlab.New(t, "bsfs"), netlab.New(t, "bsfc")
	netlab.Veth(t, srvNS, "eth0", "10.80.57.1/24", cliNS, "eth0", "10.80.57.2/24")
	cliNS.MustExec(t, "ip", "addr", "add", "10.80.57.3/24", "dev", "eth0") // the inventory machine
	dir := t.TempDir()
	for _, f := range []string{"vmlinuz", "initramfs.cpio.gz"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("test "+f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := config.Parse("flood.yaml", []byte(fmt.Sprintf(`interface: eth0
listen: {http: ":8080"}
dhcp: {mode: off}
tftp: {disabled: true}
cluster: {kubeconfig: %s}
stateDir: %s/state
unknownMachines: {profile: worker, maxTokens: %d}
profiles:
  worker: {kernel: %s/vmlinuz, initrds: [%s/initramfs.cpio.gz], cmdline: "pxejoin.url={{.JoinURL}}"}
machines:
  - {mac: "%s", name: flood-known}
`, cp.AdminKubeconfig(), dir, maxTokens, dir, dir, known)))
	if err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	srv, err := New(Options{Config: cfg, Logger: slog.New(slog.DiscardHandler), InNetns: srvNS.Do, Ready: func() { close(ready) }})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	select {
	case <-ready:
	case err := <-served:
		t.Fatalf("Serve: %v", err)
	}
	admin := cp.Admin()
	defer admin.CoreV1().Secrets("kube-system").DeleteCollection(context.Background(), metav1.DeleteOptions{},
		metav1.ListOptions{LabelSelector: tokens.LabelManagedBy + "=pxejoin-bootserver"})

	floodClient, knownClient := clientFrom(cliNS, "10.80.57.2"), clientFrom(cliNS, "10.80.57.3")
	var sent, minted, refused atomic.Int64
	var firstRefusal atomic.Value
	next := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				resp, err := floodClient.Get(fmt.Sprintf("%s/join/%s%02x:%02x", srv.URL(), macPrefix, i>>8, i&0xff))
				if err != nil {
					t.Errorf("flood request %d: %v", i, err)
					continue
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				sent.Add(1)
				switch {
				case resp.StatusCode == 200:
					minted.Add(1)
				case resp.StatusCode == 503 && resp.Header.Get("Retry-After") != "":
					refused.Add(1)
					firstRefusal.CompareAndSwap(nil, string(body))
				default:
					t.Errorf("flood request %d: %s %q", i, resp.Status, body)
				}
			}
		}()
	}
	knownDone := make(chan struct{})
	go func() {
		defer close(knownDone)
		for sent.Load() < flood/4 { // well into the flood
			time.Sleep(5 * time.Millisecond)
		}
		start := time.Now()
		resp, err := knownClient.Get(srv.URL() + "/join/" + known)
		if err != nil {
			t.Errorf("the inventory machine's join file: %v", err)
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		jc, err := joinconfig.Parse(body)
		if resp.StatusCode != 200 || err != nil || jc.NodeRegistration.Name != "flood-known" {
			t.Errorf("the inventory machine's join file: %s, %v", resp.Status, err)
			return
		}
		t.Logf("the inventory machine got its join file in %v, %d flood requests in", time.Since(start).Round(time.Millisecond), sent.Load())
	}()
	start := time.Now()
	for i := 0; i < flood; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	<-knownDone
	t.Logf("%d join requests for new MACs in %v: %d served, %d refused; first refusal: %v",
		sent.Load(), time.Since(start).Round(time.Millisecond), minted.Load(), refused.Load(), firstRefusal.Load())

	list, err := admin.CoreV1().Secrets("kube-system").List(context.Background(), metav1.ListOptions{LabelSelector: tokens.LabelManagedBy + "=pxejoin-bootserver"})
	if err != nil {
		t.Fatal(err)
	}
	strangers := 0
	for _, s := range list.Items {
		if strings.HasPrefix(s.Labels["pxejoin.io/mac"], strings.ReplaceAll(macPrefix, ":", "")) {
			strangers++
		}
	}
	if strangers > maxTokens || minted.Load() > maxTokens {
		t.Errorf("%d Secrets minted for unknown machines (%d join files served), cap %d", strangers, minted.Load(), maxTokens)
	}
	if refused.Load() == 0 {
		t.Error("no refusal")
	}
	if r, ok := firstRefusal.Load().(string); ok && !strings.Contains(r, "unknownMachines.") {
		t.Errorf("a refusal does not say which limit: %q", r)
	}
}

// clientFrom is an HTTP client whose connections are dialled from address from inside ns.
func clientFrom(ns *netlab.NS, from string) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	return &http.Client{Timeout: time.Minute, Transport: &http.Transport{
		MaxIdleConnsPerHost: 16,
		DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
			err = ns.Do(func() error { c, err = d.DialContext(ctx, network, addr); return err })
			return c, err
		},
	}}
}

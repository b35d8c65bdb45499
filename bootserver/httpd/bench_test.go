package httpd

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pxejoin/pxejoin/lab/netlab"
	"github.com/pxejoin/pxejoin/lab/testenv"
)

const (
	benchMachines  = 10000
	benchBigSize   = 60 << 20
	benchBigRounds = 6
	benchWorkers   = 8
	// Interleaved runs of each client against each server; the best of each counts.
	benchSmallRuns = 9
	benchBigRuns   = 9
)

// startNginx runs Debian's nginx (nginx-light) inside ns with its own prefix, config and logs in
// dir, serving root at addr, and returns its master's pid. It never touches the host's nginx.
func startNginx(b *testing.B, ns *netlab.NS, dir, root, addr string) int {
	b.Helper()
	testenv.RequireTool(b, "nginx")
	for _, d := range []string{"tmp", "logs"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			b.Fatal(err)
		}
	}
	// Workers run as root: the temp dirs are 0700 and this nginx lives only in the test namespace.
	conf := fmt.Sprintf(`user root;
worker_processes 2;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/logs/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  default_type application/octet-stream;
  client_body_temp_path %[1]s/tmp/body;
  proxy_temp_path %[1]s/tmp/proxy;
  fastcgi_temp_path %[1]s/tmp/fastcgi;
  uwsgi_temp_path %[1]s/tmp/uwsgi;
  scgi_temp_path %[1]s/tmp/scgi;
  server { listen %[2]s; root %[3]s; }
}
`, dir, addr, root)
	cf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
		b.Fatal(err)
	}
	cmd := ns.Command("nginx", "-p", dir, "-c", cf, "-e", filepath.Join(dir, "logs", "error.log"))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }) // the namespace's deletion kills its workers
	return cmd.Process.Pid                                       // ip netns exec execs nginx
}

// nsClient is an HTTP client whose connections are dialled from inside ns.
func nsClient(ns *netlab.NS) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second}
	return &http.Client{Timeout: time.Minute, Transport: &http.Transport{
		MaxIdleConnsPerHost: benchWorkers * 2,
		DisableCompression:  true,
		DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
			err = ns.Do(func() error { c, err = d.DialContext(ctx, network, addr); return err })
			return c, err
		},
	}}
}

func waitUp(b *testing.B, c *http.Client, url string) {
	b.Helper()
	for i := 0; i < 100; i++ {
		if resp, err := c.Get(url); err == nil {
			resp.Body.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.Fatalf("%s never answered", url)
}

// benchClientEnv makes the test binary a benchmark client (see TestMain): a process of its own, so
// that neither server shares a Go runtime with the client.
const benchClientEnv = "PXEJOIN_BENCH_CLIENT"

// TestMain runs the benchmark client when asked to, and the tests otherwise.
func TestMain(m *testing.M) {
	if os.Getenv(benchClientEnv) != "" {
		os.Exit(benchClient())
	}
	os.Exit(m.Run())
}

// benchClient reads "base" and a paths file from the environment, fetches them all, and prints
// "<nanoseconds> <bytes>".
func benchClient() int {
	data, err := os.ReadFile(os.Getenv("PXEJOIN_BENCH_PATHS"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	paths := strings.Fields(string(data))
	d, n, err := fetchH2load(os.Getenv("PXEJOIN_BENCH_BASE"), paths)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(d.Nanoseconds(), n)
	return 0
}

// runClient runs the client process in ns against base and returns its elapsed time.
func runClient(b *testing.B, ns *netlab.NS, base, pathsFile string) time.Duration {
	b.Helper()
	cmd := ns.Command("env", benchClientEnv+"=1", "PXEJOIN_BENCH_BASE="+base, "PXEJOIN_BENCH_PATHS="+pathsFile, os.Args[0])
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		b.Fatalf("benchmark client against %s: %v: %s", base, err, stderr)
	}
	var ns64, n int64
	if _, err := fmt.Sscan(string(out), &ns64, &n); err != nil {
		b.Fatalf("benchmark client output %q", out)
	}
	return time.Duration(ns64)
}

// fetchH2load GETs every path once with benchWorkers h2load processes (nghttp2's load generator,
// written in C), each one connection fetching its own share of the paths, all started together,
// and returns the time until the last one is done and the bytes of the bodies.
func fetchH2load(base string, paths []string) (time.Duration, int64, error) {
	dir, err := os.MkdirTemp("", "h2load")
	if err != nil {
		return 0, 0, err
	}
	defer os.RemoveAll(dir)
	var cmds []*exec.Cmd
	var outs []*bytes.Buffer
	for w := 0; w < benchWorkers; w++ {
		var uris []string
		for i := w; i < len(paths); i += benchWorkers {
			uris = append(uris, base+paths[i])
		}
		if len(uris) == 0 {
			break
		}
		f := filepath.Join(dir, fmt.Sprint(w))
		if err := os.WriteFile(f, []byte(strings.Join(uris, "\n")), 0o644); err != nil {
			return 0, 0, err
		}
		cmd := exec.Command("h2load", "--h1", "-c1", "-m1", "-n", fmt.Sprint(len(uris)), "-i", f)
		out := &bytes.Buffer{}
		cmd.Stdout, cmd.Stderr = out, out
		cmds, outs = append(cmds, cmd), append(outs, out)
	}
	start := time.Now()
	for _, c := range cmds {
		if err := c.Start(); err != nil {
			return 0, 0, err
		}
	}
	var total int64
	var firstErr error
	for i, c := range cmds {
		err := c.Wait()
		var reqs, started, done, ok int
		var body int64
		o := outs[i].String()
		if at := strings.Index(o, "requests: "); at >= 0 {
			fmt.Sscanf(o[at:], "requests: %d total, %d started, %d done, %d succeeded", &reqs, &started, &done, &ok)
		}
		if at := strings.Index(o, "traffic: "); at >= 0 {
			if j := strings.Index(o[at:], "data"); j >= 0 {
				k := strings.LastIndex(o[at:at+j], "(")
				fmt.Sscanf(o[at+k+1:], "%d)", &body)
			}
		}
		if (err != nil || ok != reqs || reqs == 0) && firstErr == nil {
			firstErr = fmt.Errorf("h2load: %v: %s", err, o)
		}
		total += body
	}
	return time.Since(start), total, firstErr
}

// BenchmarkHTTPVsNginx serves one 60 MB file and 10,000 per-machine iPXE scripts from this package
// and from nginx (the same bytes as static files), both inside one namespace, fetched by the same client
// from another namespace over veth: h2load (nghttp2's HTTP load generator, in C), so that the
// client's own work takes little of the two cores and the figures are the servers'. It reports throughput and the ratio ours/nginx (≥ 1 means
// we are at least as fast). The client is a separate process (this test binary, see TestMain).
// Runs are interleaved, each server going first every other round, and the best of each counts,
// so that a burst of load on the shared machine hits both servers. Our timelines' write to disk (done in the background every second) is done
// right after each of our script runs and the CPU time it takes added to the run's, so that it
// neither lands in nginx's next run nor escapes ours. Bounded: 5×10,000 scripts and 5×3 big downloads per server.
func BenchmarkHTTPVsNginx(b *testing.B) {
	l := newLab(b)
	ours := "http://" + l.serverIP + ":8080"
	theirs := "http://" + l.serverIP + ":8081"
	f := newFixtureLevel(b, slog.LevelInfo, ours, benchBigSize, true)
	l.serve(b, f.h, "8080")

	// nginx's document root: the very bytes we serve, as files.
	www := filepath.Join(f.dir, "www")
	paths := make([]string, benchMachines)
	for i := range paths {
		mac := fmt.Sprintf("52:54:01:%02x:%02x:%02x", i>>16, (i>>8)&0xff, i&0xff)
		paths[i] = "/boot/" + mac + ".ipxe"
		rec := httptest.NewRecorder()
		f.h.ServeHTTP(rec, httptest.NewRequest("GET", paths[i], nil))
		p := filepath.Join(www, paths[i])
		if i == 0 {
			_ = os.MkdirAll(filepath.Dir(p), 0o755)
		}
		if err := os.WriteFile(p, rec.Body.Bytes(), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	big := "/files/52:54:01:00:00:00/worker/vmlinuz"
	_ = os.MkdirAll(filepath.Join(www, filepath.Dir(big)), 0o755)
	if err := os.Link(filepath.Join(f.dir, "vmlinuz"), filepath.Join(www, big)); err != nil {
		b.Fatal(err)
	}
	nginxPID := startNginx(b, l.server, filepath.Join(f.dir, "nginx"), www, l.serverIP+":8081")
	c := nsClient(l.client)
	waitUp(b, c, ours+"/healthz")
	waitUp(b, c, theirs+paths[0])

	// Requested as iPXE requests them: it escapes ':' in a path.
	escape := strings.NewReplacer(":", "%3A").Replace
	smallFile, bigFile := filepath.Join(f.dir, "small.paths"), filepath.Join(f.dir, "big.paths")
	_ = os.WriteFile(smallFile, []byte(escape(strings.Join(paths, "\n"))), 0o644)
	_ = os.WriteFile(bigFile, []byte(escape(strings.Repeat(big+"\n", benchBigRounds))), 0o644)
	b.ResetTimer()
	var oursSmall, nginxSmall, oursBig, nginxBig, flushed time.Duration
	oursCPU, nginxCPU := time.Hour, time.Hour // the servers' CPU time in a script run, least of the runs
	for i := 0; i < b.N; i++ {
		oursSmall, nginxSmall, oursBig, nginxBig = time.Hour, time.Hour, time.Hour, time.Hour
		for round := 0; round < max(benchSmallRuns, benchBigRuns); round++ {
			oursFirst := round%2 == 1 // neither server always runs right after the other
			if round < benchSmallRuns {
				runOurs := func() {
					cpu0 := processCPU()
					d := runClient(b, l.client, ours, smallFile)
					cpu := processCPU()
					if err := f.store.Flush(); err != nil {
						b.Fatal(err)
					}
					w := processCPU() - cpu
					if d+w < oursSmall {
						oursSmall, flushed = d+w, w
					}
					oursCPU = min(oursCPU, processCPU()-cpu0)
				}
				if oursFirst {
					runOurs()
				}
				cpu0 := treeCPU(b, nginxPID)
				nginxSmall = min(nginxSmall, runClient(b, l.client, theirs, smallFile))
				nginxCPU = min(nginxCPU, treeCPU(b, nginxPID)-cpu0)
				if !oursFirst {
					runOurs()
				}
			}
			if round < benchBigRuns {
				if oursFirst {
					oursBig = min(oursBig, runClient(b, l.client, ours, bigFile))
				}
				nginxBig = min(nginxBig, runClient(b, l.client, theirs, bigFile))
				if !oursFirst {
					oursBig = min(oursBig, runClient(b, l.client, ours, bigFile))
				}
			}
		}
	}
	b.StopTimer()
	rps := func(d time.Duration) float64 { return float64(benchMachines) / d.Seconds() }
	mbps := func(d time.Duration) float64 { return float64(benchBigRounds*benchBigSize) / (1 << 20) / d.Seconds() }
	b.ReportMetric(rps(oursSmall), "ours-scripts/s")
	b.ReportMetric(rps(nginxSmall), "nginx-scripts/s")
	b.ReportMetric(rps(oursSmall)/rps(nginxSmall), "ratio-small")
	cpuPer := func(d time.Duration) float64 { return float64(d.Microseconds()) / benchMachines }
	b.ReportMetric(cpuPer(oursCPU), "ours-cpu-us/script")
	b.ReportMetric(cpuPer(nginxCPU), "nginx-cpu-us/script")
	b.ReportMetric(mbps(oursBig), "ours-MB/s")
	b.ReportMetric(mbps(nginxBig), "nginx-MB/s")
	b.ReportMetric(mbps(oursBig)/mbps(nginxBig), "ratio-big")
	b.Logf("10,000 scripts: ours %.0f/s (with %v CPU writing the timelines), nginx %.0f/s, ratio ours/nginx %.2f; 60 MB file: ours %.0f MB/s, nginx %.0f MB/s, ratio %.2f",
		rps(oursSmall), flushed.Round(time.Millisecond), rps(nginxSmall), rps(oursSmall)/rps(nginxSmall), mbps(oursBig), mbps(nginxBig), mbps(oursBig)/mbps(nginxBig))
	b.Logf("server CPU per script (user+system, least of the runs; the kernel's network work is partly in it): ours %.1f µs, nginx %.1f µs",
		cpuPer(oursCPU), cpuPer(nginxCPU))
}

// processCPU is the CPU time this process has used (user and system, all threads).
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// treeCPU is the CPU time pid and its children (nginx's workers) have used, from /proc.
func treeCPU(b *testing.B, pid int) time.Duration {
	b.Helper()
	pids := []int{pid}
	if kids, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid)); err == nil {
		for _, f := range strings.Fields(string(kids)) {
			var k int
			if _, err := fmt.Sscan(f, &k); err == nil {
				pids = append(pids, k)
			}
		}
	}
	var ticks int64
	for _, p := range pids {
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			b.Fatal(err)
		}
		// After "pid (comm) ": state is field 3; utime and stime are fields 14 and 15.
		f := strings.Fields(string(st[strings.LastIndexByte(string(st), ')')+2:]))
		var u, s int64
		if _, err := fmt.Sscan(f[11]+" "+f[12], &u, &s); err != nil {
			b.Fatal(err)
		}
		ticks += u + s
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ is 100 on Linux
}

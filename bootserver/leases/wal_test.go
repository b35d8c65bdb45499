package leases

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// quiet never checkpoints on its own: the log keeps everything until Close.
var quiet = tuning{logSize: 256 << 10, rotateRecords: 1 << 30, rotateBytes: 1 << 30, rotateAge: time.Hour}

func openTuned(t *testing.T, path string, cfg tuning) *Store {
	t.Helper()
	s, err := open(path, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// crashImage copies the store's files as they are now (what kill -9 would leave) into a new
// directory and returns the path of the database there. The caller makes sure nothing is writing.
func crashImage(t *testing.T, path string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "leases.db")
	logs := logPaths(path)
	for _, p := range append([]string{path}, logs[:]...) {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(filepath.Dir(dst), filepath.Base(p)), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// state is a store's content, for comparing.
func state(s *Store) string {
	var b bytes.Buffer
	for _, l := range s.All() {
		fmt.Fprintln(&b, l.String())
	}
	return b.String()
}

func lease(i int) Lease {
	return Lease{MAC: mac(i), IP: ip(i), Expiry: time.Unix(1700000000+int64(i), 0), Hostname: fmt.Sprint("h", i)}
}

// TestLogTail commits leases that stay in the log only, takes the crash image, damages the log the
// way a crash or a bad disk would, and checks what recovery keeps: every record before the damage,
// nothing from it on.
func TestLogTail(t *testing.T) {
	const n = 10
	path := filepath.Join(t.TempDir(), "leases.db")
	s := openTuned(t, path, quiet)
	defer s.Close()
	for i := 1; i <= n; i++ {
		if err := s.Commit(lease(i)); err != nil {
			t.Fatal(err)
		}
	}
	gen := s.gen
	logName := filepath.Base(logPaths(path)[gen%2])
	image := crashImage(t, path)
	content, err := os.ReadFile(filepath.Join(filepath.Dir(image), logName))
	if err != nil {
		t.Fatal(err)
	}
	// Record boundaries: offs[i] is where record i (0-based) starts, offs[n] where the log ends.
	offs := []int{logHeaderSize}
	for i := 1; i <= n; i++ {
		offs = append(offs, len(appendRecord(nil, gen, &op{put: ptr(lease(i)), mac: string(mac(i))}))+offs[i-1])
	}
	if ops, end, err := parseRecords(content, gen); err != nil || len(ops) != n || end != offs[n] {
		t.Fatalf("parseRecords: %d records ending at %d (%v), want %d ending at %d", len(ops), end, err, n, offs[n])
	}
	flip := func(at int) func([]byte) []byte {
		return func(b []byte) []byte { b[at] ^= 0x10; return b }
	}
	tests := []struct {
		name   string
		damage func([]byte) []byte
		want   int // leases 1..want survive
	}{
		{"intact", func(b []byte) []byte { return b }, n},
		{"cut inside the last payload", func(b []byte) []byte { return b[:offs[n]-3] }, n - 1},
		{"cut inside the last frame header", func(b []byte) []byte { return b[:offs[n-1]+5] }, n - 1},
		{"cut right after the header", func(b []byte) []byte { return b[:logHeaderSize] }, 0},
		{"bit flipped in the last payload", flip(offs[n] - 2), n - 1},
		{"bit flipped in the last CRC", flip(offs[n-1] + 5), n - 1},
		{"last length too large", flip(offs[n-1]), n - 1},
		{"bit flipped in record 4", flip(offs[3] + 9), 3},
		{"torn header", flip(10), 0},
		{"zero header", func(b []byte) []byte { clear(b[:20]); return b }, 0},
		{"stale records of an older generation after the tail", func(b []byte) []byte {
			stale := appendRecord(nil, gen-1, &op{put: ptr(lease(99)), mac: string(mac(99))})
			copy(b[offs[n]:], stale)
			return b
		}, n},
		{"garbage after the tail", func(b []byte) []byte {
			copy(b[offs[n]:], bytes.Repeat([]byte{0xa5}, 100))
			return b
		}, n},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img := crashImage(t, image)
			damaged := tt.damage(slices.Clone(content))
			if err := os.WriteFile(filepath.Join(filepath.Dir(img), logName), damaged, 0o600); err != nil {
				t.Fatal(err)
			}
			for pass := 0; pass < 2; pass++ { // the second open finds it all checkpointed
				r := openT(t, img)
				if got := len(r.All()); got != tt.want {
					t.Errorf("pass %d: %d leases, want %d", pass, got, tt.want)
				}
				for i := 1; i <= tt.want; i++ {
					if l, ok := r.Get(mac(i)); !ok || l.String() != lease(i).String() {
						t.Errorf("pass %d: lease %d = %v %v", pass, i, l, ok)
					}
				}
				if pass == 1 && r.replayed != 0 {
					t.Errorf("second open replayed %d records", r.replayed)
				}
				if err := r.Close(); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// TestCrashPoints takes crash images at the interesting points of the log's life while writers
// commit: just after a new generation started (two generations to replay) and just after a
// checkpoint committed, before its log file is reused (the checkpointed generation is still there and
// must not be replayed over newer state). Every image must open with every acknowledged write, and
// replaying the checkpointed generation anyway must change nothing.
func TestCrashPoints(t *testing.T) {
	for _, buffered := range []bool{false, true} {
		t.Run(map[bool]string{false: "direct", true: "buffered"}[buffered], func(t *testing.T) { crashPoints(t, buffered) })
	}
}

func crashPoints(t *testing.T, buffered bool) {
	path := filepath.Join(t.TempDir(), "leases.db")
	var mu sync.Mutex
	acked := map[int]int{} // key → last acknowledged version
	type image struct {
		point string
		path  string
		gen   uint64 // checkpointed generation, for "checkpointed"
		acked map[int]int
	}
	var images []image
	cfg := tuning{logSize: 64 << 10, rotateRecords: 40, rotateBytes: 1 << 20, rotateAge: time.Hour, buffered: buffered}
	cfg.hook = func(point string, gen uint64) {
		if point == "append" || len(images) >= 40 {
			return
		}
		mu.Lock()
		a := maps(acked)
		mu.Unlock()
		img := image{point: point, path: crashImage(t, path), acked: a}
		if point == "checkpointed" {
			img.gen = gen
		}
		images = append(images, img)
	}
	s := openTuned(t, path, cfg)
	// Writers own disjoint keys; version v of key k sits on one of two addresses, so later versions
	// move leases and evict nothing of other writers.
	const writers, keys, versions = 8, 25, 6
	version := func(k, v int) Lease {
		return Lease{MAC: mac(k), IP: ip(2*k + v%2), Expiry: time.Unix(int64(v), 0), Hostname: fmt.Sprint("v", v)}
	}
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for v := 1; v <= versions; v++ {
				for k := w * keys; k < (w+1)*keys; k++ {
					if err := s.Commit(version(k, v)); err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					acked[k] = v
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	replayed := 0
	for _, img := range images {
		count[img.point]++
		again := crashImage(t, img.path) // before the open below changes the image
		r := openT(t, img.path)
		replayed += r.replayed
		for k, v := range img.acked {
			got, ok := r.Get(mac(k))
			var gv int
			fmt.Sscanf(got.Hostname, "v%d", &gv)
			if !ok || gv < v || got.String() != version(k, gv).String() {
				t.Errorf("%s image: key %d = %v %v, acknowledged version %d", img.point, k, got, ok, v)
			}
		}
		want := state(r)
		r.Close()
		if img.point == "checkpointed" {
			// As if the checkpoint had not recorded its generation: the log replays it again.
			setApplied(t, again, img.gen-1)
			r := openT(t, again)
			if got := state(r); got != want {
				t.Errorf("replaying checkpointed generation %d changed the state:\n%s\nwant\n%s", img.gen, got, want)
			}
			if r.replayed == 0 && img.gen > 1 { // generation 1 is the one Open skips
				t.Errorf("generation %d was not replayed", img.gen)
			}
			r.Close()
		}
	}
	t.Logf("crash images: %v, %d records replayed in all", count, replayed)
	if count["rotated"] == 0 || count["checkpointed"] == 0 || replayed == 0 {
		t.Fatal("the test did not exercise the log")
	}
	r := openT(t, path)
	defer r.Close()
	if r.replayed != 0 || len(r.All()) != writers*keys {
		t.Errorf("after Close: %d records replayed, %d leases", r.replayed, len(r.All()))
	}
}

func maps(m map[int]int) map[int]int {
	c := make(map[int]int, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

func setApplied(t *testing.T, path string, gen uint64) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(metaBucket).Put(appliedKey, binary.BigEndian.AppendUint64(nil, gen))
	}); err != nil {
		t.Fatal(err)
	}
}

// TestReopenAfterCheckpoint: Close checkpoints, so reopening replays nothing; a lease file from before
// the log (no meta bucket, no log files) opens with its leases; a gap in the generations is refused.
func TestReopenAfterCheckpoint(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "leases.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket(bucketName)
		if err != nil {
			return err
		}
		return b.Put(mac(1), encode(lease(1)))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	for round := 2; round <= 4; round++ {
		s := openTuned(t, path, quiet)
		if s.replayed != 0 {
			t.Errorf("round %d: %d records replayed after a clean Close", round, s.replayed)
		}
		if n := len(s.All()); n != round-1 {
			t.Errorf("round %d: %d leases, want %d", round, n, round-1)
		}
		if err := s.Commit(lease(round)); err != nil {
			t.Fatal(err)
		}
		if err := s.Delete(net.HardwareAddr{}); err != nil {
			t.Errorf("Delete of an empty address: %v", err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	// The two log files hold generations gen-1 and gen. A checkpoint at gen-3 means generation gen-2
	// is lost: refuse to open rather than replay around the hole.
	s := openTuned(t, path, quiet)
	if err := s.Commit(lease(9)); err != nil {
		t.Fatal(err)
	}
	img := crashImage(t, path)
	gen := s.gen
	s.Close()
	setApplied(t, img, gen-3)
	if r, err := open(img, quiet); err == nil {
		r.Close()
		t.Error("Open accepted log generations with a hole before them")
	}
}

// FuzzParseRecords feeds arbitrary bytes to the log reader as the records of a generation: it must
// not panic, and what it accepts must encode back to exactly the bytes it read.
func FuzzParseRecords(f *testing.F) {
	var seed []byte
	for i := 1; i <= 3; i++ {
		seed = appendRecord(seed, 7, &op{put: ptr(lease(i)), mac: string(mac(i))})
	}
	seed = appendRecord(seed, 7, &op{mac: string(mac(2))})
	f.Add(seed, uint64(7))
	f.Add(seed[:len(seed)-1], uint64(7))
	f.Add(seed, uint64(8))
	f.Add([]byte{0, 0, 0, 1, 0, 0, 0, 0, 1}, uint64(1))
	f.Fuzz(func(t *testing.T, data []byte, gen uint64) {
		content := append(make([]byte, logHeaderSize), data...)
		copy(content, encodeHeader(gen))
		ops, end, err := parseRecords(content, gen)
		if end < logHeaderSize || end > len(content) {
			t.Fatalf("end %d out of range", end)
		}
		var again []byte
		for i := range ops {
			again = appendRecord(again, gen, &ops[i])
		}
		if !bytes.Equal(again, content[logHeaderSize:end]) {
			t.Fatalf("records do not re-encode to what was read (err %v)", err)
		}
	})
}

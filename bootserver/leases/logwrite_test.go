package leases

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// diskDir is a temporary directory on a file system that takes O_DIRECT: the test's own, or, when
// that is a tmpfs, one beside the package's sources (which live on a disk). It fails the test if
// neither does.
func diskDir(t testing.TB) string {
	t.Helper()
	for _, parent := range []string{"", "."} {
		var dir string
		if parent == "" {
			dir = t.TempDir()
		} else {
			d, err := os.MkdirTemp(parent, ".test-direct-")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(d) })
			dir = d
		}
		probe := filepath.Join(dir, "probe")
		if err := os.WriteFile(probe, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if f, err := openDirect(probe); err == nil {
			f.Close()
			os.Remove(probe)
			return dir
		}
	}
	t.Fatal("neither the temporary directory nor the package's own takes O_DIRECT: run the tests on a disk file system (ext4, xfs)")
	return ""
}

// TestWriteDurable appends runs of bytes of many sizes through both writers and checks after each
// that the file holds exactly what was appended, with the zeros it was preallocated with after it.
func TestWriteDurable(t *testing.T) {
	for _, buffered := range []bool{false, true} {
		name := map[bool]string{false: "direct", true: "buffered"}[buffered]
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(diskDir(t), "log")
			const size = 64 << 10
			lf, _, err := openLog(path, size, buffered)
			if err != nil {
				t.Fatal(err)
			}
			defer lf.close()
			if !buffered && lf.direct == nil {
				t.Fatalf("%s refuses O_DIRECT", filepath.Dir(path))
			}
			want := make([]byte, size)
			if err := lf.writeHeader(7); err != nil {
				t.Fatal(err)
			}
			copy(want, encodeHeader(7))
			off := int64(logHeaderSize)
			// Sizes that start, end and cross block boundaries, and one spanning several blocks.
			sizes := []int{1, 63, 4000, 31, 1, 4096, 4095, 8193, 2, 12000, 100}
			for i, n := range sizes {
				p := bytes.Repeat([]byte{byte(i + 1)}, n)
				if err := lf.writeDurable(p, off); err != nil {
					t.Fatalf("append %d (%d bytes at %d): %v", i, n, off, err)
				}
				copy(want[off:], p)
				off += int64(n)
				got, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, want) {
					at := 0
					for at < len(got) && at < len(want) && got[at] == want[at] {
						at++
					}
					t.Fatalf("after append %d the file differs at byte %d (len %d, want %d)", i, at, len(got), len(want))
				}
			}
			// A new generation starts at the header again; its first append is block aligned.
			if err := lf.writeHeader(8); err != nil {
				t.Fatal(err)
			}
			if err := lf.writeDurable([]byte("x"), logHeaderSize); err != nil {
				t.Fatal(err)
			}
			if !buffered {
				// An append that does not follow the previous one is a bug, refused rather than written.
				if err := lf.writeDurable([]byte("y"), logHeaderSize+5); err == nil {
					t.Error("an append leaving a gap was written")
				}
			}
		})
	}
}

// BenchmarkDurableWrite is the floor under a commit: one 64-byte append made durable on the file
// system of the test's temporary directory, by each writer, with nothing else around it. A commit
// at concurrency 1 (BenchmarkCommit) costs this plus the store's own work.
func BenchmarkDurableWrite(b *testing.B) {
	for _, buffered := range []bool{false, true} {
		b.Run(map[bool]string{false: "direct", true: "write+fdatasync"}[buffered], func(b *testing.B) {
			lf, _, err := openLog(filepath.Join(diskDir(b), "log"), 4<<20, buffered)
			if err != nil {
				b.Fatal(err)
			}
			defer lf.close()
			if !buffered && lf.direct == nil {
				b.Fatal("the directory refuses O_DIRECT")
			}
			rec := bytes.Repeat([]byte{1}, 64)
			n := max(b.N, 2000) // make bench's -benchtime 1x still measures a rate
			off := int64(logHeaderSize)
			b.ResetTimer()
			for i := 0; i < n; i++ {
				if off+64 > 4<<20 {
					off = logHeaderSize
				}
				if err := lf.writeDurable(rec, off); err != nil {
					b.Fatal(err)
				}
				off += 64
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(n), "µs/write")
		})
	}
}

// TestDirectIO: a store on a disk file system appends with O_DIRECT, one told not to does not.
func TestDirectIO(t *testing.T) {
	for _, buffered := range []bool{false, true} {
		cfg := quiet
		cfg.buffered = buffered
		s := openTuned(t, filepath.Join(diskDir(t), "leases.db"), cfg)
		if got := s.DirectIO(); got == buffered {
			t.Errorf("buffered %v: DirectIO() = %v", buffered, got)
		}
		if err := s.Commit(lease(1)); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

package status

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// BenchmarkFlush records a script phase for 10,000 machines and writes their timelines: what the
// background writer does after a burst of script requests.
func BenchmarkFlush(b *testing.B) {
	db := openDB(b, filepath.Join(b.TempDir(), "state.db"))
	defer db.Close()
	s, err := Open(db, Options{FlushInterval: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	macs := make([]hwaddr.MAC, 10000)
	for i := range macs {
		macs[i] = hwaddr.MAC{0x52, 0x54, 0x01, byte(i >> 16), byte(i >> 8), byte(i)}
	}
	id := &Identity{NodeName: "node", Profile: "worker", Known: true}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		now := time.Now()
		for _, mac := range macs {
			s.RecordAs(mac, id, ev(PhaseScript, "start", now, true), ev(PhaseScript, "done", now, false))
		}
		if err := s.Flush(); err != nil {
			b.Fatal(err)
		}
	}
}

package status

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Timelines on disk: a log in a bbolt bucket. Each write (a background flush, or RecordSync) puts
// the timelines it writes, whole, as records in one or more values under increasing 8-byte
// sequence keys; loading applies them in key order, so the last record of a machine wins. Once the
// log holds much more than the timelines themselves (or many small writes), a flush writes every
// timeline instead of the changed ones and deletes all older values in the same transaction
// (compaction). Compared with one key per machine this costs one Put per MiB instead of a B+tree
// update per machine: after a burst of 10,000 script requests the flush took about 30 ms of CPU
// that way, which the HTTP benchmark charges to our serving.
//
// A record: uvarint length of the MAC, the MAC, uint32 (big endian) length of the JSON, the
// timeline as JSON (Machine).
var (
	logBucket    = []byte("timeline-log-v1")
	legacyBucket = []byte("timelines") // one key per machine, as written before the log; read, then dropped
)

// logChunk bounds a log value (records never split), so a large flush does not need one huge run
// of contiguous pages.
const logChunk = 1 << 20

// compactEntries and compactSlack decide when a flush compacts: once the log has this many values,
// or holds compactSlack more bytes than four times its last compaction's. Tests lower them.
var (
	compactEntries = 4096
	compactSlack   = int64(8 << 20)
)

// logState is what the writer knows of the log; guarded by flushMu.
type logState struct {
	seq       uint64 // key of the last value
	entries   int    // values in the log
	bytes     int64  // their total size
	compacted int64  // size of the last compaction; at Open, of the live records (what one would write)
	legacy    bool   // the legacy bucket still holds timelines
}

func (l *logState) due() bool {
	return l.legacy || l.entries >= compactEntries || l.bytes > 4*l.compacted+compactSlack
}

// appendRecord appends m's log record to b.
func appendRecord(b []byte, mac string, m *Machine) ([]byte, error) {
	n := len(b)
	b = binary.AppendUvarint(b, uint64(len(mac)))
	b = append(b, mac...)
	b = append(b, 0, 0, 0, 0)
	at := len(b)
	b, err := marshalMachine(b, m)
	if err != nil {
		return b[:n], err
	}
	binary.BigEndian.PutUint32(b[at-4:], uint32(len(b)-at))
	return b, nil
}

// nextRecord splits the first record off v.
func nextRecord(v []byte) (mac string, js, rest []byte, err error) {
	l, n := binary.Uvarint(v)
	if n <= 0 || l > 64 || uint64(len(v)-n) < l+4 {
		return "", nil, nil, errors.New("short record")
	}
	mac = string(v[n : n+int(l)])
	v = v[n+int(l):]
	jl := binary.BigEndian.Uint32(v)
	if uint64(len(v)-4) < uint64(jl) {
		return "", nil, nil, errors.New("short record")
	}
	return mac, v[4 : 4+jl], v[4+jl:], nil
}

// load reads the legacy bucket, then the log, into s.m.
func (s *Store) load(tx *bolt.Tx) error {
	if b := tx.Bucket(legacyBucket); b != nil {
		err := b.ForEach(func(k, v []byte) error {
			var m Machine
			if err := json.Unmarshal(v, &m); err != nil {
				return fmt.Errorf("timeline of %s: %w", k, err)
			}
			s.m[string(k)] = &m
			return nil
		})
		if err != nil {
			return err
		}
		s.log.legacy = true
	}
	lb, err := tx.CreateBucketIfNotExists(logBucket)
	if err != nil {
		return err
	}
	live := make(map[string]int64) // size of each machine's last record
	c := lb.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if len(k) != 8 {
			return fmt.Errorf("timeline log key %x", k)
		}
		s.log.seq = binary.BigEndian.Uint64(k)
		s.log.entries++
		s.log.bytes += int64(len(v))
		for len(v) > 0 {
			mac, js, rest, err := nextRecord(v)
			if err != nil {
				return fmt.Errorf("timeline log value %d: %w", s.log.seq, err)
			}
			var m Machine
			if err := json.Unmarshal(js, &m); err != nil {
				return fmt.Errorf("timeline of %s: %w", mac, err)
			}
			s.m[mac] = &m
			live[mac] = int64(len(v) - len(rest))
			v = rest
		}
	}
	// The log does not say how large its last compaction was; what one would write now is the
	// live records, which is what due() needs to keep the log within bounds after a restart.
	for _, n := range live {
		s.log.compacted += n
	}
	return nil
}

// writeLog puts recs (whole records) into the log in tx; with compact, they are every timeline and
// replace everything written before. The returned state is s.log's once tx commits.
func (s *Store) writeLog(tx *bolt.Tx, recs []byte, compact bool) (logState, error) {
	st := s.log
	b := tx.Bucket(logBucket)
	first := st.seq + 1
	for len(recs) > 0 {
		end := 0
		for end < len(recs) && (end == 0 || end < logChunk) {
			_, _, rest, err := nextRecord(recs[end:])
			if err != nil {
				return st, err
			}
			end = len(recs) - len(rest)
		}
		st.seq++
		if err := b.Put(binary.BigEndian.AppendUint64(nil, st.seq), recs[:end]); err != nil {
			return st, err
		}
		st.entries++
		st.bytes += int64(end)
		recs = recs[end:]
	}
	if !compact {
		return st, nil
	}
	var old [][]byte
	c := b.Cursor()
	for k, _ := c.First(); k != nil && binary.BigEndian.Uint64(k) < first; k, _ = c.Next() {
		old = append(old, k)
	}
	for _, k := range old {
		if err := b.Delete(k); err != nil {
			return st, err
		}
	}
	if st.legacy {
		if err := tx.DeleteBucket(legacyBucket); err != nil && !errors.Is(err, bolt.ErrBucketNotFound) {
			return st, err
		}
		st.legacy = false
	}
	st.entries -= len(old)
	st.bytes = 0
	for k, v := c.First(); k != nil; k, v = c.Next() {
		st.bytes += int64(len(v))
	}
	st.compacted = st.bytes
	return st, nil
}

package leases

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"net"
	"os"
	"path/filepath"
)

// The write-ahead log (see the package documentation for why it exists).
//
// A log file is preallocated and zero-filled once, then reused generation after generation. Its first
// logHeaderSize bytes hold the header, written once per generation and never rewritten while that
// generation receives records:
//
//	magic [8]byte "PXJLLOG1" | generation uint64 | CRC32C of the preceding 16 bytes
//
// Records follow from offset logHeaderSize, back to back:
//
//	payload length uint32 | CRC32C(generation ‖ length ‖ payload) uint32 | payload
//
// and the payload is an op: kind byte (opPut or opDelete), hardware address length byte, hardware
// address, then for a put the lease value of encode. Integers are big endian. Because the CRC is seeded
// with the generation, records a previous generation left behind in the reused file fail their check:
// the log ends at the first record that is short, zero-length or fails its CRC.
const (
	logMagic      = "PXJLLOG1"
	logHeaderSize = 4096 // the header has a page of its own, so appends never rewrite it
	frameSize     = 8
	opPut         = 1
	opDelete      = 2
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errCorruptLog reports a record whose CRC holds but whose content does not decode: not a torn tail
// (that fails the CRC) but a bug or a format this version does not know. Open refuses it rather than
// drop whatever follows.
var errCorruptLog = errors.New("leases: log record passes its CRC but does not decode")

// logFile is one of the two log files.
type logFile struct {
	f    *os.File
	size int64 // bytes allocated (written zeros or records)

	// The direct writer (logwrite.go); nil: appends go through f and fdatasync.
	direct    *os.File
	tail      []byte // bytes of the last partly written block, which starts at tailStart
	tailStart int64
	scratch   []byte
}

func logPaths(db string) [2]string { return [2]string{db + "-wal0", db + "-wal1"} }

// openLog opens or creates the log file at path, grows it to at least size bytes of written zeros
// and returns it with its whole content. Appends go through a direct writer unless buffered is set
// or the file system refuses one.
func openLog(path string, size int64, buffered bool) (*logFile, []byte, error) {
	_, statErr := os.Stat(path)
	created := errors.Is(statErr, os.ErrNotExist)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, err
	}
	content, err := os.ReadFile(path)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	lf := &logFile{f: f, size: int64(len(content))}
	if lf.size < size {
		// Allocate and write the blocks now: later appends then overwrite written blocks in place, so
		// fdatasync flushes data only, with no block allocation or extent conversion to journal.
		preallocate(f, lf.size, size-lf.size)
		if _, err := f.WriteAt(make([]byte, size-lf.size), lf.size); err != nil {
			f.Close()
			return nil, nil, err
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return nil, nil, err
		}
		lf.size = size
		content = append(content, make([]byte, size-int64(len(content)))...)
	}
	if created {
		if err := syncDir(filepath.Dir(path)); err != nil {
			f.Close()
			return nil, nil, err
		}
	}
	if !buffered {
		lf.direct = openDirectLog(path)
	}
	return lf, content, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func encodeHeader(gen uint64) []byte {
	b := make([]byte, 0, 20)
	b = append(b, logMagic...)
	b = binary.BigEndian.AppendUint64(b, gen)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// parseHeader returns the generation of a log file's content, or false for a file without a valid
// header (new, or torn while a new generation was started: it then holds nothing acknowledged).
func parseHeader(b []byte) (uint64, bool) {
	if len(b) < 20 || string(b[:8]) != logMagic ||
		crc32.Checksum(b[:16], castagnoli) != binary.BigEndian.Uint32(b[16:20]) {
		return 0, false
	}
	gen := binary.BigEndian.Uint64(b[8:16])
	return gen, gen != 0
}

// appendRecord appends the framed record of o for generation gen to buf.
func appendRecord(buf []byte, gen uint64, o *op) []byte {
	start := len(buf)
	buf = append(buf, make([]byte, frameSize)...)
	if o.put != nil {
		buf = append(buf, opPut)
	} else {
		buf = append(buf, opDelete)
	}
	buf = append(buf, byte(len(o.mac)))
	buf = append(buf, o.mac...)
	if o.put != nil {
		buf = append(buf, encode(*o.put)...)
	}
	binary.BigEndian.PutUint32(buf[start:], uint32(len(buf)-start-frameSize))
	binary.BigEndian.PutUint32(buf[start+4:], recordCRC(gen, buf[start:start+4], buf[start+frameSize:]))
	return buf
}

func recordCRC(gen uint64, length, payload []byte) uint32 {
	var g [8]byte
	binary.BigEndian.PutUint64(g[:], gen)
	c := crc32.Update(0, castagnoli, g[:])
	c = crc32.Update(c, castagnoli, length)
	return crc32.Update(c, castagnoli, payload)
}

// parseRecords returns the ops recorded in content (a whole log file) for generation gen, in order,
// and the offset where the valid records end.
func parseRecords(content []byte, gen uint64) ([]op, int, error) {
	var ops []op
	off := logHeaderSize
	for off+frameSize <= len(content) {
		n := int(binary.BigEndian.Uint32(content[off:]))
		if n == 0 || n > len(content)-off-frameSize {
			break
		}
		payload := content[off+frameSize : off+frameSize+n]
		if recordCRC(gen, content[off:off+4], payload) != binary.BigEndian.Uint32(content[off+4:]) {
			break // torn or stale tail
		}
		o, err := decodeOp(payload)
		if err != nil {
			return ops, off, fmt.Errorf("%w at offset %d: %v", errCorruptLog, off, err)
		}
		ops = append(ops, o)
		off += frameSize + n
	}
	return ops, off, nil
}

func decodeOp(p []byte) (op, error) {
	if len(p) < 2 || len(p) < 2+int(p[1]) {
		return op{}, errors.New("short record")
	}
	key, val := p[2:2+int(p[1])], p[2+int(p[1]):]
	switch p[0] {
	case opPut:
		l, err := decode(key, val)
		if err != nil {
			return op{}, err
		}
		return op{put: &l, mac: string(l.MAC)}, nil
	case opDelete:
		if len(key) == 0 || len(key) > 16 || len(val) != 0 {
			return op{}, errors.New("bad delete record")
		}
		return op{mac: string(net.HardwareAddr(key))}, nil
	}
	return op{}, fmt.Errorf("unknown record kind %d", p[0])
}

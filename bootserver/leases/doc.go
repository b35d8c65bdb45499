// Package leases is the boot server's durable DHCPv4 lease store: an in-memory index for lookups, a
// write-ahead log that makes every write durable before it is acknowledged, and a bbolt file the log
// is checkpointed into. Writers that arrive together share one durable log append (group
// commit), so durability before the DHCP ACK leaves does not cost throughput.
//
// # Why a log
//
// A bbolt transaction syncs twice: its data pages, then its meta page (the order is what makes it
// atomic). Writing each group commit straight into bbolt therefore costs two device flushes on the
// path of every ACK, plus the page copying of a B+tree update. Appending the group's records to a
// preallocated, already written log file costs one flush, and that flush carries no file system
// metadata: the blocks exist and the size does not change. Where the file system allows it the
// append is one O_DIRECT|O_DSYNC write, elsewhere a write and an fdatasync (logwrite.go). The bbolt file
// becomes a checkpoint: every second, or every 16384 records or 1 MiB of log, the committer
// starts a new log generation and a background goroutine writes the state the old generation ended
// with into bbolt in one ordinary (twice synced) transaction, amortised over all its records.
//
// # Files
//
// Beside the bbolt file path are two log files, path-wal0 and path-wal1, preallocated and reused;
// generation g lives in file g%2. Each has a header holding its generation and records framed with a
// length and a CRC32C seeded with the generation (wal.go has the layout). bbolt holds, in the same
// transaction as the leases, the last generation it contains ("applied").
//
// # Crash consistency
//
// Invariants, from which recovery follows:
//
//  1. A write is acknowledged only after the log append holding it is durable (its O_DSYNC write or
//     its fdatasync returned; the header of its generation was made durable before it), and it
//     reaches the index only then. After a failed write or sync the store refuses further writes (the kernel may have
//     dropped the pages), so nothing acknowledged ever depends on a failed sync.
//  2. The bbolt file is only changed by synced transactions; each checkpoint is one transaction that
//     writes the state at the end of a generation and records that generation as applied. bbolt's
//     own two-sync commit makes each checkpoint all or nothing.
//  3. A log file is overwritten with a new generation only after the checkpoint of the generation it
//     held has committed. So every generation bbolt lacks is still intact in its file, and those
//     generations are consecutive.
//  4. Generation numbers are never reused, and a record only passes its CRC under the generation it
//     was written for: records a reused file still holds from an older generation end the log.
//
// Open loads bbolt, replays, in order, the log generations newer than applied, record by record up
// to the first one that is short, zero or fails its CRC (a torn tail: by 1 it holds nothing
// acknowledged), checkpoints the result, and starts a new generation. Crash points:
//
//   - during an append, or before it was durable: the tail is torn or missing; none of its
//     records was acknowledged; replay stops before it.
//   - after a rotation started generation g+1 (header written, perhaps not yet durable) and before the checkpoint of
//     g committed: bbolt has g-1; replay g, then g+1 if its header made it to disk. If the header did
//     not, the file shows its previous generation (g-1, applied, skipped) or a bad header (ignored),
//     and only unacknowledged records of g+1 are lost. Open starts the next generation at the highest
//     one seen plus two and records the skipped one as applied, so such left-over records can never
//     pass the CRC of a later generation (4).
//   - after the checkpoint of g committed, before its file is reused: bbolt has applied = g; the
//     still intact file of g is skipped, not replayed over newer state. Replaying it anyway would
//     be harmless: a sequence of puts (each evicting the address's other holder) and deletes applied
//     twice leaves the state it leaves once, which the tests check.
//   - during Open's own checkpoint: the same as a crash before it; Open repeats it.
//
// Close waits for writes in flight and checkpoints the active generation, so a store closed cleanly
// needs no replay (and an older version of this package, which knows no log, reads a complete file).
package leases

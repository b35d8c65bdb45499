package status

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"

	bolt "go.etcd.io/bbolt"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// On disk, each timeline is one key of a bbolt bucket: the MAC, and the Machine as JSON. The
// background writer puts every timeline changed since its last write in one transaction, in key order.
var bucket = []byte("timelines")

// load reads every timeline; unknown machines past the budget (the least recently seen) are evicted,
// to be deleted from disk by the first flush.
func (s *Store) load() error {
	var all []*entry
	err := s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucket)
		if err != nil {
			return err
		}
		return b.ForEach(func(k, v []byte) error {
			e := &entry{stored: true}
			if err := json.Unmarshal(v, &e.Machine); err != nil {
				return fmt.Errorf("timeline of %s: %w", k, err)
			}
			mac, err := hwaddr.Parse(string(k))
			if err != nil {
				return fmt.Errorf("timeline key: %w", err)
			}
			e.MAC = mac
			s.m[mac] = e
			all = append(all, e)
			return nil
		})
	})
	if err != nil {
		return err
	}
	// Oldest first, so that place leaves the most recently seen first in s.unknown.
	sort.Slice(all, func(i, j int) bool { return all[i].LastSeen.Before(all[j].LastSeen) })
	for _, e := range all {
		s.place(e)
	}
	return nil
}

// encode returns e's value on disk; the caller writes it. Called with s.mu held.
func (s *Store) encode(e *entry) ([]byte, error) {
	e.stored = true
	return json.Marshal(&e.Machine)
}

// write puts the values recs of macs (nil: none) and deletes the timelines of gone.
func write(tx *bolt.Tx, macs []hwaddr.MAC, recs [][]byte, gone []hwaddr.MAC) error {
	b := tx.Bucket(bucket)
	for _, mac := range gone {
		if err := b.Delete(key(mac)); err != nil {
			return err
		}
	}
	for i, mac := range macs {
		if recs[i] == nil {
			continue
		}
		if err := b.Put(key(mac), recs[i]); err != nil {
			return err
		}
	}
	return nil
}

// key is mac's key on disk: its canonical text, aa:bb:cc:dd:ee:ff.
func key(mac hwaddr.MAC) []byte { return []byte(mac.String()) }

// compareMACs orders MACs as their keys on disk sort.
func compareMACs(a, b hwaddr.MAC) int { return bytes.Compare(a[:], b[:]) }

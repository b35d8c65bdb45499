package leases

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// Lease binds an IPv4 address to a client's hardware address until Expiry.
type Lease struct {
	MAC      hwaddr.MAC
	IP       netip.Addr
	Expiry   time.Time
	Hostname string
}

// Active reports whether the lease has not yet expired at now.
func (l Lease) Active(now time.Time) bool { return now.Before(l.Expiry) }

// String is a one-line description for logs.
func (l Lease) String() string {
	return fmt.Sprintf("%s %s until %s %q", l.MAC, l.IP, l.Expiry.UTC().Format(time.RFC3339), l.Hostname)
}

// The on-disk record: version byte, 4-byte address, 8-byte expiry (Unix nanoseconds, big endian),
// then the hostname bytes. The key is the 6-byte MAC.
const recordVersion = 1

func encode(l Lease) []byte {
	b := make([]byte, 0, 13+len(l.Hostname))
	b = append(b, recordVersion)
	a4 := l.IP.As4()
	b = append(b, a4[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(l.Expiry.UnixNano()))
	return append(b, l.Hostname...)
}

func decode(key, val []byte) (Lease, error) {
	if len(val) < 13 || val[0] != recordVersion {
		return Lease{}, errors.New("leases: bad record")
	}
	if len(key) != len(hwaddr.MAC{}) {
		return Lease{}, errors.New("leases: bad key")
	}
	return Lease{
		MAC:      hwaddr.MAC(key),
		IP:       netip.AddrFrom4([4]byte(val[1:5])),
		Expiry:   time.Unix(0, int64(binary.BigEndian.Uint64(val[5:13]))),
		Hostname: string(val[13:]),
	}, nil
}

func (l Lease) validate() error {
	if l.MAC.IsZero() {
		return errors.New("leases: no MAC")
	}
	if !l.IP.Is4() {
		return fmt.Errorf("leases: %v is not an IPv4 address", l.IP)
	}
	return nil
}

package leases

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// Lease binds an IPv4 address to a client's hardware address until Expiry.
type Lease struct {
	MAC      net.HardwareAddr
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

func (l Lease) clone() Lease {
	l.MAC = append(net.HardwareAddr(nil), l.MAC...)
	return l
}

// The on-disk record: version byte, 4-byte address, 8-byte expiry (Unix nanoseconds, big endian),
// then the hostname bytes. The key is the hardware address.
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
	if len(key) == 0 || len(key) > 16 {
		return Lease{}, errors.New("leases: bad key")
	}
	return Lease{
		MAC:      append(net.HardwareAddr(nil), key...),
		IP:       netip.AddrFrom4([4]byte(val[1:5])),
		Expiry:   time.Unix(0, int64(binary.BigEndian.Uint64(val[5:13]))),
		Hostname: string(val[13:]),
	}, nil
}

func (l Lease) validate() error {
	if len(l.MAC) == 0 || len(l.MAC) > 16 {
		return fmt.Errorf("leases: hardware address %q has a bad length", l.MAC)
	}
	if !l.IP.Is4() {
		return fmt.Errorf("leases: %v is not an IPv4 address", l.IP)
	}
	return nil
}

// Package hwaddr is pxejoin's one MAC address type. A MAC is parsed once where it enters — a DHCP
// packet, a URL path, the configuration, the kernel command line — and travels as a comparable
// value from DHCP through HTTP, tokens and timelines; it is printed in one form, aa:bb:cc:dd:ee:ff.
package hwaddr

import (
	"fmt"
	"net"
)

// MAC is a 48-bit IEEE 802 MAC address. The zero value is 00:00:00:00:00:00, which no NIC has.
type MAC [6]byte

// Parse reads a 48-bit MAC in any form net.ParseMAC takes (aa:bb:cc:dd:ee:ff, aa-bb-…, aabb.ccdd.eeff,
// either case).
func Parse(s string) (MAC, error) {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return MAC{}, fmt.Errorf("%q is not a MAC address (want aa:bb:cc:dd:ee:ff)", s)
	}
	return MAC(hw), nil
}

// FromHardwareAddr converts a 6-byte hardware address (a DHCP packet's chaddr); ok is false for any
// other length.
func FromHardwareAddr(hw net.HardwareAddr) (m MAC, ok bool) {
	if len(hw) != 6 {
		return MAC{}, false
	}
	return MAC(hw), true
}

// String is the canonical form: aa:bb:cc:dd:ee:ff.
func (m MAC) String() string { return net.HardwareAddr(m[:]).String() }

// HardwareAddr is m as the net package's type (for DHCP replies and netlink).
func (m MAC) HardwareAddr() net.HardwareAddr { return net.HardwareAddr(m[:]) }

// IsZero reports the zero value.
func (m MAC) IsZero() bool { return m == MAC{} }

// Hex is m without separators (aabbccddeeff): the form of a Kubernetes label value.
func (m MAC) Hex() string { return fmt.Sprintf("%x", m[:]) }

// MarshalText implements encoding.TextMarshaler (JSON, YAML) with the canonical form.
func (m MAC) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with Parse.
func (m *MAC) UnmarshalText(b []byte) error {
	v, err := Parse(string(b))
	if err != nil {
		return err
	}
	*m = v
	return nil
}

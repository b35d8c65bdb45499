package dhcpd

import (
	"encoding/binary"
	"net"
	"net/netip"
	"strings"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

const (
	optPXEVendor   = 43 // vendor-specific information, PXE sub-options when option 60 is PXEClient
	optClientUUID  = 97
	pxeDiscoveryCt = 6 // PXE_DISCOVERY_CONTROL
	// pxeBootFileOnly is bit 3 of PXE_DISCOVERY_CONTROL: skip boot server discovery and download
	// the boot file named in the offer.
	pxeBootFileOnly = 8
	bootpHeaderLen  = 236
	maxFileField    = 127 // the BOOTP file field is 128 bytes, NUL-terminated
)

var magicCookie = [4]byte{99, 130, 83, 99}

// precheck drops what is not worth parsing; it returns the drop reason or "".
func precheck(b []byte) string {
	switch {
	case len(b) < bootpHeaderLen+4:
		return dropShort
	case b[0] != byte(dhcpv4.OpcodeBootRequest):
		return dropNotRequest
	case b[2] != 6: // a 48-bit MAC: Ethernet, the only link pxejoin boots over
		return dropBadHlen
	case [4]byte(b[bootpHeaderLen:bootpHeaderLen+4]) != magicCookie:
		return dropBadCookie
	}
	return ""
}

// factsOf gathers what the request tells about its client.
func factsOf(req *dhcpv4.DHCPv4, mac hwaddr.MAC, proxy bool) ClientFacts {
	f := ClientFacts{
		MAC:         mac,
		VendorClass: req.ClassIdentifier(),
		Relayed:     !isZero(req.GatewayIPAddr),
		Proxy:       proxy,
	}
	if a := req.Options.Get(dhcpv4.OptionClientSystemArchitectureType); len(a) >= 2 && len(a)%2 == 0 {
		f.Arch, f.HasArch = binary.BigEndian.Uint16(a), true
	}
	if uc := req.Options.Get(dhcpv4.OptionUserClassInformation); uc != nil {
		f.UserClass = userClasses(uc)
	}
	f.IPXE = req.Options.Has(dhcpv4.GenericOptionCode(optIPXEEncapsulated))
	// A client UUID is type 0 and 16 bytes (RFC 4578 2.2); anything else is not echoed.
	if u := req.Options.Get(dhcpv4.GenericOptionCode(optClientUUID)); len(u) == 17 && u[0] == 0 {
		f.UUID = u
	}
	return f
}

// userClasses reads option 77 both as RFC 3004 (length-prefixed items) and as the plain string
// iPXE and many firmwares send.
func userClasses(b []byte) []string {
	var out []string
	ok := true
	for rest := b; len(rest) > 0; {
		n := int(rest[0])
		if n == 0 || n+1 > len(rest) {
			ok = false
			break
		}
		out = append(out, string(rest[1:1+n]))
		rest = rest[1+n:]
	}
	if !ok {
		out = nil
	}
	return append(out, string(b))
}

// applyBoot writes boot information into a reply.
func applyBoot(r *dhcpv4.DHCPv4, b Boot, f ClientFacts) {
	if b.Empty() {
		return
	}
	if len(b.File) <= maxFileField {
		r.BootFileName = b.File
	}
	r.UpdateOption(dhcpv4.OptBootFileName(b.File))
	if b.TFTPServer.Is4() {
		r.ServerIPAddr = net.IP(b.TFTPServer.AsSlice())
		r.UpdateOption(dhcpv4.OptTFTPServerName(b.TFTPServer.String()))
	}
	if b.VendorClass != "" {
		r.UpdateOption(dhcpv4.OptClassIdentifier(b.VendorClass))
	}
	if b.IPXENoProxyDHCP {
		r.UpdateOption(dhcpv4.OptGeneric(dhcpv4.GenericOptionCode(optIPXEEncapsulated), []byte{optIPXENoPXEDHCPSubOpt, 1, 1}))
	}
	if f.UUID != nil && (f.IsPXE() || f.IsHTTP()) {
		r.UpdateOption(dhcpv4.OptGeneric(dhcpv4.GenericOptionCode(optClientUUID), f.UUID))
	}
	// A ProxyDHCP offer to a BIOS PXE ROM (or iPXE) tells it to skip boot server discovery and load
	// the file (as pixiecore does). UEFI gets no option 43: EDK2 then asks again on port 4011,
	// which proxy mode answers; some UEFI firmware ignores ProxyDHCP offers that carry it.
	if f.Proxy && f.IsPXE() && f.HasArch && f.Arch == ArchBIOS {
		r.UpdateOption(dhcpv4.OptGeneric(dhcpv4.GenericOptionCode(optPXEVendor), []byte{pxeDiscoveryCt, 1, pxeBootFileOnly, 255}))
	}
}

func isZero(ip net.IP) bool { return ip == nil || ip.To4() == nil || ip.To4().Equal(net.IPv4zero) }

func addrOf(ip net.IP) netip.Addr {
	if ip4 := ip.To4(); ip4 != nil {
		return netip.AddrFrom4([4]byte(ip4))
	}
	return netip.Addr{}
}

func ipOf(a netip.Addr) net.IP { return net.IP(a.AsSlice()) }

// cleanHostname keeps a client-sent hostname (option 12) if it is a plausible DNS label.
func cleanHostname(h string) string {
	if len(h) == 0 || len(h) > 63 {
		return ""
	}
	for _, c := range h {
		if !(c == '-' || c == '.' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return ""
		}
	}
	return strings.ToLower(h)
}

func msgName(t dhcpv4.MessageType) string {
	if t == dhcpv4.MessageTypeNone {
		return "none"
	}
	switch t {
	case dhcpv4.MessageTypeDiscover, dhcpv4.MessageTypeOffer, dhcpv4.MessageTypeRequest,
		dhcpv4.MessageTypeDecline, dhcpv4.MessageTypeAck, dhcpv4.MessageTypeNak,
		dhcpv4.MessageTypeRelease, dhcpv4.MessageTypeInform:
		return strings.ToLower(strings.TrimPrefix(t.String(), "DHCP"))
	}
	return "other"
}

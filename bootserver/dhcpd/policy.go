package dhcpd

import (
	"net/netip"
	"strings"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// Client architectures (option 93, RFC 4578 and the IANA registry) the default policy knows.
const (
	ArchBIOS               uint16 = 0
	ArchEFIIA32            uint16 = 6
	ArchEFIx64             uint16 = 7
	ArchEFIBC              uint16 = 9 // "EFI byte code", used by x64 firmware in the wild
	ArchEFIARM64           uint16 = 11
	ArchEFIx86HTTP         uint16 = 15
	ArchEFIx64HTTP         uint16 = 16
	ArchEFIARM64HTTP       uint16 = 19
	vendorPXEClient               = "PXEClient"
	vendorHTTPClient              = "HTTPClient"
	userClassIPXE                 = "iPXE"
	optIPXEEncapsulated           = 175
	optIPXENoPXEDHCPSubOpt        = 176
)

// ClientFacts is what a request says about the client.
type ClientFacts struct {
	MAC         hwaddr.MAC
	Arch        uint16 // option 93 (first entry); meaningful only if HasArch
	HasArch     bool
	VendorClass string   // option 60
	UserClass   []string // option 77
	IPXE        bool     // option 175 present (iPXE's own options)
	UUID        []byte   // option 97, as sent
	Relayed     bool     // giaddr set
	Proxy       bool     // the server runs in proxy mode
}

// IsIPXE reports an iPXE client: user class "iPXE" or option 175.
func (f ClientFacts) IsIPXE() bool {
	if f.IPXE {
		return true
	}
	for _, u := range f.UserClass {
		if u == userClassIPXE {
			return true
		}
	}
	return false
}

// IsPXE reports a firmware PXE client (option 60 starts with "PXEClient").
func (f ClientFacts) IsPXE() bool { return strings.HasPrefix(f.VendorClass, vendorPXEClient) }

// IsHTTP reports a UEFI HTTP-boot client (option 60 starts with "HTTPClient").
func (f ClientFacts) IsHTTP() bool { return strings.HasPrefix(f.VendorClass, vendorHTTPClient) }

// Boot is the boot information to put in a reply. The zero Boot means none.
type Boot struct {
	// File is the boot file: a TFTP file name or an http:// URL. It goes in the BOOTP file field
	// and in option 67.
	File string
	// TFTPServer, if valid, is siaddr and option 66 (as text).
	TFTPServer netip.Addr
	// VendorClass, if set, is sent as option 60 ("PXEClient" in proxy replies, "HTTPClient" to
	// UEFI HTTP boot, which takes no offer without it).
	VendorClass string
	// IPXENoProxyDHCP adds option 175 with sub-option 176 = 1, so iPXE does not wait ~3 s for
	// a ProxyDHCP offer.
	IPXENoProxyDHCP bool
	// Kind names the decision for events and logs: "ipxe-script", "http-boot", "pxe".
	Kind string
}

// Empty reports whether b carries no boot information.
func (b Boot) Empty() bool { return b.File == "" }

// BootPolicy decides the boot information for a client. It is called on the packet path and must be
// fast and safe for concurrent use.
type BootPolicy interface {
	Boot(ClientFacts) Boot
}

// BootPolicyFunc adapts a function to BootPolicy.
type BootPolicyFunc func(ClientFacts) Boot

// Boot calls f.
func (f BootPolicyFunc) Boot(c ClientFacts) Boot { return f(c) }

// DefaultPolicy is the usual chain: firmware PXE gets an iPXE binary over TFTP, UEFI HTTP boot gets
// it over HTTP, and iPXE itself gets the HTTP script URL (so it never chainloads itself again).
type DefaultPolicy struct {
	// TFTPServer is the TFTP server named in PXE replies.
	TFTPServer netip.Addr
	// HTTPBase is the boot server's HTTP root, e.g. "http://10.0.0.1:8080".
	HTTPBase string
	// ScriptPath is the iPXE script path under HTTPBase; "{mac}" becomes the client's hardware
	// address (aa:bb:cc:dd:ee:ff). Empty means "/boot/{mac}.ipxe".
	ScriptPath string
	// BinaryPath is the path of the iPXE binaries under HTTPBase for HTTP boot; "{file}" becomes
	// the file name. Empty means "/ipxe/{file}".
	BinaryPath string
	// Files maps option 93 architectures to the iPXE binary; entries replace the defaults
	// (0 undionly.kpxe, 6 ipxe-ia32.efi, 7 and 9 ipxe.efi, 11 ipxe-arm64.efi).
	Files map[uint16]string
	// UseSNPOnly serves snponly.efi instead of ipxe.efi to x64 UEFI (unless Files says otherwise).
	UseSNPOnly bool
	// Known, if set, is asked first: a machine it does not know gets no boot information (the
	// caller's inventory decides who boots).
	Known func(mac hwaddr.MAC) bool
}

var defaultFiles = map[uint16]string{
	ArchBIOS:     "undionly.kpxe",
	ArchEFIIA32:  "ipxe-ia32.efi",
	ArchEFIx64:   "ipxe.efi",
	ArchEFIBC:    "ipxe.efi",
	ArchEFIARM64: "ipxe-arm64.efi",
}

// httpArch maps HTTP-boot architectures to the PXE architecture whose binary they run.
var httpArch = map[uint16]uint16{
	ArchEFIx86HTTP:   ArchEFIIA32,
	ArchEFIx64HTTP:   ArchEFIx64,
	ArchEFIARM64HTTP: ArchEFIARM64,
}

// File returns the iPXE binary for a PXE architecture, or "" if there is none.
func (p DefaultPolicy) File(arch uint16) string {
	if f, ok := p.Files[arch]; ok {
		return f
	}
	if p.UseSNPOnly && (arch == ArchEFIx64 || arch == ArchEFIBC) {
		return "snponly.efi"
	}
	return defaultFiles[arch]
}

// ScriptURL is the iPXE script URL for mac.
func (p DefaultPolicy) ScriptURL(mac hwaddr.MAC) string {
	path := p.ScriptPath
	if path == "" {
		path = "/boot/{mac}.ipxe"
	}
	return p.HTTPBase + strings.ReplaceAll(path, "{mac}", mac.String())
}

func (p DefaultPolicy) binaryURL(file string) string {
	path := p.BinaryPath
	if path == "" {
		path = "/ipxe/{file}"
	}
	return p.HTTPBase + strings.ReplaceAll(path, "{file}", file)
}

// Boot implements BootPolicy; it is a pure function of p and c.
func (p DefaultPolicy) Boot(c ClientFacts) Boot {
	if p.Known != nil && !p.Known(c.MAC) {
		return Boot{}
	}
	switch {
	case c.IsIPXE():
		if p.HTTPBase == "" {
			return Boot{}
		}
		b := Boot{File: p.ScriptURL(c.MAC), IPXENoProxyDHCP: true, Kind: "ipxe-script"}
		if c.Proxy {
			b.VendorClass = vendorPXEClient // iPXE takes an offer with yiaddr 0 as ProxyDHCP only so
		}
		return b
	case c.IsHTTP():
		arch, ok := httpArch[c.Arch]
		if !c.HasArch || !ok || p.HTTPBase == "" {
			return Boot{}
		}
		f := p.File(arch)
		if f == "" {
			return Boot{}
		}
		return Boot{File: p.binaryURL(f), VendorClass: vendorHTTPClient, Kind: "http-boot"}
	case c.IsPXE():
		if !c.HasArch || !p.TFTPServer.IsValid() {
			return Boot{}
		}
		f := p.File(c.Arch)
		if f == "" {
			return Boot{}
		}
		b := Boot{File: f, TFTPServer: p.TFTPServer, Kind: "pxe"}
		if c.Proxy {
			// A ProxyDHCP offer must say PXEClient to be taken. A full offer must not: with option
			// 60 and no option 43, EDK2 treats it as a BINL offer and asks again on port 4011;
			// without it, it boots the file (as dnsmasq's dhcp-boot does).
			b.VendorClass = vendorPXEClient
		}
		return b
	}
	return Boot{}
}

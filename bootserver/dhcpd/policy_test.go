package dhcpd

import (
	"net/netip"
	"testing"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

func TestDefaultPolicy(t *testing.T) {
	mac := hwaddr.MAC{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	tftp := netip.MustParseAddr("10.78.0.1")
	base := DefaultPolicy{TFTPServer: tftp, HTTPBase: "http://10.78.0.1:8080"}
	pxe := func(arch uint16) ClientFacts {
		return ClientFacts{MAC: mac, Arch: arch, HasArch: true, VendorClass: "PXEClient:Arch:00000:UNDI:002001"}
	}
	tests := []struct {
		name   string
		policy DefaultPolicy
		facts  ClientFacts
		want   Boot
	}{
		{"BIOS PXE", base, pxe(0), Boot{File: "undionly.kpxe", TFTPServer: tftp, Kind: "pxe"}},
		{"UEFI x64 PXE", base, pxe(7), Boot{File: "ipxe.efi", TFTPServer: tftp, Kind: "pxe"}},
		{"UEFI x64 (EBC number) PXE", base, pxe(9), Boot{File: "ipxe.efi", TFTPServer: tftp, Kind: "pxe"}},
		{"UEFI arm64 PXE", base, pxe(11), Boot{File: "ipxe-arm64.efi", TFTPServer: tftp, Kind: "pxe"}},
		{"snponly configured", DefaultPolicy{TFTPServer: tftp, UseSNPOnly: true}, pxe(7), Boot{File: "snponly.efi", TFTPServer: tftp, Kind: "pxe"}},
		{"override map", DefaultPolicy{TFTPServer: tftp, Files: map[uint16]string{0: "custom.kpxe"}}, pxe(0), Boot{File: "custom.kpxe", TFTPServer: tftp, Kind: "pxe"}},
		{"unknown arch", base, pxe(42), Boot{}},
		{"PXE without arch", base, ClientFacts{MAC: mac, VendorClass: "PXEClient"}, Boot{}},
		{"PXE in proxy mode says PXEClient", base, func() ClientFacts { f := pxe(0); f.Proxy = true; return f }(),
			Boot{File: "undionly.kpxe", TFTPServer: tftp, VendorClass: "PXEClient", Kind: "pxe"}},
		{"iPXE by user class", base, ClientFacts{MAC: mac, Arch: 0, HasArch: true, VendorClass: "PXEClient:Arch:00000", UserClass: []string{"iPXE"}},
			Boot{File: "http://10.78.0.1:8080/boot/52:54:00:12:34:56.ipxe", IPXENoProxyDHCP: true, Kind: "ipxe-script"}},
		{"iPXE in proxy mode says PXEClient", base, ClientFacts{MAC: mac, UserClass: []string{"iPXE"}, Proxy: true},
			Boot{File: "http://10.78.0.1:8080/boot/52:54:00:12:34:56.ipxe", VendorClass: "PXEClient", IPXENoProxyDHCP: true, Kind: "ipxe-script"}},
		{"iPXE by option 175", base, ClientFacts{MAC: mac, Arch: 7, HasArch: true, VendorClass: "PXEClient:Arch:00007", IPXE: true},
			Boot{File: "http://10.78.0.1:8080/boot/52:54:00:12:34:56.ipxe", IPXENoProxyDHCP: true, Kind: "ipxe-script"}},
		{"iPXE custom script path", DefaultPolicy{HTTPBase: "http://h", ScriptPath: "/s?mac={mac}"}, ClientFacts{MAC: mac, IPXE: true},
			Boot{File: "http://h/s?mac=52:54:00:12:34:56", IPXENoProxyDHCP: true, Kind: "ipxe-script"}},
		{"UEFI HTTP boot x64", base, ClientFacts{MAC: mac, Arch: 16, HasArch: true, VendorClass: "HTTPClient:Arch:00016:UNDI:003001"},
			Boot{File: "http://10.78.0.1:8080/ipxe/ipxe.efi", VendorClass: "HTTPClient", Kind: "http-boot"}},
		{"UEFI HTTP boot arm64", base, ClientFacts{MAC: mac, Arch: 19, HasArch: true, VendorClass: "HTTPClient"},
			Boot{File: "http://10.78.0.1:8080/ipxe/ipxe-arm64.efi", VendorClass: "HTTPClient", Kind: "http-boot"}},
		{"HTTP boot without HTTP base", DefaultPolicy{TFTPServer: tftp}, ClientFacts{MAC: mac, Arch: 16, HasArch: true, VendorClass: "HTTPClient"}, Boot{}},
		{"plain DHCP client", base, ClientFacts{MAC: mac, VendorClass: "udhcp 1.35.0"}, Boot{}},
		{"unknown machine", DefaultPolicy{TFTPServer: tftp, HTTPBase: "http://h", Known: func(hwaddr.MAC) bool { return false }}, pxe(0), Boot{}},
		{"known machine", DefaultPolicy{TFTPServer: tftp, Known: func(m hwaddr.MAC) bool { return m == mac }}, pxe(0),
			Boot{File: "undionly.kpxe", TFTPServer: tftp, Kind: "pxe"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.policy.Boot(tt.facts)
			if got != tt.want {
				t.Errorf("Boot(%+v)\n got %+v\nwant %+v", tt.facts, got, tt.want)
			}
		})
	}
}

package tftpd

import (
	"bytes"
	"encoding/hex"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// ovmfRRQ is the request OVMF sends first (its tsize probe).
var ovmfRRQ = []byte("\x00\x01ipxe.efi\x00octet\x00tsize\x000\x00blksize\x001468\x00windowsize\x004\x00")

func TestParseRequest(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want request
		err  error
	}{
		{"ovmf", string(ovmfRRQ), request{opRRQ, "ipxe.efi", "octet",
			[]option{{"tsize", "0"}, {"blksize", "1468"}, {"windowsize", "4"}}}, nil},
		{"plain", "\x00\x01a/b\x00octet\x00", request{opRRQ, "a/b", "octet", nil}, nil},
		{"wrq", "\x00\x02x\x00octet\x00", request{opWRQ, "x", "octet", nil}, nil},
		{"case", "\x00\x01x\x00OCTET\x00BlkSize\x00600\x00", request{opRRQ, "x", "octet", []option{{"blksize", "600"}}}, nil},
		{"padding", "\x00\x01x\x00octet\x00blksize\x00600\x00\x00\x00\x00", request{opRRQ, "x", "octet", []option{{"blksize", "600"}}}, nil},
		{"repeated-keeps-first", "\x00\x01x\x00octet\x00blksize\x00600\x00blksize\x009000\x00",
			request{opRRQ, "x", "octet", []option{{"blksize", "600"}}}, nil},
		{"name-without-value", "\x00\x01x\x00octet\x00tsize\x00", request{opRRQ, "x", "octet", nil}, nil},
		{"short", "\x00", request{}, errShort},
		{"ack", "\x00\x04\x00\x01", request{}, errOpcode},
		{"no-terminator", "\x00\x01x\x00octet", request{}, errNoTerm},
		{"no-mode", "\x00\x01x\x00", request{}, errNoFilename},
		{"empty-name", "\x00\x01\x00octet\x00", request{}, errNoFilename},
		{"empty", "\x00\x01", request{}, errNoTerm},
		{"too-long", "\x00\x01" + string(bytes.Repeat([]byte{'a'}, maxRequest)) + "\x00octet\x00", request{}, errTooLong},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseRequest([]byte(tc.in))
			if err != tc.err {
				t.Fatalf("err %v, want %v", err, tc.err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestNegotiate(t *testing.T) {
	lim := limits{maxBlksize: 1468, maxWindow: 64}
	for _, tc := range []struct {
		name string
		opts []option
		want negotiation
	}{
		{"none", nil, negotiation{blksize: 512, windowsize: 1}},
		{"ovmf", []option{{"tsize", "0"}, {"blksize", "1468"}, {"windowsize", "4"}},
			negotiation{1468, 4, true, true, []option{{"tsize", "0"}, {"blksize", "1468"}, {"windowsize", "4"}}}},
		{"clamped", []option{{"blksize", "65464"}, {"windowsize", "65535"}},
			negotiation{1468, 64, true, false, []option{{"blksize", "1468"}, {"windowsize", "64"}}}},
		{"small-blksize", []option{{"blksize", "8"}}, negotiation{8, 1, false, false, []option{{"blksize", "8"}}}},
		{"invalid-ignored", []option{{"blksize", "7"}, {"windowsize", "0"}, {"tsize", "-1"}, {"timeout", "3"}, {"multicast", ""}},
			negotiation{blksize: 512, windowsize: 1}},
		{"blksize-too-big", []option{{"blksize", "65465"}}, negotiation{blksize: 512, windowsize: 1}},
		{"not-numbers", []option{{"blksize", "1e3"}, {"windowsize", "four"}, {"tsize", "x"}}, negotiation{blksize: 512, windowsize: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := negotiate(tc.opts, lim); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestValidName(t *testing.T) {
	for name, want := range map[string]bool{
		"ipxe.efi": true, "pxelinux.cfg/01-52-54-00-12-34-56": true, "a/b/c": true,
		"": false, ".": false, "..": false, "../x": false, "a/../b": false, "/etc/passwd": false, "a//b": false,
		"a/": false, "./a": false, `a\b`: false, "a\x01b": false, "a\x7fb": false, "\xff": false,
	} {
		if got := validName(name); got != want {
			t.Errorf("validName(%q) = %v", name, got)
		}
	}
}

// TestGoldenPackets pins the bytes of the packets the server sends. go test -run Golden -update
// rewrites them.
func TestGoldenPackets(t *testing.T) {
	req, err := parseRequest(ovmfRRQ)
	if err != nil {
		t.Fatal(err)
	}
	neg := negotiate(req.opts, limits{maxBlksize: 1468, maxWindow: 64})
	for _, tc := range []struct {
		file string
		pkt  []byte
	}{
		{"oack_tsize_blksize_windowsize.golden", appendOACK(nil, neg.oackWithSize(1048576))},
		{"data_block1.golden", append(appendDataHeader(nil, 1), "#!ipxe\n"...)},
		{"data_block_wrapped.golden", appendDataHeader(nil, wire(65536+7))},
		{"error_not_found.golden", appendError(nil, codeNotFound, "file not found")},
		{"error_access.golden", appendError(nil, codeAccess, "access violation")},
	} {
		t.Run(tc.file, func(t *testing.T) {
			path := filepath.Join("testdata", tc.file)
			got := hex.Dump(tc.pkt)
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("%s differs:\ngot:\n%swant:\n%s", path, got, want)
			}
		})
	}
}

func TestParseReply(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want reply
		ok   bool
	}{
		{"\x00\x04\x12\x34", reply{op: opACK, block: 0x1234}, true},
		{"\x00\x05\x00\x08abort\x00", reply{op: opERROR, code: 8, msg: "abort"}, true},
		{"\x00\x05\x00\x08no-nul", reply{op: opERROR, code: 8, msg: "no-nul"}, true},
		{"\x00\x04\x00", reply{}, false},
		{"\x00\x03\x00\x01data", reply{}, false},
	} {
		got, err := parseReply([]byte(tc.in))
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseReply(%q) = %+v, %v", tc.in, got, err)
		}
	}
}

// wire is the 16-bit number a 64-bit block index travels as.
func wire(k uint64) uint16 { return uint16(k) }

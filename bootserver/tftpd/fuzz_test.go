package tftpd

import (
	"bytes"
	"testing"
	"testing/fstest"
)

// FuzzRequest feeds arbitrary datagrams to the request loop's decision (parser, name checks,
// lookup, option negotiation, the RRQ rewritten for pin/tftp). The seeds run in every go test;
// go test -run '^$' -fuzz FuzzRequest ./bootserver/tftpd explores further.
func FuzzRequest(f *testing.F) {
	for _, s := range []string{
		string(ovmfRRQ),
		"\x00\x01ipxe.efi\x00octet\x00blksize\x001468\x00windowsize\x004\x00",
		"\x00\x01undionly.kpxe\x00octet\x00tsize\x000\x00blksize\x001432\x00",
		"\x00\x01dir/file\x00netascii\x00",
		"\x00\x01../../etc/passwd\x00octet\x00",
		"\x00\x01/etc/passwd\x00octet\x00",
		"\x00\x02new\x00octet\x00",
		"\x00\x01gen\x00OCTET\x00BLKSIZE\x0099999\x00windowsize\x000\x00\x00\x00",
		"\x00\x01missing\x00mail\x00",
		"\x00\x01x\x00octet\x00blksize\x008\x00",
		"\x00\x04\x00\x01",
		"\x00\x05\x00\x08x\x00",
		"\x00",
		"",
	} {
		f.Add([]byte(s))
	}
	fsys := fstest.MapFS{
		"ipxe.efi":      {Data: []byte("efi")},
		"undionly.kpxe": {Data: []byte("kpxe")},
		"dir/file":      {Data: []byte("f")},
		"x":             {Data: []byte("x")},
	}
	files := map[string]Opener{"gen": Bytes([]byte("generated"))}
	lim := limits{maxBlksize: 1468, maxWindow: 64}
	f.Fuzz(func(t *testing.T, p []byte) {
		d := decide(p, lim, fsys, files)
		if d.drop != "" || d.errKind != "" {
			if d.drop == "" && d.errCode > codeOptions {
				t.Fatalf("error code %d", d.errCode)
			}
			return
		}
		if d.req.op != opRRQ || !validName(d.req.filename) {
			t.Fatalf("accepted %+v", d.req)
		}
		if n := d.neg; n.blksize < minBlksize || n.blksize > lim.maxBlksize || n.windowsize < 1 || n.windowsize > lim.maxWindow {
			t.Fatalf("negotiated %+v", n)
		}
		if d.opener == nil {
			if _, err := fsys.Open(d.req.filename); err != nil {
				t.Fatalf("accepted a file that does not open: %v", err)
			}
		}
		if d.pinRRQ != nil {
			r, err := parseRequest(d.pinRRQ)
			if err != nil || r.filename != d.req.filename || len(d.pinRRQ) > 512 {
				t.Fatalf("RRQ for pin/tftp %q: %v", d.pinRRQ, err)
			}
		}
		// Whatever was accepted encodes and parses back to itself.
		again, err := parseRequest(appendRequest(nil, d.req))
		if err != nil || again.filename != d.req.filename || again.mode != d.req.mode || len(again.opts) != len(d.req.opts) {
			t.Fatalf("round trip %+v → %+v, %v", d.req, again, err)
		}
		oack := appendOACK(nil, d.neg.oackWithSize(123))
		if !bytes.HasPrefix(oack, []byte{0, byte(opOACK)}) {
			t.Fatalf("OACK %q", oack)
		}
	})
}

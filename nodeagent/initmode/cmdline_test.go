package initmode

import (
	"reflect"
	"testing"

	"github.com/pxejoin/pxejoin/internal/diskspec"
)

func TestParseCmdline(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		want    Cmdline
		wantErr bool
	}{
		{
			name: "ipxe line with BOOTIF",
			in:   "initrd=initrd console=ttyS0 BOOTIF=01-52-54-00-12-34-56 pxejoin.url=http://10.77.0.1:8080/join/52:54:00:12:34:56\n",
			want: Cmdline{MAC: mac("52:54:00:12:34:56"), JoinURL: "http://10.77.0.1:8080/join/52:54:00:12:34:56",
				StatusURL: "http://10.77.0.1:8080/status/52:54:00:12:34:56"},
		},
		{
			name: "pxejoin.mac wins over BOOTIF, explicit status and image",
			in: `BOOTIF=01-aa-aa-aa-aa-aa-aa pxejoin.mac=52-54-00-00-00-01 pxejoin.url=https://b/join/x ` +
				`pxejoin.status=http://b/s pxejoin.image=http://b/images/root.squashfs pxejoin.poweroff=1 pxejoin.modules=e1000,virtio_net`,
			want: Cmdline{MAC: mac("52:54:00:00:00:01"), JoinURL: "https://b/join/x", StatusURL: "http://b/s",
				ImageURL: "http://b/images/root.squashfs", PowerOff: true, Modules: []string{"e1000", "virtio_net"}},
		},
		{
			name: "quoted value",
			in:   `quiet pxejoin.url="http://h/join/a b" x`,
			want: Cmdline{JoinURL: "http://h/join/a b", StatusURL: "http://h/status/a b"},
		},
		{
			name: "no status derivable",
			in:   "pxejoin.url=http://h/cfg.yaml",
			want: Cmdline{JoinURL: "http://h/cfg.yaml"},
		},
		{
			name: "skip join",
			in:   "pxejoin.join=skip pxejoin.image=http://b/root.squashfs pxejoin.status=http://b/status/m",
			want: Cmdline{SkipJoin: true, ImageURL: "http://b/root.squashfs", StatusURL: "http://b/status/m"},
		},
		{
			name: "other boot servers",
			in:   "pxejoin.url=http://10.0.0.1:8080/join/m pxejoin.servers=http://10.0.0.2:8080,http://10.0.0.3:8080",
			want: Cmdline{JoinURL: "http://10.0.0.1:8080/join/m", StatusURL: "http://10.0.0.1:8080/status/m",
				Servers: []string{"http://10.0.0.2:8080", "http://10.0.0.3:8080"}},
		},
		{name: "bad server url", in: "pxejoin.url=http://h/join/x pxejoin.servers=http://b,10.0.0.3", wantErr: true},
		{
			name: "persistent disk",
			in: "pxejoin.url=http://h/join/x pxejoin.image=http://h/root.squashfs pxejoin.disk.minsize=20 pxejoin.disk=/dev/disk/by-id/virtio-state " +
				"pxejoin.disk.policy=wipe pxejoin.reimage=1 pxejoin.cahash=sha256:aa,sha256:bb",
			want: Cmdline{JoinURL: "http://h/join/x", StatusURL: "http://h/status/x", ImageURL: "http://h/root.squashfs",
				Disk:    &diskspec.Spec{Path: "/dev/disk/by-id/virtio-state", MinSizeGiB: 20, Policy: diskspec.PolicyWipe},
				Reimage: true, CAHashes: []string{"sha256:aa", "sha256:bb"}},
		},
		{
			name: "auto disk",
			in:   "pxejoin.url=http://h/join/x pxejoin.image=http://h/root.squashfs pxejoin.disk=auto pxejoin.disk.minsize=8",
			want: Cmdline{JoinURL: "http://h/join/x", StatusURL: "http://h/status/x", ImageURL: "http://h/root.squashfs",
				Disk: &diskspec.Spec{MinSizeGiB: 8}},
		},
		{name: "auto disk without a size", in: "pxejoin.url=http://h/join/x pxejoin.image=http://h/r pxejoin.disk=auto", wantErr: true},
		{name: "disk without image", in: "pxejoin.url=http://h/join/x pxejoin.disk=/dev/disk/by-id/virtio-state", wantErr: true},
		{name: "unstable disk name", in: "pxejoin.url=http://h/join/x pxejoin.image=http://h/r pxejoin.disk=/dev/sda", wantErr: true},
		{name: "bad disk size", in: "pxejoin.url=http://h/join/x pxejoin.image=http://h/r pxejoin.disk=auto pxejoin.disk.minsize=big", wantErr: true},
		{name: "skip join without image", in: "pxejoin.join=skip", wantErr: true},
		{name: "unknown join mode", in: "pxejoin.url=http://h/join/x pxejoin.join=later", wantErr: true},
		{name: "no url", in: "console=ttyS0 BOOTIF=01-52-54-00-12-34-56", wantErr: true},
		{name: "bad mac", in: "pxejoin.url=http://h/join/x pxejoin.mac=zz", wantErr: true},
		{name: "not http", in: "pxejoin.url=tftp://h/join/x", wantErr: true},
		{name: "bad image url", in: "pxejoin.url=http://h/join/x pxejoin.image=/root.sqfs", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseCmdline(tc.in)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("no error, got %+v", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestMirrors(t *testing.T) {
	c := Cmdline{JoinURL: "http://10.0.0.1:8080/join/m", Servers: []string{"http://10.0.0.2:8080", "http://10.0.0.3:8080/"}}
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"http://10.0.0.1:8080/files/m/w/root.squashfs", []string{"http://10.0.0.1:8080/files/m/w/root.squashfs",
			"http://10.0.0.2:8080/files/m/w/root.squashfs", "http://10.0.0.3:8080/files/m/w/root.squashfs"}},
		{"http://images.example/root.squashfs", []string{"http://images.example/root.squashfs"}}, // not on a boot server
		{"http://10.0.0.1:80800/x", []string{"http://10.0.0.1:80800/x"}},
	} {
		if got := c.Mirrors(tc.in); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Mirrors(%s) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

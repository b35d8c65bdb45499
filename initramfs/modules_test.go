package initramfs

import (
	"strings"
	"testing"
)

const sampleDep = `kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/net/ethernet/intel/e1000/e1000.ko: 
kernel/drivers/net/ethernet/intel/igb/igb.ko.xz: kernel/drivers/dca/dca.ko kernel/drivers/i2c/algos/i2c-algo-bit.ko
kernel/drivers/dca/dca.ko:
kernel/drivers/i2c/algos/i2c-algo-bit.ko:
kernel/a.ko: kernel/b.ko
kernel/b.ko: kernel/a.ko
kernel/broken.ko: kernel/missing.ko
`

func TestResolve(t *testing.T) {
	g, err := ParseModulesDep(strings.NewReader(sampleDep))
	if err != nil {
		t.Fatal(err)
	}
	builtin := map[string]bool{"ext4": true}
	for _, tc := range []struct {
		name    string
		mods    []string
		want    []string // load order
		wantErr string
	}{
		{"leaf", []string{"e1000"}, []string{"kernel/drivers/net/ethernet/intel/e1000/e1000.ko"}, ""},
		{"virtio", []string{"virtio_pci", "virtio_net"}, []string{
			"kernel/drivers/virtio/virtio_pci_modern_dev.ko",
			"kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
			"kernel/drivers/virtio/virtio_ring.ko",
			"kernel/drivers/virtio/virtio.ko",
			"kernel/drivers/virtio/virtio_pci.ko",
			"kernel/net/core/failover.ko",
			"kernel/drivers/net/net_failover.ko",
			"kernel/drivers/net/virtio_net.ko",
		}, ""},
		{"hyphen name and compressed file", []string{"i2c_algo_bit", "igb"}, []string{
			"kernel/drivers/i2c/algos/i2c-algo-bit.ko",
			"kernel/drivers/dca/dca.ko",
			"kernel/drivers/net/ethernet/intel/igb/igb.ko.xz",
		}, ""},
		{"duplicates once", []string{"e1000", "e1000"}, []string{"kernel/drivers/net/ethernet/intel/e1000/e1000.ko"}, ""},
		{"builtin skipped", []string{"ext4", "e1000"}, []string{"kernel/drivers/net/ethernet/intel/e1000/e1000.ko"}, ""},
		{"unknown", []string{"nosuch"}, nil, "neither in modules.dep nor built in"},
		{"cycle", []string{"a"}, nil, "dependency cycle"},
		{"missing dependency", []string{"broken"}, nil, "not in modules.dep"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := g.Resolve(tc.mods, builtin)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Fatalf("order:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

func TestSubsetNoTrailingSpace(t *testing.T) {
	g, err := ParseModulesDep(strings.NewReader(sampleDep))
	if err != nil {
		t.Fatal(err)
	}
	paths, err := g.Resolve([]string{"e1000", "virtio_net"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	sub := g.Subset(paths)
	want := `kernel/drivers/net/ethernet/intel/e1000/e1000.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/net/core/failover.ko:
`
	if sub != want {
		t.Fatalf("subset:\n%q\nwant:\n%q", sub, want)
	}
	// The subset parses back to the same closure.
	g2, err := ParseModulesDep(strings.NewReader(sub))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g2.Resolve([]string{"virtio_net", "e1000"}, nil); err != nil {
		t.Fatal(err)
	}
}

func TestModuleName(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/drivers/net/virtio_net.ko":   "virtio_net",
		"kernel/x/i2c-algo-bit.ko.zst":       "i2c_algo_bit",
		"virtio-net":                         "virtio_net",
		"kernel/fs/squashfs/squashfs.ko.xz":  "squashfs",
		"kernel/drivers/net/mlx5_core.ko.gz": "mlx5_core",
	} {
		if got := ModuleName(in); got != want {
			t.Errorf("ModuleName(%q) = %q, want %q", in, got, want)
		}
	}
}

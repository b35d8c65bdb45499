// Package labenv sets up the lab that the VM tests and `make lab` share: a network namespace with the
// boot bridge, reachable from the host through a veth pair and one host route (so that the control
// plane, bound to the bridge address inside the namespace, is reachable by the test process's
// client-go as well as by the VMs), and the node image built by images/build.sh.
package labenv

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
	"github.com/pxejoin/pxejoin/lab/netlab"
)

// Net is the lab network: NS holds Bridge with BridgeAddr/24; the host reaches BridgeAddr through the
// veth HostIf (route BridgeAddr/32 via the namespace's end).
type Net struct {
	NS         *netlab.NS
	Bridge     string
	BridgeAddr string // e.g. 10.77.123.1
	HostIf     string
	// Subnet is the third octet: the lab uses 10.77.<Subnet>.0/24 and 10.78.<Subnet>.0/30 for the veth.
	Subnet int
}

// NewNet creates the lab network. The subnet is chosen at random among those the host has no route for,
// so that several labs and tests can run side by side.
func NewNet(prefix string) (*Net, error) {
	ns, err := netlab.Create(prefix)
	if err != nil {
		return nil, err
	}
	n := &Net{NS: ns, Bridge: "br0"}
	if err := n.setup(); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

func (n *Net) setup() error {
	routes, _ := exec.Command("ip", "-4", "route", "show").Output()
	for i := 0; ; i++ {
		n.Subnet = 2 + rand.IntN(250)
		if !strings.Contains(string(routes), fmt.Sprintf("10.77.%d.", n.Subnet)) &&
			!strings.Contains(string(routes), fmt.Sprintf("10.78.%d.", n.Subnet)) {
			break
		}
		if i > 100 {
			return fmt.Errorf("labenv: no free 10.77.x.0/24 subnet")
		}
	}
	n.BridgeAddr = fmt.Sprintf("10.77.%d.1", n.Subnet)
	if _, err := n.NS.Exec("ip", "link", "add", n.Bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0"); err != nil {
		return err
	}
	if _, err := n.NS.Exec("ip", "addr", "add", n.BridgeAddr+"/24", "dev", n.Bridge); err != nil {
		return err
	}
	if _, err := n.NS.Exec("ip", "link", "set", n.Bridge, "up"); err != nil {
		return err
	}
	// The host end lives in the host's namespace (netlab's NS with an empty name is not a thing, so
	// create the pair here).
	n.HostIf = fmt.Sprintf("pxl%d", n.Subnet)
	nsIf := "uplink"
	hostAddr, nsAddr := fmt.Sprintf("10.78.%d.1", n.Subnet), fmt.Sprintf("10.78.%d.2", n.Subnet)
	for _, args := range [][]string{
		{"link", "add", n.HostIf, "type", "veth", "peer", "name", nsIf, "netns", n.NS.Name},
		{"addr", "add", hostAddr + "/30", "dev", n.HostIf},
		{"link", "set", n.HostIf, "up"},
		{"route", "add", n.BridgeAddr + "/32", "via", nsAddr, "dev", n.HostIf},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("labenv: ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	for _, args := range [][]string{
		{"ip", "addr", "add", nsAddr + "/30", "dev", nsIf},
		{"ip", "link", "set", nsIf, "up"},
	} {
		if _, err := n.NS.Exec(args[0], args[1:]...); err != nil {
			return err
		}
	}
	return nil
}

// Close removes the namespace (and with it the bridge, taps and the veth pair) and what runs in it.
func (n *Net) Close() {
	if n.HostIf != "" {
		_ = exec.Command("ip", "link", "del", n.HostIf).Run()
	}
	n.NS.Delete()
}

// MAC returns a locally administered MAC for VM number i of this lab.
func (n *Net) MAC(i int) hwaddr.MAC {
	return hwaddr.MAC{0x52, 0x54, 0x00, 0x77, byte(n.Subnet), byte(i)}
}

// Image is a built node image profile.
type Image struct {
	Dir, Kernel, Initrd, Root string
}

// BuildImage runs images/build.sh (cached by its inputs in /var/cache/pxejoin/images) with agent as the
// nodeagent binary and returns the image's files. repo is the repository's root.
func BuildImage(repo, agent string, logw *os.File) (*Image, error) {
	link, err := os.MkdirTemp("", "pxejoin-image-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(link)
	out := filepath.Join(link, "out")
	cmd := exec.Command(filepath.Join(repo, "images/build.sh"), out)
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "NODEAGENT="+agent)
	cmd.Stdout, cmd.Stderr = logw, logw
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("images/build.sh: %w", err)
	}
	dir, err := filepath.EvalSymlinks(out)
	if err != nil {
		return nil, err
	}
	return &Image{Dir: dir, Kernel: filepath.Join(dir, "vmlinuz"), Initrd: filepath.Join(dir, "initramfs.img"),
		Root: filepath.Join(dir, "root.squashfs")}, nil
}

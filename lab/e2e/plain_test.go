package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
	"github.com/pxejoin/pxejoin/lab/netlab"
)

// PlainPort is the plain file server's HTTP port.
const PlainPort = 8081

// Plain is the reference a boot is compared against: no pxejoin server at all, only Debian's dnsmasq
// (DHCP, TFTP of the iPXE binaries) and nginx serving static files: an iPXE script, the kernel, the
// initramfs, the root image and a join file made beforehand. Status reports get nginx's 204.
type Plain struct {
	NS      *netlab.NS
	Addr    string
	Bridge  string
	Dir     string
	Kernel  string
	Initrd  string
	Image   string
	MAC     hwaddr.MAC
	Join    []byte // the JoinConfiguration served to MAC
	Cmdline string // extra kernel arguments

	dnsmasq, nginx *exec.Cmd
}

func (p *Plain) base() string { return fmt.Sprintf("http://%s:%d", p.Addr, PlainPort) }

// Start writes the document root and starts dnsmasq and nginx inside the namespace.
func (p *Plain) Start() error {
	www := filepath.Join(p.Dir, "www")
	mac := p.MAC.String()
	if err := os.MkdirAll(filepath.Join(www, "join"), 0o755); err != nil {
		return err
	}
	// The same kernel command line the boot server's profile renders, pointing here.
	script := fmt.Sprintf("#!ipxe\nkernel %[1]s/vmlinuz initrd=initramfs.img console=ttyS0 pxejoin.mac=%[2]s "+
		"pxejoin.url=%[1]s/join/%[2]s pxejoin.status=%[1]s/status/%[2]s pxejoin.image=%[1]s/root.squashfs %[3]s\n"+
		"initrd %[1]s/initramfs.img\nboot\n", p.base(), mac, p.Cmdline)
	files := map[string][]byte{"boot.ipxe": []byte(script), filepath.Join("join", mac): p.Join}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(www, name), data, 0o644); err != nil {
			return err
		}
	}
	for name, src := range map[string]string{"vmlinuz": p.Kernel, "initramfs.img": p.Initrd, "root.squashfs": p.Image} {
		if err := os.Symlink(src, filepath.Join(www, name)); err != nil {
			return err
		}
	}
	var err error
	if p.dnsmasq, err = startDnsmasq(p.NS, p.Bridge, p.Addr, p.Dir, p.base()+"/boot.ipxe"); err != nil {
		return err
	}
	conf := fmt.Sprintf(`user root;
worker_processes 2;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  default_type application/octet-stream;
  client_body_temp_path %[1]s/nginx-tmp;
  server {
    listen %[2]s:%[3]d;
    root %[4]s;
    location /status/ { return 204; }
  }
}
`, p.Dir, p.Addr, PlainPort, www)
	cf := filepath.Join(p.Dir, "nginx.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
		return err
	}
	p.nginx = p.NS.Command("nginx", "-p", p.Dir, "-c", cf, "-e", filepath.Join(p.Dir, "nginx-error.log"))
	if err := p.nginx.Start(); err != nil {
		return fmt.Errorf("nginx (install nginx-light): %w", err)
	}
	for i := 0; i < 100; i++ {
		if p.NS.Do(func() error {
			c, err := net.DialTimeout("tcp", fmt.Sprintf("%s:%d", p.Addr, PlainPort), time.Second)
			if err == nil {
				c.Close()
			}
			return err
		}) == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("nginx does not listen on %s:%d; see %s", p.Addr, PlainPort, filepath.Join(p.Dir, "nginx-error.log"))
}

// Stop ends nginx (SIGTERM: the master stops its workers) and dnsmasq.
func (p *Plain) Stop() {
	for _, c := range []*exec.Cmd{p.nginx, p.dnsmasq} {
		if c != nil && c.Process != nil {
			_ = c.Process.Signal(syscall.SIGTERM)
			_ = c.Wait()
		}
	}
}

package initmode

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/pxejoin/pxejoin/internal/diskspec"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// Cmdline is what the agent reads from the kernel command line (/proc/cmdline).
type Cmdline struct {
	// MAC is the boot interface: pxejoin.mac=aa:bb:… or BOOTIF=01-aa-bb-… (as iPXE's ${netX/mac} and
	// pxelinux's IPAPPEND 2 pass it). Zero means "the first interface that gets a DHCP lease".
	MAC hwaddr.MAC
	// JoinURL (pxejoin.url=) serves this machine's JoinConfiguration.
	JoinURL string
	// StatusURL (pxejoin.status=) receives bootstatus events. Default: JoinURL with its last "/join/"
	// replaced by "/status/" (the boot server's layout), or none.
	StatusURL string
	// ImageURL (pxejoin.image=) is the node's root image (squashfs). Empty: join into the initramfs's own
	// root and do not switch root (a test or rescue mode).
	ImageURL string
	// PowerOff (pxejoin.poweroff=1) powers the machine off when there is nothing to switch to (no image),
	// instead of idling; VM tests use it to end quickly.
	PowerOff bool
	// Modules (pxejoin.modules=a,b) restricts the modules loaded to these names (default: all the
	// initramfs carries).
	Modules []string
	// SkipJoin (pxejoin.join=skip) boots the root image without joining: the machine joins later from
	// inside the image (`nodeagent join` with kubeadm's flags, by hand, from a unit or from systemd.run=,
	// as on an installed machine). It needs pxejoin.image= and no pxejoin.url=.
	SkipJoin bool
	// Disk is a persistent node's disk (pxejoin.disk=, pxejoin.disk.minsize=, pxejoin.disk.policy=;
	// see internal/diskspec); nil: the node is diskless.
	Disk *diskspec.Spec
	// Reimage (pxejoin.reimage=1) wipes the disk and joins fresh.
	Reimage bool
	// CAHashes (pxejoin.cahash=sha256:<hex>,…) are the cluster CA's pins: credentials on the disk
	// resume only when their CA matches one.
	CAHashes []string
	// Servers (pxejoin.servers=URL,URL) are the other boot servers of the segment: a request to
	// the boot server of JoinURL that gets no answer at all (it died) is tried on each of them
	// with the same path (Mirrors).
	Servers []string
}

// Mirrors returns u, then u on each of Servers when u is on JoinURL's server.
func (c Cmdline) Mirrors(u string) []string {
	out := []string{u}
	j, err := url.Parse(c.JoinURL)
	if err != nil || j.Host == "" {
		return out
	}
	base := j.Scheme + "://" + j.Host
	rest, ok := strings.CutPrefix(u, base+"/")
	if !ok {
		return out
	}
	for _, s := range c.Servers {
		out = append(out, strings.TrimSuffix(s, "/")+"/"+rest)
	}
	return out
}

// ParseCmdline parses a kernel command line. Unknown parameters are ignored; values may be double-quoted.
func ParseCmdline(s string) (Cmdline, error) {
	var c Cmdline
	var disk diskspec.Spec
	for _, f := range splitCmdline(s) {
		k, v, _ := strings.Cut(f, "=")
		if ok, err := disk.Set(k, v); ok {
			if err != nil {
				return c, fmt.Errorf("kernel command line: %w", err)
			}
			if k == diskspec.KeyDisk {
				c.Disk = &disk
			}
			continue
		}
		var err error
		switch k {
		case diskspec.KeyReimage:
			c.Reimage = v == "1" || v == "true" || v == "yes"
		case diskspec.KeyCAHash:
			c.CAHashes = strings.FieldsFunc(v, func(r rune) bool { return r == ',' })
		case "BOOTIF":
			// pxelinux/iPXE form: ARP hardware type "01-" then the MAC with dashes.
			if !c.MAC.IsZero() { // pxejoin.mac wins
				continue
			}
			c.MAC, err = hwaddr.Parse(strings.TrimPrefix(strings.ToLower(v), "01-"))
		case "pxejoin.mac":
			c.MAC, err = hwaddr.Parse(v)
		case "pxejoin.url":
			c.JoinURL, err = checkURL(v)
		case "pxejoin.status":
			c.StatusURL, err = checkURL(v)
		case "pxejoin.image":
			c.ImageURL, err = checkURL(v)
		case "pxejoin.servers":
			for _, v := range strings.Split(v, ",") {
				var u string
				if u, err = checkURL(v); err != nil {
					break
				}
				c.Servers = append(c.Servers, u)
			}
		case "pxejoin.poweroff":
			c.PowerOff = v == "" || v == "1" || v == "true" || v == "yes"
		case "pxejoin.modules":
			c.Modules = strings.FieldsFunc(v, func(r rune) bool { return r == ',' })
		case "pxejoin.join":
			switch v {
			case "skip":
				c.SkipJoin = true
			case "", "yes", "1":
			default:
				err = fmt.Errorf("%q is not a join mode: use pxejoin.join=skip to boot the image without joining, or leave it out", v)
			}
		}
		if err != nil {
			return c, fmt.Errorf("kernel command line %s: %w", k, err)
		}
	}
	if c.Disk != nil {
		if err := c.Disk.Validate(); err != nil {
			return c, fmt.Errorf("kernel command line %s: %w", diskspec.KeyDisk, err)
		}
		if c.ImageURL == "" {
			return c, fmt.Errorf("kernel command line has %s= but no pxejoin.image=: a persistent node keeps its root image's state on the disk; give the profile an image", diskspec.KeyDisk)
		}
	}
	if c.SkipJoin {
		if c.ImageURL == "" {
			return c, fmt.Errorf("kernel command line has pxejoin.join=skip but no pxejoin.image=: there is nothing to boot")
		}
		return c, nil
	}
	if c.JoinURL == "" {
		return c, fmt.Errorf("kernel command line has no pxejoin.url= (the join file URL); add it, or pxejoin.join=skip with pxejoin.image= to boot without joining")
	}
	if c.StatusURL == "" {
		if i := strings.LastIndex(c.JoinURL, "/join/"); i >= 0 {
			c.StatusURL = c.JoinURL[:i] + "/status/" + c.JoinURL[i+len("/join/"):]
		}
	}
	return c, nil
}

func checkURL(v string) (string, error) {
	u, err := url.Parse(v)
	if err != nil {
		return "", err
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("%q is not an http(s) URL", v)
	}
	return v, nil
}

// splitCmdline splits on spaces outside double quotes and removes the quotes.
func splitCmdline(s string) []string {
	var out []string
	var b strings.Builder
	inQuote, have := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			have = true
		case (r == ' ' || r == '\t' || r == '\n') && !inQuote:
			if have {
				out = append(out, b.String())
				b.Reset()
				have = false
			}
		default:
			b.WriteRune(r)
			have = true
		}
	}
	if have {
		out = append(out, b.String())
	}
	return out
}

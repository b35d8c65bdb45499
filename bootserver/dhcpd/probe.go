package dhcpd

import (
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

// ICMPProber asks whether an address is in use on the link with an ICMP echo request
// (Config.Probe). It needs a raw socket (root or CAP_NET_RAW), opened in the network namespace
// the server serves. A host that drops echo requests looks free: probing is the last of the
// safeguards (a client's DECLINE after its own ARP check is the next).
type ICMPProber struct {
	conn    *icmp.PacketConn
	id      int
	timeout time.Duration

	mu      sync.Mutex
	seq     uint16
	waiting map[uint16]waiter
}

type waiter struct {
	ip    netip.Addr
	reply chan struct{}
}

// NewICMPProber opens the raw ICMP socket; a probe waits up to timeout for the answer.
func NewICMPProber(timeout time.Duration) (*ICMPProber, error) {
	c, err := icmp.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		return nil, err
	}
	p := &ICMPProber{conn: c, id: os.Getpid() & 0xffff, timeout: timeout, waiting: map[uint16]waiter{}}
	go p.read()
	return p, nil
}

// Close closes the socket.
func (p *ICMPProber) Close() error { return p.conn.Close() }

// InUse sends one echo request to ip and reports whether the answer came within the timeout.
func (p *ICMPProber) InUse(ip netip.Addr) bool {
	p.mu.Lock()
	p.seq++
	seq := p.seq
	w := waiter{ip: ip, reply: make(chan struct{})}
	p.waiting[seq] = w
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.waiting, seq)
		p.mu.Unlock()
	}()
	msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: p.id, Seq: int(seq), Data: []byte("pxejoin probe")}}
	b, err := msg.Marshal(nil)
	if err != nil {
		return false
	}
	if _, err := p.conn.WriteTo(b, &net.IPAddr{IP: ip.AsSlice()}); err != nil {
		return false
	}
	select {
	case <-w.reply:
		return true
	case <-time.After(p.timeout):
		return false
	}
}

func (p *ICMPProber) read() {
	buf := make([]byte, 1500)
	for {
		n, from, err := p.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		m, err := icmp.ParseMessage(1, buf[:n])
		if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
			continue
		}
		e, ok := m.Body.(*icmp.Echo)
		a, ok2 := from.(*net.IPAddr)
		if !ok || !ok2 || e.ID != p.id {
			continue
		}
		src, _ := netip.AddrFromSlice(a.IP.To4())
		p.mu.Lock()
		if w, ok := p.waiting[uint16(e.Seq)]; ok && w.ip == src {
			delete(p.waiting, uint16(e.Seq))
			close(w.reply)
		}
		p.mu.Unlock()
	}
}

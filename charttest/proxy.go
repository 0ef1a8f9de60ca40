package charttest

import (
	"net"
	"sync"
	"testing"
)

// Proxy is a TCP proxy in front of a server, whose connections a test
// cuts: with a reset, or as a blackhole (bytes dropped, no FIN or RST,
// new connections refused), as a tunnel or a sleeping laptop would.
type Proxy struct {
	t       testing.TB
	ln      net.Listener
	target  string
	mu      sync.Mutex
	conns   []net.Conn
	blocked bool
	wg      sync.WaitGroup
}

// NewProxy listens on a free loopback port and forwards to target
// (host:port); the test's cleanup closes it.
func NewProxy(t testing.TB, target string) *Proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{t: t, ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.Reset()
		p.wg.Wait()
	})
	return p
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		blocked := p.blocked
		p.mu.Unlock()
		if blocked {
			c.Close() // refused
			continue
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(c, s)
		go p.pipe(s, c)
	}
}

// pipe copies from a to b; in a blackhole it reads and drops. When a
// ends, b is closed too (unless in a blackhole, which passes nothing).
func (p *Proxy) pipe(a, b net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := a.Read(buf)
		p.mu.Lock()
		blocked := p.blocked
		p.mu.Unlock()
		if err != nil {
			if !blocked {
				b.Close()
			}
			return
		}
		if !blocked {
			b.Write(buf[:n])
		}
	}
}

// Reset closes every proxied connection with an RST.
func (p *Proxy) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}
	p.conns = nil
}

// Blackhole drops every byte and refuses new connections until Restore.
func (p *Proxy) Blackhole() {
	p.mu.Lock()
	p.blocked = true
	p.mu.Unlock()
}

// Restore ends a blackhole; the connections cut by it stay dead (closed
// here, as the client's side would time out).
func (p *Proxy) Restore() {
	p.Reset()
	p.mu.Lock()
	p.blocked = false
	p.mu.Unlock()
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

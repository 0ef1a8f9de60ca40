//go:build linux

package chart

import (
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"
)

// The poller: on Linux a connection over a plain socket waits for its
// client's next frame in an epoll set shared by many connections, instead
// of in a goroutine of its own with its buffers (read.go, readPolled). A
// few pollers (one per core, at most 8), each an epoll set that one
// goroutine waits on (in Go's own netpoller, as on a socket), only start
// the reader goroutine of each readable connection; the reader does the
// work, and gives the connection back when it has read all that came. A
// poller's goroutine runs only while it has connections.
//
// Registrations are edge-triggered (EPOLLET): made once, never re-armed
// (a system call per message saved), and an event comes for each arrival
// of bytes. One reader at a time reads a connection: the poller starts a
// reader only if it takes the connection's idle flag, which the reader
// sets again when it is done; an event that finds a reader at work sets
// the connection's ready flag instead, and the reader, once idle, looks
// whether the socket has more (park, in read.go) when that flag is set or
// its last read filled its buffer (bytes may be left in the socket, whose
// event came before), and reads on if so.

const pollEvents = syscall.EPOLLIN | syscall.EPOLLRDHUP | 1<<31 // 1<<31: EPOLLET, which package syscall declares negative

type poller struct {
	once sync.Once
	epfd int             // -1: epoll is not available
	rc   syscall.RawConn // epfd as a file in Go's own poller, which the loop waits on
	file *os.File        // keeps epfd open
	wake [2]int          // a pipe whose read end, key 0, tells the loop to check whether it has connections left

	mu      sync.Mutex
	conns   map[uint32]*Conn
	next    uint32
	running bool
}

var (
	pollersOnce sync.Once
	pollers     []poller
)

// pollerOf returns the poller of connection c, started if need be; nil
// when epoll is not available.
func pollerOf(c *Conn) *poller {
	pollersOnce.Do(func() { pollers = make([]poller, min(max(runtime.GOMAXPROCS(0), 1), 8)) })
	p := &pollers[c.id%uint64(len(pollers))]
	p.once.Do(p.init)
	if p.epfd < 0 {
		return nil
	}
	return p
}

func (p *poller) init() {
	p.epfd = -1
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return
	}
	if err := syscall.Pipe2(p.wake[:], syscall.O_NONBLOCK|syscall.O_CLOEXEC); err != nil {
		syscall.Close(epfd)
		return
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN}
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, p.wake[0], &ev); err != nil {
		syscall.Close(epfd)
		syscall.Close(p.wake[0])
		syscall.Close(p.wake[1])
		return
	}
	// The loop waits for the epoll set to be readable in Go's own poller,
	// as any socket does, rather than in epoll_wait holding a thread (and
	// its P, until the runtime takes it back).
	if syscall.SetNonblock(epfd, true) == nil {
		p.file = os.NewFile(uintptr(epfd), "chart-epoll")
		if rc, err := p.file.SyscallConn(); err == nil {
			p.rc = rc
		} else {
			p.file.Close() // closes epfd
			p.file, epfd = nil, -1
		}
	}
	if p.rc == nil {
		if epfd >= 0 {
			syscall.Close(epfd)
		}
		syscall.Close(p.wake[0])
		syscall.Close(p.wake[1])
		return
	}
	p.conns = make(map[uint32]*Conn)
	p.epfd = epfd
}

// pollable reports whether nc can wait in a poller: a plain TCP or Unix
// socket, whose readability is the client's (not a TLS connection, which
// buffers records itself).
func pollable(nc net.Conn) bool {
	switch nc.(type) {
	case *net.TCPConn, *net.UnixConn:
		return true
	}
	return false
}

// pollAdd puts a connection, idle, into its poller; on an error the caller
// still holds it (it was not made idle).
func pollAdd(c *Conn) error {
	p := pollerOf(c)
	if p == nil {
		return syscall.ENOSYS
	}
	p.mu.Lock()
	for p.next++; p.next == 0 || p.conns[p.next] != nil; p.next++ {
	}
	key := p.next
	p.conns[key] = c
	if !p.running {
		p.running = true
		go p.loop()
	}
	p.mu.Unlock()
	c.pollKey = key
	c.idle.Store(true)
	if err := p.ctl(c, key, syscall.EPOLL_CTL_ADD); err != nil {
		if c.idle.CompareAndSwap(true, false) {
			p.remove(c)
			return err
		}
		// Taken meanwhile (the socket was closed): the taker reads on.
	}
	return nil
}

// pollReadable reports whether a polled connection's socket has bytes to
// read, its end of stream, or an error; false only when a read would wait.
func pollReadable(c *Conn) bool {
	sc, ok := c.nc.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	wait := false
	err = rc.Control(func(fd uintptr) {
		var b [1]byte
		_, _, rerr := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		wait = rerr == syscall.EAGAIN
	})
	return err != nil || !wait
}

// pollRemove takes a connection out of its poller; its reader calls it as
// the connection ends, before closing the socket.
func pollRemove(c *Conn) {
	if c.pollKey == 0 {
		return
	}
	p := pollerOf(c)
	p.ctl(c, c.pollKey, syscall.EPOLL_CTL_DEL) // fails harmlessly once the socket is closed: closing removed it
	p.remove(c)
}

func (p *poller) remove(c *Conn) {
	p.mu.Lock()
	delete(p.conns, c.pollKey)
	last := len(p.conns) == 0 && p.running
	p.mu.Unlock()
	c.pollKey = 0
	if last {
		syscall.Write(p.wake[1], []byte{0}) // the loop exits
	}
}

// ctl applies an epoll operation to c's socket, registered as key, while
// the socket is open.
func (p *poller) ctl(c *Conn, key uint32, op int) error {
	sc, ok := c.nc.(syscall.Conn)
	if !ok {
		return syscall.EINVAL
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var cerr error
	err = rc.Control(func(fd uintptr) {
		ev := syscall.EpollEvent{Events: pollEvents, Fd: int32(key)}
		cerr = syscall.EpollCtl(p.epfd, op, int(fd), &ev)
	})
	if err != nil {
		return err
	}
	return cerr
}

// loop waits for readable connections and starts their readers, until the
// poller has no connection left.
func (p *poller) loop() {
	var events [128]syscall.EpollEvent
	var drain [64]byte
	var n int
	// Made once: a func literal passed to Read escapes, and would be
	// allocated at every wait.
	wait := func(fd uintptr) bool {
		var err error
		n, err = syscall.EpollWait(int(fd), events[:], 0)
		return n > 0 || err != nil && err != syscall.EINTR && err != syscall.EAGAIN
	}
	for {
		n = 0
		err := p.rc.Read(wait)
		if err != nil {
			// Go's poller cannot wait for the epoll set (it was not
			// registered): wait in the system call.
			n, _ = syscall.EpollWait(p.epfd, events[:], -1)
		}
		for _, ev := range events[:max(n, 0)] {
			key := uint32(ev.Fd)
			if key == 0 {
				for {
					if n, _ := syscall.Read(p.wake[0], drain[:]); n <= 0 {
						break
					}
				}
				p.mu.Lock()
				if len(p.conns) == 0 {
					p.running = false
					p.mu.Unlock()
					return
				}
				p.mu.Unlock()
				continue
			}
			p.mu.Lock()
			c := p.conns[key]
			p.mu.Unlock()
			if c == nil {
				continue
			}
			// Set before taking idle: a reader that sets idle after this
			// failed to take it finds ready set, and reads on (park).
			c.ready.Store(true)
			if c.idle.CompareAndSwap(true, false) {
				if ev.Events&(syscall.EPOLLRDHUP|syscall.EPOLLHUP|syscall.EPOLLERR) == 0 {
					c.ready.Store(false) // this reader reads what came
				} // else it must read on to the end of the stream, which a read that drained the data does not see
				go c.readFn()
			}
		}
	}
}

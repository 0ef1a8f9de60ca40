package chart

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// Conn is one WebSocket connection of a uid. Optional Handler interfaces
// (ConnectHandler, DisconnectHandler, MessageFilter) receive it; its
// methods are safe for concurrent use.
//
// A Conn has a reader goroutine (read.go) while it reads: on Linux, over
// a plain socket, only while the client's frames are being read, the
// connection waiting for them in a shared poller meanwhile
// (poll_linux.go); elsewhere for as long as it lives. It has a writer
// goroutine (write.go) only while it has something to send; the writer is
// the only code that writes to the socket.
type Conn struct {
	hub     *Hub
	id      uint64
	uid     uint64
	meta    any
	handler Handler
	user    *user
	ws      *websocket.Conn // gorilla's reader reads; nil: the connection is polled
	nc      net.Conn
	ip      string // the client's IP, kept while MaxConnsPerIP counts it
	proto   string // the subprotocol of a polled connection without chart.v1
	v1      bool   // the client speaks chart.v1 (recovery.go)

	// A polled connection's: idle is set while it waits in the poller with
	// no reader, and whoever takes it (CompareAndSwap) becomes its reader;
	// deadline (unix nanoseconds) is when a read gives up, which its
	// timer, due at armedAt (under mu), enforces while no reader reads.
	idle     atomic.Bool
	ready    atomic.Bool // an event came while a reader was at work (poll_linux.go)
	pollKey  uint32      // its key in the poller; the reader's
	deadline atomic.Int64
	armedAt  int64
	timer    *time.Timer

	// The read goroutine's own state.
	refused     int   // rate-limited messages in a row
	reportedAt  int64 // unix nanoseconds of the last refusal reported (sampleReport)
	msgDeadline int64 // unix nanoseconds: while a message is read, when it must be complete
	reports     uint8 // refusals reported, up to reportBurst

	// state is connOpen, connClosing or connDead. It changes under mu and
	// is read without it by the read goroutine.
	state atomic.Int32

	mu         sync.Mutex
	queue      *sendQueue // frames waiting for the writer; nil when empty
	qbytes     int
	bufs       net.Buffers        // the writer's current batch
	wdl        int64              // the writer's: the socket's write deadline it set last (unix ns)
	writing    bool               // a writer goroutine runs
	closeFrame []byte             // the close frame the writer sends after the queue; nil once sent
	hangUp     bool               // drop the socket right after the close frame
	hold       []held             // message frames waiting until the connection recovered; nil after
	replayed   map[topic]uint64   // the offset recovery replayed each stream to: later deliveries up to it are doubles
	acked      map[topic]position // what this connection acknowledged (the reader's): a repeated ack is not stored again
	helloTimer *time.Timer        // chart.v1: recovery without positions if no hello comes
	recovering atomic.Bool        // recovery began: only the first call runs (recovery.go)
	reason     error              // why the connection ended, once known
	expiry     *time.Timer        // SetExpiry
	registered bool               // register ran; before it, an expiry in the past refuses
	expired    bool               // SetExpiry in the past before registration
	writer     sync.WaitGroup
	// writeLoop as a func value, made once: starting the writer with it
	// allocates nothing, where go c.writeLoop() allocates a closure each
	// time (a writer starts for each delivery to an idle connection).
	writeFn func()
	// readPolled as a func value, made once as the connection starts
	// polled, for the same reason: a reader starts for each message.
	readFn func()
}

const (
	connOpen    int32 = iota
	connClosing       // a close began: nothing more is queued; the writer sends closeFrame after the queue
	connDead          // the socket is closed or broken: nothing more is written
)

// ID returns the connection's id, unique on this node.
func (c *Conn) ID() uint64 { return c.id }

// Uid returns the uid the connection belongs to.
func (c *Conn) Uid() uint64 { return c.uid }

// Meta returns what Config.Authenticate returned for the connection's
// request (nil for connections made with NewServer).
func (c *Conn) Meta() any { return c.meta }

// RemoteAddr returns the network address of the client, or of the proxy in
// front of it.
func (c *Conn) RemoteAddr() net.Addr { return c.nc.RemoteAddr() }

// Subprotocol returns the WebSocket subprotocol negotiated for the
// connection (Config.Subprotocols), or "".
func (c *Conn) Subprotocol() string {
	if c.ws == nil {
		if c.v1 {
			return ProtocolV1
		}
		return c.proto
	}
	return c.ws.Subprotocol()
}

// Close closes the connection with CloseDisconnected (4001) and reason as
// the close frame's text, after the messages already queued: clients do not
// reconnect. DisconnectServer sees ErrDisconnected.
func (c *Conn) Close(reason string) {
	c.close(newError(ErrDisconnected, c.uid, "", nil), CloseDisconnected, reason, closeFlush)
}

// Disconnect closes every connection of uid, on every node, with
// CloseDisconnected (4001) and reason as the close frame's text, after the
// messages already queued: a ban, a password change, "log out everywhere".
// Clients do not reconnect by themselves; to keep a uid out, refuse it in
// Config.Authenticate or ConnectServer as well. LogoutServer runs once,
// when its last connection has closed. It returns ErrUserOffline when uid
// has no connection anywhere.
func (h *Hub) Disconnect(uid uint64, reason string) error {
	if h.closed.Load() {
		return newError(ErrHubClosed, uid, "", nil)
	}
	online := h.disconnectLocal(uid, reason)
	if !online {
		var err error
		if online, err = h.presence.IsOnline(uid); err != nil {
			return h.presenceError(uid, "", err)
		}
	}
	if !online {
		return newError(ErrUserOffline, uid, "", nil)
	}
	if err := h.peers.kick(uid, reason); err != nil {
		return h.presenceError(uid, "", err)
	}
	return nil
}

// disconnectLocal closes uid's connections on this node; false when it has
// none.
func (h *Hub) disconnectLocal(uid uint64, reason string) bool {
	u := h.lookupUser(uid)
	if u == nil {
		return false
	}
	for _, c := range u.connList() {
		c.Close(reason)
	}
	return true
}

// SetExpiry sets when the connection's credentials expire: at t it is
// closed with CloseExpired (4002), and the client reconnects with fresh
// credentials. Call it again to move the expiry (after validating a fresh
// token), or with the zero time to remove it. From ConnectServer, a time
// already past refuses the connection with CloseExpired before it
// registers: no LoginServer runs for it.
func (c *Conn) SetExpiry(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.expiry != nil {
		c.expiry.Stop()
	}
	if t.IsZero() || c.state.Load() != connOpen {
		c.expiry = nil
		return
	}
	if !c.registered && !t.After(time.Now()) {
		c.expiry, c.expired = nil, true // ConnectServer: refused before it registers
		return
	}
	c.expiry = time.AfterFunc(time.Until(t), func() {
		c.close(newError(ErrExpired, c.uid, "", nil), CloseExpired, "credentials expired", closeFlush)
	})
}

// How a server-side close treats what is queued and the socket.
const (
	closeFlush  = 1 << iota // send the queued messages before the close frame
	closeHangUp             // drop the socket right after the close frame
)

// closeLocked begins a server-side close: no more messages are accepted,
// the writer sends a close frame (after the queued messages with
// closeFlush) and the read goroutine waits CloseGrace for the client's
// answer, or with closeHangUp the socket is dropped at once.
func (c *Conn) closeLocked(reason error, code int, text string, how int) {
	if c.state.Load() != connOpen {
		return
	}
	c.state.Store(connClosing)
	c.reason = reason
	if how&closeFlush == 0 && c.queue != nil {
		c.discardLocked()
		c.queue.reset()
		c.qbytes = 0
	}
	c.hangUp = how&closeHangUp != 0
	c.closeFrame = closeFrame(code, text)
	c.startWriterLocked()
}

func (c *Conn) close(reason error, code int, text string, how int) {
	c.mu.Lock()
	c.closeLocked(reason, code, text, how)
	c.mu.Unlock()
}

// abort stops all writing and closes the network connection; the read
// goroutine then ends and cleans up.
func (c *Conn) abort() {
	c.mu.Lock()
	c.state.Store(connDead)
	c.writing = false
	c.discardLocked()
	c.queue, c.qbytes, c.closeFrame = nil, 0, nil
	c.mu.Unlock()
	c.nc.Close()
	c.wake() // a polled connection's socket closed: no poller tells
}

// setReason records why the connection ends, unless that is known already.
func (c *Conn) setReason(err error) {
	c.mu.Lock()
	if c.reason == nil {
		c.reason = err
	}
	c.mu.Unlock()
}

// teardown runs on the read goroutine when the connection ends: it lets the
// writer finish a clean close, closes the socket, unregisters the
// connection and runs the callbacks that follow.
func (c *Conn) teardown(readErr error) {
	var ce *websocket.CloseError
	clean := errors.As(readErr, &ce) && ce.Code != websocket.CloseAbnormalClosure // 1006: the stream ended without a close frame
	c.mu.Lock()
	if clean && c.state.Load() == connOpen {
		// The client closed first: answer with its status code.
		code := ce.Code
		if code == closeNoStatus {
			code = closeNormal
		}
		c.closeLocked(newError(ErrClientClosed, c.uid, "", nil), code, "", closeFlush)
	}
	if !clean {
		c.state.Store(connDead)
	}
	if c.expiry != nil {
		c.expiry.Stop()
	}
	if c.helloTimer != nil {
		c.helloTimer.Stop()
	}
	reason := c.reason
	c.mu.Unlock()
	if clean {
		c.writer.Wait() // bounded by WriteWait
	}
	pollRemove(c)
	c.nc.Close()
	c.mu.Lock()
	c.state.Store(connDead)
	if c.timer != nil {
		c.timer.Stop() // and armTimer arms it no more
	}
	c.mu.Unlock()
	c.writer.Wait()

	fromReader := reason == nil
	switch {
	case reason == nil && errors.Is(readErr, websocket.ErrReadLimit):
		// A frame announced more than MaxMessageSize: gorilla refused it
		// at its header and answered with 1009 itself.
		c.hub.countRefusal(ErrMessageTooLarge)
		reason = &Error{Kind: ErrMessageTooLarge, Uid: c.uid}
	case reason == nil:
		reason = &Error{Kind: ErrConnection, Uid: c.uid, Err: readErr}
	}
	c.hub.countDisconnect(reason, fromReader)
	if !expectedEnd(reason) {
		c.hub.report(c.handler, reason)
	}
	if c.hub.unregister(c, reason) {
		c.hub.drainEvents(c.uid)
	}
}

var expectedEnds = []error{ErrClientClosed, ErrHubClosed, ErrDisconnected, ErrExpired, ErrReplaced}

// expectedEnd reports whether a connection ended as connections do (the
// client or the application closed it), so that it is not reported as an
// error.
func expectedEnd(reason error) bool {
	for _, kind := range expectedEnds {
		if errors.Is(reason, kind) {
			return true
		}
	}
	return false
}

package chart

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/time/rate"
)

// WebSocket close codes the server sends.
const (
	closeNormal        = websocket.CloseNormalClosure
	closeGoingAway     = websocket.CloseGoingAway
	closePolicy        = websocket.ClosePolicyViolation
	closeTooBig        = websocket.CloseMessageTooBig
	closeNoStatus      = websocket.CloseNoStatusReceived
	maxCloseReasonSize = 123
)

var pingFrame = frame(opPing, nil)

// noBuffers is a websocket.BufferPool that never holds a buffer. The hub
// writes frames itself, so gorilla's write buffer is never needed and an
// idle connection keeps none.
type noBuffers struct{}

func (noBuffers) Get() any  { return nil }
func (noBuffers) Put(x any) {}

// NewServer upgrades the request to a WebSocket for uid and registers the
// connection. It returns as soon as the connection is registered and its
// read goroutine runs, which lets net/http free the request's buffers; the
// connection lives on until the client leaves or the hub shuts down.
//
// The first connection of a uid triggers h.LoginServer; the last one to
// close triggers h.LogoutServer. A nil h is allowed and ignores every event.
//
// Refusals are answered over HTTP and reported to h.ErrorLogServer: 400 for
// uid 0 (ErrInvalidUid), 403 for a foreign Origin (ErrOriginNotAllowed), 503
// after Shutdown (ErrHubClosed), and gorilla's answer when the request is
// not a valid WebSocket upgrade (ErrUpgrade).
func (h *Hub) NewServer(w http.ResponseWriter, r *http.Request, uid uint64, handler Handler) {
	if handler == nil {
		handler = nopHandler{}
	} else if h.cfg.Handler == nil {
		h.lastHandler.Store(&handlerRef{handler})
	}
	switch {
	case h.closed.Load():
		http.Error(w, "chart: server shutting down", http.StatusServiceUnavailable)
		h.reportTo(handler, newError(ErrHubClosed, uid, "", nil))
		return
	case uid == 0:
		http.Error(w, "chart: invalid uid", http.StatusBadRequest)
		h.reportTo(handler, newError(ErrInvalidUid, 0, "", nil))
		return
	case !h.checkOrigin(r):
		http.Error(w, "chart: origin not allowed", http.StatusForbidden)
		h.reportTo(handler, &Error{Kind: ErrOriginNotAllowed, Uid: uid, Err: errors.New(strings.Join(r.Header["Origin"], ", "))})
		return
	}
	ws, err := h.upgrader.Upgrade(w, r, nil)
	if err != nil {
		// gorilla has answered the request with an HTTP error.
		h.reportTo(handler, newError(ErrUpgrade, uid, "", err))
		return
	}
	c := &conn{hub: h, uid: uid, h: handler, ws: ws, nc: ws.NetConn()}
	ws.SetPingHandler(c.onPing)
	ws.SetPongHandler(c.onPong)
	ws.SetCloseHandler(func(int, string) error { return nil }) // the writer answers
	login, ok := h.register(c)
	if !ok {
		// Shutdown began meanwhile. No writer exists yet: this goroutine is
		// the connection's only writer.
		c.nc.SetWriteDeadline(time.Now().Add(h.cfg.WriteWait))
		c.nc.Write(closeFrame(closeGoingAway, "server shutting down"))
		c.nc.Close()
		h.reportTo(handler, newError(ErrHubClosed, uid, "", nil))
		return
	}
	go c.readLoop(login)
}

// checkOrigin implements the default origin policy: no Origin header
// (non-browser client), the request's own host, or an allowed origin.
func (h *Hub) checkOrigin(r *http.Request) bool {
	if h.cfg.CheckOrigin != nil {
		return h.cfg.CheckOrigin(r)
	}
	origins := r.Header["Origin"]
	if len(origins) == 0 {
		return true
	}
	u, err := url.Parse(origins[0])
	if err != nil || u.Host == "" {
		return slices.Contains(h.cfg.AllowedOrigins, origins[0]) || slices.Contains(h.cfg.AllowedOrigins, "*")
	}
	if strings.EqualFold(u.Host, r.Host) {
		return true
	}
	for _, a := range h.cfg.AllowedOrigins {
		if a == "*" || strings.EqualFold(a, u.Host) || strings.EqualFold(a, u.Scheme+"://"+u.Host) {
			return true
		}
	}
	return false
}

// register adds c to its user, creating the user on its first connection.
// It returns whether LoginServer must run (c's read goroutine drains it),
// and false for ok when the hub is closed.
func (h *Hub) register(c *conn) (login, ok bool) {
	s := h.userShard(c.uid)
	s.mu.Lock()
	defer s.mu.Unlock()
	if h.closed.Load() {
		return false, false
	}
	u := s.users[c.uid]
	if u == nil {
		u = &user{uid: c.uid, h: c.h}
		u.conns.Store(&[]*conn{c})
		s.users[c.uid] = u
		ev := userEvent{kind: evLogin, h: c.h}
		if h.cl != nil {
			// Presence and channels load on the event queue, off the lock.
			u.loading = true
			ev.kind, ev.u = evUp, u
		}
		login = s.pushEvent(c.uid, ev)
	} else {
		list := append(slices.Clip(u.connList()), c)
		u.conns.Store(&list)
		u.channels.each(func(_ string, ch *channel) { ch.invalidate() })
	}
	c.user = u
	h.readers.Add(1)
	h.stats.conns.Add(1)
	if h.cfg.PingInterval > 0 && !s.pinging {
		s.pinging = true
		if s.pingTimer == nil {
			s.pingTimer = time.AfterFunc(h.cfg.PingInterval, func() { h.pingShard(s) })
		} else {
			s.pingTimer.Reset(h.cfg.PingInterval)
		}
	}
	return login, true
}

// unregister removes c from its user; the last connection logs the user out
// and drops its memberships. It returns whether the caller must drain uid's
// events.
func (h *Hub) unregister(c *conn) (drain bool) {
	s := h.userShard(c.uid)
	s.mu.Lock()
	defer s.mu.Unlock()
	u := c.user
	old := u.connList()
	list := make([]*conn, 0, len(old))
	for _, x := range old {
		if x != c {
			list = append(list, x)
		}
	}
	u.conns.Store(&list)
	h.stats.conns.Add(-1)
	if len(list) > 0 {
		u.channels.each(func(_ string, ch *channel) { ch.invalidate() })
		return false
	}
	delete(s.users, c.uid)
	ev := userEvent{kind: evLogout, h: c.h}
	if h.cl != nil {
		ev.kind = evDown
		ev.chans = u.channels.keys()
	}
	u.channels.each(func(_ string, ch *channel) { h.removeMember(ch, u) })
	u.channels = smallMap[string, *channel]{}
	return s.pushEvent(c.uid, ev)
}

// conn is one WebSocket connection. Its read goroutine (readLoop) lives as
// long as the connection; its writer goroutine (writeLoop) runs only while
// there is something to write, and is the only code that writes to nc.
type conn struct {
	hub     *Hub
	uid     uint64
	h       Handler
	user    *user
	ws      *websocket.Conn
	nc      net.Conn
	limiter *rate.Limiter // made on the first message: idle connections have none
	refused int           // rate-limited messages in a row; read goroutine only
	closing atomic.Bool   // mirrors closed for the read goroutine

	mu         sync.Mutex
	queue      *sendQueue // frames waiting for the writer; nil when empty
	qbytes     int
	bufs       net.Buffers // the writer's current batch
	writing    bool        // a writer goroutine runs
	closed     bool        // no more messages accepted
	closeFrame []byte      // to write once the queue is flushed
	closeSent  bool
	dead       bool  // nc is closed or broken: nothing more is written
	reason     error // why the server closed the connection; nil if it did not
	writer     sync.WaitGroup
}

// enqueue queues a frame for the writer. It never blocks: when the queue is
// full the slow-consumer policy decides. It returns false if f was not
// queued (the connection is closing, or f was dropped); frames dropped to
// make room are counted here, f itself by the caller.
func (c *conn) enqueue(f []byte) bool {
	cfg := &c.hub.cfg
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return false
	}
	if c.queue == nil {
		c.queue = sendQueues.Get().(*sendQueue)
	}
	q := c.queue
	// A frame larger than SendQueueBytes still fits an empty queue: a big
	// message from business code must not look like a slow consumer.
	full := func() bool {
		return len(q.frames) >= cfg.SendQueueLen || (c.qbytes > 0 && c.qbytes+len(f) > cfg.SendQueueBytes)
	}
	if full() {
		if cfg.SlowConsumer != DropOldest {
			c.closeLocked(&Error{Kind: ErrSlowConsumer, Uid: c.uid}, closePolicy, "slow consumer", false)
			c.mu.Unlock()
			// A write in progress may be stuck on a client that stopped
			// reading: give it CloseGrace, not WriteWait, to finish.
			c.nc.SetWriteDeadline(time.Now().Add(cfg.CloseGrace))
			return false
		}
		dropped := 0
		for full() {
			c.qbytes -= len(q.frames[0])
			q.frames[0] = nil
			q.frames = q.frames[1:]
			dropped++
		}
		c.hub.stats.dropped.Add(uint64(dropped))
	}
	q.frames = append(q.frames, f)
	c.qbytes += len(f)
	c.startWriterLocked()
	c.mu.Unlock()
	return true
}

// closeLocked begins a server-side close: no more messages are accepted,
// the writer sends a close frame (after the queued messages when flush is
// set) and the read goroutine waits CloseGrace for the client's answer.
func (c *conn) closeLocked(reason error, code int, text string, flush bool) {
	if c.closed {
		return
	}
	c.closed = true
	c.closing.Store(true)
	c.reason = reason
	if !flush && c.queue != nil {
		c.queue.reset()
		c.qbytes = 0
	}
	c.closeFrame = closeFrame(code, text)
	c.startWriterLocked()
}

func (c *conn) close(reason error, code int, text string, flush bool) {
	c.mu.Lock()
	c.closeLocked(reason, code, text, flush)
	c.mu.Unlock()
}

func (c *conn) startWriterLocked() {
	if !c.writing && !c.dead {
		c.writing = true
		c.writer.Add(1)
		go c.writeLoop()
	}
}

// writeLoop writes queued frames until the queue is empty, then exits.
// Frames queued meanwhile go out together in one writev system call, each
// still its own WebSocket frame.
func (c *conn) writeLoop() {
	defer c.writer.Done()
	cfg := &c.hub.cfg
	lingered := 0
	for {
		c.mu.Lock()
		batch := c.queue
		if batch == nil || len(batch.frames) == 0 || c.dead {
			if cf := c.closeFrame; cf != nil && !c.dead {
				c.closeFrame = nil
				c.closeSent = true
				c.mu.Unlock()
				c.nc.SetWriteDeadline(time.Now().Add(min(cfg.WriteWait, cfg.CloseGrace)))
				if _, err := c.nc.Write(cf); err != nil {
					c.abort()
					return
				}
				c.nc.SetReadDeadline(time.Now().Add(cfg.CloseGrace))
				continue
			}
			if lingered < 2 && !c.dead {
				// Before exiting, twice let the goroutines waiting to run
				// go first, among them a publisher in the middle of a
				// fan-out: what it queues meanwhile leaves in this
				// writer's next writev instead of costing a new
				// goroutine and a system call each (at 10,000
				// subscribers: +45% deliveries/s, bench/).
				lingered++
				c.mu.Unlock()
				runtime.Gosched()
				continue
			}
			c.writing = false
			c.queue = nil // an idle connection holds no queue
			c.mu.Unlock()
			if batch != nil {
				batch.release()
			}
			return
		}
		c.queue, c.qbytes = nil, 0
		c.mu.Unlock()

		c.nc.SetWriteDeadline(time.Now().Add(cfg.WriteWait))
		c.bufs = batch.frames
		_, err := c.bufs.WriteTo(c.nc)
		c.bufs = nil
		batch.release()
		if err != nil {
			c.mu.Lock()
			if c.reason == nil && !c.closed {
				c.reason = &Error{Kind: ErrConnection, Uid: c.uid, Err: err}
			}
			c.mu.Unlock()
			c.abort()
			return
		}
	}
}

// sendQueue holds a connection's queued frames. Queues are pooled: a
// connection takes one when a frame arrives and the writer gives it back
// once written, so idle connections hold none and busy ones allocate none.
type sendQueue struct{ frames [][]byte }

var sendQueues = sync.Pool{New: func() any { return &sendQueue{frames: make([][]byte, 0, 16)} }}

func (q *sendQueue) reset() {
	clear(q.frames)
	q.frames = q.frames[:0]
}

func (q *sendQueue) release() {
	if cap(q.frames) > 1024 {
		return // let an outsized queue go
	}
	q.reset()
	sendQueues.Put(q)
}

// abort stops all writing and closes the network connection; the read
// goroutine then ends and cleans up.
func (c *conn) abort() {
	c.mu.Lock()
	c.closed, c.dead, c.writing = true, true, false
	c.closing.Store(true)
	c.queue, c.qbytes, c.closeFrame = nil, 0, nil
	c.mu.Unlock()
	c.nc.Close()
}

// pingShard pings every connection of a user shard. One timer per shard
// instead of one per connection keeps idle connections small; it runs
// while the shard has connections.
func (h *Hub) pingShard(s *userShard) {
	s.mu.RLock()
	conns := make([]*conn, 0, len(s.users))
	for _, u := range s.users {
		conns = append(conns, u.connList()...)
	}
	s.mu.RUnlock()
	for _, c := range conns {
		c.enqueue(pingFrame)
	}
	s.mu.Lock()
	if len(s.users) == 0 {
		s.pinging = false
	} else {
		s.pingTimer.Reset(h.cfg.PingInterval)
	}
	s.mu.Unlock()
}

func (c *conn) onPing(data string) error {
	c.extendReadDeadline()
	c.enqueue(frame(opPong, []byte(data)))
	return nil
}

func (c *conn) onPong(string) error {
	c.extendReadDeadline()
	return nil
}

// extendReadDeadline gives the client another PongWait, unless the
// connection is closing and only waits CloseGrace for the client's answer.
func (c *conn) extendReadDeadline() {
	if c.hub.cfg.PongWait <= 0 || c.closing.Load() {
		return
	}
	c.nc.SetReadDeadline(time.Now().Add(c.hub.cfg.PongWait))
	if c.closing.Load() {
		// The writer may have set the close deadline between the check and
		// the line above; restore it.
		c.nc.SetReadDeadline(time.Now().Add(c.hub.cfg.CloseGrace))
	}
}

var readBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// readLoop reads the client's frames until the connection ends, then
// unregisters it. login is set when this connection must run LoginServer.
//
// After work that needs a deep stack (LoginServer, decoding and dispatching
// a message) the loop hands over to a fresh goroutine and exits, so that
// the goroutine an idle connection keeps waiting in Read has the smallest
// stack the runtime gives, instead of the largest one it ever grew to.
func (c *conn) readLoop(login bool) {
	hub := c.hub
	defer hub.readers.Done()
	if login {
		hub.drainEvents(c.uid)
		c.respawn()
		return
	}
	var err error
	for {
		c.extendReadDeadline()
		var mt int
		var r io.Reader
		mt, r, err = c.ws.NextReader()
		if err != nil {
			break
		}
		if c.closing.Load() {
			// Closing: discard everything until the client's close frame.
			if _, err = io.Copy(io.Discard, r); err != nil {
				break
			}
			continue
		}
		if err = c.handle(mt, r); err != nil {
			break
		}
		c.respawn()
		return
	}
	c.teardown(err)
}

// respawn continues readLoop on a new goroutine; see readLoop.
func (c *conn) respawn() {
	c.hub.readers.Add(1)
	go c.readLoop(false)
}

// handle reads one message and dispatches it. Only read errors are
// returned; refused messages are answered with an error frame.
func (c *conn) handle(mt int, r io.Reader) error {
	hub := c.hub
	buf := readBufs.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= 64<<10 {
			buf.Reset()
			readBufs.Put(buf)
		}
	}()
	buf.Reset()
	if _, err := buf.ReadFrom(io.LimitReader(r, hub.cfg.MaxMessageSize+1)); err != nil {
		return err
	}
	if int64(buf.Len()) > hub.cfg.MaxMessageSize {
		hub.stats.refused.Add(1)
		c.close(&Error{Kind: ErrMessageTooLarge, Uid: c.uid}, closeTooBig, "message too large", true)
		return nil
	}
	if c.limiter == nil && hub.cfg.RateLimit > 0 {
		c.limiter = rate.NewLimiter(rate.Limit(hub.cfg.RateLimit), hub.cfg.RateBurst)
	}
	if c.limiter != nil && !c.limiter.Allow() {
		hub.stats.refused.Add(1)
		c.refused++
		err := &Error{Kind: ErrRateLimited, Uid: c.uid}
		if c.refused >= hub.cfg.RateBurst {
			c.close(err, closePolicy, "rate limit exceeded", true)
			return nil
		}
		c.refuse(err, "", 0)
		return nil
	}
	c.refused = 0
	if mt != websocket.TextMessage {
		hub.stats.refused.Add(1)
		c.refuse(badMessage(c.uid, "binary frames are not accepted; send JSON text"), "", 0)
		return nil
	}
	m, err := decodeInbound(c.uid, buf.Bytes())
	if err != nil {
		hub.stats.refused.Add(1)
		c.refuse(err, "", 0)
		return nil
	}
	m.UserId, m.SendTime = c.uid, now()
	if m.ToUserId != 0 {
		err = hub.sendDirect(&m)
	} else {
		err = c.sendToChannel(&m)
	}
	if err != nil {
		hub.stats.refused.Add(1)
		c.refuse(err, m.ChannelId, m.ToUserId)
		return nil
	}
	hub.stats.in.Add(1)
	hub.call(c.h, c.uid, "SendMessage", func() { c.h.SendMessage(m) })
	return nil
}

// sendToChannel publishes a client's message to a channel it has joined.
func (c *conn) sendToChannel(m *Message) error {
	hub := c.hub
	if hub.closed.Load() {
		return newError(ErrHubClosed, c.uid, m.ChannelId, nil)
	}
	s := hub.userShard(c.uid)
	s.mu.RLock()
	joined := c.user.channels.has(m.ChannelId)
	s.mu.RUnlock()
	if !joined {
		return newError(ErrNotJoined, c.uid, m.ChannelId, nil)
	}
	hub.publishChannel(m.ChannelId, encode(m))
	return nil
}

// refuse reports a refused message and tells the client why.
func (c *conn) refuse(err error, channelId string, toUid uint64) {
	c.hub.reportTo(c.h, err)
	c.enqueue(encodeError(err, channelId, toUid))
}

// teardown runs on the read goroutine when the connection ends: it lets the
// writer finish a clean close, closes the socket, unregisters the
// connection and runs the callbacks that follow.
func (c *conn) teardown(readErr error) {
	hub := c.hub
	var ce *websocket.CloseError
	clean := errors.As(readErr, &ce)
	c.mu.Lock()
	if clean && !c.closed && !c.dead {
		// The client closed first: answer with its status code.
		code := ce.Code
		if code == closeNoStatus {
			code = closeNormal
		}
		c.closeLocked(nil, code, "", true)
	}
	c.closed = true
	c.closing.Store(true)
	reason, closeSent := c.reason, c.closeSent || c.closeFrame != nil
	if !clean {
		c.dead = true
	}
	c.mu.Unlock()
	if clean {
		c.writer.Wait() // bounded by WriteWait
	}
	c.nc.Close()
	c.mu.Lock()
	c.dead = true
	c.mu.Unlock()
	c.writer.Wait()

	err := reason
	if err == nil && !clean && !closeSent {
		err = &Error{Kind: ErrConnection, Uid: c.uid, Err: readErr}
	}
	hub.countDisconnect(err)
	if err != nil {
		hub.reportTo(c.h, err)
	}
	if hub.unregister(c) {
		hub.drainEvents(c.uid)
	}
}

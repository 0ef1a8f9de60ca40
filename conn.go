package chart

import (
	"bytes"
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/time/rate"
)

// conn is one WebSocket connection. Its read goroutine (readLoop) lives as
// long as the connection; its writer goroutine (writeLoop) runs only while
// there is something to write, and is the only code that writes to nc.
type Conn struct {
	hub     *Hub
	uid     uint64
	handler Handler
	user    *user
	ws      *websocket.Conn
	nc      net.Conn
	limiter *rate.Limiter // made on the first message: idle connections have none
	refused int           // rate-limited messages in a row; read goroutine only

	// state is connOpen, connClosing or connDead. It changes under mu and
	// is read without it by the read goroutine.
	state atomic.Int32

	mu         sync.Mutex
	queue      *sendQueue // frames waiting for the writer; nil when empty
	qbytes     int
	bufs       net.Buffers // the writer's current batch
	writing    bool        // a writer goroutine runs
	closeFrame []byte      // the close frame the writer sends after the queue; nil once sent
	reason     error       // why the connection ended, once known (errClosed: in order)
	writer     sync.WaitGroup
}

const (
	connOpen    int32 = iota
	connClosing       // a close began: nothing more is queued; the writer sends closeFrame after the queue
	connDead          // the socket is closed or broken: nothing more is written
)

// errClosed is the reason of a connection closed in order: by the client,
// or by Shutdown. It counts as a normal disconnect and is not reported.
var errClosed = errors.New("closed")

// enqueue queues a frame for the writer. It never blocks: when the queue is
// full the slow-consumer policy decides. It returns false if f was not
// queued (the connection is closing, or f was dropped); frames dropped to
// make room are counted here, f itself by the caller.
func (c *Conn) enqueue(f []byte) bool {
	cfg := &c.hub.cfg
	c.mu.Lock()
	if c.state.Load() != connOpen {
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
func (c *Conn) closeLocked(reason error, code int, text string, flush bool) {
	if c.state.Load() != connOpen {
		return
	}
	c.state.Store(connClosing)
	c.reason = reason
	if !flush && c.queue != nil {
		c.queue.reset()
		c.qbytes = 0
	}
	c.closeFrame = closeFrame(code, text)
	c.startWriterLocked()
}

func (c *Conn) close(reason error, code int, text string, flush bool) {
	c.mu.Lock()
	c.closeLocked(reason, code, text, flush)
	c.mu.Unlock()
}

func (c *Conn) startWriterLocked() {
	if !c.writing && c.state.Load() != connDead {
		c.writing = true
		c.writer.Add(1)
		go c.writeLoop()
	}
}

// abort stops all writing and closes the network connection; the read
// goroutine then ends and cleans up.
func (c *Conn) abort() {
	c.mu.Lock()
	c.state.Store(connDead)
	c.writing = false
	c.queue, c.qbytes, c.closeFrame = nil, 0, nil
	c.mu.Unlock()
	c.nc.Close()
}

// writeLoop writes queued frames until the queue is empty, then the close
// frame if one is due, then exits. Frames queued meanwhile go out together
// in one writev system call, each still its own WebSocket frame.
func (c *Conn) writeLoop() {
	defer c.writer.Done()
	lingered := 0
	for {
		c.mu.Lock()
		batch, dead := c.queue, c.state.Load() == connDead
		if dead || batch == nil || len(batch.frames) == 0 {
			if cf := c.closeFrame; cf != nil && !dead {
				c.closeFrame = nil
				c.mu.Unlock()
				if !c.writeClose(cf) {
					return
				}
				continue
			}
			if lingered < 2 && !dead {
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
		if !c.writeBatch(batch) {
			return
		}
	}
}

// writeBatch writes a batch of frames in one writev; false when the
// connection broke (it is then aborted).
func (c *Conn) writeBatch(batch *sendQueue) bool {
	c.nc.SetWriteDeadline(time.Now().Add(c.hub.cfg.WriteWait))
	c.bufs = batch.frames
	_, err := c.bufs.WriteTo(c.nc)
	c.bufs = nil
	batch.release()
	if err != nil {
		c.mu.Lock()
		if c.reason == nil {
			c.reason = &Error{Kind: ErrConnection, Uid: c.uid, Err: err}
		}
		c.mu.Unlock()
		c.abort()
		return false
	}
	return true
}

// writeClose writes the close frame and gives the client CloseGrace to
// answer; false when the connection broke.
func (c *Conn) writeClose(cf []byte) bool {
	cfg := &c.hub.cfg
	c.nc.SetWriteDeadline(time.Now().Add(min(cfg.WriteWait, cfg.CloseGrace)))
	if _, err := c.nc.Write(cf); err != nil {
		c.abort()
		return false
	}
	c.nc.SetReadDeadline(time.Now().Add(cfg.CloseGrace))
	return true
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

func (c *Conn) onPing(data string) error {
	c.extendReadDeadline()
	c.enqueue(frame(opPong, []byte(data)))
	return nil
}

func (c *Conn) onPong(string) error {
	c.extendReadDeadline()
	return nil
}

// extendReadDeadline gives the client another PongWait, unless the
// connection is closing and only waits CloseGrace for the client's answer.
func (c *Conn) extendReadDeadline() {
	if c.hub.cfg.PongWait <= 0 || c.state.Load() != connOpen {
		return
	}
	c.nc.SetReadDeadline(time.Now().Add(c.hub.cfg.PongWait))
	if c.state.Load() != connOpen {
		// The writer may have set the close deadline between the check and
		// the line above; restore it.
		c.nc.SetReadDeadline(time.Now().Add(c.hub.cfg.CloseGrace))
	}
}

var readBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// readLoop reads the client's frames until the connection ends, then
// unregisters it. drain is set when this connection must first drain its
// uid's login/logout queue (it registered the uid's first connection).
//
// After work that needs a deep stack (LoginServer, decoding and dispatching
// a message) the loop hands over to a fresh goroutine and exits, so that
// the goroutine an idle connection keeps waiting in Read has the smallest
// stack the runtime gives, instead of the largest one it ever grew to.
func (c *Conn) readLoop(drain bool) {
	hub := c.hub
	defer hub.readers.Done()
	if drain {
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
		if c.state.Load() != connOpen {
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
func (c *Conn) respawn() {
	c.hub.readers.Add(1)
	go c.readLoop(false)
}

// handle reads one message and dispatches it. Only read errors are
// returned; refused messages are answered with an error frame.
func (c *Conn) handle(mt int, r io.Reader) error {
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
	if !c.allow() {
		return nil
	}
	if mt != websocket.TextMessage {
		c.refuse(badMessage(c.uid, "binary frames are not accepted; send JSON text"), "", 0)
		return nil
	}
	m, err := decodeInbound(c.uid, buf.Bytes())
	if err != nil {
		c.refuse(err, "", 0)
		return nil
	}
	m.UserId, m.SendTime = c.uid, now()
	if err := hub.route(c, &m); err != nil {
		c.refuse(err, m.ChannelId, m.ToUserId)
		return nil
	}
	hub.stats.in.Add(1)
	hub.call(c.handler, c.uid, "SendMessage", func() { c.handler.SendMessage(m) })
	return nil
}

// allow applies the inbound rate limit to one message: over it, the
// message is refused, and RateBurst refusals in a row close the
// connection.
func (c *Conn) allow() bool {
	cfg := &c.hub.cfg
	if c.limiter == nil && cfg.RateLimit > 0 {
		c.limiter = rate.NewLimiter(rate.Limit(cfg.RateLimit), cfg.RateBurst)
	}
	if c.limiter == nil || c.limiter.Allow() {
		c.refused = 0
		return true
	}
	c.refused++
	err := &Error{Kind: ErrRateLimited, Uid: c.uid}
	if c.refused >= cfg.RateBurst {
		c.hub.stats.refused.Add(1)
		c.close(err, closePolicy, "rate limit exceeded", true)
	} else {
		c.refuse(err, "", 0)
	}
	return false
}

// refuse counts and reports a refused message and tells the client why.
func (c *Conn) refuse(err error, channelId string, toUid uint64) {
	c.hub.stats.refused.Add(1)
	c.hub.report(c.handler, err)
	c.enqueue(encodeError(err, channelId, toUid))
}

// teardown runs on the read goroutine when the connection ends: it lets the
// writer finish a clean close, closes the socket, unregisters the
// connection and runs the callbacks that follow.
func (c *Conn) teardown(readErr error) {
	hub := c.hub
	var ce *websocket.CloseError
	clean := errors.As(readErr, &ce)
	c.mu.Lock()
	if clean && c.state.Load() == connOpen {
		// The client closed first: answer with its status code.
		code := ce.Code
		if code == closeNoStatus {
			code = closeNormal
		}
		c.closeLocked(errClosed, code, "", true)
	}
	if !clean {
		c.state.Store(connDead)
	}
	reason := c.reason
	c.mu.Unlock()
	if clean {
		c.writer.Wait() // bounded by WriteWait
	}
	c.nc.Close()
	c.mu.Lock()
	c.state.Store(connDead)
	c.mu.Unlock()
	c.writer.Wait()

	if reason == nil {
		reason = &Error{Kind: ErrConnection, Uid: c.uid, Err: readErr}
	}
	hub.countDisconnect(reason)
	if reason != errClosed {
		hub.report(c.handler, reason)
	}
	if hub.unregister(c) {
		hub.drainEvents(c.uid)
	}
}

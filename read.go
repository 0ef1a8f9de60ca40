package chart

import (
	"errors"
	"io"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
	"golang.org/x/time/rate"
)

// The read side of a connection: one goroutine reads the client's frames,
// under the limits of Config (size, time to assemble a message, memory of
// all messages being assembled, message rate, byte rate), and hands each
// message to the send path.

// readLoop reads the client's frames until the connection ends, then tears
// it down.
//
// After each message (decoding and dispatching it needs a deep stack) the
// loop hands over to a fresh goroutine and exits, so that the goroutine an
// idle connection keeps waiting in Read has the smallest stack the runtime
// gives, instead of the largest one it ever grew to.
func (c *Conn) readLoop() {
	defer c.hub.readers.Done()
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
		c.hub.readers.Add(1)
		go c.readLoop()
		return
	}
	c.teardown(err)
}

func (c *Conn) onPing(data string) error {
	c.extendReadDeadline()
	if c.control(len(data)) {
		c.enqueuePong([]byte(data))
	}
	return nil
}

func (c *Conn) onPong(data string) error {
	c.extendReadDeadline()
	c.control(len(data))
	return nil
}

// control accounts for a control frame from the client: its bytes count
// against ReadRate (paid by the next message's wait), the frame against
// the message rate limit. It returns false when over the rate limit.
func (c *Conn) control(n int) bool {
	if l := c.rates().bytes; l != nil {
		l.ReserveN(time.Now(), min(n+6, l.Burst()))
	}
	return !c.overRate()
}

// extendReadDeadline gives the client another PongWait, but no more than
// the time left to complete a message being read; none while the
// connection is closing and waits CloseGrace for the client's answer.
func (c *Conn) extendReadDeadline() {
	cfg := &c.hub.cfg
	if c.state.Load() != connOpen {
		return
	}
	var t time.Time
	if cfg.PongWait > 0 {
		t = time.Now().Add(cfg.PongWait)
	}
	if d := time.Unix(0, c.msgDeadline); c.msgDeadline != 0 && (t.IsZero() || d.Before(t)) {
		t = d
	}
	// With no PongWait, the zero time lifts the message's deadline.
	c.setReadDeadline(t, false)
	if c.state.Load() != connOpen {
		// The writer may have set the close deadline between the check and
		// the line above; restore it.
		c.setReadDeadline(time.Now().Add(cfg.CloseGrace), true)
	}
}

// setReadDeadline sets when reading gives up (the zero time: never): the
// socket's read deadline, and for a polled connection, which may have no
// reader to see it, the time its timer makes sure a reader looks. The
// reader sets it without arming the timer while it reads (the socket's
// deadline stops it), and arms it before it parks (park); anyone else
// arms it.
func (c *Conn) setReadDeadline(t time.Time, arm bool) {
	c.nc.SetReadDeadline(t)
	if c.ws != nil {
		return
	}
	var d int64
	if !t.IsZero() {
		d = t.UnixNano()
	}
	c.deadline.Store(d)
	if arm {
		c.armTimer()
	}
}

// armTimer makes sure a polled connection's timer is due by its read
// deadline. The timer is only ever moved earlier: due before the
// deadline, it moves itself on (onDeadline).
func (c *Conn) armTimer() {
	d := c.deadline.Load()
	if d == 0 {
		return
	}
	c.mu.Lock()
	switch {
	case c.state.Load() == connDead:
	case c.timer == nil:
		c.timer = time.AfterFunc(time.Duration(d-time.Now().UnixNano()), c.onDeadline)
		c.armedAt = d
	case c.armedAt == 0 || d < c.armedAt:
		c.timer.Reset(time.Duration(d - time.Now().UnixNano()))
		c.armedAt = d
	}
	c.mu.Unlock()
}

// onDeadline runs when a polled connection's timer is due. If its read
// deadline has passed and it waits in the poller, it becomes its reader,
// whose read then fails with the timeout; with a reader at work, the
// socket's deadline stops it, or park sees it.
func (c *Conn) onDeadline() {
	c.mu.Lock()
	d := c.deadline.Load()
	now := time.Now().UnixNano()
	switch {
	case c.state.Load() == connDead || d == 0:
		c.armedAt = 0
		c.mu.Unlock()
		return
	case now < d:
		c.timer.Reset(time.Duration(d - now))
		c.armedAt = d
		c.mu.Unlock()
		return
	}
	c.armedAt = 0
	c.mu.Unlock()
	if c.idle.CompareAndSwap(true, false) {
		c.readPolled()
	}
}

// pastDeadline reports whether a polled connection's read deadline has passed.
func (c *Conn) pastDeadline() bool {
	d := c.deadline.Load()
	return d != 0 && time.Now().UnixNano() >= d
}

// wake makes a polled connection whose socket was closed read, so that
// its read fails and it ends: closing a socket takes it out of the epoll
// set silently.
func (c *Conn) wake() {
	if c.ws == nil && c.idle.CompareAndSwap(true, false) {
		go c.readFn()
	}
}

// startPolled puts a new polled connection into its poller, or when that
// fails, reads it from a goroutine.
func (c *Conn) startPolled() {
	c.readFn = c.readPolled // before any reader can start: pollAdd makes c idle
	c.extendReadDeadline()
	c.armTimer()
	if pollAdd(c) != nil {
		go c.readFn()
	}
}

// readPolled is the reader of a polled connection. It runs when the
// socket is readable, its read deadline passed or it was closed, reads
// what came, and returns the connection to the poller as soon as it is
// between messages with nothing buffered; it ends the connection when a
// read fails. It reads frames itself (wsread.go) with the limits and
// deadlines readLoop has; the next message's read deadline is set before
// the connection waits for it, not when it is readable.
func (c *Conn) readPolled() {
	fr := getFrameReader(c)
	var err error
	for {
		c.boundFrame()
		var mt int
		if mt, err = fr.nextMessage(); err != nil {
			break
		}
		switch {
		case mt == 0:
			// A control frame: park if nothing more is buffered.
		case c.state.Load() != connOpen:
			// Closing: discard everything until the client's close frame.
			_, err = io.Copy(io.Discard, fr)
		default:
			err = c.handle(mt, fr)
		}
		if err != nil {
			break
		}
		c.extendReadDeadline()
		if fr.idle() {
			drained := fr.drained
			fr.put()
			if c.park(drained) {
				return
			}
			fr = getFrameReader(c)
		}
	}
	fr.put()
	if c.state.Load() == connClosing && !errors.As(err, new(*websocket.CloseError)) {
		// A close frame of ours is due (a protocol violation, an oversize
		// frame; or the client's close is awaited): let the writer send it
		// and drop the socket before teardown closes it.
		c.drain()
	}
	c.teardown(err)
	c.hub.readers.Done()
}

// boundFrame gives the frame a polled connection's reader is about to
// read MessageTimeout at most to arrive, whatever time PongWait leaves:
// the reader woke because bytes came, and a client that sends a byte of a
// frame header and stalls must not hold a reader goroutine and its buffer
// (some 9 KiB, against some 3 KiB idle) for PongWait. The deadline is only
// brought forward: one passed (the reader woke for it) stays.
func (c *Conn) boundFrame() {
	mt := c.hub.cfg.MessageTimeout
	if mt <= 0 {
		return
	}
	t := time.Now().Add(mt)
	if d := c.deadline.Load(); d == 0 || t.UnixNano() < d {
		c.setReadDeadline(t, false)
	}
}

// park gives a polled connection back to the poller: it sets it idle. It
// returns false when the reader must read on: the socket may have more
// (an event came while it read, or its last read filled the buffer: not
// drained) and has, or the read deadline passed meanwhile, whose timer
// may have found the reader still at work; in both cases only if it takes
// the connection back (else whoever took it reads).
func (c *Conn) park(drained bool) bool {
	c.armTimer()
	c.idle.Store(true)
	more := (c.ready.Swap(false) || !drained) && pollReadable(c)
	if more || c.pastDeadline() {
		return !c.idle.CompareAndSwap(true, false)
	}
	return true
}

// drain reads and drops what the client sends until the socket fails: the
// writer drops it after its close frame, or the close deadline passes.
func (c *Conn) drain() {
	fr := getFrameReader(c)
	for fr.fill() == nil {
		fr.r = fr.w
	}
	fr.put()
}

// readBufs pools small read buffers; a large message gets its own.
var readBufs = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

const maxPooledRead = 4 << 10

// handle reads one message and dispatches it. Only read errors are
// returned; refused messages are answered with an error frame.
func (c *Conn) handle(mt int, r io.Reader) error {
	bp := readBufs.Get().(*[]byte)
	defer func() {
		if cap(*bp) <= maxPooledRead {
			*bp = (*bp)[:0]
			readBufs.Put(bp)
		}
	}()
	c.msgDeadline = time.Now().Add(c.hub.cfg.MessageTimeout).UnixNano()
	c.extendReadDeadline()
	data, err := c.readMessage(r, bp)
	c.msgDeadline = 0
	if err != nil || data == nil {
		return err
	}
	c.throttle(len(data))
	switch {
	case mt != websocket.TextMessage:
		if !c.limited("") {
			c.refuse(badMessage(c.uid, "binary frames are not accepted; send JSON text"), "", 0)
		}
	case !utf8.Valid(data):
		c.hub.countRefusal(ErrBadMessage)
		c.close(badMessage(c.uid, "text frame is not valid UTF-8"), websocket.CloseInvalidFramePayloadData, "invalid UTF-8", closeFlush|closeHangUp)
	default:
		c.dispatch(data)
	}
	return nil
}

// limited applies the message rate limit to one message: true when it is
// over it (the client is told, with the message's id, unless the
// connection closes for it).
func (c *Conn) limited(id string) bool {
	if !c.overRate() {
		return false
	}
	if c.state.Load() == connOpen {
		c.refuseId(&Error{Kind: ErrRateLimited, Uid: c.uid}, "", 0, cut(id, maxIdLen))
	} else {
		c.hub.countRefusal(ErrRateLimited)
	}
	return true
}

// readMessage reads one message into *bp. It returns nil data when the
// message was refused: too large (the connection is being closed), or over
// MaxPendingBytes (the rest of it is read and discarded, and the client
// told). What the buffer holds beyond its first maxPooledRead bytes counts
// against MaxPendingBytes meanwhile.
func (c *Conn) readMessage(r io.Reader, bp *[]byte) (data []byte, err error) {
	cfg := &c.hub.cfg
	limit := int(cfg.MaxMessageSize) + 1
	p, held := (*bp)[:0], 0
	defer func() {
		c.hub.pending.Add(-int64(held))
		*bp = p[:0]
	}()
	for {
		if len(p) >= limit {
			c.hub.countRefusal(ErrMessageTooLarge)
			c.close(&Error{Kind: ErrMessageTooLarge, Uid: c.uid}, closeTooBig, "message too large", closeFlush|closeHangUp)
			return nil, nil
		}
		if len(p) == cap(p) {
			p = append(make([]byte, 0, min(2*cap(p), limit)), p...)
		}
		// The first maxPooledRead bytes of a message are not counted, so
		// that connections holding large partial messages cannot keep
		// anyone from sending a small one.
		if grow := cap(p) - maxPooledRead - held; grow > 0 {
			held += grow
			if n := c.hub.pending.Add(int64(grow)); cfg.MaxPendingBytes > 0 && n > cfg.MaxPendingBytes {
				c.hub.pending.Add(-int64(held)) // give it all back before discarding
				held, p = 0, p[:0]
				return nil, c.overloaded(r)
			}
		}
		var n int
		n, err = r.Read(p[len(p):min(cap(p), limit)])
		p = p[:len(p)+n]
		switch {
		case err == io.EOF:
			return p, nil
		case err != nil:
			var ne interface{ Timeout() bool }
			if errors.As(err, &ne) && ne.Timeout() && time.Now().UnixNano() >= c.msgDeadline {
				c.setReason(&Error{Kind: ErrMessageTimeout, Uid: c.uid})
			}
			return nil, err
		}
	}
}

// overloaded refuses a message that would take the pending bytes over
// MaxPendingBytes: its rest is read and discarded (no memory held, within
// MessageTimeout still) and the client gets an "overloaded" error frame.
// Only this message is lost; the connection stays.
func (c *Conn) overloaded(r io.Reader) error {
	if _, err := io.Copy(io.Discard, r); err != nil {
		return err
	}
	c.refuse(&Error{Kind: ErrOverloaded, Uid: c.uid}, "", 0)
	return nil
}

// overRate applies the message rate limit to one message or control
// frame: true when over it. RateBurst refusals in a row close the
// connection with CloseRateLimited.
func (c *Conn) overRate() bool {
	cfg := &c.hub.cfg
	l := c.rates().msgs
	if l == nil {
		return false
	}
	if l.Allow() {
		c.refused = 0
		return false
	}
	if c.hub.resumed() {
		return false // the backlog of a pause (pause.go)
	}
	if c.refused++; c.refused >= cfg.RateBurst {
		c.close(&Error{Kind: ErrRateLimited, Uid: c.uid}, CloseRateLimited, "rate limit exceeded", closeFlush)
	}
	return true
}

// rateLimits are the inbound limiters of one uid on this node, shared by
// its connections, so that opening more connections (up to
// MaxConnsPerUid) buys no more rate.
type rateLimits struct {
	msgs  *rate.Limiter // RateLimit: messages and control frames; nil: none
	bytes *rate.Limiter // ReadRate; nil: none
}

// rates returns the uid's limiters, made on the first message of any of
// its connections: an idle user has none.
func (c *Conn) rates() *rateLimits {
	if r := c.user.rates.Load(); r != nil {
		return r
	}
	cfg := &c.hub.cfg
	r := &rateLimits{}
	if cfg.RateLimit > 0 {
		r.msgs = rate.NewLimiter(rate.Limit(cfg.RateLimit), cfg.RateBurst)
	}
	if cfg.ReadRate > 0 {
		r.bytes = rate.NewLimiter(rate.Limit(cfg.ReadRate), max(cfg.ReadRate, int(cfg.MaxMessageSize)))
	}
	if !c.user.rates.CompareAndSwap(nil, r) {
		return c.user.rates.Load()
	}
	return r
}

// throttle waits until n more bytes read fit ReadRate, so that a client
// sending faster is read more slowly (TCP pushes back). Shutdown cuts the
// wait short.
func (c *Conn) throttle(n int) {
	l := c.rates().bytes
	if l == nil {
		return
	}
	d := l.ReserveN(time.Now(), min(n, l.Burst())).Delay()
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-c.hub.done:
	}
}

// dispatch decodes a client's frame. A chart.v1 hello or acknowledgement
// is taken as such (they count as bytes, not as messages); a message is
// rate limited, filtered by the application and sent.
func (c *Conn) dispatch(data []byte) {
	in, err := decodeFrame(c.uid, data)
	if in != nil {
		defer in.free()
	}
	switch {
	// The protocol's own frames count against the rate limit as messages
	// do (over it: ignored, no pong; RateBurst in a row close with 4029).
	case err == nil && c.v1 && in.Hello != nil:
		c.overRate()
		c.recover(in.Hello) // the first only: later hellos are ignored
		return
	case err == nil && c.v1 && in.Ack != nil:
		if !c.overRate() {
			c.acknowledge(in.Ack)
		}
		return
	case err == nil && c.v1 && in.Ping != nil:
		if !c.overRate() {
			c.enqueue(encodePong(*in.Ping)) // a heartbeat a browser can see
		}
		return
	case err != nil:
		if !c.limited("") {
			c.refuse(err, "", 0)
		}
		return
	case in.Content == nil && (in.Join != nil || in.Leave != nil):
		// A request to join or leave a channel (join.go); a frame with
		// content is a message, whatever else it holds.
		if c.v1 {
			c.recover(&positions{})
		}
		c.request(in)
		return
	}
	id := ""
	if c.v1 {
		c.recover(&positions{}) // a message before the hello: no positions
		id = in.Id
	}
	m, err := in.message(c.uid)
	switch {
	case c.limited(id):
	case err != nil:
		c.refuseId(err, "", 0, cut(id, maxIdLen))
	case len(id) > maxIdLen:
		c.refuseId(badMessage(c.uid, "\"id\" is longer than %d bytes", maxIdLen), m.ChannelId, m.ToUserId, "")
	case id != "":
		c.sendOnce(id, &m)
	default:
		c.send(&m, "")
	}
}

// send filters and sends a client's message; the error is the refusal the
// client was told about.
func (c *Conn) send(m *Message, id string) error {
	hub := c.hub
	t := time.Now()
	at := stampOf(t) // accepted: the delivery latency starts (stamp.go)
	m.UserId, m.SendTime = c.uid, t.Format(TimeLayout)
	err := hub.filter(c, m)
	if err == nil {
		// Counted before delivery, so that whoever sees the message sees
		// it counted; taken back if the route refuses it.
		hub.stats.in.Add(1)
		if err = hub.route(c, m, at); err != nil {
			hub.stats.in.Add(^uint64(0))
		}
	}
	if err != nil {
		c.refuseId(err, m.ChannelId, m.ToUserId, id)
		return err
	}
	msg := *m
	hub.call(c.handler, c.uid, "SendMessage", func() { c.handler.SendMessage(msg) })
	return nil
}

// sendOnce sends a chart.v1 client's message with its id: acknowledged
// when accepted, acknowledged again and not sent when it is a retry.
func (c *Conn) sendOnce(id string, m *Message) {
	prev, claim := c.hub.ids.claim(c.uid, id)
	if prev != nil {
		if prev.done { // else the first try is still being sent: the client retries later
			c.enqueue(encodeAck(id, prev.offset, prev.epoch))
		}
		return
	}
	err := c.send(m, id)
	c.hub.ids.finish(c.uid, id, claim, err == nil, m.Offset, m.Epoch)
	if err == nil {
		c.enqueue(encodeAck(id, m.Offset, m.Epoch))
	}
}

// refuse counts a refused message, tells the client why, and reports it:
// the first few of a connection, then one a second, so that a client
// cannot flood the log (Stats counts them all). A refusal by the
// application's filter is its own decision, not reported.
func (c *Conn) refuse(err error, channelId string, toUid uint64) {
	c.refuseId(err, channelId, toUid, "")
}

// refuseId is refuse for a chart.v1 message with an id, which the error
// frame names.
func (c *Conn) refuseId(err error, channelId string, toUid uint64, id string) {
	c.hub.countRefusal(err)
	if !errors.Is(err, ErrRefused) && c.sampleReport() {
		c.hub.report(c.handler, err)
	}
	c.enqueue(encodeError(err, channelId, toUid, id))
}

// reportBurst refusals of a connection are reported, then one a second.
const reportBurst = 10

func (c *Conn) sampleReport() bool {
	now := time.Now().UnixNano()
	if c.reports < reportBurst {
		c.reports++
	} else if now-c.reportedAt < int64(time.Second) {
		return false
	}
	c.reportedAt = now
	return true
}

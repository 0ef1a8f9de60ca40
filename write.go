package chart

import (
	"runtime"
	"sync"
	"time"
)

// The write side of a connection: a bounded queue of frames, shared
// between recipients, and a writer goroutine that exists only while the
// queue holds something.

// enqueue queues a control or error frame for the writer; see push.
func (c *Conn) enqueue(f []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pushLocked(f, topic{}, 0)
}

// enqueueAt queues a message frame at its place in stream t (offset 0:
// none). While the connection recovers (hold), message frames wait there.
func (c *Conn) enqueueAt(f []byte, t topic, off uint64) bool {
	return c.enqueueTallied(f, t, off, nil)
}

// enqueueTallied is enqueueAt for a fan-out: the frame is counted in
// tally, which the caller adds to the hub's counters when it is done.
func (c *Conn) enqueueTallied(f []byte, t topic, off uint64, tally *queueTally) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hold != nil && c.state.Load() == connOpen {
		if len(c.hold) >= c.hub.cfg.SendQueueLen {
			if c.hub.cfg.SlowConsumer != SlowConsumerDropOldest {
				c.slowLocked()
				return false
			}
			// As the send queue would: the oldest held message goes.
			c.hold[0] = held{}
			c.hold = c.hold[1:]
			c.hub.stats.dropped.Add(1)
		}
		c.hold = append(c.hold, held{f, t, off})
		return true
	}
	if off != 0 && off <= c.replayed[t] {
		// Appended before the recovery read it, delivered after: sent
		// already, in the replay.
		return true
	}
	return c.push(f, t, off, tally)
}

// enqueuePong queues the answer to a ping. A pong queued and not yet
// taken by the writer answers the pings before this one: it is replaced
// by this one's (RFC 6455, 5.5.3: only the most recent ping needs an
// answer), so that a client's flood of pings costs one queued frame, not
// one each that could fill its queue.
func (c *Conn) enqueuePong(data []byte) {
	f := frame(opPong, data)
	c.mu.Lock()
	defer c.mu.Unlock()
	if q := c.queue; q != nil && q.pong > 0 && c.state.Load() == connOpen {
		delta := len(f) - len(q.frames[q.pong-1])
		q.frames[q.pong-1] = f
		c.qbytes += delta
		c.stat().resized(delta)
		return
	}
	if c.push(f, topic{}, 0, nil) {
		c.queue.pong = len(c.queue.frames)
	}
}

// held is a message frame waiting while its connection recovers.
type held struct {
	f   []byte
	t   topic
	off uint64
}

// pushLocked queues a frame for the writer. It never blocks: when the
// queue is full the slow-consumer policy decides. It returns false if f
// was not queued (the connection is closing, or f was dropped); frames
// dropped to make room are counted here, f itself by the caller. A frame
// of the user's own inbox on a connection without chart.v1 counts as
// acknowledged once written. The caller holds c.mu.
func (c *Conn) pushLocked(f []byte, t topic, off uint64) bool {
	return c.push(f, t, off, nil)
}

// push is pushLocked counting f in tally, or at once when tally is nil.
func (c *Conn) push(f []byte, t topic, off uint64, tally *queueTally) bool {
	cfg := &c.hub.cfg
	if c.state.Load() != connOpen {
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
		if cfg.SlowConsumer != SlowConsumerDropOldest {
			c.slowLocked()
			return false
		}
		dropped, size, length := 0, 0, len(q.frames)
		for full() {
			size += len(q.frames[0])
			c.qbytes -= len(q.frames[0])
			q.frames[0] = nil
			q.frames = q.frames[1:]
			dropped++
		}
		q.pong = max(q.pong-dropped, 0)
		c.stat().unqueued(length, dropped, size)
		c.hub.stats.dropped.Add(uint64(dropped))
	}
	q.frames = append(q.frames, f)
	c.qbytes += len(f)
	if tally != nil {
		tally.queued(c, len(q.frames), len(f))
	} else {
		c.stat().queued(len(q.frames), len(f))
	}
	if off > q.inbox && !c.v1 && t.ch == "" && t.uid == c.uid {
		q.inbox = off
	}
	c.startWriterLocked()
	return true
}

// slowLocked closes a connection that cannot keep up.
func (c *Conn) slowLocked() {
	c.closeLocked(&Error{Kind: ErrSlowConsumer, Uid: c.uid}, CloseSlowConsumer, "slow consumer", 0)
	// A write in progress may be stuck on a client that stopped reading:
	// give it CloseGrace, not WriteWait, to finish.
	c.nc.SetWriteDeadline(time.Now().Add(c.hub.cfg.CloseGrace))
}

func (c *Conn) startWriterLocked() {
	if !c.writing && c.state.Load() != connDead {
		c.writing = true
		c.writer.Add(1)
		if c.writeFn == nil {
			c.writeFn = c.writeLoop
		}
		go c.writeFn()
	}
}

// lingerFanOut is the number of recipients from which a fan-out makes
// writers linger (Hub.fanning).
const lingerFanOut = 64

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
				hangUp := c.hangUp
				c.mu.Unlock()
				if !c.writeClose(cf, hangUp) {
					return
				}
				continue
			}
			if lingered < 2 && !dead && c.hub.fanning.Load() > 0 {
				// Before exiting, while a large fan-out is under way,
				// twice let the goroutines waiting to run go first, among
				// them the publisher: what it queues meanwhile leaves in
				// this writer's next writev instead of costing a new
				// goroutine and a system call each (at 10,000
				// subscribers: +45% deliveries/s, bench/). Otherwise
				// (small rooms, direct messages) the yields would only
				// add scheduling to every delivery.
				lingered++
				c.mu.Unlock()
				runtime.Gosched()
				continue
			}
			c.writing = false
			c.discardLocked() // dead: what was queued is discarded
			c.queue = nil     // an idle connection holds no queue
			c.mu.Unlock()
			if batch != nil {
				batch.release()
			}
			return
		}
		c.unqueueLocked()
		c.queue, c.qbytes = nil, 0
		c.mu.Unlock()
		if !c.writeBatch(batch) {
			return
		}
	}
}

// writeBatch writes a batch of frames in one writev; false when the
// connection broke (it is then aborted). Once written, the stamped frames'
// delivery latencies are observed.
func (c *Conn) writeBatch(batch *sendQueue) bool {
	// The deadline moves at most once per half WriteWait, to 1.5 ×
	// WriteWait ahead: each write gets WriteWait to 1.5 × WriteWait, and
	// most batches leave the socket's deadline (a runtime timer) alone,
	// which each moved before (3% of the server's CPU in the rooms
	// benchmark).
	if now, ww := time.Now(), c.hub.cfg.WriteWait; c.wdl-now.UnixNano() < int64(ww) {
		d := now.Add(ww + ww/2)
		c.nc.SetWriteDeadline(d)
		c.wdl = d.UnixNano()
	}
	n := len(batch.frames)
	// The stamps are read before writing (WriteTo clears frames), into a
	// buffer that only writers at work hold.
	sp := stampBufs.Get().(*[]int64)
	stamps := (*sp)[:0]
	for _, f := range batch.frames {
		if at := frameStamp(f); at != 0 {
			stamps = append(stamps, at)
		}
	}
	c.bufs = batch.frames
	_, err := c.bufs.WriteTo(c.nc)
	c.bufs = nil
	if err == nil && len(stamps) > 0 {
		c.stat().observe(stamps)
	}
	if cap(stamps) <= 1024 {
		*sp = stamps[:0]
		stampBufs.Put(sp)
	}
	inbox := batch.inbox
	batch.release()
	if err == nil && inbox > 0 {
		c.hub.streams.ackStream(topic{uid: c.uid}, c.uid, "", inbox)
	}
	if err != nil {
		c.hub.stats.dropped.Add(uint64(n)) // not known to have been written
		c.setReason(&Error{Kind: ErrConnection, Uid: c.uid, Err: err})
		c.abort()
		return false
	}
	return true
}

// writeClose writes the close frame, then gives the client CloseGrace to
// answer, or drops the socket at once with hangUp; false when the writer
// must stop.
func (c *Conn) writeClose(cf []byte, hangUp bool) bool {
	cfg := &c.hub.cfg
	d := time.Now().Add(min(cfg.WriteWait, cfg.CloseGrace))
	c.nc.SetWriteDeadline(d)
	c.wdl = d.UnixNano()
	if _, err := c.nc.Write(cf); err != nil || hangUp {
		c.abort()
		return false
	}
	c.setReadDeadline(time.Now().Add(cfg.CloseGrace), true)
	return true
}

// sendQueue holds a connection's queued frames. Queues are pooled: a
// connection takes one when a frame arrives and the writer gives it back
// once written, so idle connections hold none and busy ones allocate none.
type sendQueue struct {
	frames [][]byte
	inbox  uint64 // the newest of the user's inbox among frames, to acknowledge once written
	pong   int    // 1 + the index of the pong among frames (enqueuePong); 0: none
}

// stampBufs holds the writers' buffers of a batch's stamps.
var stampBufs = sync.Pool{New: func() any { b := make([]int64, 0, 64); return &b }}

var sendQueues = sync.Pool{New: func() any { return &sendQueue{frames: make([][]byte, 0, 16)} }}

func (q *sendQueue) reset() {
	clear(q.frames)
	q.frames = q.frames[:0]
	q.inbox, q.pong = 0, 0
}

// unqueueLocked counts c's queued frames as gone from the send queues: the
// writer took them, or they are discarded. The caller holds c.mu and
// empties or drops the queue.
func (c *Conn) unqueueLocked() {
	if q := c.queue; q != nil {
		c.stat().unqueued(len(q.frames), len(q.frames), c.qbytes)
	}
}

// discardLocked is unqueueLocked for frames that will never be written:
// they count as dropped.
func (c *Conn) discardLocked() {
	if q := c.queue; q != nil {
		c.hub.stats.dropped.Add(uint64(len(q.frames)))
	}
	c.unqueueLocked()
}

func (q *sendQueue) release() {
	if cap(q.frames) > 1024 {
		return // let an outsized queue go
	}
	q.reset()
	sendQueues.Put(q)
}

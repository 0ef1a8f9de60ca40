package chart

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// The append pipeline. With a Broker that keeps the streams, every message
// is appended to its stream in the broker before it is delivered (the
// broker assigns its offset): a network round trip. Made one at a time,
// those round trips would cap a publisher at one message per round trip
// and deliver messages one by one, each its own socket write on every
// connection. So appends go through a pipeline when the broker can take
// them in batches (BatchStreams): a caller queues its append on the
// stream's shard; whoever finds the shard idle starts a flusher, which
// sends everything queued as one batch, hands each result back in order,
// and goes on until the shard's queue is empty. While a batch is on its
// way, the next one fills up. There is no long-lived goroutine: a shard's
// flusher exists while it has work. One stream is always on one shard, and
// a shard has one batch in flight, so a stream's appends keep their order.
//
// A caller either waits for its result (a client's send, which is
// acknowledged with its offset; a direct message), for a broker that
// answers nothing a second at most (see wait), or not (Publish): then the
// flusher delivers the message once its offset is known. A shard's
// queue is bounded (pipeQueue messages or pipeBytes): a publisher faster
// than the broker waits for room.

const (
	pipeShards = 8
	pipeBatch  = 256     // appends per batch at most
	pipeBytes  = 4 << 20 // queued bytes per shard at most (one message always fits)
	pipeQueue  = 4096    // queued appends per shard at most
)

// errPipeStopped is the result of an append queued as the cluster stops.
var errPipeStopped = errors.New("chart: node stopping, message not appended")

type pipeline struct {
	b      BatchStreams
	g      *guard // bounds wait (failfast.go); nil: unbounded
	spawn  func(func()) bool
	shards [pipeShards]pipeShard
}

type pipeShard struct {
	mu      sync.Mutex
	room    sync.Cond // signalled when the flusher took a batch
	queue   []*pipeItem
	bytes   int
	flusher bool
	sentAt  int64 // guard time when the batch in flight was sent; 0: none
}

// pipeItem is one queued append. done runs on the flusher's goroutine, in
// the order of the shard's queue.
type pipeItem struct {
	t    topic
	data []byte // the pipeline's copy
	done func(data []byte, off uint64, epoch string, err error)
}

func newPipeline(b BatchStreams, g *guard, spawn func(func()) bool) *pipeline {
	p := &pipeline{b: b, g: g, spawn: spawn}
	for i := range p.shards {
		p.shards[i].room.L = &p.shards[i].mu
	}
	return p
}

func (p *pipeline) shard(t topic) *pipeShard {
	x := t.uid
	if t.ch != "" {
		x = uint64(fnv(t.ch))
	}
	return &p.shards[x%pipeShards]
}

// submit queues data's append to t (data is copied) and returns; done
// receives the copy and the result.
func (p *pipeline) submit(t topic, data []byte, done func(data []byte, off uint64, epoch string, err error)) {
	it := &pipeItem{t: t, data: append([]byte(nil), data...), done: done}
	s := p.shard(t)
	s.mu.Lock()
	for len(s.queue) >= pipeQueue || (s.bytes > 0 && s.bytes+len(data) > pipeBytes) {
		s.room.Wait()
	}
	s.queue = append(s.queue, it)
	s.bytes += len(it.data)
	start := !s.flusher
	s.flusher = true
	s.mu.Unlock()
	if start && !p.spawn(func() { p.flush(s, true) }) {
		p.flush(s, false) // the cluster stops: fail what is queued here
	}
}

// wait appends data to t through the pipeline and returns the result.
// With a guard it waits at most appendWait for a broker that answers
// nothing (a batch in flight and no call completing), and not at all for
// a broker known to be down or when the stream's shard has a batch
// unanswered for that long already. It then returns errUnanswered and the
// append goes on without it (a broker just back stores it, as the
// guarded batch waits BrokerWait for it to answer: what is sent as it
// returns is in the stream, where the other nodes find it after their
// own reconnect): late gets its result when it comes. So a client's sends,
// which wait for their appends, are not held for the broker's own timeout
// while it is frozen, nor slowed to a batch per BrokerWait while it is
// down, and the client is read on (its messages did not pile up to be
// refused as over its rate when the broker returned).
func (p *pipeline) wait(t topic, data []byte, late func(data []byte, off uint64, epoch string, err error)) (uint64, string, error) {
	type result struct {
		off   uint64
		epoch string
		err   error
	}
	ch := make(chan result, 1)
	stuck := p.g != nil && (p.g.cl.down.Load() || p.shard(t).stuck(p.g, p.appendWait()))
	var state atomic.Int32 // 0 waited for, 1 answered, 2 given up
	p.submit(t, data, func(data []byte, off uint64, epoch string, err error) {
		if state.CompareAndSwap(0, 1) {
			ch <- result{off, epoch, err}
		} else {
			late(data, off, epoch, err)
		}
	})
	if p.g == nil {
		r := <-ch
		return r.off, r.epoch, r.err
	}
	if !stuck {
		if r, ok := awaitFor(p.g, ch, p.appendWait()); ok {
			return r.off, r.epoch, r.err
		}
	}
	if state.CompareAndSwap(0, 2) {
		return 0, "", errUnanswered
	}
	r := <-ch // answered meanwhile
	return r.off, r.epoch, r.err
}

// appendWait is how long wait waits for a broker that answers nothing:
// BrokerWait, but a second at least. A busy broker that takes longer than
// BrokerWait to store a batch must not be taken for a frozen one: what is
// given up on reaches the other nodes late.
func (p *pipeline) appendWait() int64 { return max(p.g.wait, int64(time.Second)) }

// errUnanswered is the result of a wait that the broker did not answer
// within appendWait: the append goes on (its late result follows). Like
// the guard's refusals, it does not mark the broker failing (a slow
// broker is not a down one).
var errUnanswered = fmt.Errorf("%w: append not answered in time (BrokerWait, a second at least): %w", ErrBrokerDown, context.DeadlineExceeded)

// stuck reports whether s has a batch in flight that the broker has not
// answered for appendWait, nor any other call since it was sent.
func (s *pipeShard) stuck(g *guard, wait int64) bool {
	s.mu.Lock()
	sent := s.sentAt
	s.mu.Unlock()
	return sent != 0 && g.now()-max(sent, g.progress.Load()) > wait
}

// flush sends s's queue in batches until it is empty; not live (the
// cluster stopping), it fails them.
func (p *pipeline) flush(s *pipeShard, live bool) {
	batch := make([]StreamAppend, 0, pipeBatch)
	var items []*pipeItem
	for {
		s.mu.Lock()
		n := min(len(s.queue), pipeBatch)
		if n == 0 {
			s.flusher = false
			s.mu.Unlock()
			return
		}
		items = append(items[:0], s.queue[:n]...)
		s.queue = append(s.queue[:0], s.queue[n:]...)
		for _, it := range items {
			s.bytes -= len(it.data)
		}
		if p.g != nil {
			s.sentAt = max(p.g.now(), 1)
		}
		s.room.Broadcast()
		s.mu.Unlock()

		batch = batch[:0]
		for _, it := range items {
			batch = append(batch, StreamAppend{Stream: it.t.name(), Data: it.data})
		}
		if live {
			p.b.AppendBatch(batch)
		} else {
			for i := range batch {
				batch[i].Err = errPipeStopped
			}
		}
		s.mu.Lock()
		s.sentAt = 0
		s.mu.Unlock()
		for i, it := range items {
			a := &batch[i]
			it.done(it.data, a.Offset, a.Epoch, a.Err)
		}
		clear(items)
	}
}

// ambiguous reports whether a failed append may have been stored all the
// same: the broker did not answer in time. The other nodes are then not
// sent the message; if the broker kept it, they read it from the stream
// when they notice its offset missing.
func ambiguous(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

package chart

import "sync"

// Acknowledgements on their way to the broker. A connection acknowledges
// its inbox every time its writer puts an inbox message on a plain
// (legacy) socket, and a chart.v1 client acknowledges with a frame; made
// there, each would be a broker round trip on the writer's or the
// reader's goroutine (a NATS acknowledgement is three). Instead the
// connection records the position in the ack queue and goes on; a flusher
// sends what is queued, one call per batch when the broker takes them in
// batches (BatchAcks), else one Ack per stream and uid. Positions only go
// forward, so while a batch is on its way the next acknowledgements of a
// stream and uid replace each other in the queue: a busy stream costs the
// broker one call per batch, not one per message. Like the pipeline's, a
// shard's flusher exists while it has work.
//
// What the queue holds is bounded by the streams and uids with local
// connections. An acknowledgement still queued when the node dies is lost:
// the client is then sent those messages again, which acknowledgements
// only ever bound from below.

const (
	ackShards = 8
	ackBatch  = 512 // acknowledgements per broker call at most
)

type ackKey struct {
	t   topic
	uid uint64
}

type ackQueue struct {
	s      Streams
	b      BatchAcks // nil: one Ack each
	spawn  func(func()) bool
	failed func(error)
	shards [ackShards]ackShard
}

type ackShard struct {
	mu      sync.Mutex
	sent    sync.Cond // signalled when a batch has been sent
	queue   map[ackKey]position
	flusher bool
	taken   uint64 // batches taken from the queue
	done    uint64 // batches sent
}

// newAckQueue returns the queue of acknowledgements to s, sent in batches
// through b when b is not nil.
func newAckQueue(s Streams, b BatchAcks, spawn func(func()) bool, failed func(error)) *ackQueue {
	q := &ackQueue{s: s, b: b, spawn: spawn, failed: failed}
	for i := range q.shards {
		q.shards[i].sent.L = &q.shards[i].mu
		q.shards[i].queue = make(map[ackKey]position)
	}
	return q
}

func (q *ackQueue) shard(k ackKey) *ackShard {
	return &q.shards[(k.uid^uint64(fnv(k.t.ch))^k.t.uid)%ackShards]
}

// put queues uid's acknowledgement of stream t up to off (epoch "" is the
// stream's current one) and returns.
func (q *ackQueue) put(t topic, uid uint64, epoch string, off uint64) {
	k := ackKey{t, uid}
	s := q.shard(k)
	s.mu.Lock()
	if p, ok := s.queue[k]; !ok || p.Epoch != epoch || p.Offset < off {
		s.queue[k] = position{Epoch: epoch, Offset: off}
	}
	start := !s.flusher
	s.flusher = true
	s.mu.Unlock()
	if start && !q.spawn(func() { q.flush(s) }) {
		s.mu.Lock() // the node stops: what is queued is dropped
		clear(s.queue)
		s.flusher = false
		s.mu.Unlock()
	}
}

// settle sends uid's queued acknowledgement of t, if any, and waits for
// the batch on its way, so that the broker has every acknowledgement of
// t by uid made on this node before it returns.
func (q *ackQueue) settle(t topic, uid uint64) {
	k := ackKey{t, uid}
	s := q.shard(k)
	s.mu.Lock()
	p, ok := s.queue[k]
	delete(s.queue, k)
	for taken := s.taken; s.done < taken; {
		s.sent.Wait()
	}
	s.mu.Unlock()
	if ok {
		q.send([]StreamAck{{Stream: t.name(), Uid: uid, Epoch: p.Epoch, Offset: p.Offset}})
	}
}

// flush sends s's queue until it is empty.
func (q *ackQueue) flush(s *ackShard) {
	var batch []StreamAck
	for {
		s.mu.Lock()
		if len(s.queue) == 0 {
			s.flusher = false
			s.mu.Unlock()
			return
		}
		batch = batch[:0]
		for k, p := range s.queue {
			batch = append(batch, StreamAck{Stream: k.t.name(), Uid: k.uid, Epoch: p.Epoch, Offset: p.Offset})
			delete(s.queue, k)
			if len(batch) == ackBatch {
				break
			}
		}
		s.taken++
		s.mu.Unlock()
		q.send(batch)
		s.mu.Lock()
		s.done++
		s.sent.Broadcast()
		s.mu.Unlock()
	}
}

func (q *ackQueue) send(batch []StreamAck) {
	if q.b != nil {
		if err := q.b.AckBatch(batch); err != nil {
			q.failed(err)
		}
		return
	}
	for _, a := range batch {
		if err := q.s.Ack(a.Stream, a.Uid, a.Epoch, a.Offset); err != nil {
			q.failed(err)
			return
		}
	}
}

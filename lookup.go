package chart

import (
	"fmt"
	"sync"
)

// Presence lookups in batches. A direct message to a uid not connected to
// this node asks the broker whether the recipient is online anywhere
// (Message.Online, and ErrUserOffline without inboxes): a round trip on
// the sender's reader. With many senders, those round trips are most of
// what a node spends on direct messages. When the broker answers for many
// uids at once (BatchPresence), the lookups go through a queue: whoever
// finds it idle starts a flusher, which asks for everything queued in one
// call, hands each answer back, and goes on until the queue is empty, so
// the lookups made while one call is on its way share the next.
//
// A lookup waits for its batch; like any broker call, it is refused at
// once while the broker is failing or stuck (failfast.go), and the batch
// call counts as one call in flight. A lookup whose batch gets no answer
// for BrokerWait gives up with ErrBrokerDown (bounded).

// lookupBatch bounds the uids of one batch.
const lookupBatch = 512

type lookupQueue struct {
	p       BatchPresence
	g       *guard
	spawn   func(func()) bool
	mu      sync.Mutex
	queue   []*lookup
	flusher bool
}

// lookup is one queued IsOnline.
type lookup struct {
	uid    uint64
	online bool
	err    error
	done   chan struct{}
}

func newLookupQueue(p BatchPresence, g *guard, spawn func(func()) bool) *lookupQueue {
	return &lookupQueue{p: p, g: g, spawn: spawn}
}

// isOnline asks whether uid is online anywhere and waits for the answer.
func (q *lookupQueue) isOnline(uid uint64) (bool, error) {
	if err := q.g.enter(false); err != nil {
		return false, err
	}
	l := &lookup{uid: uid, done: make(chan struct{})}
	q.mu.Lock()
	q.queue = append(q.queue, l)
	start := !q.flusher
	q.flusher = true
	q.mu.Unlock()
	if start && !q.spawn(q.flush) {
		q.flush() // the cluster stops: ask here
	}
	if _, ok := await(q.g, l.done); !ok {
		return false, ErrBrokerDown // the batch goes on; its answer is dropped
	}
	return l.online, l.err
}

// flush answers the queue in batches until it is empty.
func (q *lookupQueue) flush() {
	var batch []*lookup
	var uids []uint64
	for {
		q.mu.Lock()
		n := min(len(q.queue), lookupBatch)
		if n == 0 {
			q.flusher = false
			q.mu.Unlock()
			return
		}
		batch = append(batch[:0], q.queue[:n]...)
		q.queue = append(q.queue[:0], q.queue[n:]...)
		q.mu.Unlock()

		uids = uids[:0]
		for _, l := range batch {
			uids = append(uids, l.uid)
		}
		online, err := guarded(q.g, func() ([]bool, error) { return q.p.IsOnlineBatch(uids) })
		if err == nil && len(online) != len(uids) {
			err = fmt.Errorf("chart: IsOnlineBatch answered %d of %d uids", len(online), len(uids))
		}
		for i, l := range batch {
			if err != nil {
				l.err = err
			} else {
				l.online = online[i]
			}
			close(l.done)
		}
		clear(batch)
	}
}

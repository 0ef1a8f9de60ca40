package chart

import (
	"bytes"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Offset order across nodes. When the broker keeps the streams, it assigns
// a message its offset when the publishing node appends it; the message
// then reaches this node from that node (through the broker) or from this
// node's own publish. Two nodes publishing to one stream at once can make
// offset 7 arrive here before offset 6. A client that saw 7 and is cut
// before 6 would resume after 7 and lose 6; one that tracks the last
// offset it saw would be replayed 7 again. The sequencer puts each shared
// stream's messages back in offset order before they reach this node's
// connections: a message beyond the next expected offset waits, at most
// reorderWait, for the ones before it. A hole that does not fill in that
// time (its publisher died between the append and the publish, or the
// publish failed, or is slow) is read from the stream, or skipped if the
// stream no longer has it; a message that comes after its turn is dropped:
// it went out from the stream already, or the connections went on. A node
// starts following a stream where a connection's recovery read it
// (startAt), or else with the first messages it receives, which wait
// reorderWait for any published just before them; it forgets the stream
// when its last local subscriber goes, or after reorderIdle without
// traffic, so what it holds is bounded by the streams with local
// subscribers.
//
// A single node needs none of this: its history stamps and delivers a
// stream's messages under one lock (history.order).

const (
	// reorderWait is how long a message may wait for earlier offsets.
	reorderWait = 100 * time.Millisecond
	// reorderMax and reorderBytes bound what one stream holds; beyond
	// either, everything held goes out, in order, skipping the hole.
	reorderMax   = 8192
	reorderBytes = 4 << 20
	// reorderIdle is how long a stream is followed without traffic (a
	// stream is forgotten anyway when its last local subscriber goes).
	reorderIdle = 10 * time.Minute
)

// sequencer keeps the shared streams' delivery order on this node. A nil
// *sequencer delivers at once: the hub's streams are its own.
type sequencer struct {
	hub    *Hub
	shards [16]seqShard
	// outages counts the broker outages this node saw begin; each
	// sequence marks where it stood when it first delivered after the
	// latest began (sequence.mark, elsewhere.go).
	outages atomic.Uint64
	// keeping is set from an outage's start until a while after the
	// broker's return (keepEnd): the sequences keep what they deliver
	// (sequence.kept), kept bytes in all (lateKeepBytes at most).
	keeping    atomic.Bool
	kept       atomic.Int64
	keepBudget int64 // lateKeepBytes
	// unplacedBytes is what the sequences' unplaced messages hold, all
	// streams together (unplacedMax at most).
	unplacedBytes atomic.Int64
	keepMu        sync.Mutex
	keepEnd       *time.Timer
}

type seqShard struct {
	mu    sync.Mutex
	m     map[topic]*sequence
	swept time.Time
}

// sequence is the order state of one stream on this node.
type sequence struct {
	mu    sync.Mutex
	epoch string
	next  uint64 // the offset due next; 0 before the first
	held  []held // waiting for next, by ascending offset
	bytes int    // the size of the held frames
	timer *time.Timer
	round uint64 // the timer's: a stopped timer's late call is ignored
	used  time.Time
	gone  bool        // removed from its shard; look it up again
	skips [][2]uint64 // the last holes skipped: [from, to)
	first uint64      // the first offset delivered since following the stream
	left  []string    // the epochs left behind, oldest first (maxLeft)
	// leftNext is, for each epoch left behind, the offset that was due
	// next in it when it was left: what came before went out here.
	leftNext []uint64
	lost     bool // a recovery could not read the stream (startLost)
	// lostAt is when the first such recovery found the broker failing:
	// what the stream got from then on is new to its connections.
	lostAt time.Time
	// mark is the first offset delivered in order here, in markEpoch,
	// since outage markOf began (markOf 0: none since the latest): what
	// a connection that came during the outage missed starts there
	// (elsewhere.go).
	mark      uint64
	markEpoch string
	markOf    uint64
	// kept is what went out since mark, in markEpoch, while the node
	// keeps it for late joins (sequencer.keeping), and before what went
	// out since the outage began in epochs left behind since (reset),
	// gone from the stream: a late join replays them from here
	// (elsewhere.go). Each holds at most lateCap frames; keptBytes is
	// their size. keptAll: they hold every delivery since mark (the
	// node's budget was not spent).
	kept      []held
	before    []held
	keptBytes int
	keptAll   bool
	// lastOut is when the newest message that went out here in order
	// came (monotime): whether a new connection's first moments may have
	// missed some (catchUpFollowed).
	lastOut int64
	// unplaced are messages of the stream that went out here without
	// their offset (their append failed, timed out or was given up on,
	// here or on the node that sent them) and that may reach the stream
	// later (stored after all, or appended again by their node's heal):
	// coming back with an offset, such a message takes its turn without
	// going out again (see unplace).
	unplaced []unplacedMsg
}

// unplacedMsg is a message that went out without its offset (data, as
// appended) and when (monotime).
type unplacedMsg struct {
	data []byte
	at   int64
}

// unplacedAge bounds how long a message may wait to be found in its
// stream: the broker stores an append it got, if ever, once it answers
// again, and a node reads the stream right after that (catchUp, heal).
const unplacedAge = int64(10 * time.Minute)

// unplacedMax bounds what a node's sequences hold of unplaced messages,
// all streams together: beyond it, a message that went out without its
// offset may go out again, with it.
const unplacedMax = 16 << 20

// maxSkips bounds the holes a sequence remembers.
const maxSkips = 16

// skip remembers that offsets [from, to) were skipped. q.mu is held.
func (q *sequence) skip(from, to uint64) {
	if len(q.skips) == maxSkips {
		copy(q.skips, q.skips[1:])
		q.skips = q.skips[:maxSkips-1]
	}
	q.skips = append(q.skips, [2]uint64{from, to})
}

// wasSkipped reports whether off was in a hole skipped, and forgets it
// there. q.mu is held.
func (q *sequence) wasSkipped(off uint64) bool {
	for i, r := range q.skips {
		if off >= r[0] && off < r[1] {
			switch {
			case r[1]-r[0] == 1:
				q.skips = append(q.skips[:i], q.skips[i+1:]...)
			case off == r[0]:
				q.skips[i][0]++
			case off == r[1]-1:
				q.skips[i][1]--
			}
			return true
		}
	}
	return false
}

func newSequencer(h *Hub) *sequencer {
	s := &sequencer{hub: h, keepBudget: lateKeepBytes}
	for i := range s.shards {
		s.shards[i].m = make(map[topic]*sequence)
	}
	return s
}

// deliverAt queues f, the frame of the message at offset off of stream t
// (under epoch), on the local connections subscribed to t: at once on a
// single node, or for a message without a position; else in offset order,
// through the sequencer.
func (h *Hub) deliverAt(t topic, f []byte, off uint64, epoch string) {
	if h.seq == nil || off == 0 {
		h.deliverTo(t, f, off)
		return
	}
	if h.subscribed(t) {
		h.seq.deliver(t, f, off, epoch)
	}
}

// deliver queues f after every earlier offset of t that is on its way here.
func (s *sequencer) deliver(t topic, f []byte, off uint64, epoch string) {
	q := s.lookup(t) // locked
	defer q.mu.Unlock()
	q.used = time.Now()
	if len(q.unplaced) > 0 && s.placedFrame(q, f) {
		f = nil // it went out here without its offset: its turn passes
	}
	if epoch != q.epoch {
		if i := slices.Index(q.left, epoch); i >= 0 {
			// From an epoch this node left behind, on its way before the
			// stream was reset: it goes out as it comes, without turning
			// the order back to its epoch, unless its turn had passed
			// when the epoch was left (it went out, read from the stream
			// before the reset: a node that heals a stream reads it
			// first, and the appends a frozen broker stored at its thaw
			// reach it after).
			if off >= q.leftNext[i] && f != nil {
				s.hub.deliverTo(t, f, off)
			}
			return
		}
		s.reset(t, q, epoch)
	}
	switch {
	case q.next == 0 && off > 1:
		// The first message since this node followed the stream: one
		// published just before it may still be on its way, and would
		// come after it. The first messages wait (reorderWait), then go
		// out in order; what came before them and comes later is late.
		q.insert(held{f, t, off})
		s.wait(t, q)
	case q.next == 0 || off == q.next:
		if q.next == 0 {
			q.first = off
		}
		s.out(t, q, f, off)
		q.next = off + 1
		s.drain(t, q)
	case off < q.next:
		// Late: its turn passed. It went out then, read from the stream
		// (delivering it again would double it), unless it was skipped or
		// comes from before this node followed the stream (the first
		// message it saw may have overtaken it): then it goes out now,
		// late rather than never.
		if (off < q.first || q.wasSkipped(off)) && f != nil {
			s.hub.deliverTo(t, f, off)
		}
	default:
		q.insert(held{f, t, off})
		s.wait(t, q)
	}
}

// unplace notes that data, a message of t, went out here without its
// offset: its append failed, timed out or was given up on (pipeline.wait),
// here or on the node that sent it. It may reach the stream later: stored
// after all, or appended again by its node's heal. When it comes back
// with an offset (read from the stream for a hole or a catch-up, or sent
// by its node), it takes its turn here without going out a second time.
// A sequence notes lateCap such messages at most, each for unplacedAge,
// and the node unplacedMax bytes of them.
func (s *sequencer) unplace(t topic, data []byte) {
	if s == nil || !s.hub.subscribed(t) {
		return // it went out to nobody here
	}
	q := s.lookup(t)
	defer q.mu.Unlock()
	now := monotime()
	k := 0
	for k < len(q.unplaced) && (len(q.unplaced)-k >= s.lateCap() || now-q.unplaced[k].at > unplacedAge) {
		k++
	}
	q.dropUnplaced(k, &s.unplacedBytes)
	if s.unplacedBytes.Add(int64(len(data))) > unplacedMax {
		s.unplacedBytes.Add(-int64(len(data)))
		return
	}
	q.unplaced = append(q.unplaced, unplacedMsg{bytes.Clone(data), now})
}

// dropUnplaced forgets the first k unplaced messages, counted in n.
// q.mu is held.
func (q *sequence) dropUnplaced(k int, n *atomic.Int64) {
	if k == 0 {
		return
	}
	for _, u := range q.unplaced[:k] {
		n.Add(-int64(len(u.data)))
	}
	m := copy(q.unplaced, q.unplaced[k:])
	clear(q.unplaced[m:])
	q.unplaced = q.unplaced[:m]
	if m == 0 {
		q.unplaced = nil
	}
}

// placed forgets data if it was unplaced, and reports whether it was.
// q.mu is held.
func (s *sequencer) placed(q *sequence, data []byte) bool {
	for i, u := range q.unplaced {
		if bytes.Equal(u.data, data) {
			s.unplacedBytes.Add(-int64(len(u.data)))
			q.unplaced = slices.Delete(q.unplaced, i, i+1)
			return true
		}
	}
	return false
}

// placedFrame is placed for f, the frame of a message with its position:
// its JSON is the message as appended, then the position.
func (s *sequencer) placedFrame(q *sequence, f []byte) bool {
	if len(f) < 2 {
		return false
	}
	body := f[2:]
	switch f[1] & 127 {
	case 126:
		body = f[4:]
	case 127:
		body = f[10:]
	}
	for i, u := range q.unplaced {
		if len(body) > len(u.data) && body[len(u.data)] == ',' && bytes.HasPrefix(body, u.data) {
			s.unplacedBytes.Add(-int64(len(u.data)))
			q.unplaced = slices.Delete(q.unplaced, i, i+1)
			return true
		}
	}
	return false
}

// passed takes offset off of t (epoch) as gone out here already: its
// message, data, was delivered without it (its append answered after its
// sender stopped waiting, pipeline.wait). Its turn passes without its
// going out again, as it would when read from the stream for a hole.
func (s *sequencer) passed(t topic, off uint64, epoch string, data []byte) {
	q := s.lookup(t) // locked
	defer q.mu.Unlock()
	s.placed(q, data)
	if q.epoch == "" || slices.Contains(q.left, epoch) {
		// A stream this node has not followed yet (its first message
		// sets where it starts, and nothing before that is read back),
		// or an epoch it left.
		return
	}
	if epoch != q.epoch {
		s.reset(t, q, epoch) // the broker restarted empty: a new epoch begins with it
	}
	switch {
	case off < q.next:
	case off == q.next:
		q.next++
		s.drain(t, q)
	default:
		q.insert(held{nil, t, off}) // a place holder: it goes nowhere
		s.wait(t, q)
	}
}

// reset follows a new epoch of t: the stream's history was lost and its
// offsets start again from 1. What waits for the old epoch goes first.
// q.mu is held.
func (s *sequencer) reset(t topic, q *sequence, epoch string) {
	s.flush(t, q)
	q.skips = nil
	if q.markOf != 0 && q.markOf == s.outages.Load() {
		// The old epoch's part cannot be read again: what of it went out
		// here since the outage began is kept.
		if q.markEpoch == q.epoch {
			q.before = s.capped(q, append(q.before, q.kept...), s.lateCap())
			q.kept = nil
		}
		q.mark, q.markEpoch = 1, epoch
	}
	switch {
	case q.epoch == "" && q.next == 0:
		// new here: the first message sets the order
	case q.epoch == "":
		// The stream was empty when this node began following it
		// (startEmpty): all of its first epoch is new here.
		q.next, q.first = 1, 1
	default:
		if len(q.left) == maxLeft {
			copy(q.left, q.left[1:])
			q.left = q.left[:maxLeft-1]
			copy(q.leftNext, q.leftNext[1:])
			q.leftNext = q.leftNext[:maxLeft-1]
		}
		q.left = append(q.left, q.epoch)
		q.leftNext = append(q.leftNext, q.next)
		q.next, q.first = 1, 1
	}
	q.epoch = epoch
}

// maxLeft bounds the epochs a sequence remembers having left.
const maxLeft = 4

// wait starts the wait for what q holds, or ends it at once when q holds
// too much. q.mu is held.
func (s *sequencer) wait(t topic, q *sequence) {
	switch {
	case len(q.held) == 0:
	case len(q.held) >= reorderMax || q.bytes > reorderBytes:
		s.flush(t, q)
	case q.timer == nil:
		q.round++
		round := q.round
		q.timer = time.AfterFunc(reorderWait, func() { s.expire(t, q, round) })
	}
}

// shard is t's shard.
func (s *sequencer) shard(t topic) *seqShard {
	x := t.uid
	if t.ch != "" {
		x = uint64(fnv(t.ch))
	}
	return &s.shards[(x*0x9E3779B97F4A7C15)>>60]
}

// lookup returns t's sequence, locked, making it if needed.
func (s *sequencer) lookup(t topic) *sequence {
	sh := s.shard(t)
	for {
		sh.mu.Lock()
		q := sh.m[t]
		if q == nil {
			now := time.Now()
			if now.Sub(sh.swept) > reorderIdle {
				sh.sweep(now, &s.unplacedBytes)
			}
			q = &sequence{}
			sh.m[t] = q
		}
		sh.mu.Unlock()
		q.mu.Lock()
		if !q.gone {
			return q
		}
		q.mu.Unlock()
	}
}

// sweep forgets the streams idle for reorderIdle. The caller holds sh.mu.
func (sh *seqShard) sweep(now time.Time, unplaced *atomic.Int64) {
	sh.swept = now
	for t, q := range sh.m {
		q.mu.Lock()
		if len(q.held) == 0 && q.keptBytes == 0 && now.Sub(q.used) > reorderIdle {
			q.gone = true
			delete(sh.m, t)
			q.dropUnplaced(len(q.unplaced), unplaced)
		}
		q.mu.Unlock()
	}
}

// insert adds m to the held messages in offset order; a second copy of an
// offset is dropped.
func (q *sequence) insert(m held) {
	i := len(q.held)
	for i > 0 && q.held[i-1].off > m.off {
		i--
	}
	if i > 0 && q.held[i-1].off == m.off {
		return
	}
	q.bytes += len(m.f)
	q.held = append(q.held, held{})
	copy(q.held[i+1:], q.held[i:])
	q.held[i] = m
}

// drain delivers the held messages that are now due. q.mu is held.
func (s *sequencer) drain(t topic, q *sequence) {
	k := 0
	for ; k < len(q.held) && q.held[k].off <= q.next; k++ {
		m := q.held[k]
		s.out(t, q, m.f, m.off)
		if m.off == q.next {
			q.next++
		}
	}
	q.release(k)
}

// flush delivers every held message in order, skipping (and counting)
// the holes before them. q.mu is held.
func (s *sequencer) flush(t topic, q *sequence) {
	for _, m := range q.held {
		if q.next != 0 && m.off != q.next {
			s.hub.stats.holes.Add(1)
			q.skip(q.next, m.off)
		}
		s.out(t, q, m.f, m.off)
		q.next = m.off + 1
	}
	q.release(len(q.held))
}

// flushTo delivers the held messages up to offset upTo in order, and
// skips (and counts) the holes up to it. q.mu is held.
func (s *sequencer) flushTo(t topic, q *sequence, upTo uint64) {
	k := 0
	for ; k < len(q.held) && q.held[k].off <= upTo; k++ {
		m := q.held[k]
		if q.next != 0 && m.off != q.next {
			s.hub.stats.holes.Add(1)
			q.skip(q.next, m.off)
		}
		s.out(t, q, m.f, m.off)
		q.next = m.off + 1
	}
	q.release(k)
	if q.next != 0 && q.next <= upTo {
		s.hub.stats.holes.Add(1)
		q.skip(q.next, upTo+1)
		q.next = upTo + 1
	}
}

// release drops the first k held messages and stops the timer when none
// waits any more.
func (q *sequence) release(k int) {
	if k > 0 {
		for _, m := range q.held[:k] {
			q.bytes -= len(m.f)
		}
		n := copy(q.held, q.held[k:])
		clear(q.held[n:])
		q.held = q.held[:n]
	}
	if len(q.held) == 0 {
		if q.timer != nil {
			q.timer.Stop()
			q.timer = nil
		}
		if cap(q.held) > 64 {
			q.held = nil // a burst's array is not kept
		}
	}
}

// expire ends a wait: the missing offsets are read from the stream (the
// broker has them when their publisher appended them and failed to
// publish) and delivered in their place; what is still missing is
// skipped. The read runs without q.mu; whatever changed meanwhile (the
// hole filled, a new wait began) wins over it.
func (s *sequencer) expire(t topic, q *sequence, round uint64) {
	q.mu.Lock()
	if q.round != round || q.timer == nil || len(q.held) == 0 {
		q.mu.Unlock()
		return // the hole filled; a new wait may have begun
	}
	if q.next == 0 && q.lost {
		// An inbox whose position was lost: where it starts is found
		// first, or the first messages would hide what came before them.
		q.timer = nil
		q.mu.Unlock()
		s.startAcked(t, q)
		q.mu.Lock()
		if q.next != 0 || q.timer != nil || len(q.held) == 0 {
			q.mu.Unlock()
			return // started, or waiting anew
		}
	}
	if q.next == 0 {
		// The first messages of a newly followed stream waited for any
		// published just before them: they go out in order, from the
		// lowest, and what is missing between them is waited for as a
		// hole.
		q.timer = nil
		q.next, q.first = q.held[0].off, q.held[0].off
		s.drain(t, q)
		s.wait(t, q)
		q.mu.Unlock()
		return
	}
	from, epoch, left := q.next, q.epoch, slices.Clone(q.left)
	q.mu.Unlock()

	entries, got, last := s.readSince(t, from, epoch, left)

	q.mu.Lock()
	defer q.mu.Unlock()
	if q.round != round || q.timer == nil {
		return // a new wait began meanwhile: its timer decides
	}
	q.timer = nil
	switch {
	case q.next != from || q.epoch != epoch:
		// The hole filled while the read ran, and what is held now may
		// wait for another: it gets a wait of its own.
	case got == "":
		s.flush(t, q) // the broker fails: no telling what is missing
		return
	default:
		// What the stream has up to its newest offset goes out, its
		// holes skipped: gone from the stream. Messages that arrived
		// during the read beyond that offset wait for those before them,
		// still on their way.
		s.fill(t, q, entries, got)
		s.flushTo(t, q, last)
		s.drain(t, q)
	}
	s.wait(t, q)
}

// read returns what stream t has from offset from on (all of it: read
// keeps the newest when limited; the stream's size bounds it), its epoch
// and its newest offset; no epoch when the broker fails.
func (s *sequencer) read(t topic, from uint64) ([]entry, string, uint64) {
	entries, epoch, _, last := s.hub.streams.read(t, max(from, 1)-1, 0)
	return entries, epoch, last
}

// readSince is read for a stream this node stands at offset from of,
// under epoch: when the stream has another epoch now (its history was
// lost, or reset, since), none of that epoch went out here, and it is
// read from its start. left are the epochs left behind.
func (s *sequencer) readSince(t topic, from uint64, epoch string, left []string) ([]entry, string, uint64) {
	entries, got, last := s.read(t, from)
	if got != "" && got != epoch && from > 1 && !slices.Contains(left, got) {
		entries, got, last = s.read(t, 1)
	}
	return entries, got, last
}

// fill adds to what q holds the entries read from its stream, in their
// epoch; those it already has or delivered are left out. q.mu is held.
func (s *sequencer) fill(t topic, q *sequence, entries []entry, epoch string) {
	if epoch == "" {
		return
	}
	if epoch != q.epoch {
		if slices.Contains(q.left, epoch) {
			return // read before the stream was reset
		}
		s.reset(t, q, epoch)
	}
	for _, e := range entries {
		if e.off >= q.next {
			f := framePrefix(e.data, e.off, epoch)
			if len(q.unplaced) > 0 && s.placed(q, e.data) {
				f = nil // it went out here without its offset: its turn passes
			}
			q.insert(held{f, t, e.off})
		}
	}
}

// catchUp delivers what this node missed of the streams it follows while
// the broker could not deliver to it (Node.Resumed): each is read from
// where it stands here. It runs on its own goroutine, the reads without
// locks.
func (s *sequencer) catchUp() {
	if s == nil {
		return
	}
	type followed struct {
		t topic
		q *sequence
	}
	var all []followed
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for t, q := range sh.m {
			all = append(all, followed{t, q})
		}
		sh.mu.Unlock()
	}
	for _, f := range all {
		s.catchUpOne(f.t, f.q)
	}
}

// catchUpStream is catchUp for stream t alone, if this node follows it.
func (s *sequencer) catchUpStream(t topic) {
	if s == nil {
		return
	}
	sh := s.shard(t)
	sh.mu.Lock()
	q := sh.m[t]
	sh.mu.Unlock()
	if q != nil {
		s.catchUpOne(t, q)
	}
}

// catchUpOne reads stream t, followed in q, from where it stands here, and
// delivers what this node has not.
func (s *sequencer) catchUpOne(t topic, q *sequence) {
	if !s.hub.subscribed(t) {
		return
	}
	q.mu.Lock()
	from, epoch, gone, left := q.next, q.epoch, q.gone, slices.Clone(q.left)
	q.mu.Unlock()
	if gone {
		return
	}
	if from == 0 {
		s.startAcked(t, q)
		return
	}
	entries, got, _ := s.readSince(t, from, epoch, left)
	q.mu.Lock()
	if !q.gone && q.next == from && q.epoch == epoch {
		s.fill(t, q, entries, got)
		s.drain(t, q)
		s.wait(t, q)
	}
	q.mu.Unlock()
}

// startAt tells the sequencer, after a connection's recovery read t's
// stream up to offset last under epoch, where a stream this node has just
// begun to follow stands: the next offset due is last+1 (what was read
// went out in the replay). A stream it already follows keeps its order.
func (s *sequencer) startAt(t topic, epoch string, last uint64) {
	if s == nil || epoch == "" {
		return
	}
	q := s.lookup(t)
	defer q.mu.Unlock()
	if q.epoch != "" && q.epoch != epoch {
		return // reset meanwhile: the live messages tell the new epoch
	}
	if q.next != 0 && q.epoch == epoch {
		return
	}
	q.epoch = epoch
	q.next, q.first = last+1, last+1
	k := 0
	for k < len(q.held) && q.held[k].off <= last {
		k++
	}
	q.release(k) // went out in the replay
	s.drain(t, q)
	s.wait(t, q)
}

// startTail tells the sequencer where stream t stood (under epoch, at
// offset last; epoch "" when it did not exist) just before this node
// subscribed to it for a new local member: what comes after is live for
// the members, what came before is the stream's past, and goes out to
// nobody even when it arrives late (it was on its way when the node
// subscribed). A stream this node already follows keeps its order.
// fresh are entries after last already read (a start in the past: what
// the stream got since a join or a connection came), which go out now.
func (s *sequencer) startTail(t topic, epoch string, last uint64, fresh []entry) {
	if s == nil {
		return
	}
	q := s.lookup(t)
	defer q.mu.Unlock()
	if q.next != 0 || (q.epoch != "" && q.epoch != epoch) {
		return // started meanwhile, or reset: the live messages tell
	}
	if epoch == "" {
		last = 0 // everything of the epoch it starts is new here
	}
	q.epoch = epoch
	q.next, q.first = last+1, 1
	k := 0
	for k < len(q.held) && q.held[k].off <= last {
		k++
	}
	q.release(k)
	if epoch != "" {
		for _, e := range fresh {
			if e.off > last {
				q.insert(held{framePrefix(e.data, e.off, epoch), t, e.off})
			}
		}
	}
	s.drain(t, q)
	s.wait(t, q)
}

// epochOf returns the epoch this node follows t in; "" when it does not
// follow t or knows no epoch of it yet.
func (s *sequencer) epochOf(t topic) string {
	if s == nil {
		return ""
	}
	sh := s.shard(t)
	sh.mu.Lock()
	q := sh.m[t]
	sh.mu.Unlock()
	if q == nil {
		return ""
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.epoch
}

// startEmpty tells the sequencer that a connection's recovery found
// stream t empty: a stream this node has just begun to follow then owes
// its connections every entry from offset 1 of whatever epoch it starts,
// and what of it this node misses (published before its subscription
// took effect: it came back from an outage later than the publisher) is
// read from the stream, as a hole.
func (s *sequencer) startEmpty(t topic) {
	if s == nil {
		return
	}
	q := s.lookup(t)
	defer q.mu.Unlock()
	if q.epoch == "" && q.next == 0 {
		q.next, q.first = 1, 1
	}
}

// startLost tells the sequencer that a connection's recovery could not
// read stream t (the broker failed): where a stream this node has just
// begun to follow stands is unknown, and for an inbox it is found, once
// the broker answers again, from what its user acknowledged (startAcked).
func (s *sequencer) startLost(t topic) {
	if s == nil || t.ch != "" || t.all {
		return
	}
	q := s.lookup(t)
	defer q.mu.Unlock()
	if q.epoch == "" && q.next == 0 && !q.lost {
		q.lost, q.lostAt = true, time.Now()
	}
}

// lostSkew is how far the broker's clock, which times the stream's
// entries, may be behind this node's: an inbox whose position was lost
// (startLost) starts no later than its first entry timed from lostSkew
// before the loss on.
const lostSkew = time.Second

// startAcked starts the order of inbox t, followed in q, whose position
// was lost (startLost), where its user's acknowledgements stand: what no
// connection of the user was written yet goes out, the part this node
// missed while the broker could not deliver to it read from the stream,
// as a plain connection's recovery would have. What the inbox got after
// the loss goes out too, even when the user acknowledged it on another
// node before this one could read the stream again: this node's
// connections of the user opened before it came. It does nothing once a
// message of t went out here.
func (s *sequencer) startAcked(t topic, q *sequence) {
	q.mu.Lock()
	lost, since := q.lost && q.next == 0, q.lostAt.Add(-lostSkew).UnixNano()
	q.mu.Unlock()
	if !lost {
		return
	}
	off, epoch := s.hub.streams.acked(t, t.uid)
	if epoch == "" {
		return // failing, or empty: the first messages set the order
	}
	// Read from a little before the acknowledged position: what was
	// acknowledged elsewhere after the loss, up to half a send queue.
	entries, got, _ := s.read(t, off+1-min(off, uint64(s.lateCap())))
	start := off + 1
	for _, e := range entries {
		if e.off < start && e.at >= since && e.at != 0 {
			start = e.off
			break
		}
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.gone || q.next != 0 || got != epoch || (q.epoch != "" && q.epoch != epoch) {
		return
	}
	q.lost = false
	q.epoch = epoch
	q.next, q.first = start, start
	k := 0
	for k < len(q.held) && q.held[k].off < start {
		k++
	}
	q.release(k) // written to a connection of the user before these opened
	s.fill(t, q, entries, got)
	s.drain(t, q)
	s.wait(t, q)
}

// forget stops following t: what it holds is dropped.
func (s *sequencer) forget(t topic) {
	if s == nil {
		return
	}
	sh := s.shard(t)
	sh.mu.Lock()
	q := sh.m[t]
	delete(sh.m, t)
	sh.mu.Unlock()
	if q != nil {
		q.mu.Lock()
		q.gone = true
		q.release(len(q.held))
		s.dropKept(q)
		q.dropUnplaced(len(q.unplaced), &s.unplacedBytes)
		q.mu.Unlock()
	}
}

// stop drops what is held: the hub is closing, and its clients recover
// the held messages from history on their next connection. Delivering
// them now, past a hole, would move those clients' positions past it.
func (s *sequencer) stop() {
	if s == nil {
		return
	}
	s.keepMu.Lock()
	if s.keepEnd != nil {
		s.keepEnd.Stop()
	}
	s.keepMu.Unlock()
	s.each(func(q *sequence) { q.release(len(q.held)) })
}

// each runs fn on every sequence, under its shard's lock and its own.
func (s *sequencer) each(fn func(q *sequence)) {
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for _, q := range sh.m {
			q.mu.Lock()
			fn(q)
			q.mu.Unlock()
		}
		sh.mu.Unlock()
	}
}

package chart

import (
	"slices"
	"time"
)

// Late joins (issue 13). A uid online on another node that connects here
// during a broker outage is served at once, but this node cannot read its
// channels (user.unsynced): its connection here is in none of them until
// the broker answers again and the re-publishing of presence (resync), or
// another node's restore, joins it. Meanwhile the channels' messages that
// this node delivers to its other members (caught up from the streams
// once the broker is back, or live) do not reach that connection, though
// they were published after it connected.
//
// So every sequence marks the first offset it delivers in order after an
// outage began (sequence.mark), and a join applied to an unsynced uid
// (joinLate) gives the uid's connections here what this node delivered
// of the channel since that mark: read from the channel's stream, without
// a lock, then queued, and the uid joined, under the sequence's lock, so
// that no live message of the channel goes out between the two: each
// message reaches the connections once, in offset order. The mark costs
// the fan-out one atomic load per message (not per subscriber); the
// replay costs a stream read per late-joined channel that had traffic
// since the outage began.

// lateReads is how many times joinLate reads again a stream that moved on
// while it read, before it replays what the last read got.
const lateReads = 3

// lateKeepBytes bounds what a node keeps of its deliveries for late joins
// (sequence.kept), all streams together.
const lateKeepBytes = 32 << 20

// out delivers f, at offset off of t, in its turn, and marks the
// sequence's first delivery since the latest outage began. q.mu is held.
func (s *sequencer) out(t topic, q *sequence, f []byte, off uint64) {
	if f == nil {
		return // gone out already, without its offset (passed)
	}
	if at := frameStamp(f); at != 0 {
		q.lastOut = at
	} else {
		q.lastOut = monotime() // read from the stream: no stamp
	}
	if o := s.outages.Load(); o != 0 {
		if q.markOf != o {
			q.mark, q.markEpoch, q.markOf = off, q.epoch, o
			s.dropKept(q)
			q.keptAll = true
		}
		if q.markEpoch == q.epoch && q.keptAll && s.keeping.Load() {
			s.keep(q, held{f, t, off})
		}
	}
	s.hub.deliverTo(t, f, off)
}

// keep adds m, going out, to what q keeps, unless the node's budget is
// spent: then q keeps nothing more until the next outage (keptAll false:
// late joins read its stream). q.mu is held.
func (s *sequencer) keep(q *sequence, m held) {
	if s.kept.Add(int64(len(m.f))) > s.keepBudget {
		s.kept.Add(-int64(len(m.f)))
		s.dropKept(q)
		q.keptAll = false
		return
	}
	q.kept = append(q.kept, m)
	q.keptBytes += len(m.f)
	if n := s.lateCap(); len(q.kept) >= 2*n {
		q.kept = s.capped(q, q.kept, n)
	}
}

// capped returns the newest n of frames, a part of what q keeps, in a
// slice of its own; the bytes of those dropped are uncounted. q.mu is
// held.
func (s *sequencer) capped(q *sequence, frames []held, n int) []held {
	if len(frames) > n {
		gone := 0
		for _, m := range frames[:len(frames)-n] {
			gone += len(m.f)
		}
		q.keptBytes -= gone
		s.kept.Add(-int64(gone))
		frames = frames[len(frames)-n:]
	}
	return slices.Clone(frames)
}

// dropKept drops what q keeps. q.mu is held.
func (s *sequencer) dropKept(q *sequence) {
	if q.keptBytes != 0 {
		s.kept.Add(-int64(q.keptBytes))
	}
	q.kept, q.before, q.keptBytes = nil, nil, 0
}

// keptSince returns what q kept of its deliveries since the latest
// outage began, when it kept all of them; ok false: the late join reads
// the stream. q.mu is held.
func (s *sequencer) keptSince(q *sequence, outages uint64) (frames []held, ok bool) {
	if !s.keeping.Load() || q.markOf != outages || !q.keptAll {
		return nil, false
	}
	frames = append(slices.Clone(q.before), q.kept...)
	if n := s.lateCap(); len(frames) > n {
		frames = frames[len(frames)-n:]
	}
	return frames, true
}

// outage notes that a broker outage begins: the sequences keep what they
// deliver from now on until a while after the broker's return.
func (s *sequencer) outage() {
	if s == nil {
		return
	}
	s.keepMu.Lock()
	s.outages.Add(1)
	s.keeping.Store(true)
	s.keepMu.Unlock()
}

// lateKeep is how long, in heartbeat intervals, a node keeps what it
// delivers after the broker's return: its re-publishing of presence,
// which makes the late joins, may wait a TTL (three intervals) after a
// data loss, and then runs through every uid.
const lateKeep = 6

// returned notes that the broker answers again: the sequences stop
// keeping what they deliver after d, unless another outage began.
func (s *sequencer) returned(d time.Duration) {
	if s == nil {
		return
	}
	o := s.outages.Load()
	s.keepMu.Lock()
	defer s.keepMu.Unlock()
	if s.keepEnd != nil {
		s.keepEnd.Stop()
	}
	s.keepEnd = time.AfterFunc(d, func() { s.endKeeping(o) })
}

// endKeeping stops keeping deliveries, unless an outage began after
// outage o, and drops what was kept since o.
func (s *sequencer) endKeeping(o uint64) {
	s.keepMu.Lock()
	if s.outages.Load() != o {
		s.keepMu.Unlock()
		return
	}
	s.keeping.Store(false)
	s.keepMu.Unlock()
	s.each(func(q *sequence) {
		if q.markOf <= o { // not kept for an outage begun since
			s.dropKept(q)
		}
	})
}

// lateCap is the most a late join replays of one channel: half a send
// queue.
func (s *sequencer) lateCap() int { return max(s.hub.cfg.SendQueueLen/2, 1) }

// followed returns t's sequence, locked, or nil when this node does not
// follow t (it delivered nothing of t since it last subscribed).
func (s *sequencer) followed(t topic) *sequence {
	sh := s.shard(t)
	for {
		sh.mu.Lock()
		q := sh.m[t]
		sh.mu.Unlock()
		if q == nil {
			return nil
		}
		q.mu.Lock()
		if !q.gone {
			return q
		}
		q.mu.Unlock()
	}
}

// since returns the offsets [from, to) of q's epoch that this node
// delivered since the latest outage began; from == to: none. q.mu is
// held.
func (q *sequence) since(outages uint64) (from, to uint64) {
	if outages == 0 || q.markOf != outages || q.markEpoch != q.epoch || q.next <= q.mark {
		return 0, 0
	}
	return q.mark, q.next
}

// skipped reports whether off is in a hole q skipped (not delivered
// here). q.mu is held.
func (q *sequence) skipped(off uint64) bool {
	for _, r := range q.skips {
		if off >= r[0] && off < r[1] {
			return true
		}
	}
	return false
}

// joinLate makes uid, connected here and unsynced, a member of the
// channels ids that it holds elsewhere; its connections here first get
// what this node delivered of each since the latest outage began. It
// stops at the first error, as applyLocked does.
func (h *Hub) joinLate(uid uint64, ids []string, pres []bool) error {
	for i, id := range ids {
		if !h.validChannel(id) {
			continue
		}
		if err := h.joinLateOne(uid, id, flagAt(pres, i)); err != nil {
			return err
		}
	}
	return nil
}

func (h *Hub) joinLateOne(uid uint64, id string, pres bool) error {
	if chans, ok := h.localChannels(uid); !ok || slices.Contains(chans, id) {
		return nil // gone, or a member already: it missed nothing
	}
	t := topic{ch: id}
	var entries []entry
	var epoch string
	var last uint64
	for reads := 0; ; reads++ {
		q := h.seq.followed(t)
		if q == nil {
			return h.joinReplaying(uid, id, pres, t, nil)
		}
		outages := h.seq.outages.Load()
		frames, ok := h.seq.keptSince(q, outages)
		from, to := q.since(outages)
		if !ok {
			ok = from == to
		}
		if !ok && epoch == q.epoch && (last+1 >= to || reads == lateReads) {
			// The last try replays what it read, in order, even if the
			// node delivered more meanwhile: a busy channel loses those
			// few rather than all.
			frames, ok = h.lateFrames(q, t, entries, from, to), true
		}
		if ok || reads == lateReads {
			// Joined under q.mu: the live messages of t wait until the
			// replay is queued, and go to the new member after it.
			err := h.joinReplaying(uid, id, pres, t, frames)
			q.mu.Unlock()
			return err
		}
		q.mu.Unlock()
		entries, epoch, last = h.seq.read(t, from)
	}
}

// lateFrames frames the entries of t in [from, to) that q delivered (not
// skipped), the newest half send queue of them at most. q.mu is held.
func (h *Hub) lateFrames(q *sequence, t topic, entries []entry, from, to uint64) []held {
	var frames []held
	for _, e := range entries {
		if e.off >= from && e.off < to && !q.skipped(e.off) {
			frames = append(frames, held{framePrefix(e.data, e.off, q.epoch), t, e.off})
		}
	}
	if n := h.seq.lateCap(); len(frames) > n {
		frames = frames[len(frames)-n:]
	}
	return frames
}

// joinReplaying joins uid, connected here, to channel id and queues
// frames, in order, on its connections, if it was not a member yet.
func (h *Hub) joinReplaying(uid uint64, id string, pres bool, t topic, frames []held) error {
	s := h.userShard(uid)
	s.mu.Lock()
	u := s.users[uid]
	if u == nil {
		s.mu.Unlock()
		return nil
	}
	if u.loading {
		// A new user since (its uid left and came back): its channels
		// load from presence.
		u.pending = append(u.pending, memberOp{true, []string{id}, []bool{pres}, 0})
		s.mu.Unlock()
		return nil
	}
	ch, err := h.joinOneLocked(u, id, pres)
	conns := u.connList()
	s.mu.Unlock()
	if ch == nil || len(frames) == 0 {
		return err
	}
	var n uint64
	for _, c := range conns {
		for _, f := range frames {
			if c.enqueueAt(f.f, f.t, f.off) {
				n++
			}
		}
	}
	h.stats.out.Add(n)
	return err
}

// catchUpFollowed gives uid's connections here, which came at born
// (monotime) before this node loaded the channels ids that uid holds
// elsewhere, what the node delivered of them in between, to its other
// members: read from the channels' streams (the entries timed since born,
// below where the node stands) into the connections' holds. They have not
// started (their start runs after the load, in the uid's queue), so their
// recovery puts those in order with what came live, once.
func (h *Hub) catchUpFollowed(uid uint64, born int64, ids []string) {
	since := wallMillis(born)
	for _, id := range ids {
		t := topic{ch: id}
		q := h.seq.followed(t)
		if q == nil {
			continue
		}
		upTo, epoch, recent := q.next, q.epoch, q.lastOut >= born
		q.mu.Unlock()
		if !recent || upTo <= 1 || epoch == "" {
			continue // nothing went out here since it came
		}
		// The last few first: the gap is a few milliseconds; all of
		// half a send queue only when they all came in it.
		entries, got, _, _ := h.streams.read(t, upTo-1-min(upTo-1, 16), 0)
		if n := uint64(h.seq.lateCap()); n > 16 && len(entries) > 0 && entries[0].at >= since && entries[0].off > 1 {
			entries, got, _, _ = h.streams.read(t, upTo-1-min(upTo-1, n), 0)
		}
		if got != epoch {
			continue
		}
		var frames []held
		for _, e := range entries {
			if e.off < upTo && e.at >= since && e.at != 0 {
				frames = append(frames, held{framePrefix(e.data, e.off, epoch), t, e.off})
			}
		}
		u := h.lookupUser(uid)
		if u == nil {
			return
		}
		if len(frames) > 0 {
			for _, c := range u.connList() {
				c.holdMissed(frames)
			}
		}
	}
}

// holdMissed adds to c's hold the frames of one stream it does not hold
// yet; nothing once c has started (recovered).
func (c *Conn) holdMissed(frames []held) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hold == nil || c.state.Load() != connOpen {
		return
	}
	for _, m := range frames {
		if !slices.ContainsFunc(c.hold, func(h held) bool { return h.t == m.t && h.off == m.off }) {
			c.hold = append(c.hold, m)
		}
	}
}

package chart

import "slices"

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

// out delivers f, at offset off of t, in its turn, and marks the
// sequence's first delivery since the latest outage began. q.mu is held.
func (s *sequencer) out(t topic, q *sequence, f []byte, off uint64) {
	if o := s.outages.Load(); o != 0 && q.markOf != o {
		q.mark, q.markEpoch, q.markOf = off, q.epoch, o
	}
	s.hub.deliverTo(t, f, off)
}

// outage notes that a broker outage begins.
func (s *sequencer) outage() {
	if s != nil {
		s.outages.Add(1)
	}
}

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
		from, to := q.since(h.seq.outages.Load())
		var frames []held
		ok := from == to
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
	if n := max(h.cfg.SendQueueLen/2, 1); len(frames) > n {
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
		u.pending = append(u.pending, memberOp{true, []string{id}, []bool{pres}})
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

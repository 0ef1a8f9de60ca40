package chart

import (
	"context"
	"encoding/binary"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Presence events (README, "Presence events"): the members of a channel
// that Config.PresenceChannels names learn who is in it, as a member list
// when they join (or connect), then as the uids that joined and left.
//
// Two parts, neither of them a central goroutine:
//
//   - The outbox. The node that makes a change (the one where JoinChannelIds
//     or UnJoinChannelIds ran, where a client asked, where a uid's last
//     connection closed) records it in the channel's outbox, which gathers
//     PresenceWindow of changes: a uid that left and came back within it is
//     no change. When the window ends the net changes go to this node's
//     roster of the channel, to the other nodes (an envelope on the
//     channel's topic), and to the PresenceHandler, once in the cluster.
//     On a single node changes are recorded under the uid's shard lock, in
//     the registry's order; in a cluster, once presence has them.
//   - The roster. Each node keeps, for each presence channel with members
//     connected here, the member list its connections were told (members).
//     A connection that becomes a subscriber gets that list (a snapshot,
//     under the roster's lock); every change applied afterwards reaches
//     every subscriber as a delta, under the same lock: nothing is lost or
//     counted twice at the seam. On a single node the list starts empty
//     and follows the outbox exactly. In a cluster it starts from presence
//     (Members), follows the envelopes of every node, and after each burst
//     of changes (PresenceWindow x 5 without one) reads presence again and
//     sends the difference, so that changes the broker reordered or lost
//     (two nodes changing one uid at once, an outage) are mended.
//
// Lock order, outermost first: userShard.mu, outShard.mu, chanShard.mu,
// roster.mu, channel.mu, conn.mu. No lock is held during a broker call or
// a callback.

// presencePage bounds the uids in one presence frame: longer lists are
// sent as several frames ("more" marks the pages of a member list).
const presencePage = 1000

// rosters is a hub's presence event state.
type rosters struct {
	on     bool // Config.PresenceChannels is set
	shared bool // presence is the cluster's: changes travel between nodes
	window time.Duration
	settle time.Duration // cluster: the quiet time after which a roster reads presence again

	out [shardCount]outShard

	tmu     sync.Mutex
	stopped bool           // no timer is armed any more
	timers  sync.WaitGroup // armed timers and running timer functions

	unsent atomic.Bool // cluster: an envelope failed to go out; the next good heartbeat sends a resync
}

func (ps *rosters) init(cfg *Config) {
	ps.on = cfg.PresenceChannels != nil
	if b := cfg.Broker; b != nil {
		_, ps.shared = b.(Presence)
	}
	ps.window = max(cfg.PresenceWindow, 0)
	ps.settle = max(5*ps.window, 50*time.Millisecond)
}

// arm runs f after d on a timer of its own (created on first use), unless
// the hub stopped; it reports whether it armed. Whoever keeps the timer
// keeps an armed flag under its own lock, for disarm.
func (ps *rosters) arm(t **time.Timer, d time.Duration, f func()) bool {
	ps.tmu.Lock()
	defer ps.tmu.Unlock()
	if ps.stopped {
		return false
	}
	ps.timers.Add(1)
	if *t == nil {
		*t = time.AfterFunc(d, func() {
			defer ps.timers.Done()
			f()
		})
	} else {
		(*t).Reset(d)
	}
	return true
}

// disarm stops an armed timer before it fires. The caller holds the lock
// that guards armed.
func (ps *rosters) disarm(t *time.Timer, armed *bool) {
	if *armed && t.Stop() {
		*armed = false
		ps.timers.Done()
	}
}

// presenceOf reports whether channel id carries presence events. A panic
// in Config.PresenceChannels counts as no.
func (h *Hub) presenceOf(id string) (yes bool) {
	f := h.cfg.PresenceChannels
	if f == nil {
		return false
	}
	h.call(nil, 0, "PresenceChannels", func() { yes = f(id) })
	return yes
}

// presenceIds is presenceOf for each of ids, nil when presence events are
// off. The caller holds no lock.
func (h *Hub) presenceIds(ids []string) []bool {
	if !h.pres.on {
		return nil
	}
	flags := make([]bool, len(ids))
	for i, id := range ids {
		flags[i] = h.presenceOf(id)
	}
	return flags
}

func flagAt(flags []bool, i int) bool { return flags != nil && flags[i] }

// --- the outbox: changes this node made, gathered per channel ---

type outShard struct {
	mu    sync.Mutex
	boxes map[string]*outbox
	_     [64]byte
}

// outbox holds the changes this node made to one channel's membership
// during the current window.
type outbox struct {
	id       string
	changes  map[uint64]change
	timer    *time.Timer
	armed    bool
	flushing bool // a flush runs: it arms the next window itself
}

// change is a uid's membership before the window's first change and after
// its last.
type change struct{ before, after bool }

// record notes that uid left (after false) or joined (true) channel id,
// a member before or not. Changes of the same uid within a window merge.
func (h *Hub) record(id string, uid uint64, before, after bool) {
	ps := &h.pres
	sh := &ps.out[fnv(id)%shardCount]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.boxes == nil {
		sh.boxes = make(map[string]*outbox)
	}
	ob := sh.boxes[id]
	if ob == nil {
		ob = &outbox{id: id}
		sh.boxes[id] = ob
	}
	if ob.changes == nil {
		ob.changes = make(map[uint64]change)
	}
	c, ok := ob.changes[uid]
	if !ok {
		c.before = before
	}
	c.after = after
	ob.changes[uid] = c
	if !ob.armed && !ob.flushing {
		ob.armed = ps.arm(&ob.timer, ps.window, func() { h.flushOutbox(sh, ob) })
	}
}

// recordLocal records membership changes of uid, made under its shard
// lock, on a single node (or a cluster without shared presence): there
// the registry is the truth, and its order the changes' order.
func (h *Hub) recordLocal(uid uint64, join bool, ids []string) {
	if !h.pres.shared {
		for _, id := range ids {
			h.record(id, uid, !join, join)
		}
	}
}

// recordShared records them in a cluster, once presence has them: a
// roster that reads presence after seeing the change sees it there.
func (h *Hub) recordShared(uid uint64, join bool, ids []string) {
	if h.pres.shared {
		for _, id := range ids {
			h.record(id, uid, !join, join)
		}
	}
}

// presenceBefore tells, for a membership change of a uid connected to
// another node, which of the presence channels ids it was in before: only
// when a PresenceHandler is to hear of the change (the envelope to the
// rosters is harmless either way). nil: unknown, taken as a change.
func (h *Hub) presenceBefore(uid uint64, ids []string) map[string]bool {
	if !h.pres.shared || len(ids) == 0 {
		return nil
	}
	if _, ok := h.fallbackHandler().(PresenceHandler); !ok {
		return nil
	}
	chans, err := h.presence.Channels(uid)
	if err != nil {
		return nil // the change itself will fail and say so
	}
	before := make(map[string]bool, len(ids))
	for _, id := range ids {
		before[id] = false
	}
	for _, id := range chans {
		if _, ok := before[id]; ok {
			before[id] = true
		}
	}
	return before
}

// flushOutbox ends a channel's window: its net changes go out, and the
// next window starts with the next change.
func (h *Hub) flushOutbox(sh *outShard, ob *outbox) {
	sh.mu.Lock()
	ob.armed = false
	if ob.flushing {
		sh.mu.Unlock()
		return
	}
	ob.flushing = true
	changes := ob.changes
	ob.changes = nil
	sh.mu.Unlock()

	h.sendChanges(ob.id, changes)

	sh.mu.Lock()
	ob.flushing = false
	switch {
	case len(ob.changes) > 0:
		ob.armed = h.pres.arm(&ob.timer, h.pres.window, func() { h.flushOutbox(sh, ob) })
	case sh.boxes[ob.id] == ob:
		delete(sh.boxes, ob.id)
	}
	sh.mu.Unlock()
}

// sendChanges sends a window's net changes of a channel: to this node's
// roster, to the other nodes, to the PresenceHandler.
func (h *Hub) sendChanges(id string, changes map[uint64]change) {
	var joined, left []uint64
	for uid, c := range changes {
		switch {
		case c.before == c.after:
		case c.after:
			joined = append(joined, uid)
		default:
			left = append(left, uid)
		}
	}
	if len(joined)+len(left) == 0 || h.killed.Load() {
		return
	}
	slices.Sort(joined)
	slices.Sort(left)
	if ch := h.lookupChannel(id); ch != nil && ch.roster != nil {
		ch.roster.apply(joined, left)
	}
	if h.pres.shared {
		h.peers.notify(topic{ch: id}, envPresence, appendChanges(nil, id, joined, left))
	}
	if handler := h.fallbackHandler(); handler != nil {
		if ph, ok := handler.(PresenceHandler); ok {
			h.call(handler, 0, "PresenceServer", func() { ph.PresenceServer(id, joined, left) })
		}
	}
}

// appendChanges is the body of a presence envelope: the channel id, the
// number of joined uids, the joined uids, then the uids that left.
func appendChanges(b []byte, id string, joined, left []uint64) []byte {
	b = appendStr(b, id)
	b = binary.AppendUvarint(b, uint64(len(joined)))
	for _, uid := range joined {
		b = binary.AppendUvarint(b, uid)
	}
	for _, uid := range left {
		b = binary.AppendUvarint(b, uid)
	}
	return b
}

// readUids reads uvarint uids to the end of b.
func readUids(b []byte) ([]uint64, bool) {
	var uids []uint64
	for len(b) > 0 {
		uid, k := binary.Uvarint(b)
		if k <= 0 {
			return nil, false
		}
		uids = append(uids, uid)
		b = b[k:]
	}
	return uids, true
}

// presenceReceived applies another node's changes to a channel.
func (h *Hub) presenceReceived(body []byte) {
	id, rest, ok := readStr(body)
	if !ok {
		return
	}
	n, k := binary.Uvarint(rest)
	if k <= 0 {
		return
	}
	uids, ok := readUids(rest[k:])
	if !ok || uint64(len(uids)) < n {
		return
	}
	if ch := h.lookupChannel(string(id)); ch != nil && ch.roster != nil {
		ch.roster.apply(uids[:n], uids[n:])
	}
}

// presenceGone removes uids that went offline with a dead node (reaped)
// from every roster here.
func (h *Hub) presenceGone(uids []uint64) {
	slices.Sort(uids)
	h.eachRoster(func(r *roster) { r.apply(nil, uids) })
}

// rosterResync makes every roster here read presence again once quiet:
// after an outage, changes may have been lost.
func (h *Hub) rosterResync() {
	h.eachRoster(func(r *roster) {
		r.mu.Lock()
		r.touch()
		r.mu.Unlock()
	})
}

// rosterSubscribed: this node now receives channel id's envelopes. Its
// roster reads presence at once: the first read may have come before the
// subscription, and missed changes made in between.
func (h *Hub) rosterSubscribed(id string) {
	if ch := h.lookupChannel(id); ch != nil && ch.roster != nil {
		r := ch.roster
		r.mu.Lock()
		r.force, r.dirty = true, true
		r.schedule(0)
		r.mu.Unlock()
	}
}

// Hooks for the cluster (cluster.go): after a good heartbeat, the uids of
// the nodes it reaped and a resync if an envelope of this node was lost;
// a resync after this node re-published its presence.
func (h *Hub) presenceBeat(gone []uint64) {
	if !h.pres.shared {
		return
	}
	if h.pres.unsent.Swap(false) {
		h.peers.notify(topic{all: true}, envResync, nil)
	}
	if len(gone) == 0 {
		return
	}
	b := make([]byte, 0, len(gone)*binary.MaxVarintLen64)
	for _, uid := range gone {
		b = binary.AppendUvarint(b, uid)
	}
	h.peers.notify(topic{all: true}, envGone, b)
	h.presenceGone(slices.Clone(gone))
}

func (h *Hub) presenceRepublished() {
	if !h.pres.shared {
		return
	}
	h.peers.notify(topic{all: true}, envResync, nil)
	h.rosterResync()
}

func (h *Hub) eachRoster(f func(*roster)) {
	if !h.pres.on {
		return
	}
	for i := range h.chans {
		cs := &h.chans[i]
		var rs []*roster
		cs.mu.RLock()
		for _, ch := range cs.chans {
			if ch.roster != nil {
				rs = append(rs, ch.roster)
			}
		}
		cs.mu.RUnlock()
		for _, r := range rs {
			f(r)
		}
	}
}

// stopPresence ends presence events when the hub stops: with flush, the
// changes still gathering go out first (Shutdown's logouts reach the
// PresenceHandler and the other nodes); then no timer runs any more. It
// returns when the running ones are done, or when ctx ends.
func (h *Hub) stopPresence(ctx context.Context, flush bool) {
	ps := &h.pres
	if !ps.on {
		return
	}
	type due struct {
		sh *outShard
		ob *outbox
	}
	var list []due
	for i := range ps.out {
		sh := &ps.out[i]
		sh.mu.Lock()
		for _, ob := range sh.boxes {
			if ob.armed && ob.timer.Stop() {
				ob.armed = false
				ps.timers.Done()
				list = append(list, due{sh, ob})
			}
		}
		sh.mu.Unlock()
	}
	if flush {
		for _, d := range list {
			h.flushOutbox(d.sh, d.ob)
		}
	}
	ps.tmu.Lock()
	ps.stopped = true
	ps.tmu.Unlock()
	for i := range ps.out {
		sh := &ps.out[i]
		sh.mu.Lock()
		for _, ob := range sh.boxes {
			ps.disarm(ob.timer, &ob.armed)
		}
		sh.mu.Unlock()
	}
	h.eachRoster(func(r *roster) {
		r.mu.Lock()
		ps.disarm(r.timer, &r.armed)
		r.mu.Unlock()
	})
	done := make(chan struct{})
	go func() {
		ps.timers.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// --- the roster: what this node's members of a channel were told ---

type roster struct {
	h  *Hub
	ch *channel

	mu      sync.Mutex
	members map[uint64]struct{} // the member list the subscribers have
	ready   bool                // members is known (a cluster reads it first)
	snap    [][]byte            // the snapshot frames of members; nil when stale
	dead    bool                // the channel has no member here any more

	// In a cluster: reading presence, and when to.
	reading bool
	during  map[uint64]bool // changes applied while reading (or before the first read): true joined
	force   bool            // read at once, not once quiet
	dirty   bool            // a change since the last read
	last    time.Time       // of the last change
	timer   *time.Timer
	armed   bool
}

func (h *Hub) newRoster(ch *channel) *roster {
	return &roster{h: h, ch: ch, members: make(map[uint64]struct{}), ready: !h.pres.shared}
}

func (r *roster) topic() topic { return topic{ch: r.ch.id} }

// admit gives connections that just became subscribers the member list,
// under the roster's lock, so that every change applied after it reaches
// them as a delta. Before the list is known (a cluster's first read) they
// get it when it is.
func (r *roster) admit(conns []*Conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.dead {
		return
	}
	if !r.ready {
		r.schedule(0)
		return
	}
	frames := r.snapshot()
	for _, c := range conns {
		for _, f := range frames {
			c.enqueueAt(f, r.topic(), 0)
		}
	}
}

// left tells u's connections that u left the channel: their member list
// ends ({"presence":"end"}; a new one comes if u joins again). Sent under
// the roster's lock, after u's connections stopped being subscribers, so
// no delta follows it. (A delta may name u itself: in a cluster a
// roster's list can briefly lack a member, until presence is read again.)
func (r *roster) left(u *user) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.ready {
		return // no list was sent
	}
	f := presenceEnd(r.ch.id)
	for _, c := range u.connList() {
		c.enqueueAt(f, r.topic(), 0)
	}
}

// apply takes changes (joined and left are sorted and disjoint): what
// differs from members goes to every subscriber.
func (r *roster) apply(joined, left []uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.dead {
		return
	}
	if r.h.pres.shared {
		r.touch()
		if r.reading || !r.ready {
			if r.during == nil {
				r.during = make(map[uint64]bool)
			}
			for _, uid := range joined {
				r.during[uid] = true
			}
			for _, uid := range left {
				r.during[uid] = false
			}
		}
	}
	if !r.ready {
		return
	}
	var j, l []uint64
	for _, uid := range joined {
		if _, ok := r.members[uid]; !ok {
			r.members[uid] = struct{}{}
			j = append(j, uid)
		}
	}
	for _, uid := range left {
		if _, ok := r.members[uid]; ok {
			delete(r.members, uid)
			l = append(l, uid)
		}
	}
	r.send(j, l)
}

// send queues a delta on every subscriber: the frames are encoded once.
// The caller holds r.mu.
func (r *roster) send(joined, left []uint64) {
	if len(joined)+len(left) == 0 {
		return
	}
	r.snap = nil
	frames := appendPages(nil, "leave", r.ch.id, left, false)
	frames = appendPages(frames, "join", r.ch.id, joined, false)
	t := r.topic()
	for _, c := range r.ch.subscribers() {
		for _, f := range frames {
			c.enqueueAt(f, t, 0)
		}
	}
}

// snapshot returns the frames of the member list, encoded once per
// change. The caller holds r.mu.
func (r *roster) snapshot() [][]byte {
	if r.snap == nil {
		ids := make([]uint64, 0, len(r.members))
		for uid := range r.members {
			ids = append(ids, uid)
		}
		slices.Sort(ids)
		r.snap = appendPages(nil, "members", r.ch.id, ids, true)
	}
	return r.snap
}

// touch notes a change in a cluster: presence is read again once the
// channel has been quiet for a while. The caller holds r.mu.
func (r *roster) touch() {
	if !r.h.pres.shared {
		return
	}
	r.dirty, r.last = true, time.Now()
	r.schedule(r.h.pres.settle)
}

// schedule arms the roster's timer if it is not armed. The caller holds
// r.mu.
func (r *roster) schedule(d time.Duration) {
	if !r.armed && !r.reading && !r.dead {
		r.armed = r.h.pres.arm(&r.timer, d, r.fire)
	}
}

// kill retires the roster of a channel that has no member here any more.
func (r *roster) kill() {
	r.mu.Lock()
	r.dead = true
	r.h.pres.disarm(r.timer, &r.armed)
	r.during = nil
	r.mu.Unlock()
}

// fire reads the channel's members from presence (a cluster only): the
// first time, or once quiet after changes. What differs from what the
// subscribers were told goes to them; changes applied during the read are
// applied again on top of what it returned.
func (r *roster) fire() {
	h := r.h
	r.mu.Lock()
	r.armed = false
	if r.dead || r.reading {
		r.mu.Unlock()
		return
	}
	if r.ready && !r.force {
		if !r.dirty {
			r.mu.Unlock()
			return
		}
		if wait := h.pres.settle - time.Since(r.last); wait > 0 {
			r.schedule(wait)
			r.mu.Unlock()
			return
		}
	}
	r.dirty, r.force, r.reading, r.during = false, false, true, nil
	r.mu.Unlock()

	ids, err := h.presence.Members(r.ch.id)

	r.mu.Lock()
	defer r.mu.Unlock()
	r.reading = false
	if r.dead {
		return
	}
	if err != nil {
		h.brokerFailed(err)
		r.dirty, r.last = true, time.Now()
		if r.ready {
			r.schedule(h.pres.settle)
			return
		}
		// Meanwhile the members connected here, as ChannelUserIds answers.
		ids = r.localMembers()
	}
	target := make(map[uint64]struct{}, len(ids))
	for _, uid := range ids {
		target[uid] = struct{}{}
	}
	for uid, in := range r.during {
		if in {
			target[uid] = struct{}{}
		} else {
			delete(target, uid)
		}
	}
	r.during = nil
	if !r.ready {
		r.members, r.ready, r.snap = target, true, nil
		frames := r.snapshot()
		t := r.topic()
		for _, c := range r.ch.subscribers() {
			for _, f := range frames {
				c.enqueueAt(f, t, 0)
			}
		}
	} else {
		var j, l []uint64
		for uid := range target {
			if _, ok := r.members[uid]; !ok {
				j = append(j, uid)
			}
		}
		for uid := range r.members {
			if _, ok := target[uid]; !ok {
				l = append(l, uid)
			}
		}
		slices.Sort(j)
		slices.Sort(l)
		r.members = target
		r.send(j, l)
	}
	switch {
	case r.force:
		r.schedule(0)
	case r.dirty:
		r.schedule(h.pres.settle)
	}
}

// localMembers lists the channel's members connected here. The caller
// holds r.mu.
func (r *roster) localMembers() []uint64 {
	ch := r.ch
	ch.mu.Lock()
	defer ch.mu.Unlock()
	ids := make([]uint64, 0, ch.members.len())
	ch.members.each(func(u *user, _ struct{}) { ids = append(ids, u.uid) })
	return ids
}

// --- frames ---

// appendPages appends the frames of a presence event about uids, at most
// presencePage of them per frame; with more, every frame but the last
// says so (a member list). An empty member list is one frame.
func appendPages(frames [][]byte, kind, id string, uids []uint64, more bool) [][]byte {
	if len(uids) == 0 && !more {
		return frames
	}
	for {
		n := min(len(uids), presencePage)
		frames = append(frames, presenceFrame(kind, id, uids[:n], more && n < len(uids)))
		uids = uids[n:]
		if len(uids) == 0 {
			return frames
		}
	}
}

// presenceEnd ends a connection's member list: its uid left the channel.
//
//	{"presence":"end","channel_id":"room"}
func presenceEnd(id string) []byte {
	b := append([]byte(`{"presence":"end","channel_id":`), appendString(nil, id)...)
	return frame(opText, append(b, '}'))
}

// presenceFrame is one presence event:
//
//	{"presence":"join","channel_id":"room","user_ids":[7,9]}
//	{"presence":"members","channel_id":"room","user_ids":[1,2,7],"more":true}
func presenceFrame(kind, id string, uids []uint64, more bool) []byte {
	b := make([]byte, 0, 64+len(id)+8*len(uids))
	b = append(b, `{"presence":"`...)
	b = append(b, kind...)
	b = append(b, `","channel_id":`...)
	b = appendString(b, id)
	b = append(b, `,"user_ids":[`...)
	for i, uid := range uids {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendUint(b, uid, 10)
	}
	b = append(b, ']')
	if more {
		b = append(b, `,"more":true`...)
	}
	return frame(opText, append(b, '}'))
}

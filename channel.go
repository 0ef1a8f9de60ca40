package chart

import (
	"errors"
	"sync"
	"sync/atomic"
	"unicode/utf8"
)

// Channels: membership belongs to a uid, and a channel exists on a node
// while it has a member connected there. JoinChannelIds and
// UnJoinChannelIds change the local registry first, then tell presence
// and the other nodes (propagate).

type chanShard struct {
	mu    sync.RWMutex
	chans map[string]*channel
	peak  int // see shrink
	_     [64]byte
}

// channel is one channel with at least one member on this node.
type channel struct {
	id      string
	mu      sync.Mutex
	members smallMap[*user, struct{}]
	// subs is the flattened list of member connections that fan-out reads
	// without a lock; nil when membership changed since it was built.
	subs atomic.Pointer[[]*Conn]
	// roster is what the members here were told of the channel's members,
	// for a channel with presence events (presence_events.go); else nil.
	// Set at creation.
	roster *roster
}

// subscribers returns the connections of every member, rebuilding the
// cached list after a membership change.
func (ch *channel) subscribers() []*Conn {
	if p := ch.subs.Load(); p != nil {
		return *p
	}
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if p := ch.subs.Load(); p != nil {
		return *p
	}
	n := 0
	ch.members.each(func(u *user, _ struct{}) { n += len(u.connList()) })
	list := make([]*Conn, 0, n)
	ch.members.each(func(u *user, _ struct{}) { list = append(list, u.connList()...) })
	ch.subs.Store(&list)
	return list
}

// invalidate drops the cached subscriber list. It takes ch.mu so that a
// rebuild running concurrently cannot store a list older than the change.
func (ch *channel) invalidate() {
	ch.mu.Lock()
	ch.subs.Store(nil)
	ch.mu.Unlock()
}

func (h *Hub) chanShard(id string) *chanShard { return &h.chans[fnv(id)%shardCount] }

// lookupChannel returns the channel if it has a member here, or nil.
func (h *Hub) lookupChannel(id string) *channel {
	cs := h.chanShard(id)
	cs.mu.RLock()
	ch := cs.chans[id]
	cs.mu.RUnlock()
	return ch
}

func (h *Hub) validChannel(id string) bool {
	return id != "" && len(id) <= h.cfg.MaxChannelIdLen && utf8.ValidString(id)
}

// addMember adds u to channel id, creating the channel (with a roster
// when pres says it has presence events). The caller holds u's shard lock.
func (h *Hub) addMember(id string, u *user, pres bool) *channel {
	cs := h.chanShard(id)
	cs.mu.Lock()
	ch := cs.chans[id]
	if ch == nil {
		ch = &channel{id: id}
		if pres && h.pres.on {
			ch.roster = h.newRoster(ch)
		}
		cs.chans[id] = ch
		cs.chans = shrink(cs.chans, &cs.peak)
	}
	ch.mu.Lock()
	ch.members.set(u, struct{}{})
	ch.subs.Store(nil)
	ch.mu.Unlock()
	cs.mu.Unlock()
	return ch
}

// removeMember removes u from ch, deleting ch when it empties. The caller
// holds u's shard lock.
func (h *Hub) removeMember(ch *channel, u *user) {
	cs := h.chanShard(ch.id)
	cs.mu.Lock()
	ch.mu.Lock()
	ch.members.del(u)
	ch.subs.Store(nil)
	gone := ch.members.len() == 0 && cs.chans[ch.id] == ch
	if gone {
		delete(cs.chans, ch.id)
		cs.chans = shrink(cs.chans, &cs.peak)
	}
	ch.mu.Unlock()
	cs.mu.Unlock()
	if gone && ch.roster != nil {
		ch.roster.kill()
	}
}

// joinLocked makes u a member of the channels, stopping at the first
// invalid id or at MaxChannelsPerUid. It returns how many of ids u is now
// a member of (a prefix of ids) and the error that stopped it, and adds to
// *changed the presence channels (pres, see presenceIds) it joined. The
// caller holds u's shard lock.
func (h *Hub) joinLocked(u *user, ids []string, pres []bool, changed *[]string) (n int, err error) {
	for i, id := range ids {
		ch, err := h.joinOneLocked(u, id, flagAt(pres, i))
		if err != nil {
			return n, err
		}
		if ch != nil && ch.roster != nil {
			*changed = append(*changed, id)
		}
		n++
	}
	return n, nil
}

// joinOneLocked makes u a member of channel id; it returns the channel
// when u was not a member yet. The connections of u get the channel's
// member list when it has presence events (pres). The caller holds u's
// shard lock.
func (h *Hub) joinOneLocked(u *user, id string, pres bool) (*channel, error) {
	switch {
	case u.channels.has(id):
		return nil, nil
	case !h.validChannel(id):
		return nil, newError(ErrInvalidChannel, u.uid, id, nil)
	case u.channels.len() >= h.cfg.MaxChannelsPerUid:
		return nil, newError(ErrTooManyChannels, u.uid, id, nil)
	}
	ch := h.addMember(id, u, pres)
	u.channels.set(id, ch)
	if ch.roster != nil {
		ch.roster.admit(u.connList())
	}
	return ch, nil
}

// leaveLocked ends u's membership of the channels it joined among ids,
// and adds to *changed (when not nil) the presence channels it left. The
// caller holds u's shard lock.
func (h *Hub) leaveLocked(u *user, ids []string, changed *[]string) {
	for _, id := range ids {
		if ch, ok := u.channels.get(id); ok {
			u.channels.del(id)
			h.removeMember(ch, u)
			if ch.roster != nil {
				ch.roster.left(u)
				if changed != nil {
					*changed = append(*changed, id)
				}
			}
		}
	}
}

// applyLocked joins or leaves channels for a change another node or
// presence asked for; invalid ids are skipped. pres flags the presence
// channels among ids (presenceIds, before the lock). The caller holds u's
// shard lock.
func (h *Hub) applyLocked(u *user, join bool, ids []string, pres []bool) error {
	if !join {
		h.leaveLocked(u, ids, nil)
		return nil
	}
	for i, id := range ids {
		if h.validChannel(id) {
			if _, err := h.joinOneLocked(u, id, flagAt(pres, i)); err != nil {
				return err
			}
		}
	}
	return nil
}

// JoinChannelIds makes uid a member of the channels: every connection of uid
// receives their messages until UnJoinChannelIds or logout. Joining a channel
// twice is a no-op. It returns ErrUserOffline when uid has no connection
// (on any node, with a Broker), ErrInvalidChannel or ErrTooManyChannels for
// a bad request (the valid channels before it are joined); every error also
// goes to ErrorLogServer.
func (h *Hub) JoinChannelIds(uid uint64, channelIds ...string) error {
	return h.membership(uid, true, channelIds)
}

// UnJoinChannelIds ends uid's membership of the channels. Channels uid has
// not joined are ignored. It returns ErrUserOffline (also sent to
// ErrorLogServer) when uid has no connection (on any node, with a Broker).
func (h *Hub) UnJoinChannelIds(uid uint64, channelIds ...string) error {
	return h.membership(uid, false, channelIds)
}

// membership joins or leaves: in the local registry when uid is connected
// here, then in presence and on the other nodes.
func (h *Hub) membership(uid uint64, join bool, channelIds []string) error {
	if h.closed.Load() {
		return newError(ErrHubClosed, uid, "", nil)
	}
	pres := h.presenceIds(channelIds)
	s := h.userShard(uid)
	s.mu.Lock()
	u := s.users[uid]
	if u == nil {
		s.mu.Unlock()
		return h.remoteMembership(uid, join, channelIds, pres)
	}
	n, err := len(channelIds), error(nil)
	var changed []string // presence channels joined or left
	if join {
		n, err = h.joinLocked(u, channelIds, pres, &changed)
	} else {
		h.leaveLocked(u, channelIds, &changed)
	}
	h.recordLocal(uid, join, changed)
	s.mu.Unlock()
	h.propagate(uid, join, channelIds[:n])
	h.recordShared(uid, join, changed)
	if err != nil {
		return err
	}
	return nil
}

// propagate tells presence and the other nodes that uid, connected here,
// joined or left channels. Failures are the broker's: the change is
// served locally, and presence is re-published after the outage.
func (h *Hub) propagate(uid uint64, join bool, channelIds []string) {
	if len(channelIds) == 0 {
		return
	}
	// Passed to the interfaces below, channelIds would escape, and every
	// caller's variadic list would be allocated: they get a pooled copy,
	// which none of them keeps.
	buf := idLists.Get().(*[]string)
	ids := append((*buf)[:0], channelIds...)
	defer func() {
		clear(ids)
		*buf = ids[:0]
		idLists.Put(buf)
	}()
	if join {
		// Subscribe before telling the cluster, so that whoever sees the
		// membership can reach it.
		h.followChannels(ids)
	}
	if err := h.presenceMembership(uid, join, ids); err != nil && !errors.Is(err, ErrUserOffline) {
		h.brokerFailed(err)
	}
	if err := h.peers.control(uid, join, ids); err != nil {
		h.brokerFailed(err)
	}
	if !join {
		h.followChannels(ids)
	}
}

var idLists = sync.Pool{New: func() any { return new([]string) }}

// remoteMembership joins or leaves channels for a uid that has no
// connection on this node: through presence, which knows whether it is
// online anywhere, and the nodes that hold its connections. pres flags the
// presence channels among channelIds.
func (h *Hub) remoteMembership(uid uint64, join bool, channelIds []string, pres []bool) error {
	ids := make([]string, 0, len(channelIds))
	var changed []string // presence channels among ids
	var bad error
	for i, id := range channelIds {
		if h.validChannel(id) {
			ids = append(ids, id)
			if flagAt(pres, i) {
				changed = append(changed, id)
			}
		} else if join {
			bad = newError(ErrInvalidChannel, uid, id, nil)
			break
		}
	}
	before := h.presenceBefore(uid, changed)
	if err := h.presenceMembership(uid, join, ids); err != nil {
		return h.presenceError(uid, "", err)
	}
	if err := h.peers.control(uid, join, ids); err != nil {
		return h.presenceError(uid, "", err)
	}
	if h.pres.shared {
		for _, id := range changed {
			was, ok := before[id]
			if !ok {
				was = !join
			}
			h.record(id, uid, was, join)
		}
	}
	if bad != nil {
		return bad
	}
	return nil
}

func (h *Hub) presenceMembership(uid uint64, join bool, ids []string) error {
	if join {
		return h.presence.Join(uid, ids)
	}
	return h.presence.Leave(uid, ids)
}

// followChannels makes this node's subscriptions of the channels follow
// local interest.
func (h *Hub) followChannels(ids []string) { h.followChannelsSince(ids, 0) }

// followChannelsSince is followChannels for a member that came at since
// (Unix nanoseconds, see peers.follow).
func (h *Hub) followChannelsSince(ids []string, since int64) {
	for _, id := range ids {
		h.peers.follow(topic{ch: id}, since)
	}
}

package chart

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// shardCount splits the user and channel maps so that unrelated users and
// channels do not contend for one lock.
const shardCount = 64

// Lock order, outermost first: userShard.mu, chanShard.mu, channel.mu,
// conn.mu. No lock is held during network I/O or while a callback runs.

type userShard struct {
	mu     sync.RWMutex
	users  map[uint64]*user
	events map[uint64][]userEvent // pending LoginServer/LogoutServer calls
	// pingTimer pings the shard's connections every PingInterval while
	// pinging is set, that is while the shard has connections.
	pingTimer *time.Timer
	pinging   bool
	_         [64]byte // keep shards on separate cache lines
}

type chanShard struct {
	mu    sync.RWMutex
	chans map[string]*channel
	_     [64]byte
}

// user is one online uid: its connections (tabs, devices) and channels.
type user struct {
	uid      uint64
	h        Handler                    // handler of the connection that logged it in
	conns    atomic.Pointer[[]*conn]    // copy-on-write; replaced under the shard lock
	channels smallMap[string, *channel] // guarded by the user's shard lock
	// With a Broker: set while the channels uid holds on other nodes load;
	// joins and leaves received meanwhile wait in pending. Both guarded by
	// the shard lock.
	loading bool
	pending []memberOp
}

func (u *user) connList() []*conn { return *u.conns.Load() }

// channel is one channel with at least one member.
type channel struct {
	id      string
	mu      sync.Mutex
	members smallMap[*user, struct{}]
	// subs is the flattened list of member connections that fan-out reads
	// without a lock; nil when membership changed since it was built.
	subs atomic.Pointer[[]*conn]
}

// subscribers returns the connections of every member, rebuilding the
// cached list after a membership change.
func (ch *channel) subscribers() []*conn {
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
	list := make([]*conn, 0, n)
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

func (h *Hub) userShard(uid uint64) *userShard {
	return &h.users[(uid*0x9E3779B97F4A7C15)>>58]
}

func (h *Hub) chanShard(id string) *chanShard {
	// FNV-1a
	x := uint32(2166136261)
	for i := 0; i < len(id); i++ {
		x = (x ^ uint32(id[i])) * 16777619
	}
	return &h.chans[x%shardCount]
}

func (h *Hub) validChannel(id string) bool {
	return id != "" && len(id) <= h.cfg.MaxChannelIdLen && utf8.ValidString(id)
}

// JoinChannelIds makes uid a member of the channels: every connection of uid
// receives their messages until UnJoinChannelIds or logout. Joining a channel
// twice is a no-op. It returns ErrUserOffline when uid has no connection,
// ErrInvalidChannel or ErrTooManyChannels for a bad request (the valid
// channels before it are joined); every error also goes to ErrorLogServer.
func (h *Hub) JoinChannelIds(uid uint64, channelIds ...string) error {
	if h.closed.Load() {
		return h.fail(nil, newError(ErrHubClosed, uid, "", nil))
	}
	s := h.userShard(uid)
	s.mu.Lock()
	u := s.users[uid]
	if u == nil {
		s.mu.Unlock()
		if h.cl != nil {
			return h.remoteMembership(uid, true, channelIds)
		}
		return h.fail(nil, newError(ErrUserOffline, uid, "", nil))
	}
	var err error
	n := 0
	for _, id := range channelIds {
		if u.channels.has(id) {
			n++
			continue
		}
		if !h.validChannel(id) {
			err = newError(ErrInvalidChannel, uid, id, nil)
			break
		}
		if u.channels.len() >= h.cfg.MaxChannelsPerUid {
			err = newError(ErrTooManyChannels, uid, id, nil)
			break
		}
		u.channels.set(id, h.addMember(id, u))
		n++
	}
	s.mu.Unlock()
	if h.cl != nil {
		// A copy, so that channelIds does not escape in single-node mode.
		h.clusterMembership(uid, true, true, slices.Clone(channelIds[:n]))
	}
	if err != nil {
		return h.fail(u.h, err)
	}
	return nil
}

// remoteMembership joins or leaves channels for a uid that has no
// connection on this node, through the broker.
func (h *Hub) remoteMembership(uid uint64, join bool, channelIds []string) error {
	ids := make([]string, 0, len(channelIds))
	var bad error
	for _, id := range channelIds {
		if h.validChannel(id) {
			ids = append(ids, id)
		} else if join {
			bad = newError(ErrInvalidChannel, uid, id, nil)
			break
		}
	}
	if err := h.clusterMembership(uid, join, false, ids); err != nil {
		return h.fail(nil, err)
	}
	if bad != nil {
		return h.fail(nil, bad)
	}
	return nil
}

// UnJoinChannelIds ends uid's membership of the channels. Channels uid has
// not joined are ignored. It returns ErrUserOffline (also sent to
// ErrorLogServer) when uid has no connection.
func (h *Hub) UnJoinChannelIds(uid uint64, channelIds ...string) error {
	if h.closed.Load() {
		return h.fail(nil, newError(ErrHubClosed, uid, "", nil))
	}
	s := h.userShard(uid)
	s.mu.Lock()
	u := s.users[uid]
	if u == nil {
		s.mu.Unlock()
		if h.cl != nil {
			return h.remoteMembership(uid, false, channelIds)
		}
		return h.fail(nil, newError(ErrUserOffline, uid, "", nil))
	}
	for _, id := range channelIds {
		if ch, ok := u.channels.get(id); ok {
			u.channels.del(id)
			h.removeMember(ch, u)
		}
	}
	s.mu.Unlock()
	if h.cl != nil {
		h.clusterMembership(uid, false, true, slices.Clone(channelIds))
	}
	return nil
}

// addMember adds u to channel id, creating the channel. The caller holds
// u's shard lock.
func (h *Hub) addMember(id string, u *user) *channel {
	cs := h.chanShard(id)
	cs.mu.Lock()
	ch := cs.chans[id]
	if ch == nil {
		ch = &channel{id: id}
		cs.chans[id] = ch
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
	if ch.members.len() == 0 && cs.chans[ch.id] == ch {
		delete(cs.chans, ch.id)
	}
	ch.mu.Unlock()
	cs.mu.Unlock()
}

// lookupChannel returns the channel or nil.
func (h *Hub) lookupChannel(id string) *channel {
	cs := h.chanShard(id)
	cs.mu.RLock()
	ch := cs.chans[id]
	cs.mu.RUnlock()
	return ch
}

// lookupUser returns the online user or nil.
func (h *Hub) lookupUser(uid uint64) *user {
	s := h.userShard(uid)
	s.mu.RLock()
	u := s.users[uid]
	s.mu.RUnlock()
	return u
}

// publishChannel sends an encoded frame to every subscriber of a channel:
// to local connections first, then with a Broker to the other nodes.
func (h *Hub) publishChannel(channelId string, f []byte) {
	h.deliverChannel(channelId, f)
	if h.cl != nil {
		h.clusterPublishChannel(channelId, f)
	}
}

// publishUser sends an encoded frame to every connection of uid: local
// ones first, then with a Broker those on other nodes.
func (h *Hub) publishUser(uid uint64, f []byte) {
	h.deliverUser(uid, f)
	if h.cl != nil {
		h.clusterPublishUser(uid, f)
	}
}

// deliverChannel queues f on every local connection subscribed to the
// channel. The frame is shared, never copied.
func (h *Hub) deliverChannel(channelId string, f []byte) {
	ch := h.lookupChannel(channelId)
	if ch == nil {
		return
	}
	h.deliver(ch.subscribers(), f)
}

// deliverUser queues f on every local connection of uid.
func (h *Hub) deliverUser(uid uint64, f []byte) {
	if u := h.lookupUser(uid); u != nil {
		h.deliver(u.connList(), f)
	}
}

func (h *Hub) deliver(conns []*conn, f []byte) {
	var n uint64
	for _, c := range conns {
		if c.enqueue(f) {
			n++
		}
	}
	h.stats.out.Add(n)
	h.stats.dropped.Add(uint64(len(conns)) - n)
}

// SendMessageToChannelIds publishes msg as uid to each channel, as a
// Message of type TypeText. The result has one entry per channel: true when
// the message was published, false when uid has not joined that channel.
// When uid is offline every entry is false and ErrUserOffline goes to
// ErrorLogServer.
func (h *Hub) SendMessageToChannelIds(uid uint64, msg string, channelIds ...string) map[string]bool {
	res := make(map[string]bool, len(channelIds))
	for _, id := range channelIds {
		res[id] = false
	}
	if h.closed.Load() {
		h.fail(nil, newError(ErrHubClosed, uid, "", nil))
		return res
	}
	s := h.userShard(uid)
	s.mu.RLock()
	u := s.users[uid]
	if u != nil {
		for _, id := range channelIds {
			res[id] = u.channels.has(id)
		}
	}
	s.mu.RUnlock()
	if u == nil && h.cl != nil {
		chans, online, err := h.remoteChannels(uid)
		if err != nil {
			h.fail(nil, h.brokerErr(uid, "", err))
			return res
		}
		for _, id := range chans {
			if _, ok := res[id]; ok {
				res[id] = true
			}
		}
		if online {
			u = &user{uid: uid} // online elsewhere: publish as uid
		}
	}
	if u == nil {
		h.fail(nil, newError(ErrUserOffline, uid, "", nil))
		return res
	}
	t := now()
	for _, id := range channelIds {
		if res[id] {
			m := Message{ChannelId: id, UserId: uid, Type: TypeText, Content: msg, SendTime: t}
			h.publishChannel(id, encode(&m))
		}
	}
	return res
}

// SendMessageToUid sends msg from uid to toUid as a direct Message of type
// TypeText. Every connection of toUid receives it, and so do uid's own
// connections when uid is online, so that all its devices show the
// conversation. It returns ErrUserOffline (also sent to ErrorLogServer)
// when toUid has no connection.
func (h *Hub) SendMessageToUid(uid, toUid uint64, msg string) error {
	m := Message{UserId: uid, ToUserId: toUid, Type: TypeText, Content: msg, SendTime: now()}
	if err := h.sendDirect(&m); err != nil {
		return h.fail(nil, err)
	}
	return nil
}

// sendDirect delivers a direct message to its recipient and echoes it to
// the sender's connections.
func (h *Hub) sendDirect(m *Message) error {
	if h.closed.Load() {
		return newError(ErrHubClosed, m.UserId, "", nil)
	}
	if h.lookupUser(m.ToUserId) == nil {
		if h.cl == nil {
			return &Error{Kind: ErrUserOffline, Uid: m.UserId, ToUid: m.ToUserId}
		}
		online, err := h.remoteOnline(m.ToUserId)
		if err != nil {
			e := h.brokerErr(m.UserId, "", err).(*Error)
			e.ToUid = m.ToUserId
			return e
		}
		if !online {
			return &Error{Kind: ErrUserOffline, Uid: m.UserId, ToUid: m.ToUserId}
		}
	}
	f := encode(m)
	h.publishUser(m.ToUserId, f)
	if m.UserId != m.ToUserId {
		h.publishUser(m.UserId, f)
	}
	return nil
}

// Publish sends a message to every member of a channel without the sender
// having to be an online member: system notices, messages from other
// services. m.ChannelId is set to channelId and m.ToUserId cleared; an empty
// m.SendTime is set to now. m.UserId and m.Type are sent as given (0 means
// "system" by convention). Publishing to a channel with no members is not an
// error. It returns ErrInvalidChannel or ErrHubClosed.
func (h *Hub) Publish(channelId string, m Message) error {
	if h.closed.Load() {
		return newError(ErrHubClosed, 0, channelId, nil)
	}
	if !h.validChannel(channelId) {
		return newError(ErrInvalidChannel, 0, channelId, nil)
	}
	m.ChannelId, m.ToUserId = channelId, 0
	if m.SendTime == "" {
		m.SendTime = now()
	}
	h.publishChannel(channelId, encode(&m))
	return nil
}

// fail reports err to ErrorLogServer (of h, or the hub's fallback when h is
// nil) and returns it.
func (h *Hub) fail(handler Handler, err error) error {
	if handler != nil {
		h.reportTo(handler, err)
	} else {
		h.report(err)
	}
	return err
}

// IsOnline reports whether uid has at least one connection (on any node,
// with a Broker).
func (h *Hub) IsOnline(uid uint64) bool {
	if h.lookupUser(uid) != nil {
		return true
	}
	if h.cl != nil {
		online, err := h.remoteOnline(uid)
		if err != nil {
			h.report(h.brokerErr(uid, "", err))
		}
		return online
	}
	return false
}

// OnlineUserIds returns the uids with at least one connection, sorted.
// With a Broker it asks the cluster; when the broker fails, the error goes
// to ErrorLogServer and the answer is this node's.
func (h *Hub) OnlineUserIds() []uint64 {
	if h.cl != nil {
		ids, err := sortedUids(h.cl.b.Online())
		if err == nil {
			return ids
		}
		h.report(h.brokerErr(0, "", err))
	}
	var ids []uint64
	for i := range h.users {
		s := &h.users[i]
		s.mu.RLock()
		for uid := range s.users {
			ids = append(ids, uid)
		}
		s.mu.RUnlock()
	}
	slices.Sort(ids)
	return ids
}

// ChannelUserIds returns the uids that joined a channel, sorted. With a
// Broker it asks the cluster, falling back to this node's members.
func (h *Hub) ChannelUserIds(channelId string) []uint64 {
	if h.cl != nil {
		ids, err := sortedUids(h.cl.b.Members(channelId))
		if err == nil {
			if len(ids) == 0 {
				return nil
			}
			return ids
		}
		h.report(h.brokerErr(0, channelId, err))
	}
	ch := h.lookupChannel(channelId)
	if ch == nil {
		return nil
	}
	ch.mu.Lock()
	ids := make([]uint64, 0, ch.members.len())
	ch.members.each(func(u *user, _ struct{}) { ids = append(ids, u.uid) })
	ch.mu.Unlock()
	slices.Sort(ids)
	return ids
}

// UserChannelIds returns the channels uid has joined, sorted; nil when uid
// is offline. With a Broker, a uid connected to another node is asked of
// the cluster.
func (h *Hub) UserChannelIds(uid uint64) []string {
	s := h.userShard(uid)
	s.mu.RLock()
	u := s.users[uid]
	if u == nil {
		s.mu.RUnlock()
		if h.cl == nil {
			return nil
		}
		ids, err := h.cl.b.Channels(uid)
		if err != nil {
			h.report(h.brokerErr(uid, "", err))
			return nil
		}
		if len(ids) == 0 {
			return nil
		}
		slices.Sort(ids)
		return slices.Compact(ids)
	}
	ids := u.channels.keys()
	s.mu.RUnlock()
	slices.Sort(ids)
	return ids
}

package chart

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// The local registry: which users are connected to this node, with which
// connections, and which channels they joined. It is sharded by uid and by
// channel id so that unrelated users and channels do not contend for one
// lock; there is no central goroutine.
//
// Lock order, outermost first: userShard.mu, outShard.mu, chanShard.mu,
// roster.mu, channel.mu, conn.mu (the outbox and the roster are presence
// events', presence_events.go). No lock is held during network I/O or
// while a callback runs.

// shardCount splits the user and channel maps.
const shardCount = 64

type userShard struct {
	mu     sync.RWMutex
	users  map[uint64]*user
	peak   int                 // see shrink
	events map[uint64][]func() // each uid's queue of login/logout steps (events.go)
	// leaving holds the channels of uids whose last connection closed,
	// until their LogoutServer returned (UserChannelIds answers from it).
	leaving map[uint64][]string
	// pingTimer pings the shard's connections every PingInterval while
	// pinging is set, that is while the shard has connections.
	pingTimer *time.Timer
	pinging   bool
	_         [64]byte // keep shards on separate cache lines
}

// user is one uid connected to this node: its connections (tabs, devices)
// and channels.
type user struct {
	uid      uint64
	handler  Handler                    // of the connection that logged it in
	conns    atomic.Pointer[[]*Conn]    // copy-on-write; replaced under the shard lock
	channels smallMap[string, *channel] // guarded by the user's shard lock
	// loading is set from the first connection until up (events.go) has
	// loaded the channels the uid holds on other nodes; joins and leaves
	// that other nodes send meanwhile wait in pending. Both guarded by the
	// shard lock.
	loading bool
	pending []memberOp
	// unsynced is set when up could not load the uid's channels from
	// presence (the broker failing): this node's channels of the uid are
	// not all of them, and the re-publishing of presence must not set them
	// as if they were (cluster.resync). Guarded by the shard lock.
	unsynced bool
	// remote counts the joins and leaves of other nodes that wait in the
	// uid's event queue (cluster.receiveMembership); while any does, the
	// next wait behind them. Guarded by the shard lock.
	remote int
	born   int64                      // monotime when its first connection here registered
	rates  atomic.Pointer[rateLimits] // inbound limits shared by its connections (read.go)
}

// memberOp is a join or leave that waits until a user's channels loaded.
type memberOp struct {
	join bool
	ids  []string
	pres []bool // the presence channels among ids (presenceIds)
	// since: a join another node made then (Unix ms; 0: unknown), from
	// when the channels' streams are new to the uid (follow's since).
	since int64
}

func (u *user) connList() []*Conn { return *u.conns.Load() }

func (h *Hub) userShard(uid uint64) *userShard {
	return &h.users[(uid*0x9E3779B97F4A7C15)>>58]
}

// lookupUser returns the user connected here, or nil.
func (h *Hub) lookupUser(uid uint64) *user {
	s := h.userShard(uid)
	s.mu.RLock()
	u := s.users[uid]
	s.mu.RUnlock()
	return u
}

// register adds c to its user, creating the user on its first connection
// (and queueing its login). It counts c's read goroutine, which the caller
// starts through the uid's queue (Conn.start). It returns whether the
// caller must drain uid's queue, and false for ok when the hub is closed.
func (h *Hub) register(c *Conn) (drain, ok bool) {
	s := h.userShard(c.uid)
	s.mu.Lock()
	defer s.mu.Unlock()
	if h.closed.Load() {
		return false, false
	}
	u := s.users[c.uid]
	if u == nil {
		u = &user{uid: c.uid, handler: c.handler, loading: true, born: monotime()}
		u.conns.Store(&[]*Conn{c})
		s.users[c.uid] = u
		s.users = shrink(s.users, &s.peak)
		drain = s.pushEvent(c.uid, func() { h.up(u) })
	} else {
		list := append(slices.Clip(u.connList()), c)
		u.conns.Store(&list)
		u.channels.each(func(_ string, ch *channel) {
			ch.invalidate()
			if ch.roster != nil {
				ch.roster.admit([]*Conn{c}) // a new subscriber: the member list first
			}
		})
		h.evictLocked(list)
	}
	c.user = u
	c.mu.Lock()
	c.registered = true
	c.mu.Unlock()
	h.readers.Add(1) // the read goroutine that start launches
	h.stats.conns.Add(1)
	h.watchPauses()
	h.startPingsLocked(s)
	return drain, true
}

// evictLocked closes the oldest open connections of a uid beyond
// MaxConnsPerUid. The caller holds the uid's shard lock.
func (h *Hub) evictLocked(list []*Conn) {
	over := -h.cfg.MaxConnsPerUid
	if over >= 0 {
		return // no limit
	}
	for _, c := range list {
		if c.state.Load() == connOpen {
			over++
		}
	}
	for _, c := range list {
		if over <= 0 {
			return
		}
		if c.state.Load() == connOpen {
			c.close(newError(ErrReplaced, c.uid, "", nil), CloseReplaced, "replaced by a newer connection", closeFlush)
			over--
		}
	}
}

// unregister removes c from its user; the last connection drops the user
// and its memberships. It queues DisconnectServer for c and, for the last
// connection, the uid's logout, and returns whether the caller must drain
// uid's queue.
func (h *Hub) unregister(c *Conn, reason error) (drain bool) {
	h.releaseIP(c.ip)
	s := h.userShard(c.uid)
	s.mu.Lock()
	defer s.mu.Unlock()
	if dh, ok := c.handler.(DisconnectHandler); ok {
		drain = s.pushEvent(c.uid, func() { h.disconnected(dh, c, reason) })
	}
	u := c.user
	old := u.connList()
	list := make([]*Conn, 0, len(old))
	for _, x := range old {
		if x != c {
			list = append(list, x)
		}
	}
	u.conns.Store(&list)
	h.stats.conns.Add(-1)
	if len(list) > 0 {
		u.channels.each(func(_ string, ch *channel) { ch.invalidate() })
		return drain
	}
	delete(s.users, c.uid)
	s.users = shrink(s.users, &s.peak)
	chans, handler := u.channels.keys(), c.handler
	u.channels.each(func(id string, ch *channel) {
		h.removeMember(ch, u)
		if ch.roster != nil {
			h.recordLocal(c.uid, false, []string{id}) // in a cluster: once presence agrees (down)
		}
	})
	u.channels = smallMap[string, *channel]{}
	if s.leaving == nil {
		s.leaving = make(map[uint64][]string)
	}
	s.leaving[c.uid] = chans
	if s.pushEvent(c.uid, func() { h.down(c.uid, chans, handler) }) {
		drain = true
	}
	return drain
}

// ipShard counts connections per client IP, for MaxConnsPerIP.
type ipShard struct {
	mu sync.Mutex
	n  map[string]int
}

func (h *Hub) ipShard(ip string) *ipShard { return &h.ips[fnv(ip)%shardCount] }

// fnv is the FNV-1a hash of s, to pick a shard.
func fnv(s string) uint32 {
	x := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		x = (x ^ uint32(s[i])) * 16777619
	}
	return x
}

// takeIP counts a connection from ip; false when ip has MaxConnsPerIP.
func (h *Hub) takeIP(ip string) bool {
	s := h.ipShard(ip)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n[ip] >= h.cfg.MaxConnsPerIP {
		return false
	}
	if s.n == nil {
		s.n = make(map[string]int)
	}
	s.n[ip]++
	return true
}

// releaseIP uncounts a connection from ip ("" when not counted).
func (h *Hub) releaseIP(ip string) {
	if ip == "" {
		return
	}
	s := h.ipShard(ip)
	s.mu.Lock()
	if s.n[ip]--; s.n[ip] <= 0 {
		delete(s.n, ip)
	}
	s.mu.Unlock()
}

// allConns lists every registered connection.
func (h *Hub) allConns() []*Conn {
	var list []*Conn
	for i := range h.users {
		list = append(list, h.shardConns(&h.users[i])...)
	}
	return list
}

func (h *Hub) shardConns(s *userShard) []*Conn {
	s.mu.RLock()
	defer s.mu.RUnlock()
	conns := make([]*Conn, 0, len(s.users))
	for _, u := range s.users {
		conns = append(conns, u.connList()...)
	}
	return conns
}

// localUids returns the uids connected to this node, unsorted.
func (h *Hub) localUids() []uint64 {
	var ids []uint64
	for i := range h.users {
		s := &h.users[i]
		s.mu.RLock()
		for uid := range s.users {
			ids = append(ids, uid)
		}
		s.mu.RUnlock()
	}
	return ids
}

// startPingsLocked starts the shard's ping timer if it is not running. One
// timer per shard instead of one per connection keeps idle connections
// small. The caller holds s.mu.
func (h *Hub) startPingsLocked(s *userShard) {
	if h.cfg.PingInterval <= 0 || s.pinging {
		return
	}
	s.pinging = true
	if s.pingTimer == nil {
		s.pingTimer = time.AfterFunc(h.cfg.PingInterval, func() { h.pingShard(s) })
	} else {
		s.pingTimer.Reset(h.cfg.PingInterval)
	}
}

// pingShard pings every connection of a user shard, and runs again after
// PingInterval while the shard has connections.
func (h *Hub) pingShard(s *userShard) {
	for _, c := range h.shardConns(s) {
		c.enqueue(pingFrame)
	}
	s.mu.Lock()
	if len(s.users) == 0 {
		s.pinging = false
	} else {
		s.pingTimer.Reset(h.cfg.PingInterval)
	}
	s.mu.Unlock()
}

// shrink returns m, or a copy of it once it holds a quarter of the most it
// held since the last copy: a Go map keeps the memory of its peak after
// deletes, so after a burst of users or channels the maps would never give
// it back. Call it after each insert and delete; it is O(1) but when it
// copies, which amortises to O(1) per delete.
func shrink[K comparable, V any](m map[K]V, peak *int) map[K]V {
	n := len(m)
	switch {
	case n > *peak:
		*peak = n
		return m
	case *peak < 1024 || n > *peak/4:
		return m
	}
	small := make(map[K]V, n)
	for k, v := range m {
		small[k] = v
	}
	*peak = n
	return small
}

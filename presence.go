package chart

import (
	"errors"
	"slices"
	"time"
)

// Presence queries answer for the whole cluster: the hub asks its
// Presence, which is the broker's with a Broker that implements it, and
// localPresence, the local registry, on a single node. When the broker
// fails, the answer falls back to this node's registry.

// IsOnline reports whether uid has at least one connection (on any node,
// with a Broker).
func (h *Hub) IsOnline(uid uint64) bool {
	if h.lookupUser(uid) != nil {
		return true
	}
	online, err := h.presence.IsOnline(uid)
	if err != nil {
		h.report(nil, h.presenceError(uid, "", err))
	}
	return online
}

// OnlineUserIds returns the uids with at least one connection, sorted.
// With a Broker it asks the cluster; when the broker fails, the error goes
// to ErrorLogServer and the answer is this node's.
func (h *Hub) OnlineUserIds() []uint64 {
	ids, err := h.presence.Online()
	if err != nil {
		h.report(nil, h.presenceError(0, "", err))
		ids = h.localUids()
	}
	return sortedUids(ids)
}

// ChannelUserIds returns the uids that joined a channel, sorted. With a
// Broker it asks the cluster, falling back to this node's members.
func (h *Hub) ChannelUserIds(channelId string) []uint64 {
	ids, err := h.presence.Members(channelId)
	if err != nil {
		h.report(nil, h.presenceError(0, channelId, err))
		ids = h.localMembers(channelId)
	}
	return sortedUids(ids)
}

// UserChannelIds returns the channels uid has joined, sorted; nil when uid
// is offline. During its LogoutServer, it returns the channels the uid had.
// With a Broker, a uid connected to another node is asked of the cluster.
func (h *Hub) UserChannelIds(uid uint64) []string {
	ids, ok := h.localChannels(uid)
	if !ok {
		ids, ok = h.leavingChannels(uid)
	}
	if !ok {
		var err error
		if ids, err = h.presence.Channels(uid); err != nil {
			h.report(nil, h.presenceError(uid, "", err))
			return nil
		}
	}
	if len(ids) == 0 {
		return nil
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}

// localChannels returns the channels of uid if it is connected here.
func (h *Hub) localChannels(uid uint64) (ids []string, ok bool) {
	s := h.userShard(uid)
	s.mu.RLock()
	defer s.mu.RUnlock()
	u := s.users[uid]
	if u == nil {
		return nil, false
	}
	return u.channels.keys(), true
}

// localState returns the channels of uid, connected here, and whether
// they are unsynced (not loaded from presence).
func (h *Hub) localState(uid uint64) (ids []string, unsynced, ok bool) {
	s := h.userShard(uid)
	s.mu.RLock()
	defer s.mu.RUnlock()
	u := s.users[uid]
	if u == nil {
		return nil, false, false
	}
	return u.channels.keys(), u.unsynced, true
}

// leavingChannels returns the channels of uid while its logout runs.
func (h *Hub) leavingChannels(uid uint64) (ids []string, ok bool) {
	s := h.userShard(uid)
	s.mu.RLock()
	defer s.mu.RUnlock()
	ids, ok = s.leaving[uid]
	return slices.Clone(ids), ok
}

// localMembers returns the uids that joined channelId on this node.
func (h *Hub) localMembers(channelId string) []uint64 {
	ch := h.lookupChannel(channelId)
	if ch == nil {
		return nil
	}
	ch.mu.Lock()
	defer ch.mu.Unlock()
	ids := make([]uint64, 0, ch.members.len())
	ch.members.each(func(u *user, _ struct{}) { ids = append(ids, u.uid) })
	return ids
}

func sortedUids(ids []uint64) []uint64 {
	if len(ids) == 0 {
		return nil
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}

// presenceError turns a failed presence call about uid into the error an
// API call returns: ErrUserOffline as such, anything else as ErrBroker,
// counted as a broker failure.
func (h *Hub) presenceError(uid uint64, channelId string, err error) *Error {
	if errors.Is(err, ErrUserOffline) {
		return newError(ErrUserOffline, uid, channelId, nil)
	}
	h.peers.failed(err)
	return newError(ErrBroker, uid, channelId, err)
}

// brokerFailed records a failure of a broker or presence call that no
// caller sees: it goes to ErrorLogServer as ErrBroker once per outage.
func (h *Hub) brokerFailed(err error) {
	if h.peers.failed(err) {
		h.report(nil, &Error{Kind: ErrBroker, Err: err})
	}
}

// localPresence is a single node's Presence: the local registry. A uid's
// first connection here is its first anywhere, and its last here is its
// last.
type localPresence struct{ h *Hub }

func (localPresence) Connect(uint64) (bool, error)           { return true, nil }
func (localPresence) Disconnect(uint64) (bool, error)        { return true, nil }
func (localPresence) Restore(uint64, []string) (bool, error) { return false, nil }
func (p localPresence) Join(uid uint64, _ []string) error {
	return p.online(uid)
}
func (p localPresence) Leave(uid uint64, _ []string) error {
	return p.online(uid)
}
func (p localPresence) online(uid uint64) error {
	if p.h.lookupUser(uid) == nil {
		return ErrUserOffline
	}
	return nil // the registry has the change already
}
func (p localPresence) Channels(uid uint64) ([]string, error) {
	ids, _ := p.h.localChannels(uid)
	return ids, nil
}
func (p localPresence) Members(channelId string) ([]uint64, error) {
	return p.h.localMembers(channelId), nil
}
func (p localPresence) Online() ([]uint64, error)                  { return p.h.localUids(), nil }
func (p localPresence) IsOnline(uid uint64) (bool, error)          { return p.h.lookupUser(uid) != nil, nil }
func (p localPresence) NodeUids() ([]uint64, error)                { return p.h.localUids(), nil }
func (localPresence) Heartbeat(bool) ([]uint64, bool, bool, error) { return nil, false, false, nil }
func (localPresence) HeartbeatInterval() (d time.Duration)         { return 0 }

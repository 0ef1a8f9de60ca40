package chart

import (
	"errors"
	"time"
)

// Sending: every message, from a client frame or from business code, is
// encoded into one WebSocket frame here, queued on the local connections
// that must receive it, then handed to the other nodes (peers). A client
// frame arrives from the connection's reader (conn.go) through route.

// route sends a message a client wrote on c: to a channel c's user
// joined, or directly to a user. m has its server fields set; at is when
// the hub accepted it (monotime, stamp.go), as in the functions below.
func (h *Hub) route(c *Conn, m *Message, at int64) error {
	if m.ToUserId != 0 {
		return h.sendDirect(m, at)
	}
	if h.closed.Load() {
		return newError(ErrHubClosed, c.uid, m.ChannelId, nil)
	}
	s := h.userShard(c.uid)
	s.mu.RLock()
	joined := c.user.channels.has(m.ChannelId)
	s.mu.RUnlock()
	if !joined {
		return newError(ErrNotJoined, c.uid, m.ChannelId, nil)
	}
	h.publishChannel(m, true, at)
	return nil
}

// SendMessageToChannelIds publishes msg as uid to each channel, as a
// Message of type TypeText. The result has one entry per channel: true when
// the message was published, false when uid has not joined that channel.
// When uid is offline every entry is false and ErrUserOffline goes to
// ErrorLogServer. With a Broker that keeps the streams, the messages are
// queued for their appends, as with Publish.
func (h *Hub) SendMessageToChannelIds(uid uint64, msg string, channelIds ...string) map[string]bool {
	at := monotime()
	res := make(map[string]bool, len(channelIds))
	for _, id := range channelIds {
		res[id] = false
	}
	if h.closed.Load() {
		h.report(nil, newError(ErrHubClosed, uid, "", nil))
		return res
	}
	online, err := h.memberships(uid, res)
	if err != nil {
		h.report(nil, err)
		return res
	}
	if !online {
		h.report(nil, newError(ErrUserOffline, uid, "", nil))
		return res
	}
	t := now()
	for _, id := range channelIds {
		if res[id] {
			m := Message{ChannelId: id, UserId: uid, Type: TypeText, Content: msg, SendTime: t}
			h.publishChannel(&m, false, at)
		}
	}
	return res
}

// memberships sets res[id] for each channel uid joined among the keys of
// res, and reports whether uid is online: from the local registry when uid
// is connected here, else from presence.
func (h *Hub) memberships(uid uint64, res map[string]bool) (online bool, err error) {
	s := h.userShard(uid)
	s.mu.RLock()
	if u := s.users[uid]; u != nil {
		for id := range res {
			res[id] = u.channels.has(id)
		}
		s.mu.RUnlock()
		return true, nil
	}
	s.mu.RUnlock()
	chans, err := h.presence.Channels(uid)
	if err != nil {
		return false, h.presenceError(uid, "", err)
	}
	for _, id := range chans {
		if _, ok := res[id]; ok {
			res[id] = true
		}
	}
	if len(chans) > 0 {
		return true, nil
	}
	if online, err = h.presence.IsOnline(uid); err != nil {
		return false, h.presenceError(uid, "", err)
	}
	return online, nil
}

// SendMessageToUid sends msg from uid to toUid as a direct Message of type
// TypeText. Every connection of toUid receives it, and so do uid's own
// connections when uid is online, so that all its devices show the
// conversation. When toUid is offline the message waits in its inbox
// (Config.InboxSize, InboxTTL) and is delivered on its next connection;
// only with inboxes off does it return ErrUserOffline. In a cluster it
// returns an ErrBroker error when the broker cannot tell whether toUid is
// online, or when toUid is not connected to this node and its inbox could
// not be appended to: then nobody received the message.
func (h *Hub) SendMessageToUid(uid, toUid uint64, msg string) error {
	at := monotime()
	m := Message{UserId: uid, ToUserId: toUid, Type: TypeText, Content: msg, SendTime: now()}
	return h.sendDirect(&m, at)
}

// sendDirect delivers a direct message to its recipient and echoes it to
// the sender's connections. A recipient offline everywhere gets it in its
// inbox, kept for its next connection; m.Online says which.
func (h *Hub) sendDirect(m *Message, at int64) error {
	if h.closed.Load() {
		return newError(ErrHubClosed, m.UserId, "", nil)
	}
	m.Online = h.lookupUser(m.ToUserId) != nil
	if !m.Online {
		online, err := h.presence.IsOnline(m.ToUserId)
		if err != nil {
			e := h.presenceError(m.UserId, "", err)
			e.ToUid = m.ToUserId
			return e
		}
		m.Online = online
	}
	if !m.Online && !m.Transient && !h.streams.keepsInboxes() {
		return &Error{Kind: ErrUserOffline, Uid: m.UserId, ToUid: m.ToUserId}
	}
	return h.publishDirect(m, at)
}

// Publish sends a message to every member of a channel without the sender
// having to be an online member: system notices, messages from other
// services. m.ChannelId is set to channelId and m.ToUserId cleared; an empty
// m.SendTime is set to now. m.UserId and m.Type are sent as given (0 means
// "system" by convention). Publishing to a channel with no members is not an
// error. It returns ErrInvalidChannel or ErrHubClosed.
//
// With a Broker that keeps the streams, Publish returns once the message is
// queued for its append to the channel's stream; it reaches the members when
// the broker has given it its offset. Messages published to one channel keep
// their order; a message published afterwards to another stream may arrive
// first.
func (h *Hub) Publish(channelId string, m Message) error {
	t := time.Now()
	at := stampOf(t)
	if h.closed.Load() {
		return newError(ErrHubClosed, 0, channelId, nil)
	}
	if !h.validChannel(channelId) {
		return newError(ErrInvalidChannel, 0, channelId, nil)
	}
	m.ChannelId, m.ToUserId = channelId, 0
	if m.SendTime == "" {
		m.SendTime = t.Format(TimeLayout)
	}
	h.publishChannel(&m, false, at)
	return nil
}

// Broadcast sends m to every online user, on every node, as a system
// message: UserId 0, ToUserId cleared, ChannelId as given (it may be empty;
// clients can use it as a label), an empty SendTime set to now. It returns
// ErrInvalidChannel for a ChannelId that is not a valid channel id, or
// ErrHubClosed.
func (h *Hub) Broadcast(m Message) error {
	at := monotime()
	if h.closed.Load() {
		return newError(ErrHubClosed, 0, m.ChannelId, nil)
	}
	if m.ChannelId != "" && !h.validChannel(m.ChannelId) {
		return newError(ErrInvalidChannel, 0, m.ChannelId, nil)
	}
	m.UserId, m.ToUserId, m.Transient, m.Offset, m.Epoch = 0, 0, true, 0, ""
	if m.SendTime == "" {
		m.SendTime = now()
	}
	bp := scratch.Get().(*[]byte)
	prefix := appendPrefix((*bp)[:0], &m)
	h.deliver(h.allConns(), stampedFrame(prefix, 0, "", at), topic{all: true}, 0)
	h.peers.publish(topic{all: true}, prefix, true, 0, "")
	putScratch(bp, prefix)
	return nil
}

// publishChannel frames m once and publishes it on its channel's stream.
// wait: m ends with its position, and the message is queued on the local
// connections when publishChannel returns; otherwise (business code's
// Publish) it may be on its way to the broker still, which assigns it a
// position before anyone receives it.
func (h *Hub) publishChannel(m *Message, wait bool, at int64) {
	bp := scratch.Get().(*[]byte)
	prefix := appendPrefix((*bp)[:0], m)
	m.Offset, m.Epoch = h.publishOn(topic{ch: m.ChannelId}, prefix, m.Transient, wait, at)
	putScratch(bp, prefix)
}

// publishDirect sends a direct message to every connection of its
// recipient and of its sender, each stamped with its place in that user's
// inbox; m ends with the sender's. When the recipient has a connection
// here (or the streams are this node's own), the two appends go out
// together and only the sender's is waited for: the recipient gets the
// message here whatever becomes of its append. Otherwise the recipient's
// append comes first: if it fails, the message reached nobody (no other
// node is sent it, no inbox holds it), so the sender's is not made and
// the send is refused with ErrBroker: nothing is echoed to the sender as
// sent that was not.
func (h *Hub) publishDirect(m *Message, at int64) error {
	bp := scratch.Get().(*[]byte)
	prefix := appendPrefix((*bp)[:0], m)
	defer putScratch(bp, prefix)
	both := m.UserId != m.ToUserId && m.UserId != 0
	to := topic{uid: m.ToUserId}
	if both && !m.Transient && h.streams.shared() && h.lookupUser(m.ToUserId) == nil {
		if off, _ := h.publishOnly(to, prefix, at); off == 0 {
			return &Error{Kind: ErrBroker, Uid: m.UserId, ToUid: m.ToUserId, Err: errNotAppended}
		}
	} else {
		m.Offset, m.Epoch = h.publishOn(to, prefix, m.Transient, !both, at)
	}
	if both {
		m.Offset, m.Epoch = h.publishOn(topic{uid: m.UserId}, prefix, m.Transient, true, at)
	}
	return nil
}

// errNotAppended is the cause of a direct message refused because its
// recipient's append failed.
var errNotAppended = errors.New("chart: the recipient's inbox could not be appended to; nobody received the message")

// publishOnly is publishOn(t, prefix, false, true, at) for a message that
// must reach t's stream or nobody: when its append fails, the other nodes
// are not sent it (they would deliver it without a position) and off is
// 0.
func (h *Hub) publishOnly(t topic, prefix []byte, at int64) (off uint64, epoch string) {
	h.streams.appendThen(t, prefix, true, func(data []byte, o uint64, e string) {
		off, epoch = o, e
		if o != 0 {
			h.deliverAt(t, stampedFrame(data, o, e, at), o, e)
		}
	}, func(data []byte, o uint64, e string) {
		if o != 0 {
			h.peers.publish(t, data, false, o, e)
		}
	})
	return off, epoch
}

// publishOn sends prefix, a message framed up to its position, on stream
// t: it appends it to the stream (unless transient), queues it on the
// local connections subscribed to t at its position, and hands it to the
// other nodes. wait: it returns the position once the message is queued
// here; otherwise at once, with none.
func (h *Hub) publishOn(t topic, prefix []byte, transient, wait bool, at int64) (off uint64, epoch string) {
	if transient {
		h.deliverAt(t, stampedFrame(prefix, 0, "", at), 0, "")
		h.peers.publish(t, prefix, true, 0, "")
		return 0, ""
	}
	share := func(data []byte, off uint64, epoch string) { h.peers.publish(t, data, false, off, epoch) }
	if !wait {
		h.streams.appendThen(t, prefix, false, func(data []byte, off uint64, epoch string) {
			h.deliverAt(t, stampedFrame(data, off, epoch, at), off, epoch)
		}, share)
		return 0, ""
	}
	h.streams.appendThen(t, prefix, true, func(data []byte, o uint64, e string) {
		off, epoch = o, e
		h.deliverAt(t, stampedFrame(data, o, e, at), o, e)
	}, share)
	return off, epoch
}

// deliverTo queues f, at offset off of stream t, on every local connection
// subscribed to t.
func (h *Hub) deliverTo(t topic, f []byte, off uint64) {
	if t.ch != "" {
		h.deliverChannel(t.ch, f, off)
	} else {
		h.deliverUser(t.uid, f, off)
	}
}

// subscribed reports whether a local connection is subscribed to t.
func (h *Hub) subscribed(t topic) bool {
	if t.ch != "" {
		return h.lookupChannel(t.ch) != nil
	}
	return h.lookupUser(t.uid) != nil
}

// deliverChannel queues f, the frame of a message at offset off of the
// channel's stream, on every local connection subscribed to it. The frame
// is shared, never copied.
func (h *Hub) deliverChannel(channelId string, f []byte, off uint64) {
	if ch := h.lookupChannel(channelId); ch != nil {
		h.deliver(ch.subscribers(), f, topic{ch: channelId}, off)
	}
}

// deliverUser queues f, at offset off of uid's inbox, on every local
// connection of uid.
func (h *Hub) deliverUser(uid uint64, f []byte, off uint64) {
	if u := h.lookupUser(uid); u != nil {
		h.deliver(u.connList(), f, topic{uid: uid}, off)
	}
}

func (h *Hub) deliver(conns []*Conn, f []byte, t topic, off uint64) {
	if len(conns) >= lingerFanOut {
		h.fanning.Add(1)
		defer h.fanning.Add(-1)
	}
	var n uint64
	var tally queueTally
	for _, c := range conns {
		if c.enqueueTallied(f, t, off, &tally) {
			n++
		}
	}
	tally.flush()
	h.stats.out.Add(n)
	h.stats.dropped.Add(uint64(len(conns)) - n)
}

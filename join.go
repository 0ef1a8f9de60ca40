package chart

import "errors"

// Joining from the client: {"join":"room"} and {"leave":"room"}, decided
// by the application (JoinHandler, LeaveHandler), under the same limits as
// messages. The answer, {"joined":"room"} or {"left":"room"}, comes before
// the channel's member list (or the end of it) when it has presence
// events.

// request handles a client's request to join or leave a channel. Refusals
// are answered with an error frame naming the channel (cut short) and the
// request's id.
func (c *Conn) request(in *inbound) {
	id := in.Id
	if c.limited(cut(id, maxIdLen)) {
		return
	}
	hub := c.hub
	join := in.Join != nil
	channelId := ""
	if join {
		channelId = *in.Join
	} else {
		channelId = *in.Leave
	}
	var err error
	switch {
	case in.Join != nil && in.Leave != nil:
		err, channelId = badMessage(c.uid, "set either \"join\" or \"leave\", not both"), ""
	case len(id) > maxIdLen:
		err, id = badMessage(c.uid, "\"id\" is longer than %d bytes", maxIdLen), ""
	case !hub.validChannel(channelId):
		err = newError(ErrInvalidChannel, c.uid, channelId, nil)
	case join && hub.full(c, channelId):
		err = newError(ErrTooManyChannels, c.uid, channelId, nil) // not worth asking
	default:
		if err = hub.allowed(c, join, channelId); err == nil {
			err = hub.clientMembership(c, join, channelId, encodeAnswer(join, channelId, id))
		}
	}
	if err != nil {
		c.refuseId(err, channelId, 0, id)
	}
}

// full reports whether c's uid holds MaxChannelsPerUid channels, and not
// channelId.
func (h *Hub) full(c *Conn, channelId string) bool {
	s := h.userShard(c.uid)
	s.mu.RLock()
	defer s.mu.RUnlock()
	return !c.user.channels.has(channelId) && c.user.channels.len() >= h.cfg.MaxChannelsPerUid
}

// allowed asks the application whether c may join (leave) channelId.
func (h *Hub) allowed(c *Conn, join bool, channelId string) error {
	jh, ok := c.handler.(JoinHandler)
	if !ok {
		return &Error{Kind: ErrRefused, Uid: c.uid, ChannelId: channelId,
			Err: errors.New("clients may not join or leave channels here (the Handler has no JoinServer)")}
	}
	err := error(Refuse("refused", "join handler failed"))
	switch lh, ok := c.handler.(LeaveHandler); {
	case join:
		h.call(c.handler, c.uid, "JoinServer", func() { err = jh.JoinServer(c, channelId) })
	case ok:
		h.call(c.handler, c.uid, "LeaveServer", func() { err = lh.LeaveServer(c, channelId) })
	default:
		err = nil
	}
	if err == nil {
		return nil
	}
	return h.refusal(c, err, channelId, 0)
}

// clientMembership joins (leaves) c's uid to channelId for the client's
// request, as JoinChannelIds would, and queues answer on c first: before
// the member list of a channel with presence events.
func (h *Hub) clientMembership(c *Conn, join bool, channelId string, answer []byte) error {
	if h.closed.Load() {
		return newError(ErrHubClosed, c.uid, channelId, nil)
	}
	pres := h.presenceOf(channelId)
	ids := []string{channelId}
	s := h.userShard(c.uid)
	s.mu.Lock()
	u := s.users[c.uid]
	if u == nil || u != c.user {
		s.mu.Unlock()
		return newError(ErrUserOffline, c.uid, channelId, nil) // not while c is registered
	}
	var changed []string // the channel, when its presence membership changed
	if join {
		if !u.channels.has(channelId) && u.channels.len() >= h.cfg.MaxChannelsPerUid {
			s.mu.Unlock()
			return newError(ErrTooManyChannels, c.uid, channelId, nil)
		}
		c.enqueueAt(answer, topic{}, 0)
		if ch, _ := h.joinOneLocked(u, channelId, pres); ch != nil && ch.roster != nil {
			changed = ids
		}
	} else {
		c.enqueueAt(answer, topic{}, 0)
		h.leaveLocked(u, ids, &changed)
	}
	h.recordLocal(c.uid, join, changed)
	s.mu.Unlock()
	h.propagate(c.uid, join, ids)
	h.recordShared(c.uid, join, changed)
	return nil
}

// encodeAnswer is the answer to a request granted:
//
//	{"joined":"room","id":"r1"}
//	{"left":"room"}
func encodeAnswer(join bool, channelId, id string) []byte {
	b := []byte(`{"left":`)
	if join {
		b = []byte(`{"joined":`)
	}
	b = appendString(b, channelId)
	if id != "" {
		b = append(b, `,"id":`...)
		b = appendString(b, id)
	}
	return frame(opText, append(b, '}'))
}

package chart

// The login/logout queue. Each uid has a queue of steps (its first
// connection here came, its last one went, and with a Broker the
// cluster's repairs) that run one at a time, in order, with no lock held:
// whoever queues a step into an idle queue drains it. So one uid's
// LoginServer and LogoutServer never overlap and arrive in order, and a
// callback may call any function of the package.

// pushEvent queues a step for uid. The caller holds s.mu, the lock under
// which it decided the step. It returns true when the caller must run
// drainEvents (nobody is draining this uid's queue yet).
func (s *userShard) pushEvent(uid uint64, step func()) bool {
	q, busy := s.events[uid]
	s.events[uid] = append(q, step)
	return !busy
}

// queueEvent queues a step for uid and reports whether the caller must
// drain.
func (h *Hub) queueEvent(uid uint64, step func()) bool {
	s := h.userShard(uid)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pushEvent(uid, step)
}

// drainEvents runs uid's queued steps in order, with no lock held while
// each runs. After Close (a simulated crash) the steps run no callback.
func (h *Hub) drainEvents(uid uint64) {
	s := h.userShard(uid)
	for {
		s.mu.Lock()
		q := s.events[uid]
		if len(q) == 0 {
			delete(s.events, uid)
			s.mu.Unlock()
			return
		}
		step := q[0]
		q[0] = nil
		s.events[uid] = q[1:]
		s.mu.Unlock()
		step()
	}
}

// up runs when uid's first connection on this node registered: subscribe
// to the uid's topic, mark it online, load the channels it holds on other
// nodes, and run LoginServer if it was offline everywhere.
func (h *Hub) up(u *user) {
	if h.killed.Load() {
		return
	}
	uid := u.uid
	h.peers.follow(topic{uid: uid}, 0)
	first, err := h.presence.Connect(uid)
	held, back := h.peers.cancelLogout(uid)
	if err != nil {
		h.brokerFailed(err)
		// Served at once; whether it is online elsewhere, the broker
		// will tell (deferred.go).
		first = !back && !h.peers.deferLogin(uid)
	}
	if back {
		first = false // its logout waited for the broker: it never left
	}
	if first && err == nil && h.cfg.Broker != nil {
		// Joins made here before this Connect reached presence found the
		// uid offline everywhere, and presence refused them: now it takes
		// them. (Not first: it was online elsewhere, presence took them.)
		if own, _, _ := h.localState(uid); len(own) > 0 {
			if err := h.presence.Join(uid, own); err != nil {
				h.brokerFailed(err)
			}
		}
	}
	var chans []string
	synced := err == nil
	if !first && synced {
		if chans, err = h.presence.Channels(uid); err != nil {
			h.brokerFailed(err)
			synced = false
		}
	}
	if !synced && back {
		chans = held // the channels it had here when it left
	}
	h.loaded(u, chans, synced)
	if first {
		h.call(u.handler, uid, "LoginServer", func() { u.handler.LoginServer(uid) })
	}
}

// loaded joins u to the channels it holds elsewhere and applies the joins
// and leaves that arrived while they loaded. Not synced: presence could
// not be read, the channels are only what this node knows.
func (h *Hub) loaded(u *user, chans []string, synced bool) {
	pres := h.presenceIds(chans)
	s := h.userShard(u.uid)
	s.mu.Lock()
	var errs []error
	var follow []string
	var since []memberOp // joins made elsewhere at a known time
	if s.users[u.uid] == u {
		if err := h.applyLocked(u, true, chans, pres); err != nil {
			errs = append(errs, err)
		}
		for _, op := range u.pending {
			if err := h.applyLocked(u, op.join, op.ids, op.pres); err != nil {
				errs = append(errs, err)
			}
			if op.join && op.since != 0 {
				since = append(since, op)
			} else {
				follow = append(follow, op.ids...)
			}
		}
	}
	u.pending = nil
	u.loading = false
	u.unsynced = !synced
	s.mu.Unlock()
	for _, err := range errs {
		h.report(u.handler, err)
	}
	// The channels held elsewhere: what their streams got since the
	// uid's first connection here came is new to it.
	h.followChannelsSince(chans, wallMillis(u.born))
	for _, op := range since {
		h.followChannelsSince(op.ids, op.since)
	}
	h.followChannels(follow)
	if h.seq != nil && synced {
		h.catchUpFollowed(u.uid, u.born, chans)
	}
}

// down runs when uid's last connection on this node closed: mark it
// offline here, drop the subscriptions nobody here needs, and run
// LogoutServer if it is now offline everywhere.
func (h *Hub) down(uid uint64, chans []string, handler Handler) {
	defer h.forgetLeaving(uid, chans)
	if h.killed.Load() {
		return
	}
	// A uid whose LoginServer still waits for the broker gets neither.
	waited := h.peers.cancelLogin(uid)
	last, err := h.presence.Disconnect(uid)
	if err != nil {
		h.brokerFailed(err)
		// Online elsewhere or not, the broker will tell (deferred.go).
		last = !waited && !h.peers.deferLogout(uid, handler, chans)
	}
	if last {
		h.leftChannels(uid, chans)
	}
	h.peers.follow(topic{uid: uid}, 0)
	h.followChannels(chans)
	if last && !waited {
		h.call(handler, uid, "LogoutServer", func() { handler.LogoutServer(uid) })
	}
}

// loggedOut ends the session of uid, offline everywhere now (a logout that
// waited for the broker, deferred.go): its presence events leave its
// channels, and LogoutServer runs.
func (h *Hub) loggedOut(uid uint64, chans []string, handler Handler) {
	h.leftChannels(uid, chans)
	h.call(handler, uid, "LogoutServer", func() { handler.LogoutServer(uid) })
}

// leftChannels records, for the channels with presence events, that uid
// left them: in a cluster a uid leaves its channels when it is offline
// everywhere, and presence has dropped them now.
func (h *Hub) leftChannels(uid uint64, chans []string) {
	if !h.pres.on {
		return
	}
	for i, pres := range h.presenceIds(chans) {
		if pres {
			h.recordShared(uid, false, chans[i:i+1])
		}
	}
}

// forgetLeaving drops what UserChannelIds answered for uid during its
// logout, unless a newer logout replaced it.
func (h *Hub) forgetLeaving(uid uint64, chans []string) {
	s := h.userShard(uid)
	s.mu.Lock()
	if l, ok := s.leaving[uid]; ok && sameSlice(l, chans) {
		delete(s.leaving, uid)
	}
	s.mu.Unlock()
}

func sameSlice(a, b []string) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// disconnected runs DisconnectServer for a connection that closed.
func (h *Hub) disconnected(dh DisconnectHandler, c *Conn, reason error) {
	if !h.killed.Load() {
		h.call(c.handler, c.uid, "DisconnectServer", func() { dh.DisconnectServer(c, reason) })
	}
}

package chart

import "time"

// Callbacks deferred through an outage. LoginServer runs when a uid comes
// online in the whole cluster and LogoutServer when it goes offline
// everywhere; only the broker knows which, so while it is unreachable a
// node cannot decide, and deciding alone would pair the callbacks wrongly
// (a login for a uid online on another node, a logout for a uid still
// connected there). So the node waits for the broker, however long:
//
//   - A uid whose first connection here comes during an outage is served
//     at once, but its LoginServer waits. When the broker answers, the
//     node's re-publishing of presence (Restore) runs it only if the uid
//     was offline everywhere. If its last connection here closes before,
//     neither callback runs.
//   - A uid whose last connection here closes during an outage gets its
//     LogoutServer once the re-publishing marks it offline here and finds
//     it was the uid's last node (or, when the broker lost its data, finds
//     it online nowhere). If it connects here again meanwhile it was never
//     logged out: no callback runs, and it is back in its channels.
//   - When another node reaped this one meanwhile (cut off longer than the
//     TTL), the reaper ran LogoutServer for the uids that were only here:
//     the deferred logouts are dropped, and the uids still connected here
//     and offline everywhere are logged in again.
//   - When the broker lost its data (a restart without persistence, an
//     outage longer than the TTL), every node re-publishes its presence
//     within a heartbeat or two of the broker's return; until a TTL has
//     passed since, "offline everywhere" may only mean "not re-published
//     yet". So the decisions wait until then: the uids whose logout waits
//     are re-published at once, as if still connected, and logged out
//     then if that was their last node; the uids whose login waits are
//     re-published then, and logged in if they were offline everywhere.
//     Either order of two nodes' decisions on one uid keeps its callbacks
//     paired; presence shows the former online, and the latter offline,
//     for up to a TTL.
//   - Shutdown ends the wait: the logouts run, the node deciding alone, as
//     Shutdown runs LogoutServer for every user it has.
//   - A node defers at most maxDeferred (65,536) logouts; past that it
//     decides alone, so that a long outage with many users leaving does
//     not grow its memory without bound. The logins that wait are bounded
//     by the connections.

// deferred is a LogoutServer waiting for the broker.
type deferred struct {
	h     Handler
	chans []string // the uid's channels when it left (presence events)
}

// deferLogin takes the LoginServer of uid, whose first connection here
// came while the broker could not say whether it is online elsewhere.
func (cl *cluster) deferLogin(uid uint64) bool {
	cl.deferMu.Lock()
	defer cl.deferMu.Unlock()
	if cl.logins == nil {
		cl.logins = make(map[uint64]struct{})
	}
	cl.logins[uid] = struct{}{}
	return true
}

// cancelLogin drops uid's deferred LoginServer, reporting whether there
// was one.
func (cl *cluster) cancelLogin(uid uint64) bool {
	cl.deferMu.Lock()
	defer cl.deferMu.Unlock()
	_, ok := cl.logins[uid]
	delete(cl.logins, uid)
	return ok
}

func (cl *cluster) loginPending(uid uint64) bool {
	cl.deferMu.Lock()
	defer cl.deferMu.Unlock()
	_, ok := cl.logins[uid]
	return ok
}

// maxDeferred bounds the logouts a node defers: past it (users leaving by
// the tens of thousands during a long outage) it decides alone again, as
// if it had no broker, rather than hold them all.
var maxDeferred = 1 << 16

func (cl *cluster) deferLogout(uid uint64, h Handler, chans []string) bool {
	cl.deferMu.Lock()
	defer cl.deferMu.Unlock()
	if cl.logouts == nil {
		cl.logouts = make(map[uint64]deferred)
	}
	if _, ok := cl.logouts[uid]; !ok {
		if len(cl.logouts) >= maxDeferred {
			return false
		}
		cl.logouts[uid] = deferred{h, chans}
	}
	return true
}

func (cl *cluster) cancelLogout(uid uint64) ([]string, bool) {
	cl.deferMu.Lock()
	defer cl.deferMu.Unlock()
	d, ok := cl.logouts[uid]
	delete(cl.logouts, uid)
	return d.chans, ok
}

// pending reports whether callbacks wait for the broker, and returns the
// uids whose login waits.
func (cl *cluster) pending() (bool, []uint64) {
	cl.deferMu.Lock()
	defer cl.deferMu.Unlock()
	uids := make([]uint64, 0, len(cl.logins))
	for uid := range cl.logins {
		uids = append(uids, uid)
	}
	return len(cl.logins)+len(cl.logouts) > 0, uids
}

// takeLogouts returns the deferred logouts, which the caller settles.
func (cl *cluster) takeLogouts() map[uint64]deferred {
	cl.deferMu.Lock()
	defer cl.deferMu.Unlock()
	held := cl.logouts
	cl.logouts = nil
	if held == nil {
		held = make(map[uint64]deferred)
	}
	return held
}

// returnLogouts puts taken logouts back, unless newer ones replaced them.
func (cl *cluster) returnLogouts(held map[uint64]deferred) {
	cl.deferMu.Lock()
	defer cl.deferMu.Unlock()
	for uid, d := range held {
		if cl.logouts == nil {
			cl.logouts = make(map[uint64]deferred)
		}
		if _, ok := cl.logouts[uid]; !ok {
			cl.logouts[uid] = d
		}
	}
}

// unsettled reports whether the broker lost this node's presence less
// than a TTL (three heartbeat intervals) ago: the other nodes may not have
// re-published theirs yet.
func (cl *cluster) unsettled(now time.Time) bool {
	cl.beatMu.Lock()
	defer cl.beatMu.Unlock()
	return !cl.lostAt.IsZero() && now.Sub(cl.lostAt) < 3*cl.hub.presence.HeartbeatInterval()
}

// settleLogout runs uid's deferred LogoutServer if uid is offline
// everywhere, now that the broker answers: marking it offline here, and
// when this node's presence no longer has it (not inPresence: the
// Disconnect that failed went through, at least in part), asking too. It
// runs in uid's event queue. A uid connected here again was not logged
// out; a failure defers it again.
func (cl *cluster) settleLogout(uid uint64, d deferred, inPresence bool) {
	h := cl.hub
	if h.killed.Load() || h.lookupUser(uid) != nil {
		return
	}
	// Not in presence, Disconnect still finishes what the failed one
	// left (natsbroker keeps the rest of a leave for it to find).
	last, err := h.presence.Disconnect(uid)
	if err == nil && !last && !inPresence {
		var online bool
		online, err = h.presence.IsOnline(uid)
		last = !online
	}
	if err != nil {
		h.brokerFailed(err)
		cl.returnLogouts(map[uint64]deferred{uid: d})
		return
	}
	if last {
		h.loggedOut(uid, d.chans, d.h)
	}
}

// resync re-publishes the presence of uid, connected here, whose
// channels this node could not load from presence (they are not all of
// them: Restore would set them as if they were) or whose login waits
// (waited): it marks uid online here without touching its channels, adds
// the channels it joined here, and joins it here to those it holds
// elsewhere. A waited uid is first marked offline here, in case its
// Connect during the outage reached the broker after its caller gave up:
// Connect then tells whether another node holds it, and its LoginServer
// runs if none does. It runs in uid's event queue; a failure leaves it for
// the next re-publishing.
func (cl *cluster) resync(uid uint64, waited, relogin bool) {
	h := cl.hub
	fail := func(err error) { h.brokerFailed(err) }
	if waited {
		if _, err := h.presence.Disconnect(uid); err != nil {
			fail(err)
			return
		}
	}
	first, err := h.presence.Connect(uid)
	if err != nil {
		fail(err)
		return
	}
	if local, _, ok := h.localState(uid); ok && len(local) > 0 {
		if err := h.presence.Join(uid, local); err != nil {
			fail(err)
			return
		}
	}
	var chans []string
	if !first {
		if chans, err = h.presence.Channels(uid); err != nil {
			fail(err)
			return
		}
	}
	if len(chans) > 0 {
		cl.apply(uid, true, chans) // unsynced still: a late join (elsewhere.go)
	}
	s := h.userShard(uid)
	s.mu.Lock()
	if u := s.users[uid]; u != nil {
		u.unsynced = false
	}
	s.mu.Unlock()
	if waited {
		cl.cancelLogin(uid)
	}
	if first && (waited || relogin) {
		cl.login(uid)
	}
}

// keepLogout restores uid, whose logout waits, in this node's presence
// after the broker lost its data, and defers the logout again: it settles
// once every node has re-published its presence. It runs in uid's event
// queue.
func (cl *cluster) keepLogout(uid uint64, d deferred) {
	h := cl.hub
	if h.killed.Load() || h.lookupUser(uid) != nil {
		return
	}
	if _, err := h.presence.Restore(uid, d.chans); err != nil {
		h.brokerFailed(err)
	}
	cl.returnLogouts(map[uint64]deferred{uid: d})
}

// endLogouts runs every deferred logout, the node deciding alone: it
// stops (Shutdown runs LogoutServer for every user it had). The uids whose
// login waits need nothing: Shutdown closed their connections, and their
// LoginServer never ran.
func (cl *cluster) endLogouts() {
	h := cl.hub
	cl.deferMu.Lock()
	held := cl.logouts
	cl.logouts, cl.logins = nil, nil
	cl.deferMu.Unlock()
	for uid, d := range held {
		step := func() {
			if !h.killed.Load() && h.lookupUser(uid) == nil {
				h.loggedOut(uid, d.chans, d.h)
			}
		}
		if h.queueEvent(uid, step) {
			h.drainEvents(uid)
		}
	}
}

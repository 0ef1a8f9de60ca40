package chart

import "time"

// Logouts deferred through an outage. When a uid's last connection on a
// node closes, the node asks presence whether the uid is now offline
// everywhere, and runs LogoutServer if so. While the broker is
// unreachable it cannot know: deciding alone, it would log out a user
// still connected to another node. So it defers the LogoutServer: once the
// broker answers again, its re-publishing of presence marks the uid
// offline here and runs LogoutServer only if that was the uid's last node
// (or, when the broker lost its data, only if the uid is online nowhere).
// A uid that connects here again meanwhile was never logged out: its
// deferred logout is dropped, no LoginServer runs for it, and it is back in
// the channels it had (from presence, or else as it left them). An outage
// longer than the node TTL (three heartbeats) ends the wait: the node
// then decides alone, as the other nodes reap it; so does Shutdown.

// deferred is a LogoutServer waiting for the broker.
type deferred struct {
	h     Handler
	chans []string // the uid's channels when it left (presence events)
	since time.Time
}

func (cl *cluster) deferLogout(uid uint64, h Handler, chans []string) bool {
	cl.logoutMu.Lock()
	defer cl.logoutMu.Unlock()
	if cl.logouts == nil {
		cl.logouts = make(map[uint64]deferred)
	}
	if _, ok := cl.logouts[uid]; !ok {
		cl.logouts[uid] = deferred{h, chans, time.Now()}
	}
	return true
}

func (cl *cluster) cancelLogout(uid uint64) ([]string, bool) {
	cl.logoutMu.Lock()
	defer cl.logoutMu.Unlock()
	d, ok := cl.logouts[uid]
	delete(cl.logouts, uid)
	return d.chans, ok
}

// takeLogouts returns the deferred logouts, which the caller settles.
func (cl *cluster) takeLogouts() map[uint64]deferred {
	cl.logoutMu.Lock()
	defer cl.logoutMu.Unlock()
	held := cl.logouts
	cl.logouts = nil
	if held == nil {
		held = make(map[uint64]deferred)
	}
	return held
}

// returnLogouts puts taken logouts back, unless newer ones replaced them.
func (cl *cluster) returnLogouts(held map[uint64]deferred) {
	cl.logoutMu.Lock()
	defer cl.logoutMu.Unlock()
	for uid, d := range held {
		if cl.logouts == nil {
			cl.logouts = make(map[uint64]deferred)
		}
		if _, ok := cl.logouts[uid]; !ok {
			cl.logouts[uid] = d
		}
	}
}

// settleLogout runs uid's deferred LogoutServer if uid is offline
// everywhere, now that the broker answers: marking it offline here when
// this node's presence still has it (inPresence), else asking. It runs in
// uid's event queue. A uid connected here again was not logged out; a
// failure defers it again.
func (cl *cluster) settleLogout(uid uint64, d deferred, inPresence bool) {
	h := cl.hub
	if h.killed.Load() || h.lookupUser(uid) != nil {
		return
	}
	var last bool
	var err error
	if inPresence {
		last, err = h.presence.Disconnect(uid)
	} else {
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

// expireLogouts runs the deferred logouts that waited a node TTL (three
// heartbeat intervals) for the broker: the node decides alone.
func (cl *cluster) expireLogouts(now time.Time) {
	drain := cl.decideLogouts(func(d deferred) bool { return now.Sub(d.since) >= 3*cl.hub.presence.HeartbeatInterval() })
	if len(drain) > 0 {
		cl.spawn(func() {
			for _, uid := range drain {
				cl.hub.drainEvents(uid)
			}
		})
	}
}

// endLogouts runs every deferred logout, the node deciding alone: it
// stops (Shutdown runs LogoutServer for every user it had).
func (cl *cluster) endLogouts() {
	for _, uid := range cl.decideLogouts(func(deferred) bool { return true }) {
		cl.hub.drainEvents(uid)
	}
}

// decideLogouts queues the LogoutServer of the deferred logouts that due
// selects, in their uids' event queues, and returns the uids whose queue
// the caller must drain.
func (cl *cluster) decideLogouts(due func(deferred) bool) []uint64 {
	h := cl.hub
	cl.logoutMu.Lock()
	var uids []uint64
	var ds []deferred
	for uid, d := range cl.logouts {
		if due(d) {
			uids = append(uids, uid)
			ds = append(ds, d)
			delete(cl.logouts, uid)
		}
	}
	cl.logoutMu.Unlock()
	var drain []uint64
	for i, uid := range uids {
		d := ds[i]
		step := func() {
			if !h.killed.Load() && h.lookupUser(uid) == nil {
				h.loggedOut(uid, d.chans, d.h)
			}
		}
		if h.queueEvent(uid, step) {
			drain = append(drain, uid)
		}
	}
	return drain
}

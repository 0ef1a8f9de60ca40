package chart

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// The cluster seam. The hub reaches the other nodes only through peers,
// and asks who is online only through Presence (presence.go). A single
// node has noPeers and localPresence; Config.Broker swaps in a *cluster
// and, when the broker implements it, the broker's Presence. Nothing
// outside this file knows which it has.

// peers is the hub's link to the other nodes of its cluster.
type peers interface {
	// publish ships a message that local subscribers of t already got to
	// the other nodes: its JSON prefix (appendPrefix) and its position,
	// which a node takes when the streams are shared and else stamps with
	// its own (unless transient). prefix is not kept.
	publish(t topic, prefix []byte, transient bool, offset uint64, epoch string)
	// follow makes this node's subscription of t match local interest:
	// subscribed while t's channel has a member here, or t's uid a
	// connection. since, when not 0 (Unix nanoseconds), is when the
	// local member that makes a channel followed came: a channel this
	// node begins to follow starts at its first entry appended since, not
	// at its tail (what the member's connections missed while this node
	// could not know its channels yet).
	follow(t topic, since int64)
	// control tells the nodes holding uid's connections that it joined or
	// left channels. ids is not kept.
	control(uid uint64, join bool, ids []string) error
	// kick tells the nodes holding uid's connections to close them
	// (Disconnect).
	kick(uid uint64, reason string) error
	// notify sends the other nodes subscribed to t an envelope of kind
	// with body (presence events, presence_events.go). body is not kept.
	notify(t topic, kind byte, body []byte)
	// failed counts a failed broker or presence call; true when it begins
	// an outage, which is then reported once.
	failed(err error) bool
	// deferLogin takes the LoginServer of uid, whose first connection
	// here came while the broker could not say whether it is online
	// elsewhere, until the broker can (deferred.go); false: the caller
	// runs it now. cancelLogin drops it, for a uid whose last connection
	// here closed before, and reports whether there was one.
	deferLogin(uid uint64) bool
	cancelLogin(uid uint64) bool
	// deferLogout takes the LogoutServer of uid, whose last connection
	// here closed while the broker could not say whether it is online
	// elsewhere, until the broker can (deferred.go); false: the caller
	// runs it now. cancelLogout drops a deferred one, for a uid that
	// connected here again, and reports whether there was one, with the
	// channels uid had when it left.
	deferLogout(uid uint64, h Handler, chans []string) bool
	cancelLogout(uid uint64) (chans []string, ok bool)
	// stop ends the heartbeat and closes the broker, once.
	stop()
}

// topic is a channel's broker topic, or a uid's when ch is empty, or the
// one every node subscribes to (Broadcast) when all is set.
type topic struct {
	ch  string
	uid uint64
	all bool
}

// name is the topic as brokers see it: "c:" + channel id, "u:" + uid, or
// "all".
func (t topic) name() string {
	switch {
	case t.all:
		return "all"
	case t.ch != "":
		return "c:" + t.ch
	}
	return "u:" + strconv.FormatUint(t.uid, 10)
}

// noPeers is a single node's link: there is nobody to reach.
type noPeers struct{}

func (noPeers) publish(topic, []byte, bool, uint64, string) {}
func (noPeers) follow(topic, int64)                         {}
func (noPeers) control(uint64, bool, []string) error        { return nil }
func (noPeers) kick(uint64, string) error                   { return nil }
func (noPeers) notify(topic, byte, []byte)                  {}
func (noPeers) failed(error) bool                           { return false }
func (noPeers) deferLogin(uint64) bool                      { return false }
func (noPeers) cancelLogin(uint64) bool                     { return false }
func (noPeers) deferLogout(uint64, Handler, []string) bool  { return false }
func (noPeers) cancelLogout(uint64) ([]string, bool)        { return nil, false }
func (noPeers) stop()                                       {}

// connectBackends chooses the hub's presence and peers from its Config.
func (h *Hub) connectBackends() {
	h.presence, h.peers = localPresence{h}, noPeers{}
	b := h.cfg.Broker
	if b == nil {
		return
	}
	cl := &cluster{hub: h, b: b, id: b.NodeID(), subs: make(map[topic]*subState), done: make(chan struct{})}
	g := &guard{cl: cl, wait: int64(h.cfg.BrokerWait), start: time.Now()}
	if p, ok := b.(Presence); ok {
		gp := guardedPresence{p: p, g: g}
		if bp, ok := p.(BatchPresence); ok {
			gp.q = newLookupQueue(bp, g, cl.spawn)
		}
		h.presence = gp
		g.probe = func() error { _, err := p.IsOnline(0); return err }
	}
	if st, ok := b.(Streams); ok {
		gs := guardedStreams{st, g}
		cl.streams = &brokerStreams{hub: h, s: gs, gaps: make(map[topic]*gap), gapMsgs: gapMsgsMax}
		if bs, ok := st.(BatchStreams); ok {
			cl.streams.pipe = newPipeline(guardedBatch{gs, bs}, g, cl.spawn)
		}
		var ba BatchAcks
		if bk, ok := st.(BatchAcks); ok {
			ba = guardedAcks{bk, g}
		}
		cl.streams.acks = newAckQueue(gs, ba, cl.spawn, h.brokerFailed)
		h.streams, h.ids = cl.streams, brokerIds{h, gs}
		h.seq = newSequencer(h)
		if g.probe == nil {
			g.probe = func() error { _, _, err := st.Acked("u:0", 0); return err }
		}
	}
	h.peers = cl
	if err := b.Attach(cl); err != nil {
		h.brokerFailed(err)
	}
	cl.follow(topic{all: true}, 0)
	// The first heartbeat registers the node before any user connects.
	cl.heartbeat(true)
	if every := h.presence.HeartbeatInterval(); every > 0 {
		cl.loop.Add(1)
		go cl.heartbeatLoop(every)
	}
}

// cluster is the peers of a hub with a Broker. It is also the Node the
// broker delivers to.
type cluster struct {
	hub *Hub
	b   Broker
	id  string

	subMu sync.Mutex
	subs  map[topic]*subState

	done     chan struct{}
	loop     sync.WaitGroup // the heartbeat goroutine and its workers
	stopOnce sync.Once
	working  atomic.Bool // a republish worker runs

	down  atomic.Bool  // a failure was reported and no heartbeat succeeded since
	pubAt atomic.Int64 // when a failed publish was last reported (unix ns)
	stale atomic.Bool  // presence must be re-published after the next good heartbeat

	upMu sync.Mutex
	upCh chan struct{} // closed when down ends (up); nil: nobody waits

	streams *brokerStreams // the broker's streams, when it keeps them

	beatMu     sync.Mutex // heartbeats may overlap (the loop's, Resumed's)
	beatFailed bool       // the last heartbeat failed
	backAt     time.Time  // when a heartbeat succeeded after failing
	lostAt     time.Time  // when a heartbeat found this node's presence lost, not reaped
	failedAt   int64      // monotime of the first failed heartbeat of the last outage

	goMu     sync.Mutex // guards starting goroutines (spawn) against stop
	stopped  bool
	catching atomic.Bool // a catch-up runs
	relogin  atomic.Bool // this node was reaped: the next republish logs its uids in again
	later    atomic.Bool // a republish skipped uids until the broker's data settles (deferred.go)
	again    atomic.Bool // the broker resumed again while it ran

	// Callbacks waiting for the broker (deferred.go).
	deferMu sync.Mutex
	logins  map[uint64]struct{}
	logouts map[uint64]deferred
}

// subState serialises the (un)subscribe calls of one topic without holding
// a lock during them: whoever finds the topic busy marks it for another
// pass of the goroutine at work, which re-reads the wanted state.
type subState struct {
	have, busy, again bool
	since             int64 // follow's, for the next subscription
}

func (cl *cluster) stop() {
	cl.stopOnce.Do(func() {
		if !cl.hub.killed.Load() {
			cl.endLogouts()
		}
		cl.goMu.Lock()
		cl.stopped = true
		cl.goMu.Unlock()
		close(cl.done)
		cl.loop.Wait()
		cl.hub.seq.stop()
		if err := cl.b.Close(); err != nil {
			cl.hub.brokerFailed(err)
		}
	})
}

func (cl *cluster) failed(err error) bool {
	cl.hub.stats.brokerErrs.Add(1)
	cl.stale.Store(true)
	if errors.Is(err, ErrBrokerDown) {
		// The guard's own refusal (failfast.go) is no news of the broker:
		// a call that merely found it slow must not mark it failing, or
		// every call after it would be refused too.
		return false
	}
	if cl.down.Swap(true) {
		return false
	}
	cl.hub.seq.outage()
	return true
}

// up notes that the broker answers again: calls go through, and the
// appends waiting for it (awaitUp) go on.
func (cl *cluster) up() {
	if !cl.down.Swap(false) {
		return
	}
	every := cl.hub.presence.HeartbeatInterval()
	if every <= 0 {
		every = 10 * time.Second
	}
	cl.hub.seq.returned(lateKeep * every)
	cl.upMu.Lock()
	if cl.upCh != nil {
		close(cl.upCh)
		cl.upCh = nil
	}
	cl.upMu.Unlock()
}

// awaitUp waits, at most d, for a failing broker to answer again, and
// reports whether it does.
func (cl *cluster) awaitUp(d time.Duration) bool {
	cl.upMu.Lock()
	if cl.upCh == nil {
		cl.upCh = make(chan struct{})
	}
	ch := cl.upCh
	cl.upMu.Unlock()
	if !cl.down.Load() {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-t.C:
		return !cl.down.Load()
	case <-cl.done:
		return false
	}
}

// Resumed is the Node method through which the broker says that its
// subscriptions deliver again after a loss. On another goroutine, the node
// heartbeats at once (re-publishing its presence if the broker lost it),
// and what it missed meanwhile of the streams it follows is read from them
// and delivered, in order.
func (cl *cluster) Resumed() {
	cl.up() // it answers: calls go through again
	if !cl.catching.CompareAndSwap(false, true) {
		cl.again.Store(true)
		return
	}
	if !cl.spawn(func() {
		// A heartbeat at once: presence lost with the broker's data is
		// re-published now, not at the next tick.
		cl.heartbeat(false)
		cl.hub.rosterResync()
		for {
			cl.hub.seq.catchUp()
			if !cl.again.Swap(false) {
				break
			}
		}
		cl.catching.Store(false)
	}) {
		cl.catching.Store(false)
	}
}

// spawn runs f on a goroutine that stop waits for; false (f not run)
// once the cluster is stopping.
func (cl *cluster) spawn(f func()) bool {
	cl.goMu.Lock()
	defer cl.goMu.Unlock()
	if cl.stopped {
		return false
	}
	cl.loop.Add(1)
	go func() {
		defer cl.loop.Done()
		f()
	}()
	return true
}

// BrokerError is the Node method through which the broker reports a
// failure the hub did not see itself.
func (cl *cluster) BrokerError(err error) { cl.hub.brokerFailed(err) }

func (cl *cluster) heartbeatLoop(every time.Duration) {
	defer cl.loop.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-cl.done:
			return
		case <-t.C:
		}
		cl.heartbeat(false)
	}
}

// heartbeat refreshes the node's presence, runs LogoutServer for the uids
// of dead nodes it reaped, and re-publishes this node's presence after an
// outage. The callbacks and the re-publishing run on another goroutine, so
// that they cannot delay the next heartbeat past the node's TTL.
func (cl *cluster) heartbeat(first bool) {
	h := cl.hub
	// After an outage this node saw, it reaps nobody for a TTL (three
	// heartbeat intervals): the other nodes, back too, get a full TTL to
	// heartbeat again before their records are judged. Nor does a node
	// without a handler to run the reaped uids' LogoutServer with (no
	// Config.Handler, no NewServer call yet): a node that has one reaps.
	now := time.Now()
	cl.beatMu.Lock()
	reap := !cl.beatFailed && (cl.backAt.IsZero() || now.Sub(cl.backAt) >= 3*h.presence.HeartbeatInterval()) &&
		h.fallbackHandler() != nil
	cl.beatMu.Unlock()
	gone, lost, reaped, err := h.presence.Heartbeat(reap)
	if err != nil {
		cl.beatMu.Lock()
		if !cl.beatFailed {
			cl.failedAt = monotime()
		}
		cl.beatFailed = true
		cl.beatMu.Unlock()
		h.brokerFailed(err)
		// A reap cut short still took its gone uids offline: nobody else
		// will see them go.
		cl.logoutGone(gone)
		return
	}
	cl.beatMu.Lock()
	if cl.beatFailed {
		cl.beatFailed, cl.backAt = false, now
	}
	if lost && !reaped && !first {
		cl.lostAt = now
	}
	cl.beatMu.Unlock()
	cl.up()
	var drain []uint64
	for _, uid := range gone {
		if h.queueEvent(uid, func() { h.gone(uid) }) {
			drain = append(drain, uid)
		}
	}
	h.presenceBeat(gone)
	if reaped {
		cl.relogin.Store(true) // the next republish logs the reaped uids in again
	}
	republish := cl.stale.Swap(false) || (lost && !first)
	// Callbacks that waited for the broker's data to settle (deferred.go).
	settle := false
	if !republish && !cl.unsettled(now) {
		if cl.later.Swap(false) {
			republish = true // uids skipped while the data settled
		} else if waiting, _ := cl.pending(); waiting {
			settle = true
		}
	}
	if (republish || settle) && !cl.working.CompareAndSwap(false, true) {
		if republish {
			cl.stale.Store(true) // the running worker may have missed changes: again next time
		}
		republish, settle = false, false
	}
	heal := cl.streams != nil && cl.streams.holed()
	if len(drain) == 0 && !republish && !settle && !heal {
		return
	}
	cl.loop.Add(1)
	go func() {
		defer cl.loop.Done()
		for _, uid := range drain {
			h.drainEvents(uid)
		}
		if republish || settle {
			if cl.republish(republish) {
				h.presenceRepublished()
			}
			cl.working.Store(false)
		}
		if heal {
			cl.streams.heal()
		}
	}()
}

// logoutGone runs, on a goroutine of the loop, LogoutServer for uids a
// failed heartbeat reaped before it failed.
func (cl *cluster) logoutGone(gone []uint64) {
	h := cl.hub
	var drain []uint64
	for _, uid := range gone {
		if h.queueEvent(uid, func() { h.gone(uid) }) {
			drain = append(drain, uid)
		}
	}
	if len(gone) > 0 {
		h.presenceBeat(gone)
	}
	if len(drain) > 0 {
		cl.spawn(func() {
			for _, uid := range drain {
				h.drainEvents(uid)
			}
		})
	}
}

// gone runs LogoutServer for a uid reaped from a dead node.
func (h *Hub) gone(uid uint64) {
	if h.killed.Load() {
		return
	}
	handler := h.fallbackHandler()
	if handler == nil {
		handler = nopHandler{}
	}
	h.call(handler, uid, "LogoutServer", func() { handler.LogoutServer(uid) })
}

// republish restores every local uid's presence, and disconnects in
// presence the uids this node no longer holds (their Disconnect failed
// during the outage), each through its uid's event queue so that it
// cannot overtake a connect or disconnect; and it settles the callbacks
// that waited for the broker (deferred.go). With all false it only
// settles them. It reports whether it re-published uids: the presence
// events of every node then resync.
func (cl *cluster) republish(all bool) bool {
	h := cl.hub
	relogin := cl.relogin.Swap(false)
	wait := cl.unsettled(time.Now())
	_, logins := cl.pending()
	var drain []uint64
	queue := func(uid uint64, step func()) {
		if h.queueEvent(uid, step) {
			drain = append(drain, uid)
		}
	}
	uids, err := h.presence.NodeUids()
	if wait && err == nil && cl.survived(uids) {
		// This node's record was lost (its TTL expired) but not its uids:
		// the broker kept its data, the other nodes' records too.
		cl.beatMu.Lock()
		cl.lostAt = time.Time{}
		cl.beatMu.Unlock()
		wait = false
	}
	if all {
		for _, uid := range h.localUids() {
			queue(uid, func() { cl.restore(uid, relogin, wait) })
		}
	} else {
		for _, uid := range logins {
			queue(uid, func() { cl.restore(uid, relogin, wait) })
		}
	}
	held := cl.takeLogouts()
	if err != nil {
		h.brokerFailed(err)
		// Without this node's uids, a deferred logout cannot be told
		// from a uid that presence still lists here: they wait for the
		// next republish (brokerFailed asked for one).
		cl.returnLogouts(held)
		held = nil
	}
	for _, uid := range uids {
		if d, ok := held[uid]; ok {
			delete(held, uid)
			queue(uid, func() { cl.settleLogout(uid, d, true) })
		} else if all {
			queue(uid, func() { cl.purge(uid) })
		}
	}
	// The rest are not in this node's presence.
	switch {
	case relogin:
		// Reaped: the reaper ran LogoutServer for those that were only
		// here.
	case wait:
		// The broker lost its data: offline everywhere may mean not
		// re-published yet. Until the others have, these uids are
		// restored here, so that a node whose login of one waits finds
		// it online; their logouts settle then, as for a short outage.
		for uid, d := range held {
			queue(uid, func() { cl.keepLogout(uid, d) })
		}
	default:
		for uid, d := range held {
			queue(uid, func() { cl.settleLogout(uid, d, false) })
		}
	}
	for _, uid := range drain {
		h.drainEvents(uid)
	}
	return all || (len(logins) > 0 && !wait)
}

// survived reports whether the broker kept this node's presence through
// the outage: uids lists a uid connected here since before the outage
// began (one connected since may have been re-published already).
func (cl *cluster) survived(uids []uint64) bool {
	cl.beatMu.Lock()
	since := cl.failedAt
	cl.beatMu.Unlock()
	if since == 0 {
		return false
	}
	for _, uid := range uids {
		if u := cl.hub.lookupUser(uid); u != nil && u.born < since {
			return true
		}
	}
	return false
}

// restore re-publishes the presence of uid, if it is still connected here.
//
// Its LoginServer runs when the restore finds it offline everywhere and
// either it waited (it connected here during an outage, deferred.go) or
// relogin is set (another node reaped this one and ran LogoutServer for
// the uids that were only here): its callbacks stay paired. A uid whose
// login waits, or whose channels this node could not load (unsynced), is
// restored by resync, not while the broker's data settles (wait).
func (cl *cluster) restore(uid uint64, relogin, wait bool) {
	h := cl.hub
	if h.killed.Load() {
		return
	}
	chans, unsynced, ok := h.localState(uid)
	if !ok {
		return
	}
	waited := cl.loginPending(uid)
	if (waited || unsynced) && wait {
		// Its channels held elsewhere, as far as re-published yet (the
		// rest come as the other nodes restore it); presence waits.
		if chans, err := h.presence.Channels(uid); err != nil {
			h.brokerFailed(err)
		} else if len(chans) > 0 {
			cl.apply(uid, true, chans)
		}
		cl.later.Store(true) // the next settle re-publishes again
		return
	}
	if waited || unsynced {
		cl.resync(uid, waited, relogin)
		return
	}
	first, err := h.presence.Restore(uid, chans)
	if err != nil {
		h.brokerFailed(err)
		return
	}
	if len(chans) > 0 && wait {
		// The broker lost its data: a node where uid connected during
		// the outage could not load its channels, and may have read
		// them before this restore. Tell it, as a join made here does.
		if err := cl.control(uid, true, chans); err != nil {
			h.brokerFailed(err)
		}
	}
	if first && relogin {
		cl.login(uid)
	}
}

// login runs LoginServer for uid, connected here, after the broker
// answered again.
func (cl *cluster) login(uid uint64) {
	h := cl.hub
	handler := h.fallbackHandler()
	if u := h.lookupUser(uid); u != nil {
		handler = u.handler
	}
	if handler == nil {
		handler = nopHandler{}
	}
	h.call(handler, uid, "LoginServer", func() { handler.LoginServer(uid) })
}

// purge disconnects uid in presence if it has no connection here and is
// not leaving. Its LogoutServer ran when its last connection here closed.
func (cl *cluster) purge(uid uint64) {
	if cl.hub.killed.Load() || cl.hub.lookupUser(uid) != nil {
		return
	}
	if _, leaving := cl.hub.leavingChannels(uid); leaving {
		// Its last connection closed after this step was queued: its
		// logout step, queued behind, disconnects it and runs
		// LogoutServer (it would find it gone, and run none).
		return
	}
	if _, err := cl.hub.presence.Disconnect(uid); err != nil {
		cl.hub.brokerFailed(err)
	}
}

// Envelope kinds. An envelope is: kind byte, origin node id (uvarint
// length + bytes), then for a channel message the channel id (length +
// bytes), a flags byte and the message's JSON prefix; for a user message
// the uid (uvarint), a flags byte and the prefix; for a join or leave the
// uid and the channel ids (each length + bytes); for a broadcast the
// prefix; for a kick the uid and the reason.
const (
	envChannel = 'c'
	envUser    = 'u'
	envJoin    = 'j'
	envLeave   = 'l'
	envAll     = 'a'
	envKick    = 'k'
	// Presence events (presence_events.go): a channel's changes (on its
	// topic: the channel id, then uids), the uids of a reaped node and a
	// resync after an outage (on "all").
	envPresence = 'p'
	envGone     = 'g'
	envResync   = 'r'
)

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// readStr reads a length-prefixed string; ok is false on a short input.
func readStr(b []byte) (s, rest []byte, ok bool) {
	n, k := binary.Uvarint(b)
	if k <= 0 || uint64(len(b)-k) < n {
		return nil, nil, false
	}
	return b[k : k+int(n)], b[k+int(n):], true
}

func (cl *cluster) envelope(kind byte, size int) []byte {
	b := make([]byte, 0, 1+binary.MaxVarintLen64+len(cl.id)+size)
	return appendStr(append(b, kind), cl.id)
}

// Envelope flags, and the position that follows them when set.
const (
	flagTransient  = 1
	flagPositioned = 2 // uvarint offset, then the epoch (length + bytes)
)

// publish ships a message, encoded once, to the other nodes.
func (cl *cluster) publish(t topic, prefix []byte, transient bool, offset uint64, epoch string) {
	var b []byte
	extra := 2*binary.MaxVarintLen64 + len(epoch) + len(prefix)
	switch {
	case t.all:
		b = cl.envelope(envAll, len(prefix))
	case t.ch != "":
		b = cl.envelope(envChannel, binary.MaxVarintLen64+len(t.ch)+1+extra)
		b = appendStr(b, t.ch)
	default:
		b = cl.envelope(envUser, binary.MaxVarintLen64+1+extra)
		b = binary.AppendUvarint(b, t.uid)
	}
	if !t.all {
		flags := byte(0)
		if transient {
			flags = flagTransient
		}
		if offset != 0 {
			flags |= flagPositioned
		}
		b = append(b, flags)
		if offset != 0 {
			b = appendStr(binary.AppendUvarint(b, offset), epoch)
		}
	}
	if err := cl.b.Publish(t.name(), append(b, prefix...)); err != nil {
		cl.publishFailed(err)
	}
}

// publishFailed counts a publish the broker refused and reports one a
// second. It does not mark the broker failing: a publish queue overflows
// on a busy broker that answers all the same (the others then read what
// they missed from the streams), and a broker that is down fails the
// calls that do.
func (cl *cluster) publishFailed(err error) {
	cl.hub.stats.brokerErrs.Add(1)
	now, last := time.Now().UnixNano(), cl.pubAt.Load()
	if now-last >= int64(time.Second) && cl.pubAt.CompareAndSwap(last, now) {
		cl.hub.report(nil, &Error{Kind: ErrBroker, Err: err})
	}
}

func (cl *cluster) control(uid uint64, join bool, ids []string) error {
	kind := byte(envLeave)
	if join {
		kind = envJoin
	}
	n := 2 * binary.MaxVarintLen64
	for _, id := range ids {
		n += binary.MaxVarintLen64 + len(id)
	}
	b := binary.AppendUvarint(cl.envelope(kind, n), uid)
	if join {
		// When: a node that begins to follow a channel for it starts at
		// what its stream got from then on (follow's since), not at the
		// moment the envelope arrives; what was published in between
		// would be lost to uid.
		b = binary.AppendUvarint(b, uint64(time.Now().UnixMilli()))
	}
	for _, id := range ids {
		b = appendStr(b, id)
	}
	return cl.b.Publish(topic{uid: uid}.name(), b)
}

func (cl *cluster) notify(t topic, kind byte, body []byte) {
	b := append(cl.envelope(kind, len(body)), body...)
	if err := cl.b.Publish(t.name(), b); err != nil {
		cl.hub.pres.unsent.Store(true) // the next good heartbeat has every node read presence again
		cl.publishFailed(err)
	}
}

func (cl *cluster) kick(uid uint64, reason string) error {
	b := binary.AppendUvarint(cl.envelope(envKick, binary.MaxVarintLen64+len(reason)), uid)
	return cl.b.Publish(topic{uid: uid}.name(), append(b, reason...))
}

// Receive is the Node method that takes an envelope from the broker.
// Envelopes this node published are skipped: it delivered them locally
// already.
func (cl *cluster) Receive(data []byte) {
	h := cl.hub
	if len(data) == 0 || h.killed.Load() {
		return
	}
	kind := data[0]
	origin, rest, ok := readStr(data[1:])
	if !ok {
		h.brokerFailed(errors.New("malformed envelope"))
		return
	}
	if string(origin) == cl.id {
		return
	}
	switch kind {
	case envChannel:
		if id, body, ok := readStr(rest); ok {
			cl.receiveMessage(topic{ch: string(id)}, body)
		}
	case envUser:
		if uid, k := binary.Uvarint(rest); k > 0 {
			cl.receiveMessage(topic{uid: uid}, rest[k:])
		}
	case envJoin, envLeave:
		if uid, since, ids, ok := readMembership(rest, kind == envJoin); ok {
			cl.receiveMembership(uid, kind == envJoin, ids, since)
		}
	case envAll:
		h.deliver(h.allConns(), stampedFrame(rest, 0, "", monotime()), topic{all: true}, 0)
	case envKick:
		if uid, k := binary.Uvarint(rest); k > 0 {
			h.disconnectLocal(uid, string(rest[k:]))
		}
	case envPresence:
		h.presenceReceived(rest)
	case envGone:
		if uids, ok := readUids(rest); ok {
			h.presenceGone(uids)
		}
	case envResync:
		h.rosterResync()
	}
}

// receiveMessage delivers a message another node published on t: at the
// position it carries when the streams are shared, else stamped in this
// node's own.
func (cl *cluster) receiveMessage(t topic, body []byte) {
	h, at := cl.hub, monotime() // its delivery latency here starts
	if len(body) == 0 {
		return
	}
	flags, prefix := body[0], body[1:]
	var off uint64
	var epoch string
	if flags&flagPositioned != 0 {
		o, k := binary.Uvarint(prefix)
		e, rest, ok := readStr(prefix[max(k, 0):])
		if k <= 0 || !ok {
			return
		}
		off, epoch, prefix = o, string(e), rest
	}
	transient := flags&flagTransient != 0
	if !h.streams.shared() {
		if mu := h.streams.order(t); mu != nil && !transient {
			mu.Lock() // this node's offsets reach its connections in order
			defer mu.Unlock()
		}
		if !transient {
			off, epoch = h.streams.append(t, prefix)
		}
	} else if off == 0 && !transient {
		// Its append failed on its node: the node appends it again once
		// the broker answers (heal), and sends it with its offset then,
		// when it does not go out here a second time.
		h.seq.unplace(t, prefix)
	}
	h.deliverAt(t, stampedFrame(prefix, off, epoch, at), off, epoch)
}

// brokerStreams is the store of a hub whose Broker keeps streams: the
// cluster's offsets. Appends go through the pipeline (pipeline.go) when
// the broker takes batches. A failed append is a broker failure: the
// message goes on to local connections without a position, and the stream
// has a gap. Once the broker answers again, heal closes it: a channel's
// messages that failed are appended again (those that timed out only if
// the broker did not store them after all), late but in the history, and
// sent to the other nodes with their offsets; a stream whose messages are
// not all kept for that (an inbox, or over the bounds) is reset instead,
// so that clients learn recovered:false rather than trust a history with
// a hole.
type brokerStreams struct {
	hub  *Hub
	s    Streams
	pipe *pipeline // nil: one append per round trip
	acks *ackQueue

	mu       sync.Mutex
	gaps     map[topic]*gap // the streams with a gap
	gapBytes int            // what the gaps' messages hold, gapBytesMax at most
	gapMsgs  int            // gapMsgsMax (tests lower it)
	healing  atomic.Bool    // a heal runs: the next heartbeat's waits for the one after
}

// gap is what a stream misses: the appends that failed since the broker
// last answered, in order.
type gap struct {
	epoch string // the stream's epoch before the gap ("": unknown)
	// lost: a message of the gap is not kept (an inbox's, or over the
	// bounds): the stream is reset.
	lost bool
	msgs []gapMsg
}

// gapMsg is a message whose append failed, as appended; maybe: its append
// timed out, and the broker may have stored it all the same (a frozen
// broker stores what waited for it when it thaws).
type gapMsg struct {
	data  []byte
	maybe bool
}

// The bounds of what the gaps keep to append again: messages per stream,
// and bytes per node.
const (
	gapMsgsMax  = 1024
	gapBytesMax = 16 << 20
)

func (b *brokerStreams) append(t topic, data []byte) (uint64, string) {
	off, epoch, err := b.s.Append(t.name(), data)
	off, epoch, _ = b.settle(t, data, off, epoch, err)
	return off, epoch
}

func (b *brokerStreams) appendThen(t topic, data []byte, wait bool, deliver, share func(data []byte, off uint64, epoch string)) {
	then := func(data []byte, off uint64, epoch string, err error) {
		off, epoch, ok := b.settle(t, data, off, epoch, err)
		if off == 0 && err != nil && !errors.Is(err, errPipeStopped) {
			// It goes out here without its offset, and may reach the
			// stream later (stored after all, or appended again by heal).
			b.hub.seq.unplace(t, data)
		}
		deliver(data, off, epoch)
		if ok {
			share(data, off, epoch)
		}
	}
	if b.pipe == nil {
		off, epoch, err := b.s.Append(t.name(), data)
		then(data, off, epoch, err)
		return
	}
	if !wait {
		b.pipe.submit(t, data, then)
		return
	}
	off, epoch, err := b.pipe.wait(t, data, func(data []byte, off uint64, epoch string, err error) {
		// Given up on (below), it went out here then, without its
		// offset: stored, its turn passes here without its going out
		// again, and the other nodes get it with its offset; not, it
		// is a hole as any failed append.
		off, epoch, ok := b.settle(t, data, off, epoch, err)
		switch {
		case off != 0:
			b.hub.seq.passed(t, off, epoch, data)
			share(data, off, epoch)
		case ok:
			share(data, 0, "")
		}
	})
	if errors.Is(err, errUnanswered) {
		// Here and now; shared once the broker answers. Read from the
		// stream before that, it does not go out again.
		b.hub.seq.unplace(t, data)
		deliver(data, 0, "")
		return
	}
	then(data, off, epoch, err)
}

// settle takes the outcome of data's append: a failure is reported and
// leaves a gap; share is false when the other nodes must not be sent the
// message (the broker may have stored it: they will read it from the
// stream, or get it from heal).
func (b *brokerStreams) settle(t topic, data []byte, off uint64, epoch string, err error) (uint64, string, bool) {
	if err == nil {
		return off, epoch, true
	}
	if errors.Is(err, errPipeStopped) {
		return 0, "", false
	}
	b.hub.brokerFailed(err)
	maybe := ambiguous(err)
	epoch = b.hub.seq.epochOf(t)
	b.mu.Lock()
	g := b.gaps[t]
	if g == nil {
		g = &gap{epoch: epoch} // the gap is in the newest epoch this node knew
		b.gaps[t] = g
	}
	switch {
	case g.lost:
	case t.ch == "" || len(g.msgs) >= b.gapMsgs || b.gapBytes+len(data) > gapBytesMax:
		// An inbox's message is not appended again (a direct message
		// whose recipient's append failed was refused to its sender).
		g.lost = true
		b.dropMsgs(g)
	default:
		g.msgs = append(g.msgs, gapMsg{bytes.Clone(data), maybe})
		b.gapBytes += len(data)
	}
	b.mu.Unlock()
	return 0, "", !maybe
}

// dropMsgs forgets g's messages. b.mu is held.
func (b *brokerStreams) dropMsgs(g *gap) {
	for _, m := range g.msgs {
		b.gapBytes -= len(m.data)
	}
	g.msgs = nil
}

// brokerIds keeps clients' message ids in the broker, so that a retry on
// another node is recognised. While the broker fails, a send counts as
// new.
type brokerIds struct {
	hub *Hub
	s   Streams
}

func (b brokerIds) claim(uid uint64, id string) (prev *sent, fresh *sent) {
	isNew, done, off, epoch, err := b.s.Claim(uid, id)
	switch {
	case err != nil:
		b.hub.brokerFailed(err)
		return nil, &sent{}
	case isNew:
		return nil, &sent{}
	}
	return &sent{done: done, offset: off, epoch: epoch}, nil
}

func (b brokerIds) finish(uid uint64, id string, _ *sent, ok bool, offset uint64, epoch string) {
	if err := b.s.Settle(uid, id, ok, offset, epoch); err != nil {
		b.hub.brokerFailed(err)
	}
}

// holed reports whether some stream has a gap to close.
func (b *brokerStreams) holed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.gaps) > 0
}

// heal closes the gaps of the streams; what it cannot waits for the next
// heartbeat. A gap whose messages are all kept is closed by appending
// them again, in order, except those that timed out and are in the stream
// (stored after all): each takes its turn here (it went out here without
// its offset, and does not go out again) and goes to the other nodes with
// its offset (those it was sent to without an offset pass it too). Other
// gaps reset their streams, unless the stream's epoch changed since (the
// broker restarted without its data): then its history has no hole, for
// its entries were appended since the broker came back, and nodes that
// resubscribed later than this one may still have to read them.
func (b *brokerStreams) heal() {
	if !b.healing.CompareAndSwap(false, true) {
		return // a message of a gap must not be appended again twice
	}
	defer b.healing.Store(false)
	b.mu.Lock()
	gaps := make(map[topic]*gap, len(b.gaps))
	for t, g := range b.gaps {
		gaps[t] = g
	}
	b.mu.Unlock()
	for t, g := range gaps {
		b.mu.Lock()
		before, lost, msgs := g.epoch, g.lost, slices.Clone(g.msgs)
		b.mu.Unlock()
		if lost {
			if !b.reset(t, before) {
				return
			}
		} else if !b.redo(t, g, msgs) {
			return
		}
		b.mu.Lock()
		if b.gaps[t] == g && len(g.msgs) == 0 && g.lost == lost {
			delete(b.gaps, t) // else an append failed meanwhile: next time
		}
		b.mu.Unlock()
	}
}

// reset resets stream t, unless its epoch is no longer before. It reports
// false when the broker failed.
func (b *brokerStreams) reset(t topic, before string) bool {
	if before != "" {
		_, epoch, _, _, err := b.s.Read(t.name(), 0, 1) // its newest entry: its epoch
		if err != nil {
			b.hub.brokerFailed(err)
			return false
		}
		if epoch != before {
			return true
		}
	}
	// What this node has not delivered of the stream yet (appended by
	// other nodes before it resubscribed) goes out first: the reset drops
	// it.
	b.hub.seq.catchUpStream(t)
	if err := b.s.Reset(t.name()); err != nil {
		b.hub.brokerFailed(err)
		return false
	}
	return true
}

// redo closes g, stream t's gap of msgs, by appending them again (see
// heal); each leaves g once done. It reports false when the broker failed.
func (b *brokerStreams) redo(t topic, g *gap, msgs []gapMsg) bool {
	var es []StreamEntry
	var epoch string
	if slices.ContainsFunc(msgs, func(m gapMsg) bool { return m.maybe }) {
		var err error
		if es, epoch, _, _, err = b.s.Read(t.name(), 0, 0); err != nil {
			b.hub.brokerFailed(err)
			return false
		}
	}
	used := make(map[uint64]bool)
	for _, m := range msgs {
		off, e := uint64(0), epoch
		if m.maybe {
			// The newest first: an older message may have the same bytes.
			for k := len(es) - 1; k >= 0; k-- {
				if !used[es[k].Offset] && bytes.Equal(es[k].Data, m.data) {
					off = es[k].Offset
					used[off] = true
					break
				}
			}
		}
		if off == 0 {
			var err error
			if off, e, err = b.s.Append(t.name(), m.data); err != nil {
				b.hub.brokerFailed(err)
				return false
			}
		}
		b.hub.seq.passed(t, off, e, m.data)
		b.hub.peers.publish(t, m.data, false, off, e)
		b.mu.Lock()
		if len(g.msgs) > 0 && !g.lost {
			b.gapBytes -= len(g.msgs[0].data)
			g.msgs[0] = gapMsg{}
			g.msgs = g.msgs[1:]
		}
		b.mu.Unlock()
	}
	return true
}

// tail returns stream t's epoch ("": no such stream) and where its past
// ends for a new member: its newest offset, or, with since (Unix
// nanoseconds), just before its first entry appended since then, if any
// (at most half a send queue back). ok false: the broker fails.
func (b *brokerStreams) tail(t topic, since int64) (epoch string, past uint64, fresh []entry, ok bool) {
	var err error
	var newest time.Time
	if gs, ok := b.s.(guardedStreams); ok {
		epoch, past, newest, err = gs.Tail(t.name())
	} else {
		var es []StreamEntry
		es, epoch, _, past, err = b.s.Read(t.name(), 0, 1)
		if len(es) > 0 {
			newest = es[0].Time
		}
	}
	if err != nil {
		b.hub.brokerFailed(err)
		return "", 0, nil, false
	}
	if since == 0 || newest.IsZero() || newest.UnixNano() < since {
		return epoch, past, nil, true
	}
	// Appended since: read back how far.
	n := uint64(b.hub.seq.lateCap())
	entries, got, _, _ := b.read(t, past-min(past, n), 0)
	if got != epoch {
		return epoch, past, nil, true // reset meanwhile, or failing: its tail
	}
	for k, e := range entries {
		if e.at >= since && e.off <= past {
			// Started before the tail: what the stream got from e on
			// goes out as soon as it is followed, not only when a later
			// message shows the hole (none may come).
			for _, f := range entries[k:] {
				if f.off <= past {
					fresh = append(fresh, f)
				}
			}
			return epoch, e.off - 1, fresh, true
		}
	}
	return epoch, past, nil, true
}

func (b *brokerStreams) read(t topic, after uint64, limit int) ([]entry, string, bool, uint64) {
	es, epoch, complete, last, err := b.s.Read(t.name(), after, limit)
	if err != nil {
		b.hub.brokerFailed(err)
		return nil, "", false, 0
	}
	entries := make([]entry, len(es))
	for i, e := range es {
		entries[i] = entry{off: e.Offset, data: e.Data}
		if !e.Time.IsZero() {
			entries[i].at = e.Time.UnixNano()
		}
	}
	return entries, epoch, complete, last
}

// ackStream queues the acknowledgement for the broker (acks.go) and
// returns.
func (b *brokerStreams) ackStream(t topic, uid uint64, epoch string, offset uint64) {
	b.acks.put(t, uid, epoch, offset)
}

// acked reads uid's acknowledged position in t, once the broker has every
// acknowledgement made on this node.
func (b *brokerStreams) acked(t topic, uid uint64) (uint64, string) {
	b.acks.settle(t, uid)
	off, epoch, err := b.s.Acked(t.name(), uid)
	if err != nil {
		b.hub.brokerFailed(err)
	}
	return off, epoch
}

func (b *brokerStreams) keepsInboxes() bool { return true }

// order is nil: appends to the broker are network calls, which no lock is
// held for. Messages of one stream published concurrently can then reach
// a node in another order than their offsets (see README, Scaling out).
func (b *brokerStreams) order(topic) *sync.Mutex { return nil }
func (b *brokerStreams) shared() bool            { return true }

// readMembership parses a join or leave envelope's body: the uid, for a
// join (timed) when it was made (Unix nanoseconds, to the millisecond),
// and the channel ids.
func readMembership(b []byte, timed bool) (uid uint64, since int64, ids []string, ok bool) {
	uid, k := binary.Uvarint(b)
	if k <= 0 {
		return 0, 0, nil, false
	}
	b = b[k:]
	if timed {
		ms, k := binary.Uvarint(b)
		if k <= 0 || ms > math.MaxInt64/uint64(time.Millisecond) {
			return 0, 0, nil, false
		}
		since, b = int64(ms)*int64(time.Millisecond), b[k:]
	}
	for len(b) > 0 {
		var id []byte
		if id, b, ok = readStr(b); !ok {
			return 0, 0, nil, false
		}
		ids = append(ids, string(id))
	}
	return uid, since, ids, true
}

// receiveMembership takes a join or leave another node made for uid. It
// runs on the broker's delivery goroutine, behind which every message of
// the other nodes waits, so it never waits for the broker itself: the
// registry changes at once, and the (un)subscription that follows runs on
// its own goroutine; a join of an unsynced uid, which reads streams
// (elsewhere.go), goes to the uid's event queue, and so do the joins and
// leaves that come after it until it ran, so that they apply in order.
//
// A channel this node begins to follow for a join starts at what its
// stream got since the join was made (since), as the joining node saw it.
func (cl *cluster) receiveMembership(uid uint64, join bool, ids []string, since int64) {
	cl.applyAs(uid, join, ids, received, since)
}

// How apply was called: from a step of the uid's event queue or a
// repair (directly), from the broker's delivery goroutine (received), or
// from the event queue that a received one went to (queued).
const (
	directly = iota
	received
	queued
)

// followSoon is followChannelsSince for a caller that must not wait for
// the broker: a channel whose subscription must change is followed on a
// goroutine of its own.
func (cl *cluster) followSoon(ids []string, since int64) {
	for _, id := range ids {
		t := topic{ch: id}
		want := cl.hub.lookupChannel(id) != nil
		cl.subMu.Lock()
		st := cl.subs[t]
		busy := st != nil && st.busy
		if busy {
			st.again = true // its follower looks again
			if since != 0 && (st.since == 0 || since < st.since) {
				st.since = since
			}
		}
		have := st != nil && st.have
		cl.subMu.Unlock()
		if !busy && want != have {
			go cl.follow(t, since)
		}
	}
}

// apply updates the local registry for a join or leave another node made.
// Joins past MaxChannelsPerUid are refused here, on the node holding uid,
// since the node that asked may not know its count.
func (cl *cluster) apply(uid uint64, join bool, ids []string) {
	cl.applyAs(uid, join, ids, directly, 0)
}

// applyAs is apply called as how says; since as receiveMembership's.
func (cl *cluster) applyAs(uid uint64, join bool, ids []string, how int, since int64) {
	h := cl.hub
	pres := h.presenceIds(ids)
	s := h.userShard(uid)
	s.mu.Lock()
	u := s.users[uid]
	if u == nil {
		s.mu.Unlock()
		return
	}
	if how == queued && u.remote > 0 { // (0: uid connected anew since)
		u.remote--
	}
	if u.loading {
		u.pending = append(u.pending, memberOp{join, ids, pres, since})
		s.mu.Unlock()
		return
	}
	late := join && u.unsynced && h.seq != nil
	if how == received && (late || u.remote > 0) {
		u.remote++
		drain := s.pushEvent(uid, func() { cl.applyAs(uid, join, ids, queued, since) })
		s.mu.Unlock()
		if drain {
			go h.drainEvents(uid)
		}
		return
	}
	if late {
		// Connected here during an outage, uid is a member of these
		// channels since before: its connections here get what they
		// missed of them (elsewhere.go).
		handler, born := u.handler, u.born
		s.mu.Unlock()
		if err := h.joinLate(uid, ids, pres); err != nil {
			h.report(handler, err)
		}
		h.followChannelsSince(ids, wallMillis(born))
		return
	}
	err := h.applyLocked(u, join, ids, pres)
	s.mu.Unlock()
	if err != nil {
		h.report(u.handler, err)
	}
	if how == received {
		cl.followSoon(ids, since)
	} else {
		h.followChannelsSince(ids, since)
	}
}

// follow makes this node's subscription of a topic follow local interest.
func (cl *cluster) follow(t topic, since int64) {
	cl.subMu.Lock()
	st := cl.subs[t]
	if st == nil {
		st = &subState{}
		cl.subs[t] = st
	}
	if since != 0 && (st.since == 0 || since < st.since) {
		st.since = since
	}
	if st.busy {
		st.again = true
		cl.subMu.Unlock()
		return
	}
	st.busy = true
	have := st.have
	cl.subMu.Unlock()
	for {
		cl.subMu.Lock()
		since, st.since = st.since, 0
		cl.subMu.Unlock()
		have = cl.subscribe(t, have, since)
		cl.subMu.Lock()
		st.have = have
		if st.again {
			st.again = false
			cl.subMu.Unlock()
			continue
		}
		st.busy = false
		if !have {
			delete(cl.subs, t)
		}
		cl.subMu.Unlock()
		return
	}
}

// subscribe (un)subscribes t to match local interest and returns whether
// it is now subscribed; since as follow's.
func (cl *cluster) subscribe(t topic, have bool, since int64) bool {
	h := cl.hub
	want := t.all
	switch {
	case t.ch != "":
		want = h.lookupChannel(t.ch) != nil
	case !t.all:
		want = h.lookupUser(t.uid) != nil
	}
	if want == have || h.killed.Load() {
		return have
	}
	// The order this node kept for t is stale either way: gone with its
	// subscribers, or from before them (what the stream got meanwhile
	// must not reach the new subscribers as if live).
	h.seq.forget(t)
	// A channel's new members here get what is published from now on:
	// where its stream stands is read before subscribing, and what is
	// there already (a message appended before the join and still on its
	// way to this node) is its past. A connection's recovery reads its
	// streams itself, so an inbox needs no such read.
	var epoch string
	var past uint64
	var fresh []entry
	tailed := false
	if want && t.ch != "" && cl.streams != nil {
		epoch, past, fresh, tailed = cl.streams.tail(t, since)
	}
	var err error
	if want {
		err = cl.b.Subscribe(t.name())
	} else {
		err = cl.b.Unsubscribe(t.name())
	}
	if tailed {
		if err == nil {
			// What the stream got between the read of its tail and the
			// subscription is neither past nor received: read it now
			// (what comes after arrives).
			last := past
			if len(fresh) > 0 {
				last = fresh[len(fresh)-1].off
			}
			if epoch == "" {
				last = 0 // no stream then: all of it is new
			}
			switch more, got, _, _ := cl.streams.read(t, last, 0); {
			case got == "":
			case epoch == "":
				epoch, past, fresh = got, 0, more
			case got == epoch:
				fresh = append(fresh, more...)
			}
		}
		h.seq.startTail(t, epoch, past, fresh)
	}
	if err != nil {
		h.brokerFailed(err) // the broker keeps the interest and retries
	} else if want && t.ch != "" {
		h.rosterSubscribed(t.ch)
	}
	return want
}

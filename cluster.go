package chart

import (
	"encoding/binary"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultNodeTTL is the time after which brokers consider a node that
// stopped heartbeating dead, unless configured otherwise. Nodes heartbeat
// every third of it.
const DefaultNodeTTL = 15 * time.Second

// cluster is a hub's broker state; nil without a Broker.
type cluster struct {
	b  Broker
	id string

	subMu sync.Mutex
	subs  map[subKey]*subState

	stop     chan struct{}
	loop     sync.WaitGroup // the heartbeat goroutine and its workers
	stopOnce sync.Once
	working  atomic.Bool // a republish worker runs

	down  atomic.Bool // a failure was reported and no heartbeat succeeded since
	stale atomic.Bool // presence must be re-published after the next good heartbeat
	errs  atomic.Uint64
}

// subKey names a broker topic: a channel, or a uid when ch is empty.
type subKey struct {
	ch  string
	uid uint64
}

// subState serialises the (un)subscribe calls of one topic without holding
// a lock during them: whoever finds the topic busy marks it for another
// pass of the goroutine at work, which re-reads the wanted state.
type subState struct{ have, busy, again bool }

// Envelope kinds. An envelope is: kind byte, origin node id (uvarint
// length + bytes), then for a channel frame the channel id (length +
// bytes) and the frame; for a user frame the uid (uvarint) and the frame;
// for a join or leave the uid and the channel ids (each length + bytes).
const (
	envChannel = 'c'
	envUser    = 'u'
	envJoin    = 'j'
	envLeave   = 'l'
)

// hubNode is the Node a hub gives its broker.
type hubNode struct{ h *Hub }

func (n hubNode) Receive(data []byte)   { n.h.receive(data) }
func (n hubNode) BrokerError(err error) { n.h.brokerFail(err) }

// startCluster attaches the broker and starts the heartbeat goroutine.
func (h *Hub) startCluster(b Broker) {
	cl := &cluster{b: b, id: b.NodeID(), subs: make(map[subKey]*subState), stop: make(chan struct{})}
	h.cl = cl
	if err := b.Attach(hubNode{h}); err != nil {
		h.brokerFail(err)
	}
	// The first heartbeat registers the node before any user connects.
	h.heartbeat(true)
	cl.loop.Add(1)
	go h.heartbeatLoop()
}

// stopCluster stops the heartbeat and closes the broker, once.
func (h *Hub) stopCluster() {
	cl := h.cl
	if cl == nil {
		return
	}
	cl.stopOnce.Do(func() {
		close(cl.stop)
		cl.loop.Wait()
		if err := cl.b.Close(); err != nil {
			h.brokerFail(err)
		}
	})
}

func (h *Hub) heartbeatLoop() {
	cl := h.cl
	defer cl.loop.Done()
	t := time.NewTicker(max(cl.b.HeartbeatInterval(), time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-cl.stop:
			return
		case <-t.C:
		}
		h.heartbeat(false)
	}
}

// heartbeat refreshes the node's presence, re-publishes it after an outage
// and runs LogoutServer for the uids of dead nodes it reaped. The
// callbacks and the re-publishing run on another goroutine, so that they
// cannot delay the next heartbeat past the node's TTL.
func (h *Hub) heartbeat(first bool) {
	cl := h.cl
	gone, lost, err := cl.b.Heartbeat()
	if err != nil {
		h.brokerFail(err)
		return
	}
	cl.down.Store(false)
	var drain []uint64
	for _, uid := range gone {
		s := h.userShard(uid)
		s.mu.Lock()
		if s.pushEvent(uid, userEvent{kind: evGone}) {
			drain = append(drain, uid)
		}
		s.mu.Unlock()
	}
	republish := cl.stale.Swap(false) || (lost && !first)
	if republish && !cl.working.CompareAndSwap(false, true) {
		cl.stale.Store(true) // the running worker may have missed changes: again next time
		republish = false
	}
	if len(drain) == 0 && !republish {
		return
	}
	cl.loop.Add(1)
	go func() {
		defer cl.loop.Done()
		for _, uid := range drain {
			h.drainEvents(uid)
		}
		if republish {
			h.republish()
			cl.working.Store(false)
		}
	}()
}

// republish restores every local uid's presence, and disconnects in
// presence the uids this node no longer holds (their Disconnect failed
// during the outage), each through its uid's event queue so that it
// cannot overtake a connect or disconnect.
func (h *Hub) republish() {
	var drain []uint64
	for i := range h.users {
		s := &h.users[i]
		s.mu.Lock()
		for uid, u := range s.users {
			if s.pushEvent(uid, userEvent{kind: evRestore, u: u}) {
				drain = append(drain, uid)
			}
		}
		s.mu.Unlock()
	}
	uids, err := h.cl.b.NodeUids()
	if err != nil {
		h.brokerFail(err)
	}
	for _, uid := range uids {
		s := h.userShard(uid)
		s.mu.Lock()
		if s.users[uid] == nil && s.pushEvent(uid, userEvent{kind: evPurge}) {
			drain = append(drain, uid)
		}
		s.mu.Unlock()
	}
	for _, uid := range drain {
		h.drainEvents(uid)
	}
}

// clusterPurge disconnects uid in presence if it has no connection here.
// Its LogoutServer ran when its last connection here closed.
func (h *Hub) clusterPurge(uid uint64) {
	if h.lookupUser(uid) != nil {
		return
	}
	if _, err := h.cl.b.Disconnect(uid); err != nil {
		h.brokerFail(err)
	}
}

// brokerFail counts a broker failure and reports the first of an outage to
// ErrorLogServer; presence is re-published when the broker answers again.
func (h *Hub) brokerFail(err error) {
	cl := h.cl
	cl.errs.Add(1)
	cl.stale.Store(true)
	if !cl.down.Swap(true) {
		h.report(&Error{Kind: ErrBroker, Err: err})
	}
}

// brokerErr wraps a broker failure of an API call about uid and counts it.
func (h *Hub) brokerErr(uid uint64, channelId string, err error) error {
	if errors.Is(err, ErrUserOffline) {
		return newError(ErrUserOffline, uid, channelId, nil)
	}
	h.cl.errs.Add(1)
	h.cl.stale.Store(true)
	return newError(ErrBroker, uid, channelId, err)
}

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

// publishChannel ships a channel frame, encoded once, to the other nodes.
func (h *Hub) clusterPublishChannel(channelId string, f []byte) {
	cl := h.cl
	b := cl.envelope(envChannel, binary.MaxVarintLen64+len(channelId)+len(f))
	b = append(appendStr(b, channelId), f...)
	if err := cl.b.PublishChannel(channelId, b); err != nil {
		h.brokerFail(err)
	}
}

// clusterPublishUser ships a direct-message frame to the nodes of uid.
func (h *Hub) clusterPublishUser(uid uint64, f []byte) {
	cl := h.cl
	b := cl.envelope(envUser, binary.MaxVarintLen64+len(f))
	b = append(binary.AppendUvarint(b, uid), f...)
	if err := cl.b.PublishUser(uid, b); err != nil {
		h.brokerFail(err)
	}
}

// publishMembership tells the other nodes holding uid's connections that it
// joined or left channels.
func (h *Hub) publishMembership(uid uint64, join bool, ids []string) error {
	cl := h.cl
	kind := byte(envLeave)
	if join {
		kind = envJoin
	}
	n := binary.MaxVarintLen64
	for _, id := range ids {
		n += binary.MaxVarintLen64 + len(id)
	}
	b := binary.AppendUvarint(cl.envelope(kind, n), uid)
	for _, id := range ids {
		b = appendStr(b, id)
	}
	return cl.b.PublishUser(uid, b)
}

// receive handles an envelope from the broker. Envelopes this node
// published are skipped: it delivered them locally already.
func (h *Hub) receive(data []byte) {
	if len(data) == 0 || h.killed.Load() {
		return
	}
	kind := data[0]
	origin, rest, ok := readStr(data[1:])
	if !ok {
		h.brokerFail(errors.New("malformed envelope"))
		return
	}
	if string(origin) == h.cl.id {
		return
	}
	switch kind {
	case envChannel:
		id, f, ok := readStr(rest)
		if ok {
			h.deliverChannel(string(id), f)
		}
	case envUser:
		uid, k := binary.Uvarint(rest)
		if k > 0 {
			h.deliverUser(uid, rest[k:])
		}
	case envJoin, envLeave:
		uid, k := binary.Uvarint(rest)
		if k <= 0 {
			return
		}
		rest = rest[k:]
		var ids []string
		for len(rest) > 0 {
			var id []byte
			if id, rest, ok = readStr(rest); !ok {
				return
			}
			ids = append(ids, string(id))
		}
		h.applyControl(uid, kind == envJoin, ids)
	}
}

// memberOp is a join or leave received while the user's channels load.
type memberOp struct {
	join bool
	ids  []string
}

// applyControl updates the local mirror of uid's memberships.
func (h *Hub) applyControl(uid uint64, join bool, ids []string) {
	s := h.userShard(uid)
	s.mu.Lock()
	u := s.users[uid]
	if u == nil {
		s.mu.Unlock()
		return
	}
	if u.loading {
		u.pending = append(u.pending, memberOp{join, ids})
		s.mu.Unlock()
		return
	}
	err := h.applyMembershipLocked(u, join, ids)
	s.mu.Unlock()
	if err != nil {
		h.reportTo(u.h, err)
	}
	h.syncChannels(ids)
}

// applyMembershipLocked joins or leaves locally; the caller holds u's shard
// lock. Joins past MaxChannelsPerUid are refused here, on the node holding
// uid, since the node that asked may not know its count.
func (h *Hub) applyMembershipLocked(u *user, join bool, ids []string) error {
	for _, id := range ids {
		ch, ok := u.channels.get(id)
		switch {
		case !join && ok:
			u.channels.del(id)
			h.removeMember(ch, u)
		case join && !ok && h.validChannel(id):
			if u.channels.len() >= h.cfg.MaxChannelsPerUid {
				return newError(ErrTooManyChannels, u.uid, id, nil)
			}
			u.channels.set(id, h.addMember(id, u))
		}
	}
	return nil
}

// clusterMembership propagates a join or leave of uid: to presence, to the
// nodes holding uid's connections, and to this node's subscriptions. local
// says uid has connections here (already updated).
func (h *Hub) clusterMembership(uid uint64, join, local bool, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	if local && join {
		// Subscribe before telling the cluster, so that whoever sees the
		// membership can reach it.
		h.syncChannels(ids)
	}
	b := h.cl.b
	var err error
	if join {
		err = b.Join(uid, ids)
	} else {
		err = b.Leave(uid, ids)
	}
	if err != nil && (!local || !errors.Is(err, ErrUserOffline)) {
		if local {
			// Served locally; presence is re-published after the outage.
			h.brokerFail(err)
		} else {
			return h.brokerErr(uid, "", err)
		}
	}
	if err := h.publishMembership(uid, join, ids); err != nil {
		if !local {
			return h.brokerErr(uid, "", err)
		}
		h.brokerFail(err)
	}
	if local && !join {
		h.syncChannels(ids)
	}
	return nil
}

// syncSub makes this node's subscription of a topic follow local interest.
func (h *Hub) syncSub(k subKey) {
	cl := h.cl
	cl.subMu.Lock()
	st := cl.subs[k]
	if st == nil {
		st = &subState{}
		cl.subs[k] = st
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
		var want bool
		if k.ch != "" {
			want = h.lookupChannel(k.ch) != nil
		} else {
			want = h.lookupUser(k.uid) != nil
		}
		if want != have && !h.killed.Load() {
			var err error
			switch {
			case k.ch != "" && want:
				err = cl.b.SubscribeChannel(k.ch)
			case k.ch != "":
				err = cl.b.UnsubscribeChannel(k.ch)
			case want:
				err = cl.b.SubscribeUser(k.uid)
			default:
				err = cl.b.UnsubscribeUser(k.uid)
			}
			if err != nil {
				h.brokerFail(err) // the broker keeps the interest and retries
			}
			have = want
		}
		cl.subMu.Lock()
		st.have = have
		if st.again {
			st.again = false
			cl.subMu.Unlock()
			continue
		}
		st.busy = false
		if !have {
			delete(cl.subs, k)
		}
		cl.subMu.Unlock()
		return
	}
}

func (h *Hub) syncChannels(ids []string) {
	for _, id := range ids {
		h.syncSub(subKey{ch: id})
	}
}

// clusterUp runs on uid's event queue when it got its first connection on
// this node: subscribe to its topic, mark it online, load the channels it
// holds elsewhere. It returns whether LoginServer runs here.
func (h *Hub) clusterUp(u *user) (login bool) {
	uid, b := u.uid, h.cl.b
	h.syncSub(subKey{uid: uid})
	first, err := b.Connect(uid)
	if err != nil {
		h.brokerFail(err)
		first = true // serve as a single node until the broker is back
	}
	var chans []string
	if !first {
		if chans, err = b.Channels(uid); err != nil {
			h.brokerFail(err)
		}
	}
	s := h.userShard(uid)
	s.mu.Lock()
	var errs []error
	if s.users[uid] == u {
		if err := h.applyMembershipLocked(u, true, chans); err != nil {
			errs = append(errs, err)
		}
		for _, op := range u.pending {
			if err := h.applyMembershipLocked(u, op.join, op.ids); err != nil {
				errs = append(errs, err)
			}
			chans = append(chans, op.ids...)
		}
	}
	u.pending = nil
	u.loading = false
	s.mu.Unlock()
	for _, err := range errs {
		h.reportTo(u.h, err)
	}
	h.syncChannels(chans)
	return first
}

// clusterDown runs on uid's event queue when its last connection on this
// node closed. It returns whether LogoutServer runs here.
func (h *Hub) clusterDown(uid uint64, chans []string) (logout bool) {
	last, err := h.cl.b.Disconnect(uid)
	if err != nil {
		h.brokerFail(err)
		last = true
	}
	h.syncSub(subKey{uid: uid})
	h.syncChannels(chans)
	return last
}

// clusterRestore re-publishes u's presence after an outage.
func (h *Hub) clusterRestore(u *user) {
	s := h.userShard(u.uid)
	s.mu.RLock()
	if s.users[u.uid] != u {
		s.mu.RUnlock()
		return
	}
	chans := u.channels.keys()
	s.mu.RUnlock()
	if err := h.cl.b.Restore(u.uid, chans); err != nil {
		h.brokerFail(err)
	}
}

// remoteChannels returns the channels of a uid that has no connection here.
func (h *Hub) remoteChannels(uid uint64) (chans []string, online bool, err error) {
	chans, err = h.cl.b.Channels(uid)
	if err != nil {
		return nil, false, err
	}
	if len(chans) > 0 {
		return chans, true, nil
	}
	online, err = h.cl.b.IsOnline(uid)
	return nil, online, err
}

// remoteOnline reports whether uid, which has no connection here, is online
// on another node.
func (h *Hub) remoteOnline(uid uint64) (bool, error) {
	return h.cl.b.IsOnline(uid)
}

func sortedUids(ids []uint64, err error) ([]uint64, error) {
	slices.Sort(ids)
	return slices.Compact(ids), err
}

// Close stops the hub at once, as if its process had died: the broker is
// closed first, so the other nodes learn of it only when its presence
// expires (and then run LogoutServer for its users); every connection is
// dropped without a close frame; no LogoutServer runs here. It is meant
// for testing node failures; stop a hub with Shutdown. Afterwards every
// call returns ErrHubClosed.
func (h *Hub) Close() error {
	h.closed.Store(true)
	h.killed.Store(true)
	h.stopCluster()
	for _, c := range h.allConns() {
		c.abort()
	}
	h.readers.Wait()
	return nil
}

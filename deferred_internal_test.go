package chart

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// eventually polls cond until it holds, for at most wait.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling state that has no event
	}
}

// TestLogoutWaitsForTheBroker: node A is cut off from the broker (shorter
// than the TTL) while three uids' last connections there close: uid 1 is
// still connected to node B, uid 2 is gone for good, uid 3 comes back to A
// during the cut. A defers their LogoutServer; once the cut ends, only uid
// 2, offline everywhere, is logged out, and uid 3 gets no second login and
// keeps its channel.
// (Deciding alone, A logged out 1 and 3 and logged 3 in again.)
func TestLogoutWaitsForTheBroker(t *testing.T) {
	bus := NewMemoryBus()
	bus.TTL = 5 * time.Second
	ra, rb := newRecorder(), newRecorder()
	ba := bus.Broker()
	a := startServer(t, Config{Broker: ba}, ra)
	b := startServer(t, Config{Broker: bus.Broker()}, rb)
	c1 := a.login(t, ra, 1)
	b.dial(t, 1) // online on B too: no login there
	c2 := a.login(t, ra, 2)
	c3 := a.login(t, ra, 3)
	if err := a.hub.JoinChannelIds(3, "k"); err != nil {
		t.Fatal(err)
	}
	cl := a.hub.peers.(*cluster)
	deferredUids := func() map[uint64]bool {
		cl.deferMu.Lock()
		defer cl.deferMu.Unlock()
		m := make(map[uint64]bool)
		for uid := range cl.logouts {
			m[uid] = true
		}
		return m
	}

	bus.Cut(ba, true)
	c1.closeNow()
	c2.closeNow()
	c3.closeNow()
	eventually(t, "three logouts deferred", func() bool { return len(deferredUids()) == 3 })
	a.dial(t, 3)
	eventually(t, "uid 3's logout dropped", func() bool { d := deferredUids(); return len(d) == 2 && !d[3] })
	if chans, _ := a.hub.localChannels(3); len(chans) != 1 || chans[0] != "k" {
		t.Fatalf("uid 3 back in %v during the cut, want [k] (as it left)", chans)
	}
	bus.Cut(ba, false)

	if got := recv(t, ra.logouts, "uid 2's logout"); got != 2 {
		t.Fatalf("logout of %d, want 2", got)
	}
	// Settled: uid 1 is marked offline on A only (online on B).
	eventually(t, "uid 1 on node B only", func() bool {
		bus.mu.Lock()
		defer bus.mu.Unlock()
		u := bus.users[1]
		return u != nil && len(u.nodes) == 1 && len(deferredUids()) == 0
	})
	select {
	case uid := <-ra.logouts:
		t.Fatalf("logout of %d on A, want none", uid)
	case uid := <-ra.logins:
		t.Fatalf("login of %d on A, want none", uid)
	case uid := <-rb.logouts:
		t.Fatalf("logout of %d on B, want none", uid)
	default:
	}
	eventually(t, "uid 3 in k on node B's view", func() bool {
		ids := b.hub.ChannelUserIds("k")
		return len(ids) == 1 && ids[0] == 3
	})
	if !b.hub.IsOnline(1) || !b.hub.IsOnline(3) || b.hub.IsOnline(2) {
		t.Fatalf("online 1 %v, 2 %v, 3 %v; want true, false, true", b.hub.IsOnline(1), b.hub.IsOnline(2), b.hub.IsOnline(3))
	}
}

// TestShutdownEndsDeferredLogouts: Shutdown runs the LogoutServer of a uid
// whose logout waits for the broker, as it does for every user it had.
func TestShutdownEndsDeferredLogouts(t *testing.T) {
	bus := NewMemoryBus()
	ra := newRecorder()
	ba := bus.Broker()
	a := startServer(t, Config{Broker: ba}, ra)
	c := a.login(t, ra, 5)
	bus.Cut(ba, true)
	c.closeNow()
	cl := a.hub.peers.(*cluster)
	eventually(t, "the logout deferred", func() bool {
		cl.deferMu.Lock()
		defer cl.deferMu.Unlock()
		return len(cl.logouts) == 1
	})
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	a.hub.Shutdown(ctx)
	if got := recv(t, ra.logouts, "uid 5's logout"); got != 5 {
		t.Fatalf("logout of %d, want 5", got)
	}
}

// callLog is a Handler shared by every hub of a test cluster: it keeps
// each uid's LoginServer (true) and LogoutServer (false) calls in order.
type callLog struct {
	mu    sync.Mutex
	calls map[uint64][]bool
}

func (l *callLog) add(uid uint64, login bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.calls == nil {
		l.calls = make(map[uint64][]bool)
	}
	l.calls[uid] = append(l.calls[uid], login)
}

func (l *callLog) LoginServer(uid uint64)  { l.add(uid, true) }
func (l *callLog) LogoutServer(uid uint64) { l.add(uid, false) }
func (l *callLog) SendMessage(Message)     {}
func (l *callLog) ErrorLogServer(error)    {}

// of returns uid's calls as a string: "in out in".
func (l *callLog) of(uid uint64) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := ""
	for i, in := range l.calls[uid] {
		if i > 0 {
			s += " "
		}
		s += map[bool]string{true: "in", false: "out"}[in]
	}
	return s
}

// want waits until every uid's calls are as given, then fails if they
// change within settle (a callback that should not come).
func (l *callLog) want(t *testing.T, settle time.Duration, want map[uint64]string) {
	t.Helper()
	check := func() error {
		for uid, w := range want {
			if got := l.of(uid); got != w {
				return fmt.Errorf("uid %d: %q, want %q", uid, got, w)
			}
		}
		return nil
	}
	deadline := time.Now().Add(wait)
	for check() != nil {
		if time.Now().After(deadline) {
			t.Fatal(check())
		}
		time.Sleep(5 * time.Millisecond) // callbacks have no event here
	}
	// Nothing more comes: a late callback breaks the pairing.
	time.Sleep(settle)
	if err := check(); err != nil {
		t.Fatal(err)
	}
}

func (cl *cluster) deferredState() (logins, logouts []uint64) {
	cl.deferMu.Lock()
	defer cl.deferMu.Unlock()
	for uid := range cl.logins {
		logins = append(logins, uid)
	}
	for uid := range cl.logouts {
		logouts = append(logouts, uid)
	}
	slices.Sort(logins)
	slices.Sort(logouts)
	return logins, logouts
}

// logNodes starts n hubs on one MemoryBus with the given TTL, sharing a
// callLog as their Handler; brokers[i] is node i's Broker (to Cut it).
func logNodes(t *testing.T, ttl time.Duration, n int) (*MemoryBus, *callLog, []*server, []Broker) {
	t.Helper()
	bus := NewMemoryBus()
	bus.TTL = ttl
	log := &callLog{}
	var nodes []*server
	var brokers []Broker
	for i := 0; i < n; i++ {
		b := bus.Broker()
		brokers = append(brokers, b)
		nodes = append(nodes, startServer(t, Config{Broker: b}, log))
	}
	return bus, log, nodes, brokers
}

// TestLoginWaitsForTheBroker: node A is cut off from the broker while uid
// 1, online on node B, connects to A, uid 2 connects to A (online nowhere
// else), and uid 3 connects to A and leaves again. A serves them at once
// but runs no LoginServer; once the cut ends, only uid 2 is logged in.
// (Deciding alone, A logged 1 in a second time and logged 3 in and out.)
func TestLoginWaitsForTheBroker(t *testing.T) {
	bus, log, nodes, brokers := logNodes(t, 5*time.Second, 2)
	a, b, ba := nodes[0], nodes[1], brokers[0]
	b.dial(t, 1)
	log.want(t, 0, map[uint64]string{1: "in"})
	cl := a.hub.peers.(*cluster)

	bus.Cut(ba, true)
	a.dial(t, 1)
	a.dial(t, 2)
	a.dial(t, 3).closeNow()
	eventually(t, "uid 3 gone from A", func() bool { return a.hub.lookupUser(3) == nil })
	if logins, _ := cl.deferredState(); !slices.Equal(logins, []uint64{1, 2}) {
		t.Fatalf("logins waiting %v, want [1 2]", logins)
	}
	if err := a.hub.JoinChannelIds(2, "k"); err != nil { // served during the cut
		t.Fatal(err)
	}
	if log.of(2) != "" || log.of(3) != "" {
		t.Fatalf("callbacks during the cut: uid 2 %q, uid 3 %q", log.of(2), log.of(3))
	}
	bus.Cut(ba, false)

	log.want(t, 200*time.Millisecond, map[uint64]string{1: "in", 2: "in", 3: ""})
	eventually(t, "presence re-published", func() bool {
		ids := b.hub.ChannelUserIds("k")
		return b.hub.IsOnline(2) && len(ids) == 1 && ids[0] == 2
	})
	if logins, logouts := cl.deferredState(); len(logins)+len(logouts) > 0 {
		t.Fatalf("still waiting: logins %v, logouts %v", logins, logouts)
	}
}

// TestDeferredAfterDataLoss: the broker restarts empty while node A has
// callbacks waiting: uid 1 (online on B) and uid 2 connected to A, uid 3
// (only on A) and uid 4 (also on B) left A. Every node re-publishes its
// presence after the restart, in any order; A decides only once a TTL has
// passed: uid 2 logged in, uid 3 logged out, nothing for 1 and 4. (Deciding
// at its own re-publish, A saw 1 and 4 offline whenever B had not
// re-published yet.)
func TestDeferredAfterDataLoss(t *testing.T) {
	bus, log, nodes, _ := logNodes(t, 900*time.Millisecond, 2)
	a, b := nodes[0], nodes[1]
	b.dial(t, 1)
	c3 := a.dial(t, 3)
	c4 := a.dial(t, 4)
	log.want(t, 0, map[uint64]string{1: "in", 3: "in", 4: "in"})
	b.dial(t, 4)
	eventually(t, "uid 4 on both nodes", func() bool {
		bus.mu.Lock()
		defer bus.mu.Unlock()
		return len(bus.users[4].nodes) == 2
	})
	cl := a.hub.peers.(*cluster)

	bus.SetDown(true)
	a.dial(t, 1)
	a.dial(t, 2)
	c3.closeNow()
	c4.closeNow()
	eventually(t, "A waits", func() bool {
		logins, logouts := cl.deferredState()
		return slices.Equal(logins, []uint64{1, 2}) && slices.Equal(logouts, []uint64{3, 4})
	})
	bus.SetDown(false)
	back := time.Now()

	log.want(t, 300*time.Millisecond, map[uint64]string{1: "in", 2: "in", 3: "in out", 4: "in"})
	if d := time.Since(back); d < 3*bus.TTL/3 {
		t.Fatalf("decided %v after the broker came back, before a TTL (%v)", d, bus.TTL)
	}
	eventually(t, "presence", func() bool {
		return a.hub.IsOnline(1) && a.hub.IsOnline(2) && !a.hub.IsOnline(3) && a.hub.IsOnline(4) &&
			slices.Equal(b.hub.OnlineUserIds(), []uint64{1, 2, 4})
	})
}

// TestCutLongerThanTTL: node A is cut off longer than the TTL while uid 4
// (only on A) and uid 5 (also on B) leave it and uid 6 stays. B reaps A:
// it logs 4 and 6 out. When the cut ends, A learns it was reaped: it drops
// its deferred logouts (B ran 4's; 5 is online on B) and logs 6 in again.
func TestCutLongerThanTTL(t *testing.T) {
	bus, log, nodes, brokers := logNodes(t, 600*time.Millisecond, 2)
	a, b, ba := nodes[0], nodes[1], brokers[0]
	c4 := a.dial(t, 4)
	c5 := a.dial(t, 5)
	a.dial(t, 6)
	log.want(t, 0, map[uint64]string{4: "in", 5: "in", 6: "in"})
	b.dial(t, 5)

	bus.Cut(ba, true)
	c4.closeNow()
	c5.closeNow()
	log.want(t, 0, map[uint64]string{4: "in out", 5: "in", 6: "in out"}) // B reaped A
	bus.Cut(ba, false)
	log.want(t, 300*time.Millisecond, map[uint64]string{4: "in out", 5: "in", 6: "in out in"})
	eventually(t, "presence", func() bool { return slices.Equal(b.hub.OnlineUserIds(), []uint64{5, 6}) })
}

// TestDeferredLogoutNodeUidsFails: the re-publish after a cut cannot read
// the node's uids (NodeUids fails, every other call works). The deferred
// logout waits for the next re-publish instead of asking IsOnline, which
// would find the uid still listed here and drop it; it then runs once.
func TestDeferredLogoutNodeUidsFails(t *testing.T) {
	bus, log, nodes, brokers := logNodes(t, 5*time.Second, 1)
	a, ba := nodes[0], brokers[0]
	c := a.dial(t, 7)
	log.want(t, 0, map[uint64]string{7: "in"})
	cl := a.hub.peers.(*cluster)

	bus.Cut(ba, true)
	c.closeNow()
	eventually(t, "the logout deferred", func() bool { _, l := cl.deferredState(); return len(l) == 1 })
	bus.failNodeUids.Store(1)
	bus.Cut(ba, false)
	log.want(t, 200*time.Millisecond, map[uint64]string{7: "in out"})
	if n := bus.failNodeUids.Load(); n != 0 {
		t.Fatalf("NodeUids not called (%d failures left)", n)
	}
}

// TestDeferredLogoutsBounded: past maxDeferred deferred logouts, a node
// cut off from the broker decides alone: the uids leaving after that are
// logged out at once; the deferred ones wait.
func TestDeferredLogoutsBounded(t *testing.T) {
	defer func(n int) { maxDeferred = n }(maxDeferred)
	maxDeferred = 2
	bus, log, nodes, brokers := logNodes(t, 5*time.Second, 1)
	a, ba := nodes[0], brokers[0]
	var cs []*client
	for uid := uint64(1); uid <= 4; uid++ {
		cs = append(cs, a.dial(t, uid))
	}
	log.want(t, 0, map[uint64]string{1: "in", 2: "in", 3: "in", 4: "in"})
	cl := a.hub.peers.(*cluster)
	bus.Cut(ba, true)
	for i, c := range cs {
		c.closeNow()
		uid := uint64(i + 1)
		if uid <= 2 {
			eventually(t, "the logout deferred", func() bool { _, l := cl.deferredState(); return len(l) == i+1 })
		} else {
			log.want(t, 0, map[uint64]string{uid: "in out"})
		}
	}
	log.want(t, 100*time.Millisecond, map[uint64]string{1: "in", 2: "in", 3: "in out", 4: "in out"})
	if _, logouts := cl.deferredState(); !slices.Equal(logouts, []uint64{1, 2}) {
		t.Fatalf("deferred %v, want [1 2]", logouts)
	}
	bus.Cut(ba, false)
	log.want(t, 100*time.Millisecond, map[uint64]string{1: "in out", 2: "in out", 3: "in out", 4: "in out"})
}

// TestNoSecondLoginAfterDataLoss: after a restart that lost the broker's
// data, a uid that connected to node A since the return (so the broker
// lists it for A) is no proof that the broker kept A's presence. Uid 1,
// logged in on node B, connected to A during the outage: A waits a TTL
// for the other nodes to re-publish before it decides, and B, away for
// half a TTL more, re-publishes 1 meanwhile: A runs no second LoginServer
// for it. (A took any uid listed for it for proof, decided at once, found
// 1 offline and logged it in again: "in in".)
func TestNoSecondLoginAfterDataLoss(t *testing.T) {
	bus, log, nodes, brokers := logNodes(t, 900*time.Millisecond, 2)
	a, b := nodes[0], nodes[1]
	b.dial(t, 1)
	log.want(t, 0, map[uint64]string{1: "in"})
	cl := a.hub.peers.(*cluster)

	bus.SetDown(true)         // a restart without persistence: presence is lost
	bus.Cut(brokers[1], true) // and B stays away after the return
	a.dial(t, 1)
	eventually(t, "A waits to log 1 in", func() bool { logins, _ := cl.deferredState(); return slices.Equal(logins, []uint64{1}) })
	eventually(t, "a heartbeat of A failed", func() bool {
		cl.beatMu.Lock()
		defer cl.beatMu.Unlock()
		return cl.failedAt != 0
	})
	bus.SetDown(false)
	a.dial(t, 9)
	eventually(t, "the broker lists 9 for A", func() bool {
		bus.mu.Lock()
		defer bus.mu.Unlock()
		_, ok := bus.nodeUsers[brokers[0].NodeID()][9]
		return ok
	})
	cl.stale.Store(true)
	cl.heartbeat(false) // A re-publishes with 9 listed, well within the TTL
	log.want(t, bus.TTL/2, map[uint64]string{1: "in", 9: "in"})
	bus.Cut(brokers[1], false)
	log.want(t, bus.TTL, map[uint64]string{1: "in", 9: "in"})
	eventually(t, "presence", func() bool {
		return slices.Equal(a.hub.OnlineUserIds(), []uint64{1, 9}) && slices.Equal(b.hub.OnlineUserIds(), []uint64{1, 9})
	})
}

// TestAbandonedJoinOwnsItsChannels: a presence join that gives up
// (BrokerWait) while the broker is frozen leaves the broker's call going
// on with the channel list, which the caller may reuse once it returned
// (propagate's list is pooled: the race detector caught the broker
// reading it while the next join copied into it). The call has its own
// copy: what the caller writes into its list afterwards does not reach
// presence.
func TestAbandonedJoinOwnsItsChannels(t *testing.T) {
	bus, log, nodes, _ := logNodes(t, 3*time.Second, 1)
	a := nodes[0]
	a.dial(t, 1)
	log.want(t, 0, map[uint64]string{1: "in"})
	bus.Freeze(true)
	defer bus.Freeze(false)
	ids := []string{"a", "b"}
	if err := a.hub.presence.Join(1, ids); !errors.Is(err, ErrBrokerDown) {
		t.Fatalf("Join into a frozen broker: %v, want ErrBrokerDown", err)
	}
	ids[0], ids[1] = "reused", "list"
	bus.Freeze(false)
	eventually(t, "uid 1 in a and b in presence", func() bool {
		got, _ := a.hub.presence.Channels(1)
		slices.Sort(got)
		return slices.Equal(got, []string{"a", "b"})
	})
}

// TestPurgeLeavesLogoutToDown: the re-publishing queues, in each listed
// uid's event queue, a purge that disconnects the uid in presence if this
// node no longer holds it. When the uid's last connection closes after
// the purge was queued but before it runs, the uid's logout step waits
// behind the purge: the purge must leave it to that step, which then
// finds the uid last and runs LogoutServer. (The purge disconnected it;
// the logout step found it gone, took it for online elsewhere and ran
// no LogoutServer: a review saw 15,419 logins without logout on a node
// re-publishing under CPU overload.)
func TestPurgeLeavesLogoutToDown(t *testing.T) {
	_, log, nodes, _ := logNodes(t, 3*time.Second, 1)
	a := nodes[0]
	c := a.dial(t, 5)
	log.want(t, 0, map[uint64]string{5: "in"})
	cl := a.hub.peers.(*cluster)
	release := holdQueue(t, a.hub, 5)
	cl.republish(true) // queues uid 5's restore and purge behind the hold
	c.closeNow()
	eventually(t, "uid 5 unregistered", func() bool { return a.hub.lookupUser(5) == nil })
	release()
	log.want(t, 200*time.Millisecond, map[uint64]string{5: "in out"})
}

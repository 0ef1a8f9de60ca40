package charttest

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wuyan94zl/chart"
)

// Faults is the fault suite of issue 13: a cluster of three hubs, each
// with its own Broker on one real backend, whose backend is killed
// (SIGKILL) and restarted, or frozen (SIGSTOP) and thawed, or from which
// one node is cut off (a Proxy between that node's broker and the
// backend), or one of whose nodes dies (Server.Kill), while users are
// connected and connect and disconnect. Every scenario asserts, with
// numbers in its failure messages:
//
//   - callbacks paired: per uid, cluster-wide, LoginServer and
//     LogoutServer alternate, login first, and end logged in exactly for
//     the connected uids (Recorder.Paired), once things settle and again
//     after two TTLs more;
//   - nothing lost: channel messages and direct messages published from
//     each node from the moment the backend accepts connections again
//     reach every recipient connection exactly once and in order per
//     sending node (a direct message SendMessageToUid refused with an error
//     counts as not published, but refusals must end within the presence
//     bound below);
//   - presence: OnlineUserIds and ChannelUserIds on every node equal the
//     connected users within one heartbeat interval (TTL/3) plus
//     PresenceMargin of the backend's return; after a restart that lost
//     the backend's data (Persistent false), the uids that first connected
//     or last left a node during the outage within a TTL more (their
//     LoginServer or LogoutServer waits for the other nodes to re-publish);
//   - fail fast: every API call made on a node while its backend is down,
//     frozen or cut off returns within Config.BrokerWait plus CallMargin;
//   - detection: a dead or cut-off node's users are offline on the others,
//     with their LogoutServer run once, within TTL plus a heartbeat
//     interval plus PresenceMargin.
//
// The scenarios (subtests): OutageShort and OutageLong (the backend
// killed for half a TTL, or two, then restarted, while API calls are made
// on every node and users connect and disconnect: a uid on two nodes
// closes one connection, a uid closes its only one, a new uid connects, a
// new uid connects to two nodes at once); OnlineElsewhere (during an
// outage, uids online on one node connect to another); Freeze (the backend
// stopped for two TTLs, with the same changes); NodeCrash (a node dies
// with users connected, one of them on another node too; direct messages
// to its users before it is reaped wait in their inboxes); NodeCut (one
// node cut off for two TTLs while its users stay connected, one of them
// leaving and a new one coming meanwhile: the others reap it, and back it
// logs in again those offline everywhere); ConcurrentConnects (uids
// connecting to two nodes at once, then closing both at once).
//
// The nodes' TTL is read from the broker (three heartbeat intervals):
// make it short, about a second, so that the suite runs in seconds.
type Faults struct {
	// NewCluster is called once per scenario and returns a function that
	// makes a node (a Broker) of a fresh, empty cluster, connected to the
	// backend at addr: Addr, or a Proxy in front of it.
	NewCluster func(t *testing.T) (newNode func(addr string) chart.Broker)
	// Addr is the backend's host:port; it stays the same across Kill's
	// restart.
	Addr string
	// Kill stops the backend with SIGKILL; restart starts it again at Addr
	// and returns once a plain client's PING is answered: from then on the
	// backend accepts connections.
	Kill func(t *testing.T) (restart func())
	// Persistent says that the backend keeps its data across Kill's
	// restart (Redis with AOF, appendfsync always): presence survives.
	Persistent bool
	// Freeze stops the backend with SIGSTOP; thaw resumes it with SIGCONT
	// and returns once a plain client's PING is answered. Nil: the Freeze
	// scenario is skipped.
	Freeze func(t *testing.T) (thaw func())
	// Only, when set, names the scenarios to run (as in their subtest
	// names); others are skipped.
	Only []string

	// CallMargin is added to Config.BrokerWait for the fail-fast bound.
	// Default 100 ms: a refused call does no I/O, and 100 ms covers the
	// scheduling and garbage collection stalls of a -race build on two
	// busy cores.
	CallMargin time.Duration
	// PresenceMargin is added to the heartbeat interval for the presence
	// and detection bounds. Default 250 ms: a node's fail-fast guard lets
	// presence calls through again at most 100 ms (its probe) after the
	// backend answers, re-publishing costs a round trip per uid, and the
	// rest covers scheduling on a loaded -race build.
	PresenceMargin time.Duration
}

// Run runs every scenario as a subtest.
func (f Faults) Run(t *testing.T) {
	f.CallMargin = cmp.Or(f.CallMargin, 100*time.Millisecond)
	f.PresenceMargin = cmp.Or(f.PresenceMargin, 250*time.Millisecond)
	for _, s := range []struct {
		name string
		run  func(*testing.T)
	}{
		{"OutageShort", func(t *testing.T) { f.outage(t, false) }},
		{"OutageLong", func(t *testing.T) { f.outage(t, true) }},
		{"OnlineElsewhere", f.onlineElsewhere},
		{"Freeze", f.freeze},
		{"NodeCrash", f.nodeCrash},
		{"NodeCut", f.nodeCut},
		{"ConcurrentConnects", f.concurrent},
	} {
		if len(f.Only) > 0 && !slices.Contains(f.Only, s.name) {
			continue
		}
		t.Run(s.name, s.run)
	}
}

// The channel every user of a scenario joins.
const faultRoom = "room"

// faultWorld is one scenario's cluster and what the test expects of it.
type faultWorld struct {
	t     *testing.T
	f     Faults
	rec   *Recorder
	nodes []*Server
	dead  []bool
	proxy *Proxy // between the last node's broker and the backend (NodeCut)
	node  func(addr string) chart.Broker

	hb, ttl, brokerWait time.Duration

	conns []*faultConn
	room  map[uint64]bool // the uids expected in faultRoom

	phaseStart time.Time // when the current fault began
	mu         sync.Mutex
	slow       []string // calls over the fail-fast bound
	calls      int
	worst      time.Duration
}

// faultConn is one open connection and the node it is on.
type faultConn struct {
	c    *Client
	node int
}

func (f Faults) start(t *testing.T, cut bool) *faultWorld {
	t.Helper()
	w := &faultWorld{t: t, f: f, rec: NewRecorder(), room: make(map[uint64]bool)}
	w.node = f.NewCluster(t)
	for i := 0; i < 3; i++ {
		addr := f.Addr
		if cut && i == 2 {
			w.proxy = NewProxy(t, f.Addr)
			addr = w.proxy.Addr()
		}
		b := w.node(addr)
		if i == 0 {
			p, ok := b.(chart.Presence)
			if !ok || p.HeartbeatInterval() <= 0 {
				t.Skip("the broker keeps no presence with a heartbeat (chart.Presence)")
			}
			w.hb = p.HeartbeatInterval()
			w.ttl = 3 * w.hb
		}
		w.nodes = append(w.nodes, Start(t, chart.Config{Broker: b, RateLimit: -1, Handler: w.rec}, w.rec))
	}
	w.dead = make([]bool, len(w.nodes))
	w.brokerWait = w.nodes[0].Hub.Config().BrokerWait
	return w
}

// dial opens a connection of uid on node i.
func (w *faultWorld) dial(i int, uid uint64) *faultConn {
	w.t.Helper()
	fc := &faultConn{w.nodes[i].Dial(w.t, uid), i}
	w.conns = append(w.conns, fc)
	return fc
}

// close closes fc from the client's side and waits for the server's close.
func (w *faultWorld) close(fc *faultConn) {
	w.t.Helper()
	fc.c.Close()
	w.forget(fc)
}

func (w *faultWorld) forget(fc *faultConn) {
	w.conns = slices.DeleteFunc(w.conns, func(x *faultConn) bool { return x == fc })
	for _, x := range w.conns {
		if x.c.Uid == fc.c.Uid {
			return
		}
	}
	delete(w.room, fc.c.Uid) // offline everywhere: its memberships are gone
}

// conn returns uid's connection on node i.
func (w *faultWorld) conn(i int, uid uint64) *faultConn {
	for _, x := range w.conns {
		if x.node == i && x.c.Uid == uid {
			return x
		}
	}
	w.t.Fatalf("no connection of uid %d on node %d", uid, i)
	return nil
}

// connected returns the uids with an open connection, sorted.
func (w *faultWorld) connected() []uint64 {
	var uids []uint64
	for _, x := range w.conns {
		uids = append(uids, x.c.Uid)
	}
	slices.Sort(uids)
	return slices.Compact(uids)
}

func (w *faultWorld) members() []uint64 {
	var uids []uint64
	for uid := range w.room {
		uids = append(uids, uid)
	}
	slices.Sort(uids)
	return uids
}

// live returns the indexes of the nodes that were not killed.
func (w *faultWorld) live() []int {
	var ids []int
	for i := range w.nodes {
		if !w.dead[i] {
			ids = append(ids, i)
		}
	}
	return ids
}

// populate connects the users every scenario starts with: uids 1 and 2 on
// node 0, 3 and 4 on node 1, 5 and 6 on node 2, and 7 on nodes 2 and 1;
// all of them in faultRoom, logged in once, presence agreeing, and every
// node routing the room to every connection.
func (w *faultWorld) populate() {
	t := w.t
	t.Helper()
	for i, uid := range []uint64{1, 2, 3, 4, 5, 6, 7} {
		node := min(i/2, 2) // uid 7 on node 2 (and on node 1 below)
		w.dial(node, uid)
		w.loggedIn(uid)
		if err := w.nodes[node].Hub.JoinChannelIds(uid, faultRoom); err != nil {
			t.Fatalf("uid %d joins %q on node %d: %v", uid, faultRoom, node, err)
		}
		w.room[uid] = true
	}
	w.dial(1, 7)
	Eventually(t, "uid 7's channels loaded on node 1", func() bool {
		return slices.Equal(w.nodes[1].Hub.UserChannelIds(7), []string{faultRoom})
	})
	if err := w.presenceErr(); err != nil {
		t.Fatalf("before the fault: %v", err)
	}
	if err := w.rec.Paired(w.connected()...); err != nil {
		t.Fatalf("before the fault: %v", err)
	}
	w.routed()
}

// routed waits until every live node routes faultRoom to every member's
// connection.
func (w *faultWorld) routed() {
	w.t.Helper()
	var clients []*Client
	for _, x := range w.conns {
		if w.room[x.c.Uid] {
			clients = append(clients, x.c)
		}
	}
	for _, i := range w.live() {
		AwaitRoute(w.t, w.nodes[i], faultRoom, clients...)
	}
}

// loggedIn waits until uid's LoginServer ran (an odd number of calls).
func (w *faultWorld) loggedIn(uid uint64) {
	w.t.Helper()
	Eventually(w.t, fmt.Sprintf("uid %d logged in", uid), func() bool { return len(w.rec.Calls(uid))%2 == 1 })
}

// presenceErr compares every live node's OnlineUserIds and
// ChannelUserIds(faultRoom) with the connected users and the members.
func (w *faultWorld) presenceErr(skip ...uint64) error {
	drop := func(uids []uint64) []uint64 {
		return slices.DeleteFunc(uids, func(uid uint64) bool { return slices.Contains(skip, uid) })
	}
	online, members := drop(w.connected()), drop(w.members())
	for _, i := range w.live() {
		h := w.nodes[i].Hub
		if got := drop(h.OnlineUserIds()); !slices.Equal(got, online) {
			return fmt.Errorf("node %d: OnlineUserIds = %v, want %v", i, got, online)
		}
		if got := drop(h.ChannelUserIds(faultRoom)); !slices.Equal(got, members) {
			return fmt.Errorf("node %d: ChannelUserIds(%q) = %v, want %v", i, faultRoom, got, members)
		}
	}
	return nil
}

// timed runs one API call of node i and records it when it took longer
// than the fail-fast bound.
func (w *faultWorld) timed(phase string, i int, name string, call func()) {
	start := time.Now()
	call()
	d := time.Since(start)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.calls++
	w.worst = max(w.worst, d)
	if d > w.brokerWait+w.f.CallMargin {
		w.slow = append(w.slow, fmt.Sprintf("%s +%v: node %d %s took %v",
			phase, start.Sub(w.phaseStart).Round(time.Millisecond), i, name, d.Round(time.Millisecond)))
	}
}

// hammer makes API calls on every live node (those in nodes, or all)
// until the time until, timing each (timed): on each node, on a goroutine
// of its own, one round every 20 ms. It is also how a scenario lets the
// fault last: the test waits for time to pass, not for an event.
func (w *faultWorld) hammer(phase string, until time.Time, nodes ...int) {
	<-w.hammerAsync(phase, until, nodes...)
}

// hammerAsync is hammer on other goroutines, while the test makes changes;
// the channel it returns is closed when they are done.
func (w *faultWorld) hammerAsync(phase string, until time.Time, nodes ...int) <-chan struct{} {
	if len(nodes) == 0 {
		nodes = w.live()
	}
	var wg sync.WaitGroup
	for _, i := range nodes {
		h := w.nodes[i].Hub
		// A member of faultRoom that never connects to node i: the calls
		// about it change nothing there.
		remote := uint64(5)
		if i == 2 {
			remote = 3
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(until) {
				w.timed(phase, i, "OnlineUserIds", func() { h.OnlineUserIds() })
				w.timed(phase, i, "IsOnline", func() { h.IsOnline(remote) })
				w.timed(phase, i, "ChannelUserIds", func() { h.ChannelUserIds(faultRoom) })
				w.timed(phase, i, "UserChannelIds", func() { h.UserChannelIds(remote) })
				w.timed(phase, i, "JoinChannelIds", func() { h.JoinChannelIds(remote, faultRoom) })
				w.timed(phase, i, "UnJoinChannelIds", func() { h.UnJoinChannelIds(remote, "none") })
				w.timed(phase, i, "SendMessageToChannelIds", func() { h.SendMessageToChannelIds(remote, "noise", faultRoom) })
				w.timed(phase, i, "SendMessageToUid", func() { h.SendMessageToUid(900, remote, "noise") })
				w.timed(phase, i, "Publish", func() { h.Publish(faultRoom, chart.Message{Content: "noise"}) })
				time.Sleep(20 * time.Millisecond) // pacing the calls, not waiting for anything
			}
		}()
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	return done
}

// failFast reports the calls that hammer found over the bound.
func (w *faultWorld) failFast(phase string) {
	w.t.Helper()
	bound := w.brokerWait + w.f.CallMargin
	w.t.Logf("%s: %d API calls, the slowest %v (bound %v)", phase, w.calls, w.worst.Round(time.Millisecond), bound)
	if len(w.slow) > 0 {
		w.t.Errorf("fail fast, %s: %d of %d API calls over %v (BrokerWait %v + %v); the slowest %v:\n  %s",
			phase, len(w.slow), w.calls, bound, w.brokerWait, w.f.CallMargin, w.worst.Round(time.Millisecond),
			strings.Join(firstN(w.slow, 12), "\n  "))
	}
	w.slow, w.calls, w.worst = nil, 0, 0
}

func firstN(s []string, n int) []string {
	if len(s) > n {
		return append(s[:n:n], fmt.Sprintf("... %d more", len(s)-n))
	}
	return s
}

// churn makes, during a fault, the changes the issue names: a uid on two
// nodes closes one connection (uid 7 on node 1: no logout); a uid closes
// its only connection (uid 2: logged out once the backend tells that it
// is offline everywhere); a new uid connects (uid 8 on node 1: logged in
// once the backend tells that it was offline everywhere); and a new uid
// connects to two nodes at once (uid 9 on nodes 0 and 2: one login). A
// uid online on another node connecting has a scenario of its own
// (OnlineElsewhere).
//
// API calls are made on every node before the changes too (the first call
// to reach a frozen backend is one of the application's) and after them
// until the time until.
func (w *faultWorld) churn(phase string, until time.Time) {
	w.t.Helper()
	hammered := w.hammerAsync(phase, until)
	time.Sleep(20 * time.Millisecond) // nothing to wait for: the first calls reach the backend first
	w.close(w.conn(1, 7))
	w.close(w.conn(0, 2))
	w.dial(1, 8)
	w.dialConcurrently(9, 0, 2)
	w.t.Logf("%s: churn done %v into the fault", phase, time.Since(w.phaseStart).Round(time.Millisecond))
	<-hammered
}

// dialConcurrently connects uid to each node given at the same moment.
func (w *faultWorld) dialConcurrently(uid uint64, nodes ...int) []*faultConn {
	w.t.Helper()
	type res struct {
		ws  *websocket.Conn
		err error
	}
	out := make([]chan res, len(nodes))
	for k, i := range nodes {
		out[k] = make(chan res, 1)
		go func() {
			ws, _, err := w.nodes[i].dial(uid, nil)
			out[k] <- res{ws, err}
		}()
	}
	var fcs []*faultConn
	for k, i := range nodes {
		r := <-out[k]
		if r.err != nil {
			w.t.Fatalf("uid %d dials node %d: %v", uid, i, r.err)
		}
		fc := &faultConn{w.nodes[i].Attach(w.t, r.ws, uid), i}
		w.conns = append(w.conns, fc)
		fcs = append(fcs, fc)
	}
	return fcs
}

// begin notes that a fault begins now (for the call log).
func (w *faultWorld) begin() { w.phaseStart = time.Now() }

// settle runs the checks after the backend came back at back: presence
// within a heartbeat (and the margin), nothing lost that was published
// from then on, callbacks paired, and still so after two TTLs more. The
// lagging uids get a TTL more: after an outage that lost the backend's
// data, the uids that first connected or last left a node during it wait
// a TTL for the other nodes to re-publish theirs before their LoginServer
// or LogoutServer runs, and their presence changes then.
func (w *faultWorld) settle(phase string, back time.Time, lagging ...uint64) {
	t := w.t
	t.Helper()
	bound := w.hb + w.f.PresenceMargin
	// Presence, watched from the moment the backend is back, while the
	// messages go out.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	watch := func(skip ...uint64) <-chan time.Duration {
		presence := make(chan time.Duration, 1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for w.presenceErr(skip...) != nil {
				select {
				case <-stop:
					presence <- -1
					return
				case <-time.After(5 * time.Millisecond): // polling state that has no event
				}
			}
			presence <- time.Since(back)
		}()
		return presence
	}
	most, all := watch(lagging...), watch()
	w.delivery(phase, back, bound)
	timeout := time.After(time.Until(back.Add(5 * w.ttl)))
	var took, tookAll time.Duration
	for _, c := range []struct {
		ch  <-chan time.Duration
		dst *time.Duration
	}{{most, &took}, {all, &tookAll}} {
		select {
		case *c.dst = <-c.ch:
		case <-timeout:
			close(stop)
			*c.dst = <-c.ch
			timeout = nil
		}
	}
	wg.Wait()
	check := func(took, bound time.Duration, what string, skip ...uint64) {
		if took < 0 {
			// Reported, and the callbacks checked all the same.
			t.Errorf("%s: presence%s still wrong %v after the backend came back: %v", phase, what, time.Since(back).Round(time.Millisecond), w.presenceErr(skip...))
			return
		}
		t.Logf("%s: presence%s right on every node %v after the backend came back (bound %v)", phase, what, took.Round(time.Millisecond), bound)
		if took > bound {
			t.Errorf("%s: presence%s right %v after the backend came back, want within %v", phase, what, took.Round(time.Millisecond), bound)
		}
	}
	if len(lagging) == 0 {
		check(tookAll, bound, "")
	} else {
		check(took, bound, fmt.Sprintf(" but for uids %v", lagging), lagging...)
		check(tookAll, w.ttl+bound, fmt.Sprintf(" of uids %v too", lagging))
	}
	w.paired(phase, back)
}

// paired waits until the callbacks are paired for the connected uids
// (five TTLs at most: the deferred logins and logouts wait for the
// nodes' re-publishing, within a heartbeat of the backend's return),
// then holds until two TTLs after back (late reaps, late logouts and
// logins would come in that time) and requires them still paired and
// presence still right.
func (w *faultWorld) paired(phase string, back time.Time) {
	t := w.t
	t.Helper()
	deadline := time.Now().Add(5 * w.ttl)
	for {
		err := w.rec.Paired(w.connected()...)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("%s: callbacks not paired %v after the backend came back:\n%v", phase, time.Since(back).Round(time.Millisecond), err)
			if err := w.presenceErr(); err != nil {
				t.Errorf("%s: presence wrong %v after the backend came back: %v", phase, time.Since(back).Round(time.Millisecond), err)
			}
			return
		}
		time.Sleep(5 * time.Millisecond) // polling state that has no event
	}
	t.Logf("%s: callbacks paired (checked after the messages, %v after the backend came back)", phase, time.Since(back).Round(time.Millisecond))
	// Nothing to wait for: the check is that nothing happens meanwhile.
	time.Sleep(time.Until(back.Add(2 * w.ttl)))
	if err := w.rec.Paired(w.connected()...); err != nil {
		t.Errorf("%s: callbacks unpaired again %v after the backend came back:\n%v", phase, time.Since(back).Round(time.Millisecond), err)
	}
	if err := w.presenceErr(); err != nil {
		t.Errorf("%s: presence wrong %v after the backend came back: %v", phase, time.Since(back).Round(time.Millisecond), err)
	}
}

// delivery publishes from every live node, from back on, 30 rounds 15 ms
// apart (450 ms: beyond a heartbeat, over the time nodes take to see the
// backend again and resubscribe) of one channel message to faultRoom and
// one direct message to every connected uid, then requires every
// connection to get each node's channel messages (if its uid is a member)
// and the direct messages to its uid that SendMessageToUid accepted,
// exactly once and in order. Refusals must end within refusalBound of
// back.
func (w *faultWorld) delivery(phase string, back time.Time, refusalBound time.Duration) {
	t := w.t
	t.Helper()
	const rounds = 30
	uids := w.connected()
	// dms[node][uid]: the rounds whose direct message was accepted.
	dms := make(map[int]map[uint64][]int)
	refused, lastRefusal := 0, time.Duration(0)
	var firstErr error
	for _, i := range w.live() {
		dms[i] = make(map[uint64][]int)
	}
	for k := 0; k < rounds; k++ {
		for _, i := range w.live() {
			h := w.nodes[i].Hub
			sender := uint64(800 + i)
			if err := h.Publish(faultRoom, chart.Message{UserId: sender, Content: fmt.Sprintf("f|c|%d|%d", i, k)}); err != nil {
				t.Fatalf("%s: node %d Publish: %v", phase, i, err)
			}
			for _, uid := range uids {
				if err := h.SendMessageToUid(sender, uid, fmt.Sprintf("f|d|%d|%d", i, k)); err != nil {
					refused++
					lastRefusal = time.Since(back)
					if firstErr == nil {
						firstErr = err
					}
					continue
				}
				dms[i][uid] = append(dms[i][uid], k)
			}
		}
		time.Sleep(15 * time.Millisecond) // pacing the publishers, not waiting for anything
	}
	if refused > 0 {
		t.Logf("%s: %d of %d direct messages refused, the last %v after the backend came back (first: %v)",
			phase, refused, rounds*len(uids)*len(w.live()), lastRefusal.Round(time.Millisecond), firstErr)
	}
	if lastRefusal > refusalBound {
		t.Errorf("%s: SendMessageToUid still refused %v after the backend came back, want no refusal after %v (%d refused; %v)",
			phase, lastRefusal.Round(time.Millisecond), refusalBound, refused, firstErr)
	}
	// Markers: what comes after them was delivered twice (or late).
	marked := make(map[uint64]bool)
	for _, uid := range uids {
		Eventually(t, fmt.Sprintf("end marker to uid %d accepted", uid), func() bool {
			return w.nodes[w.live()[0]].Hub.SendMessageToUid(800, uid, "f|end") == nil
		})
		marked[uid] = true
	}
	w.nodes[w.live()[0]].Hub.Publish(faultRoom, chart.Message{UserId: 800, Content: "f|end"})
	var lost []string
	deadline := time.Now().Add(5 * w.ttl) // all was published: a few round trips should do
	for _, x := range w.conns {
		if err := w.receive(x, rounds, dms, deadline); err != "" {
			lost = append(lost, err)
		}
	}
	if len(lost) > 0 {
		t.Errorf("%s: messages published after the backend came back, not delivered exactly once in order on %d of %d connections:\n  %s",
			phase, len(lost), len(w.conns), strings.Join(lost, "\n  "))
	}
}

// receive reads x's frames until its end markers and checks what it got
// of the messages delivery published; it returns what is wrong, or "".
func (w *faultWorld) receive(x *faultConn, rounds int, dms map[int]map[uint64][]int, deadline time.Time) string {
	uid := x.c.Uid
	member := w.room[uid]
	chNext := make(map[int]int) // per node: the next channel round
	dmNext := make(map[int]int) // per node: the index into dms[node][uid]
	ends := 1
	if member {
		ends = 2
	}
	where := fmt.Sprintf("uid %d on node %d", uid, x.node)
	for ends > 0 {
		f, ok := x.c.next(max(time.Until(deadline), 100*time.Millisecond))
		if !ok {
			return fmt.Sprintf("%s: %d end marker(s) missing after %v; got %s", where, ends, 5*w.ttl, w.progress(uid, member, rounds, chNext, dmNext, dms))
		}
		if f.Content == "f|end" {
			ends--
			continue
		}
		var kind string
		var i, k int
		parts := strings.Split(f.Content, "|")
		if len(parts) != 4 || parts[0] != "f" {
			continue // probes, noise, other frames
		}
		kind = parts[1]
		i, _ = strconv.Atoi(parts[2])
		k, _ = strconv.Atoi(parts[3])
		switch {
		case kind == "c" && !member:
			return fmt.Sprintf("%s: channel message %d of node %d, not a member", where, k, i)
		case kind == "c" && k != chNext[i]:
			return fmt.Sprintf("%s: channel message %d of node %d after %d of %d (lost or twice); got %s",
				where, k, i, chNext[i], rounds, w.progress(uid, member, rounds, chNext, dmNext, dms))
		case kind == "c":
			chNext[i]++
		case kind == "d":
			want := dms[i][uid]
			if dmNext[i] >= len(want) || want[dmNext[i]] != k {
				return fmt.Sprintf("%s: direct message %d of node %d at position %d of the %d accepted (lost, refused or twice); got %s",
					where, k, i, dmNext[i], len(want), w.progress(uid, member, rounds, chNext, dmNext, dms))
			}
			dmNext[i]++
		}
	}
	if p := w.progress(uid, member, rounds, chNext, dmNext, dms); strings.Contains(p, "missing") {
		return where + ": " + p
	}
	return ""
}

// progress describes what a connection got of delivery's messages.
func (w *faultWorld) progress(uid uint64, member bool, rounds int, chNext, dmNext map[int]int, dms map[int]map[uint64][]int) string {
	var b []string
	missing := false
	for _, i := range w.live() {
		s := fmt.Sprintf("node %d:", i)
		if member {
			s += fmt.Sprintf(" channel %d/%d", chNext[i], rounds)
			missing = missing || chNext[i] < rounds
		}
		s += fmt.Sprintf(" direct %d/%d", dmNext[i], len(dms[i][uid]))
		missing = missing || dmNext[i] < len(dms[i][uid])
		b = append(b, s)
	}
	if missing {
		b = append(b, "(missing)")
	}
	return strings.Join(b, ", ")
}

// detected waits until uids, connected only to node gone, are offline on
// every live node and their LoginServer was followed by a LogoutServer,
// and requires that within TTL plus a heartbeat and the margin of since.
// (Whether the callbacks stay paired afterwards, settle checks.)
func (w *faultWorld) detected(what string, since time.Time, gone int, uids ...uint64) {
	t := w.t
	t.Helper()
	bound := w.ttl + w.hb + w.f.PresenceMargin
	deadline := since.Add(5 * w.ttl)
	calls := func() string {
		var b []string
		for _, uid := range uids {
			b = append(b, fmt.Sprintf("uid %d: %s", uid, callString(w.rec.Calls(uid))))
		}
		return strings.Join(b, "; ")
	}
	for {
		ok := true
		for _, uid := range uids {
			if c := w.rec.Calls(uid); len(c) < 2 || !c[0] || c[1] {
				ok = false
			}
			for _, i := range w.live() {
				if i != gone && w.nodes[i].Hub.IsOnline(uid) {
					ok = false
				}
			}
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("%s: node %d's users %v not seen offline and logged out within %v: %s", what, gone, uids, time.Since(since).Round(time.Millisecond), calls())
			return
		}
		time.Sleep(5 * time.Millisecond) // polling state that has no event
	}
	took := time.Since(since)
	t.Logf("%s: node %d's users %v offline everywhere else and logged out %v after it went (bound %v): %s", what, gone, uids, took.Round(time.Millisecond), bound, calls())
	if took > bound {
		t.Errorf("%s: node %d's users %v offline and logged out %v after it went, want within %v (TTL %v + heartbeat %v + %v)",
			what, gone, uids, took.Round(time.Millisecond), bound, w.ttl, w.hb, w.f.PresenceMargin)
	}
}

// outage: the backend is killed with users connected, for half a TTL
// (short) or two TTLs (long), while API calls are made on every node and
// users connect and disconnect (churn); then it is restarted.
func (f Faults) outage(t *testing.T, long bool) {
	w := f.start(t, false)
	w.populate()
	d, phase := w.ttl/2, "outage shorter than the TTL"
	if long {
		d, phase = 2*w.ttl, "outage longer than the TTL"
	}
	w.begin()
	restart := f.Kill(t)
	w.churn(phase, w.phaseStart.Add(d))
	w.failFast(phase)
	restart()
	back := time.Now()
	var lagging []uint64
	if f.Persistent {
		w.survived(phase)
	} else {
		// churn's uids that left (2: still shown online, its logout
		// waiting) and came (8, 9: not shown yet, their login waiting)
		lagging = []uint64{2, 8, 9}
	}
	w.settle(phase, back, lagging...)
}

// onlineElsewhere: during an outage shorter than the TTL, uids online on
// another node, members of faultRoom, connect to a node where they have
// no connection (uid 1 on node 2, uid 3 on node 0): no second
// LoginServer, and once the backend is back they are still members, on
// their new connections too (a uid is one member wherever its
// connections are).
func (f Faults) onlineElsewhere(t *testing.T) {
	w := f.start(t, false)
	w.populate()
	phase := "uids online elsewhere connect during an outage"
	w.begin()
	restart := f.Kill(t)
	hammered := w.hammerAsync(phase, w.phaseStart.Add(w.ttl/2))
	w.dial(2, 1)
	w.dial(0, 3)
	<-hammered
	w.failFast(phase)
	restart()
	w.settle(phase, time.Now())
}

// survived requires a restarted persistent backend to have kept presence:
// a fresh broker of the cluster reads the uids online before the outage
// that are still connected.
func (w *faultWorld) survived(phase string) {
	t := w.t
	t.Helper()
	b := w.node(w.f.Addr)
	defer b.Close()
	online, err := b.(chart.Presence).Online()
	if err != nil {
		t.Fatalf("%s: Online on the restarted persistent backend: %v", phase, err)
	}
	for _, uid := range []uint64{1, 3, 4, 5, 6, 7} {
		if !slices.Contains(online, uid) {
			t.Errorf("%s: the persistent backend lost presence: Online = %v right after the restart, want it to hold uid %d", phase, online, uid)
		}
	}
}

// freeze: the backend is frozen (SIGSTOP) for two TTLs with users
// connected, connecting and disconnecting, while API calls are made on
// every node; then thawed (SIGCONT).
func (f Faults) freeze(t *testing.T) {
	if f.Freeze == nil {
		t.Skip("Faults.Freeze not set")
	}
	w := f.start(t, false)
	w.populate()
	phase := "backend frozen longer than the TTL"
	w.begin()
	thaw := f.Freeze(t)
	w.churn(phase, w.phaseStart.Add(2*w.ttl))
	w.failFast(phase)
	thaw()
	w.settle(phase, time.Now())
}

// nodeCrash: node 1 dies (Server.Kill) with uids 3 and 4 connected only
// there and uid 7 also on node 2: 3 and 4 are offline and logged out once
// within the detection bound, 7 stays logged in; messages go on. Direct
// messages sent to uid 3 before its node is reaped are not lost: uid 3
// gets those SendMessageToUid accepted when it connects again.
func (f Faults) nodeCrash(t *testing.T) {
	w := f.start(t, false)
	w.populate()
	w.begin()
	killed := time.Now()
	w.nodes[1].Kill()
	w.dead[1] = true
	for _, x := range slices.Clone(w.conns) {
		if x.node == 1 {
			select {
			case <-x.c.Done():
			case <-time.After(Wait):
				t.Fatalf("uid %d's connection to the killed node still open", x.c.Uid)
			}
			w.forget(x)
		}
	}
	var sent []string
	refused := 0
	for k := 0; k < 5; k++ {
		content := fmt.Sprintf("f|dead|%d", k)
		if err := w.nodes[0].Hub.SendMessageToUid(800, 3, content); err != nil {
			refused++
			continue
		}
		sent = append(sent, content)
	}
	w.detected("node crash", killed, 1, 3, 4)
	three := w.dial(0, 3)
	w.loggedIn(3)
	var got []string
	deadline := time.Now().Add(5 * w.ttl)
	for len(got) < len(sent) {
		f, ok := three.c.next(max(time.Until(deadline), time.Millisecond))
		if !ok {
			break
		}
		if strings.HasPrefix(f.Content, "f|dead|") {
			got = append(got, f.Content)
		}
	}
	t.Logf("node crash: uid 3, back on node 0, got %d of the %d direct messages accepted for it while its dead node was not yet reaped (%d refused)", len(got), len(sent), refused)
	if !slices.Equal(got, sent) {
		t.Errorf("node crash: uid 3, back on node 0, got %q of the %d direct messages sent to it while its dead node was not yet reaped (%d accepted: %q; %d refused)",
			got, 5, len(sent), sent, refused)
	}
	w.settle("node crash", time.Now())
}

// nodeCut: node 2 (uids 5 and 6, and 7 which is on node 1 too) is cut
// off from the backend (its Proxy blackholed: bytes dropped, new
// connections refused) for two TTLs while its users stay connected;
// meanwhile uid 6 disconnects there and uid 10 connects there. The others
// reap it: 5 and 6 are logged out once within the detection bound, 7 stays
// logged in. Back, node 2 logs in again the uids it holds that
// are offline everywhere (5, 10), and drops its deferred logout of 6 (the
// reaper logged 6 out). Every API call on node 2 during the cut fails
// fast.
func (f Faults) nodeCut(t *testing.T) {
	w := f.start(t, true)
	w.populate()
	phase := "node 2 cut off longer than the TTL"
	w.begin()
	cut := time.Now()
	w.proxy.Blackhole()
	hammered := w.hammerAsync(phase, cut.Add(w.hb), 2)
	time.Sleep(20 * time.Millisecond) // nothing to wait for: the first calls reach the backend first
	w.close(w.conn(2, 6))
	w.dial(2, 10)
	<-hammered
	w.detected(phase, cut, 2, 5, 6)
	w.hammer(phase, cut.Add(2*w.ttl), 2)
	w.failFast(phase)
	w.proxy.Restore()
	// Node 2 restores uid 5 with the channels its registry holds: back in
	// faultRoom.
	w.settle(phase, time.Now())
}

// concurrent: uids 20 to 24 each connect to nodes 0 and 1 at the same
// moment (one LoginServer each), then close both at the same moment (one
// LogoutServer each), with the backend up.
func (f Faults) concurrent(t *testing.T) {
	w := f.start(t, false)
	w.populate()
	var fcs []*faultConn
	for uid := uint64(20); uid < 25; uid++ {
		fcs = append(fcs, w.dialConcurrently(uid, 0, 1)...)
	}
	start := time.Now()
	w.paired("concurrent connects", start)
	var wg sync.WaitGroup
	for _, fc := range fcs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fc.c.WS.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(Wait))
		}()
	}
	wg.Wait()
	for _, fc := range fcs {
		select {
		case <-fc.c.Done():
		case <-time.After(Wait):
			t.Fatalf("uid %d on node %d: the server did not close", fc.c.Uid, fc.node)
		}
		w.forget(fc)
	}
	w.settle("concurrent disconnects", time.Now())
	w.brokerErrors("concurrent connects and disconnects, the broker up")
}

// brokerErrors logs the broker errors the hubs reported (drained from the
// Recorder): with the backend up there should be none.
func (w *faultWorld) brokerErrors(phase string) {
	n, down := 0, 0
	var first error
	for {
		select {
		case err := <-w.rec.Errs:
			if errors.Is(err, chart.ErrBroker) {
				n++
				if errors.Is(err, chart.ErrBrokerDown) {
					down++
				}
				if first == nil {
					first = err
				}
			}
			continue
		default:
		}
		break
	}
	if n > 0 {
		w.t.Errorf("%s: %d broker errors reported (%d of them calls refused at once as the broker seemed stuck); the first: %v", phase, n, down, first)
	}
}

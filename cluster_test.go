package chart_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wuyan94zl/chart"
	"github.com/wuyan94zl/chart/charttest"
)

func TestMemoryBroker(t *testing.T) {
	var bus *chart.MemoryBus
	charttest.Suite{
		NewCluster: func(t *testing.T) func() chart.Broker {
			bus = chart.NewMemoryBus()
			bus.TTL = 600 * time.Millisecond
			return bus.Broker
		},
		Outage: func(t *testing.T) func() {
			bus.SetDown(true)
			return func() { bus.SetDown(false) }
		},
	}.Run(t)
}

// TestCloseIsAbrupt: Close drops every connection at once and runs no
// LogoutServer, as a crash would; afterwards calls fail with ErrHubClosed.
func TestCloseIsAbrupt(t *testing.T) {
	rec := charttest.NewRecorder()
	s := charttest.Start(t, chart.Config{}, rec)
	c := s.Login(t, rec, 1)
	s.Kill()
	c.WaitClosed()
	select {
	case uid := <-rec.Logouts:
		t.Fatalf("LogoutServer(%d) after Close", uid)
	default:
	}
	if err := s.Hub.JoinChannelIds(1, "x"); !errors.Is(err, chart.ErrHubClosed) {
		t.Fatalf("JoinChannelIds after Close = %v", err)
	}
}

// TestPartition cuts one node off the broker while the others go on. A uid
// that left that node meanwhile is logged out there once the cut ends, and is not left
// online in presence when the node comes back; joins made meanwhile are
// re-published. A cut longer than the TTL gets the node's users logged out
// by the others; back, their presence is restored and, being offline
// everywhere until then, they are logged in again (login, logout, login).
func TestPartition(t *testing.T) {
	bus := chart.NewMemoryBus()
	bus.TTL = 1500 * time.Millisecond
	c, brokers := startBus(t, bus, 2)
	a, b := c.Nodes[0], c.Nodes[1]
	a.Login(t, c.Rec, 1)
	three := a.Login(t, c.Rec, 3)
	b.Login(t, c.Rec, 2)

	bus.Cut(brokers[0], true)
	three.Close()
	if err := a.Hub.JoinChannelIds(1, "p"); err != nil {
		t.Fatal(err) // served locally
	}
	c.Rec.WantErr(t, chart.ErrBroker)
	bus.Cut(brokers[0], false)
	// 3's logout waited for the broker to say it is offline everywhere.
	if got := charttest.Recv(t, c.Rec.Logouts, "logout"); got != 3 {
		t.Fatalf("logout of %d, want 3", got)
	}
	charttest.Eventually(t, "presence repaired", func() bool {
		return slices.Equal(b.Hub.OnlineUserIds(), []uint64{1, 2}) &&
			slices.Equal(b.Hub.ChannelUserIds("p"), []uint64{1})
	})

	bus.Cut(brokers[0], true)
	if got := charttest.Recv(t, c.Rec.Logouts, "logout"); got != 1 {
		t.Fatalf("logout of %d, want 1 (reaped)", got)
	}
	if !slices.Equal(b.Hub.OnlineUserIds(), []uint64{2}) {
		t.Fatalf("OnlineUserIds = %v after reaping", b.Hub.OnlineUserIds())
	}
	bus.Cut(brokers[0], false)
	charttest.Eventually(t, "presence restored", func() bool {
		return slices.Equal(b.Hub.OnlineUserIds(), []uint64{1, 2}) &&
			slices.Equal(b.Hub.ChannelUserIds("p"), []uint64{1})
	})
	// Reaped (logged out by b) while still connected to a: a logs it in
	// again, so that its callbacks stay paired; once.
	if got := charttest.Recv(t, c.Rec.Logins, "login after the partition"); got != 1 {
		t.Fatalf("login of %d after the partition, want 1", got)
	}
	select {
	case uid := <-c.Rec.Logins:
		t.Fatalf("a second login, of %d, after the partition", uid)
	case <-time.After(3 * bus.TTL): // heartbeats go on
	}
}

// TestOffsetsInOrderAcrossNodes: publishers on two nodes write to one
// channel at once; the broker assigns the offsets, and the members on
// each node receive every message in offset order, none missing. Without
// the sequencer (sequence.go) a node delivers in arrival order.
func TestOffsetsInOrderAcrossNodes(t *testing.T) {
	// Streams that keep every message of the test: a publisher stalled
	// for longer than the wait (as on a loaded machine) is then read
	// from the stream, never skipped.
	bus := chart.NewMemoryBus()
	bus.StreamSize = 10000
	c := charttest.StartCluster(t, 2, bus.Broker)
	a, b := c.Nodes[0], c.Nodes[1]
	ca, cb := a.Login(t, c.Rec, 1), b.Login(t, c.Rec, 2)
	a.Hub.JoinChannelIds(1, "room")
	b.Hub.JoinChannelIds(2, "room")
	charttest.AwaitRoute(t, a, "room", ca, cb)
	charttest.AwaitRoute(t, b, "room", ca, cb)
	const writers, each = 4, 500
	done := make(chan struct{})
	for w := 0; w < writers; w++ {
		node := []*charttest.Server{a, b}[w%2]
		go func() {
			defer func() { done <- struct{}{} }()
			for i := 0; i < each; i++ {
				node.Hub.Publish("room", chart.Message{Content: "x"})
			}
		}()
	}
	for w := 0; w < writers; w++ {
		<-done
	}
	for _, cl := range []*charttest.Client{ca, cb} {
		first := cl.NextMsg().Offset
		for i := uint64(1); i < writers*each; i++ {
			if m := cl.NextMsg(); m.Offset != first+i {
				t.Fatalf("uid %d: message at offset %d arrived where %d was due (holes %d, %d)", cl.Uid, m.Offset, first+i, a.Hub.Stats().Holes, b.Hub.Stats().Holes)
			}
		}
	}
	if h := a.Hub.Stats().Holes + b.Hub.Stats().Holes; h != 0 {
		t.Fatalf("%d holes skipped, none expected", h)
	}
}

// TestHole: offsets appended to the broker's stream but never published
// (their node died in between) hold the next message back for a moment
// only; then this node reads them from the stream and delivers them in
// their place. Offsets the stream no longer has are skipped and counted.
func TestHole(t *testing.T) {
	bus := chart.NewMemoryBus()
	var streams chart.Streams
	c := charttest.StartCluster(t, 2, func() chart.Broker {
		b := bus.Broker()
		streams, _ = b.(chart.Streams)
		return b
	})
	a, b := c.Nodes[0], c.Nodes[1]
	ca := a.Login(t, c.Rec, 1)
	a.Hub.JoinChannelIds(1, "room")
	b.Hub.Publish("room", chart.Message{Content: "before"})
	next := ca.NextMsg().Offset + 1
	// The appends of a publisher that dies before publishing.
	lost := func(content string) {
		t.Helper()
		off, _, err := streams.Append("c:room", []byte(`{"content":"`+content+`"`))
		if err != nil || off != next {
			t.Fatalf("Append = %d, %v; want offset %d", off, err, next)
		}
		next++
	}
	want := func(content string, off uint64) {
		t.Helper()
		if m := ca.NextMsg(); m.Content != content || m.Offset != off {
			t.Fatalf("got %q at %d, want %q at %d", m.Content, m.Offset, content, off)
		}
	}

	lost("unpublished")
	b.Hub.Publish("room", chart.Message{Content: "after"})
	want("unpublished", next-1)
	want("after", next)
	next++
	if h := a.Hub.Stats().Holes; h != 0 {
		t.Fatalf("Stats().Holes = %d after a hole filled from the stream", h)
	}

	// 100 unpublished appends, then a message: the stream keeps the last
	// 100 (the default HistorySize), so the first is gone for good.
	first := next
	for i := 0; i < 100; i++ {
		lost(fmt.Sprint("gone ", i))
	}
	b.Hub.Publish("room", chart.Message{Content: "after the gap"})
	for i := 1; i < 100; i++ {
		want(fmt.Sprint("gone ", i), first+uint64(i))
	}
	want("after the gap", next)
	if h := a.Hub.Stats().Holes; h != 1 {
		t.Fatalf("Stats().Holes = %d, want 1", h)
	}
}

// TestCatchUpAfterCut: a node cut off from the broker misses what another
// node publishes meanwhile; when the broker delivers to it again
// (Node.Resumed) it reads the missed messages from the stream and
// delivers them, in order, without waiting for a later message.
func TestCatchUpAfterCut(t *testing.T) {
	bus := chart.NewMemoryBus()
	c, brokers := startBus(t, bus, 2)
	a, b := c.Nodes[0], c.Nodes[1]
	ca := a.Login(t, c.Rec, 1)
	a.Hub.JoinChannelIds(1, "room")
	charttest.AwaitRoute(t, b, "room", ca)
	b.Hub.Publish("room", chart.Message{Content: "before"})
	ca.WantContent("before")
	bus.Cut(brokers[0], true)
	for i := 0; i < 5; i++ {
		b.Hub.Publish("room", chart.Message{Content: fmt.Sprint("missed ", i)})
	}
	ca.Quiet(50 * time.Millisecond)
	bus.Cut(brokers[0], false)
	for i := 0; i < 5; i++ {
		ca.WantContent(fmt.Sprint("missed ", i))
	}
}

// TestFailFast: the broker freezes (calls hang, as with a stopped
// process). The first API call into it gives up after BrokerWait (the
// call itself waits on, abandoned), and once none has completed for
// BrokerWait the node refuses further broker calls at once: API calls
// answer within that bound (presence falls back to this node, a direct
// message to a remote uid fails with ErrBroker, channel messages reach
// local members), and Shutdown returns within its context. When the
// broker answers again, so do the calls.
func TestFailFast(t *testing.T) {
	bus := chart.NewMemoryBus()
	c := charttest.StartCluster(t, 2, bus.Broker)
	a, b := c.Nodes[0], c.Nodes[1]
	ca := a.Login(t, c.Rec, 1)
	b.Login(t, c.Rec, 2)
	a.Hub.JoinChannelIds(1, "room")

	bus.Freeze(true)
	thawed := false
	thaw := func() {
		if !thawed {
			thawed = true
			bus.Freeze(false)
		}
	}
	defer thaw()
	const bound = 250 * time.Millisecond // BrokerWait is 50 ms; slack for a loaded machine
	w := bus.Waiting()                   // the heartbeats' calls may wait too
	start := time.Now()
	if a.Hub.IsOnline(3) {
		t.Fatal("IsOnline(3) = true")
	}
	if d := time.Since(start); d > bound {
		t.Fatalf("the first call into the frozen broker took %v", d)
	}
	if n := bus.Waiting(); n <= w {
		t.Fatalf("%d calls waiting for the frozen bus, want the abandoned one (more than %d)", n, w)
	}
	// BrokerWait (50 ms) passed without an answer: calls fail fast.
	if err := a.Hub.SendMessageToUid(1, 2, "x"); !errors.Is(err, chart.ErrBrokerDown) {
		t.Fatalf("SendMessageToUid = %v, want ErrBrokerDown", err)
	}
	timed := func(what string, call func()) {
		t.Helper()
		start := time.Now()
		call()
		if d := time.Since(start); d > bound {
			t.Fatalf("%s took %v with the broker frozen", what, d)
		}
	}
	for i := 0; i < 10; i++ {
		timed("OnlineUserIds", func() {
			if got := a.Hub.OnlineUserIds(); !slices.Equal(got, []uint64{1}) {
				t.Fatalf("OnlineUserIds = %v, want this node's [1]", got)
			}
		})
		timed("SendMessageToUid", func() {
			if err := a.Hub.SendMessageToUid(1, 2, "x"); !errors.Is(err, chart.ErrBroker) {
				t.Fatalf("SendMessageToUid = %v, want ErrBroker", err)
			}
		})
		timed("Publish", func() { a.Hub.Publish("room", chart.Message{Content: fmt.Sprint("local ", i)}) })
		ca.WantContent(fmt.Sprint("local ", i))
	}
	thaw()
	charttest.Eventually(t, "the broker answers again", func() bool { return a.Hub.IsOnline(2) })

	// Frozen again: Shutdown returns within its context.
	bus.Freeze(true)
	thawed = false
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start = time.Now()
	a.Hub.Shutdown(ctx)
	if d := time.Since(start); d > 200*time.Millisecond+bound {
		t.Fatalf("Shutdown took %v with a 200 ms context", d)
	}
}

// TestLongOutageReapsNobody: every node loses the broker for longer than
// the TTL while presence survives (a broker restarted with its data).
// Back, no node reaps another (each waits a TTL after an outage it saw):
// no LogoutServer for users still connected, and presence is right.
func TestLongOutageReapsNobody(t *testing.T) {
	bus := chart.NewMemoryBus()
	const ttl = 600 * time.Millisecond
	bus.TTL = ttl
	c, brokers := startBus(t, bus, 2)
	a, b := c.Nodes[0], c.Nodes[1]
	a.Login(t, c.Rec, 1)
	b.Login(t, c.Rec, 2)
	e0, e1 := a.Hub.Stats().BrokerErrors, b.Hub.Stats().BrokerErrors
	bus.Cut(brokers[0], true)
	bus.Cut(brokers[1], true)
	charttest.Eventually(t, "both nodes' heartbeats failing", func() bool {
		return a.Hub.Stats().BrokerErrors > e0 && b.Hub.Stats().BrokerErrors > e1
	})
	time.Sleep(2 * ttl) // the scenario: an outage longer than the TTL
	bus.Cut(brokers[0], false)
	bus.Cut(brokers[1], false)
	// For three TTLs after, nobody is logged out.
	deadline := time.Now().Add(3 * ttl)
	for time.Now().Before(deadline) {
		select {
		case uid := <-c.Rec.Logouts:
			t.Fatalf("LogoutServer(%d) after the outage, while it was connected", uid)
		case <-time.After(50 * time.Millisecond):
		}
	}
	for _, n := range c.Nodes {
		if got := n.Hub.OnlineUserIds(); !slices.Equal(got, []uint64{1, 2}) {
			t.Fatalf("%s sees %v online, want [1 2]", n.URL, got)
		}
	}
}

// TestNewSubscriberGetsLiveOnly: node A follows a channel's order while it
// has a member there; the member leaves, the channel goes on on node B,
// and a new member on A gets live messages only: not, as if live, what
// the channel got while A had nobody in it.
func TestNewSubscriberGetsLiveOnly(t *testing.T) {
	c := charttest.StartCluster(t, 2, chart.NewMemoryBus().Broker)
	a, b := c.Nodes[0], c.Nodes[1]
	s1 := a.Login(t, c.Rec, 1)
	a.Hub.JoinChannelIds(1, "room")
	charttest.AwaitRoute(t, b, "room", s1)
	a.Hub.UnJoinChannelIds(1, "room")
	// A member on B proves each message appended (its node delivers a
	// message once the stream has it); node A may still receive them
	// after its new member joined: they are the past all the same.
	s3 := b.Login(t, c.Rec, 3)
	b.Hub.JoinChannelIds(3, "room")
	for i := 0; i < 5; i++ {
		b.Hub.Publish("room", chart.Message{Content: fmt.Sprint("while nobody was here ", i)})
	}
	for i := 0; i < 5; i++ {
		if m, want := s3.NextMsg(), fmt.Sprint("while nobody was here ", i); m.Content != want {
			t.Fatalf("member on B got %q, want %q", m.Content, want)
		}
	}
	s2 := a.Login(t, c.Rec, 2)
	a.Hub.JoinChannelIds(2, "room")
	// On the memory bus the subscription is made when the join returns.
	b.Hub.Publish("room", chart.Message{Content: "live"})
	if m := s2.NextMsg(); m.Content != "live" {
		t.Fatalf("new member got %q first, want the live message", m.Content)
	}
}

// startBus starts a cluster of n nodes on bus and returns it with the
// nodes' brokers, in order, for MemoryBus.Cut.
func startBus(t *testing.T, bus *chart.MemoryBus, n int) (*charttest.Cluster, []chart.Broker) {
	t.Helper()
	var brokers []chart.Broker
	c := charttest.StartCluster(t, n, func() chart.Broker {
		b := bus.Broker()
		brokers = append(brokers, b)
		return b
	})
	return c, brokers
}

// cutShort is a node's broker whose heartbeats fail after reaping, as a
// NATS heartbeat cut off part way through its reap does: the uids it took
// offline come back with the error.
type cutShort struct {
	chart.Broker
	chart.Presence
	fail atomic.Bool
}

func (c *cutShort) Heartbeat(reap bool) ([]uint64, bool, bool, error) {
	gone, lost, reaped, err := c.Presence.Heartbeat(reap)
	if err == nil && len(gone) > 0 && c.fail.Load() {
		err = errors.New("heartbeat cut short")
	}
	return gone, lost, reaped, err
}

// TestReapCutShort: a heartbeat that reaped a dead node's uid and then
// failed still runs its LogoutServer (nobody else will see it go).
func TestReapCutShort(t *testing.T) {
	bus := chart.NewMemoryBus()
	bus.TTL = 300 * time.Millisecond
	var a *cutShort
	c := charttest.StartCluster(t, 2, func() chart.Broker {
		b := bus.Broker()
		if a == nil {
			a = &cutShort{Broker: b, Presence: b.(chart.Presence)}
			a.fail.Store(true)
			return a
		}
		return b
	})
	c.Nodes[1].Login(t, c.Rec, 7)
	c.Nodes[1].Kill() // node B dies; A reaps it, and its heartbeat then fails
	if uid := charttest.Recv(t, c.Rec.Logouts, "uid 7's logout"); uid != 7 {
		t.Fatalf("logout of %d, want 7", uid)
	}
	if c.Nodes[0].Hub.IsOnline(7) {
		t.Fatal("uid 7 still online after the reap")
	}
}

// TestReapNeedsAHandler (review): a node that has no handler to run
// LogoutServer with (no Config.Handler, no NewServer call yet) leaves a
// dead node's uids to a node that has one, and reaps them itself once it
// has one. (It reaped them with no handler: their LogoutServer was lost,
// and a reconnect logged them in a second time.)
func TestReapNeedsAHandler(t *testing.T) {
	bus := chart.NewMemoryBus()
	bus.TTL = 300 * time.Millisecond
	rec := charttest.NewRecorder()
	// No Config.Handler: each node's handler is the one NewServer gets.
	a := charttest.Start(t, chart.Config{Broker: bus.Broker()}, rec)
	b := charttest.Start(t, chart.Config{Broker: bus.Broker()}, rec)
	a.Login(t, rec, 1)
	a.Kill()
	deadline := time.Now().Add(3 * bus.TTL)
	for time.Now().Before(deadline) {
		select {
		case uid := <-rec.Logouts:
			t.Fatalf("LogoutServer(%d) with no handler on the reaping node", uid)
		case <-time.After(50 * time.Millisecond):
		}
		if !b.Hub.IsOnline(1) {
			t.Fatal("B, with no handler, reaped uid 1")
		}
	}
	b.Login(t, rec, 2) // B has a handler now
	if uid := charttest.Recv(t, rec.Logouts, "uid 1's logout"); uid != 1 {
		t.Fatalf("LogoutServer(%d), want uid 1's", uid)
	}
	if b.Hub.IsOnline(1) {
		t.Fatal("uid 1 online after its logout")
	}
}

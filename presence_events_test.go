package chart_test

import (
	"context"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wuyan94zl/chart"
	"github.com/wuyan94zl/chart/charttest"
)

// rooms is the PresenceChannels of these tests: channels named room...
func rooms(id string) bool { return strings.HasPrefix(id, "room") }

// presenceApp is a Recorder that records PresenceServer calls and lets
// clients join the rooms (JoinServer), refusing other channels.
type presenceApp struct {
	*charttest.Recorder
	events chan presenceEvent
	asked  atomic.Int64 // JoinServer calls
}

type presenceEvent struct {
	channelId    string
	joined, left []uint64
}

func newPresenceApp() *presenceApp {
	return &presenceApp{Recorder: charttest.NewRecorder(), events: make(chan presenceEvent, 10000)}
}

func (a *presenceApp) PresenceServer(channelId string, joined, left []uint64) {
	select {
	case a.events <- presenceEvent{channelId, joined, left}:
	default:
	}
}

func (a *presenceApp) JoinServer(c *chart.Conn, channelId string) error {
	a.asked.Add(1)
	if rooms(channelId) || channelId == "lobby" {
		return nil
	}
	return chart.Refuse("forbidden", "not your channel")
}

// wantEvent waits for the next PresenceServer call and requires it.
func (a *presenceApp) wantEvent(t *testing.T, channelId string, joined, left []uint64) {
	t.Helper()
	e := charttest.Recv(t, a.events, "PresenceServer")
	if e.channelId != channelId || !slices.Equal(e.joined, joined) || !slices.Equal(e.left, left) {
		t.Fatalf("PresenceServer(%q, %v, %v), want (%q, %v, %v)", e.channelId, e.joined, e.left, channelId, joined, left)
	}
}

func (a *presenceApp) noEvent(t *testing.T) {
	t.Helper()
	select {
	case e := <-a.events:
		t.Fatalf("unexpected PresenceServer(%q, %v, %v)", e.channelId, e.joined, e.left)
	default:
	}
}

func uids(ids ...uint64) []uint64 { return ids }

// TestPresenceEvents: a member gets the member list when it joins or
// connects, then every change, each once and in order; its own leave ends
// its list; a channel without presence events sends none; the
// PresenceHandler hears the same changes.
func TestPresenceEvents(t *testing.T) {
	app := newPresenceApp()
	s := start(t, chart.Config{PresenceChannels: rooms, PresenceWindow: 20 * time.Millisecond, Handler: app}, app)
	hub := s.Hub
	a := s.Login(t, app.Recorder, 1)
	b := s.Login(t, app.Recorder, 2)
	c := s.Login(t, app.Recorder, 3)

	// The first member: the (empty) list, then its own join.
	if err := hub.JoinChannelIds(1, "room"); err != nil {
		t.Fatal(err)
	}
	a.Presence("members", "room")
	a.Presence("join", "room", 1)
	app.wantEvent(t, "room", uids(1), nil)

	// A second member: the list as the others have it, then the join.
	hub.JoinChannelIds(2, "room", "other") // "other" has no presence events
	b.Presence("members", "room", 1)
	for _, cl := range []*charttest.Client{a, b} {
		cl.Presence("join", "room", 2)
	}
	app.wantEvent(t, "room", uids(2), nil)

	// A second connection of a member gets the list; nobody hears of it.
	a2 := s.Dial(t, 1)
	a2.Presence("members", "room", 1, 2)

	// Joining through a request: the answer, then the list.
	c.Send(`{"join":"room","id":"j1"}`)
	if f := c.Next(); f.Joined != "room" || f.Id != "j1" {
		t.Fatalf("answer %+v", f)
	}
	c.Presence("members", "room", 1, 2)
	for _, cl := range []*charttest.Client{a, a2, b, c} {
		cl.Presence("join", "room", 3)
	}
	app.wantEvent(t, "room", uids(3), nil)
	if got := hub.ChannelUserIds("room"); !slices.Equal(got, uids(1, 2, 3)) {
		t.Fatalf("ChannelUserIds = %v", got)
	}

	// A leave: the leaver's connections are told at once, the others with
	// the window.
	hub.UnJoinChannelIds(2, "room")
	b.Presence("end", "room")
	for _, cl := range []*charttest.Client{a, a2, c} {
		cl.Presence("leave", "room", 2)
	}
	app.wantEvent(t, "room", nil, uids(2))

	// A client's leave request: the answer, then the end of its list.
	c.Send(`{"leave":"room"}`)
	if f := c.Next(); f.Left != "room" || f.Id != "" {
		t.Fatalf("answer %+v", f)
	}
	c.Presence("end", "room")
	for _, cl := range []*charttest.Client{a, a2} {
		cl.Presence("leave", "room", 3)
	}
	app.wantEvent(t, "room", nil, uids(3))

	// One of two connections closing is no change; the last one is.
	hub.JoinChannelIds(3, "room")
	c.Presence("members", "room", 1)
	for _, cl := range []*charttest.Client{a, a2, c} {
		cl.Presence("join", "room", 3)
	}
	app.wantEvent(t, "room", uids(3), nil)
	a.Close()
	a2.Close()
	charttest.Recv(t, app.Logouts, "logout")
	c.Presence("leave", "room", 1)
	app.wantEvent(t, "room", nil, uids(1))
	if got := hub.ChannelUserIds("room"); !slices.Equal(got, uids(3)) {
		t.Fatalf("ChannelUserIds = %v", got)
	}

	// Nothing else came: no frame for "other", none twice.
	hub.Publish("room", chart.Message{Content: "end"})
	c.WantContent("end")
	hub.Publish("other", chart.Message{Content: "end"})
	b.WantContent("end")
	app.noEvent(t)
	app.NoErr(t)
}

// TestPresenceWindow: the changes of one window come together, and a uid
// that leaves and comes back within it (or joins and leaves) is in
// neither list, for the members and for the PresenceHandler.
func TestPresenceWindow(t *testing.T) {
	app := newPresenceApp()
	// A long window, so that calls made one after the other fall in one.
	s := start(t, chart.Config{PresenceChannels: rooms, PresenceWindow: 500 * time.Millisecond, Handler: app}, app)
	hub := s.Hub
	var cs []*charttest.Client
	for uid := uint64(1); uid <= 4; uid++ {
		cs = append(cs, s.Login(t, app.Recorder, uid))
	}
	hub.JoinChannelIds(1, "room")
	hub.JoinChannelIds(2, "room")
	cs[0].Presence("members", "room")
	cs[1].Presence("members", "room")
	for _, cl := range cs[:2] {
		cl.Presence("join", "room", 1, 2)
	}
	app.wantEvent(t, "room", uids(1, 2), nil)

	hub.UnJoinChannelIds(2, "room") // 2 leaves and comes back
	hub.JoinChannelIds(2, "room")
	hub.JoinChannelIds(3, "room") // 3 comes and leaves
	hub.UnJoinChannelIds(3, "room")
	hub.JoinChannelIds(4, "room")

	cs[0].Presence("join", "room", 4) // all the window brought
	cs[1].Presence("end", "room")     // its own leave ended its list,
	cs[1].Presence("members", "room", 1, 2)
	cs[1].Presence("join", "room", 4)
	cs[2].Presence("members", "room", 1, 2)
	cs[2].Presence("end", "room")
	cs[3].Presence("members", "room", 1, 2)
	cs[3].Presence("join", "room", 4)
	app.wantEvent(t, "room", uids(4), nil)
	hub.Publish("room", chart.Message{Content: "end"})
	for _, i := range []int{0, 1, 3} {
		cs[i].WantContent("end")
	}
	app.noEvent(t)
}

// TestPresenceMassLogin: 300 users log in at once and LoginServer joins
// each to one room; then all but the first reconnect at once. With a full
// member list sent on every login, each member would receive a list per
// login (O(users^2) ids); here a member receives a frame or two per
// window, each change once.
func TestPresenceMassLogin(t *testing.T) {
	const n = 300
	app := newPresenceApp()
	var hub *chart.Hub
	app.OnLogin = func(uid uint64) { hub.JoinChannelIds(uid, "room") }
	s := start(t, chart.Config{PresenceChannels: rooms, Handler: app}, app) // the default window, 200 ms
	hub = s.Hub
	first := s.Login(t, app.Recorder, 1)
	r1 := charttest.NewRoster(1)
	first.AwaitMembers(r1, "room", uids(1))
	r1.Frames, r1.Bytes = 0, 0

	all := make([]uint64, n)
	for i := range all {
		all[i] = uint64(i + 1)
	}
	begin := time.Now()
	clients := map[uint64]*charttest.Client{1: first}
	for uid := uint64(2); uid <= n; uid++ {
		clients[uid] = s.Dial(t, uid)
	}
	first.AwaitMembers(r1, "room", all)
	took := time.Since(begin)
	window := chart.DefaultPresenceWindow
	bound := 2 * (int(took/window) + 2)
	t.Logf("%d logins in %v: member 1 got %d presence frames naming %d uids (a list per login: %d frames, %d uids); bound %d frames",
		n-1, took.Round(time.Millisecond), r1.Frames, r1.Bytes, n-1, (n-1)*(n+2)/2, bound)
	if r1.Frames > bound || r1.Bytes != n-1 {
		t.Fatalf("member 1 got %d frames, %d uids, want at most %d frames and %d uids", r1.Frames, r1.Bytes, bound, n-1)
	}
	for uid := uint64(2); uid <= n; uid++ {
		clients[uid].AwaitMembers(charttest.NewRoster(uid), "room", all)
	}

	// A mass reconnect: every other user's connection drops and comes back.
	for i := 2; i <= n; i++ {
		charttest.Recv(t, app.Logins, "login")
	}
	r1.Frames, r1.Bytes = 0, 0
	begin = time.Now()
	for uid := uint64(2); uid <= n; uid++ {
		clients[uid].Close()
	}
	for uid := uint64(2); uid <= n; uid++ {
		clients[uid] = s.Dial(t, uid)
	}
	for uid := uint64(2); uid <= n; uid++ {
		clients[uid].AwaitMembers(charttest.NewRoster(uid), "room", all)
	}
	took = time.Since(begin)
	// The others' lists are complete: every change went out before this.
	hub.Publish("room", chart.Message{Content: "marker"})
	for {
		if f := first.Next(); !r1.Take(t, f) && f.Content == "marker" {
			break
		}
	}
	if got := r1.Members("room"); !slices.Equal(got, all) {
		t.Fatalf("member 1: %d members", len(got))
	}
	bound = 2 * (int(took/window) + 2)
	t.Logf("reconnect of %d users in %v: member 1 got %d presence frames naming %d uids; bound %d frames",
		n-1, took.Round(time.Millisecond), r1.Frames, r1.Bytes, bound)
	if r1.Frames > bound || r1.Bytes > 2*(n-1) {
		t.Fatalf("member 1 got %d frames, %d uids, want at most %d frames and %d uids", r1.Frames, r1.Bytes, bound, 2*(n-1))
	}
	if got := hub.ChannelUserIds("room"); !slices.Equal(got, all) {
		t.Fatalf("ChannelUserIds = %d uids", len(got))
	}
	if st := hub.Stats(); st.Dropped != 0 || st.Disconnects.SlowConsumer != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestPresenceChurnConverges: random joins, leaves, connections and
// disconnections, through the API and from clients; once they stop, every
// connection's member list is ChannelUserIds, and a connection whose uid
// is not a member has none.
func TestPresenceChurnConverges(t *testing.T) {
	app := newPresenceApp()
	s := start(t, chart.Config{PresenceChannels: rooms, PresenceWindow: 10 * time.Millisecond, RateLimit: -1, Handler: app}, app)
	charttest.Churn(t, []*charttest.Server{s}, "room", 1, 600)
}

// TestPresenceAfterOutage: changes made while the broker was down (its
// presence lost, as a restarted server's) reach the other node's members
// once it is back: the nodes re-publish their presence, then read it
// again, and every list is ChannelUserIds.
func TestPresenceAfterOutage(t *testing.T) {
	bus := chart.NewMemoryBus()
	bus.TTL = 900 * time.Millisecond
	app := charttest.NewPresenceRecorder()
	var nodes []*charttest.Server
	for i := 0; i < 2; i++ {
		nodes = append(nodes, charttest.Start(t, chart.Config{Broker: bus.Broker(), Handler: app,
			PresenceChannels: rooms, PresenceWindow: 10 * time.Millisecond}, app))
	}
	a, b := nodes[0], nodes[1]
	c1 := a.Login(t, app.Recorder, 1)
	c2 := b.Login(t, app.Recorder, 2)
	c3 := b.Login(t, app.Recorder, 3)
	for uid := uint64(1); uid <= 3; uid++ {
		a.Hub.JoinChannelIds(uid, "room")
	}
	rs := []*charttest.Roster{charttest.NewRoster(1), charttest.NewRoster(2), charttest.NewRoster(3)}
	for i, c := range []*charttest.Client{c1, c2, c3} {
		c.AwaitMembers(rs[i], "room", uids(1, 2, 3))
	}

	for joined := 0; joined < 3; {
		joined += len(charttest.Recv(t, app.Events, "PresenceServer").Joined)
	}
	charttest.Eventually(t, "node a's roster idle", func() bool { return chart.RosterIdle(a.Hub, "room") })

	bus.SetDown(true)
	b.Hub.UnJoinChannelIds(3, "room") // b's members hear of it; a's cannot
	c2.AwaitMembers(rs[1], "room", uids(1, 2))
	app.WantEvent(t, "room", nil, uids(3)) // after b's envelope was lost
	// Nothing changes on a: only a resync tells it. (uid 4's LoginServer
	// waits for the broker.)
	c4 := b.Dial(t, 4)
	b.Hub.JoinChannelIds(4, "room")
	r4 := charttest.NewRoster(4)
	c4.AwaitMembers(r4, "room", uids(1, 2, 4))
	app.WantEvent(t, "room", uids(4), nil)
	bus.SetDown(false)
	app.WantLogin(t, 4)

	charttest.Eventually(t, "presence re-published", func() bool {
		return slices.Equal(a.Hub.ChannelUserIds("room"), uids(1, 2, 4)) && slices.Equal(b.Hub.ChannelUserIds("room"), uids(1, 2, 4))
	})
	c1.AwaitMembers(rs[0], "room", uids(1, 2, 4))
	c2.AwaitMembers(rs[1], "room", uids(1, 2, 4))
	c4.AwaitMembers(r4, "room", uids(1, 2, 4))
}

// TestPresenceShutdown: Shutdown logs everyone out, and the
// PresenceHandler has heard of every leave when it returns.
func TestPresenceShutdown(t *testing.T) {
	app := newPresenceApp()
	s := start(t, chart.Config{PresenceChannels: rooms, PresenceWindow: time.Hour, Handler: app}, app)
	for uid := uint64(1); uid <= 3; uid++ {
		s.Login(t, app.Recorder, uid)
		s.Hub.JoinChannelIds(uid, "room")
	}
	ctx, cancel := context.WithTimeout(context.Background(), charttest.Wait)
	defer cancel()
	if err := s.Hub.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	// An hour's window: nothing went out before Shutdown, and the joins
	// and leaves of the same window cancel out.
	app.noEvent(t)

	app2 := newPresenceApp()
	s2 := start(t, chart.Config{PresenceChannels: rooms, PresenceWindow: 10 * time.Millisecond, Handler: app2}, app2)
	for uid := uint64(1); uid <= 3; uid++ {
		s2.Login(t, app2.Recorder, uid)
		s2.Hub.JoinChannelIds(uid, "room")
	}
	for joined := 0; joined < 3; {
		joined += len(charttest.Recv(t, app2.events, "PresenceServer").joined)
	}
	if err := s2.Hub.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	var left []uint64
	for done := false; !done; {
		select {
		case e := <-app2.events:
			left = append(left, e.left...)
		default:
			done = true
		}
	}
	if slices.Sort(left); !slices.Equal(left, uids(1, 2, 3)) {
		t.Fatalf("PresenceServer heard of leaves %v by the end of Shutdown", left)
	}
}

package charttest

import (
	"errors"
	"fmt"
	"net/url"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wuyan94zl/chart"
)

// Suite is the behaviour every Broker must show: the same scenarios as on
// one node, with users spread over two and three hubs on separate HTTP
// servers that share one broker backend, plus node failure and, when
// Outage is set, a backend outage.
type Suite struct {
	// NewCluster is called once per scenario and returns a function that
	// makes a new node (a Broker) of a fresh, empty cluster. Nodes should
	// use a short TTL (about a second) so that dead nodes expire quickly.
	NewCluster func(t *testing.T) (newNode func() chart.Broker)
	// Outage, when set, stops the broker backend and returns a function
	// that brings it back (empty, as a restarted server without
	// persistence).
	Outage func(t *testing.T) (restore func())
}

// Run runs every scenario as a subtest.
func (s Suite) Run(t *testing.T) {
	for _, n := range []int{2, 3} {
		t.Run(strconv.Itoa(n)+"nodes", func(t *testing.T) {
			t.Run("Channel", func(t *testing.T) { s.channel(t, n) })
			t.Run("Direct", func(t *testing.T) { s.direct(t, n) })
			t.Run("RemoteJoin", func(t *testing.T) { s.remoteJoin(t, n) })
			t.Run("LoginOnce", func(t *testing.T) { s.loginOnce(t, n) })
			t.Run("SecondNodeLoadsChannels", func(t *testing.T) { s.secondNode(t, n) })
			t.Run("BroadcastAndDisconnect", func(t *testing.T) { s.control(t, n) })
		})
	}
	t.Run("KillNode", s.killNode)
	t.Run("RecoveryOnAnotherNode", s.recovery)
	t.Run("RecoveryAfterNodeKill", s.recoveryAfterKill)
	t.Run("SendOnceAcrossNodes", s.sendOnce)
	for _, cut := range []string{"reset", "blackhole", "kill"} {
		t.Run("Tunnel/"+cut, func(t *testing.T) { s.tunnel(t, cut) })
	}
	t.Run("ReapedMark", s.reapedMark)
	t.Run("AppendBatch", s.appendBatch)
	t.Run("AckBatch", s.ackBatch)
	t.Run("IsOnlineBatch", s.isOnlineBatch)
	t.Run("RoomsUnderLoad", s.roomsUnderLoad)
	t.Run("Presence", s.presence)
	if s.Outage != nil {
		t.Run("Outage", s.outage)
		t.Run("NothingLostAfterOutage", s.resume)
	}
}

// Cluster is a set of nodes sharing one broker, with one Recorder.
type Cluster struct {
	Nodes []*Server
	Rec   *Recorder
}

// StartCluster starts n nodes made by newNode, all with the same Recorder
// as Handler.
func StartCluster(t *testing.T, n int, newNode func() chart.Broker) *Cluster {
	t.Helper()
	c := &Cluster{Rec: NewRecorder()}
	for i := 0; i < n; i++ {
		c.Nodes = append(c.Nodes, Start(t, chart.Config{Broker: newNode(), RateLimit: -1, Handler: c.Rec}, c.Rec))
	}
	return c
}

func (s Suite) start(t *testing.T, n int) *Cluster {
	t.Helper()
	return StartCluster(t, n, s.NewCluster(t))
}

// AwaitRoute publishes probes to channelId from pub until every client has
// received one, then a marker, and discards the clients' frames up to the
// marker, whatever they are: afterwards messages published on pub reach
// them all. It is for changes the cluster makes asynchronously (a join made
// on another node, resubscription after an outage).
func AwaitRoute(t testing.TB, pub *Server, channelId string, clients ...*Client) {
	t.Helper()
	got := make([]bool, len(clients))
	deadline := time.Now().Add(Wait)
	for i := 0; ; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("no route to channel %q from %s", channelId, pub.URL)
		}
		pub.Hub.Publish(channelId, chart.Message{Content: "probe"})
		all := true
		for k, c := range clients {
			for !got[k] {
				f, ok := c.next(20 * time.Millisecond)
				if !ok {
					break
				}
				got[k] = f.Content == "probe"
			}
			all = all && got[k]
		}
		if all {
			break
		}
	}
	marker := fmt.Sprintf("route-%p", got)
	pub.Hub.Publish(channelId, chart.Message{Content: marker})
	for _, c := range clients {
		for {
			f := c.Next()
			if f.Content == marker {
				break
			}
		}
	}
}

func wantUids(t testing.TB, what string, got []uint64, want ...uint64) {
	t.Helper()
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s = %v, want %v", what, got, want)
	}
}

// channel: users on every node in one channel; per-sender order.
func (s Suite) channel(t *testing.T, n int) {
	c := s.start(t, n)
	var clients []*Client
	var uids []uint64
	for i, node := range c.Nodes {
		uid := uint64(i + 1)
		clients = append(clients, node.Login(t, c.Rec, uid))
		uids = append(uids, uid)
		if err := node.Hub.JoinChannelIds(uid, "room"); err != nil {
			t.Fatal(err)
		}
	}
	const count = 50
	for i := 0; i < count; i++ {
		clients[0].SendTo("room", "m"+strconv.Itoa(i))
	}
	clients[1].SendTo("room", "from 2")
	for _, cl := range clients {
		// Each sender's messages in order; the two senders interleave.
		next, from2 := 0, false
		for next < count || !from2 {
			m := cl.NextMsg()
			switch {
			case m.Content == "from 2" && m.UserId == 2 && !from2:
				from2 = true
			case m.Content == "m"+strconv.Itoa(next) && m.UserId == 1 && m.ChannelId == "room":
				next++
			default:
				t.Fatalf("uid %d: got %+v after m%d", cl.Uid, m, next)
			}
		}
	}
	// The API on a node where the sender has no connection.
	res := c.Nodes[0].Hub.SendMessageToChannelIds(2, "api", "room", "other")
	if !res["room"] || res["other"] {
		t.Fatalf("SendMessageToChannelIds = %v", res)
	}
	for _, cl := range clients {
		if m := cl.WantContent("api"); m.UserId != 2 {
			t.Fatalf("got %+v", m)
		}
	}
	for i, node := range c.Nodes {
		wantUids(t, fmt.Sprintf("node %d OnlineUserIds", i), node.Hub.OnlineUserIds(), uids...)
		wantUids(t, fmt.Sprintf("node %d ChannelUserIds", i), node.Hub.ChannelUserIds("room"), uids...)
		if got := node.Hub.UserChannelIds(uint64(n)); !reflect.DeepEqual(got, []string{"room"}) {
			t.Fatalf("node %d UserChannelIds(%d) = %v", i, n, got)
		}
		if !node.Hub.IsOnline(uint64(n)) || node.Hub.IsOnline(999) {
			t.Fatalf("node %d IsOnline wrong", i)
		}
	}
}

// direct: direct messages between nodes reach every device of both users.
func (s Suite) direct(t *testing.T, n int) {
	c := s.start(t, n)
	a1 := c.Nodes[0].Login(t, c.Rec, 1)
	b := c.Nodes[1].Login(t, c.Rec, 2)
	a2 := c.Nodes[n-1].Dial(t, 1) // a second device, on another node when n > 2
	// a2's node loads uid 1's state asynchronously: wait until it is
	// subscribed to uid 1, which a direct message from another node shows.
	Eventually(t, "second device reachable", func() bool {
		c.Nodes[1].Hub.SendMessageToUid(2, 1, "ping")
		f, ok := a2.next(50 * time.Millisecond)
		return ok && f.Content == "ping"
	})
	for _, cl := range []*Client{a1, a2, b} {
		for {
			if f, ok := cl.next(100 * time.Millisecond); !ok || f.Content != "ping" {
				if ok {
					t.Fatalf("unexpected %+v", f)
				}
				break
			}
		}
	}
	a1.SendToUser(2, "hi")
	for _, cl := range []*Client{b, a1, a2} {
		if m := cl.WantContent("hi"); m.UserId != 1 || m.ToUserId != 2 {
			t.Fatalf("uid %d got %+v", cl.Uid, m)
		}
	}
	if err := c.Nodes[n-1].Hub.SendMessageToUid(2, 1, "back"); err != nil {
		t.Fatal(err)
	}
	for _, cl := range []*Client{a1, a2, b} {
		if m := cl.WantContent("back"); m.UserId != 2 || m.ToUserId != 1 {
			t.Fatalf("uid %d got %+v", cl.Uid, m)
		}
	}
	// To a uid that is offline everywhere: kept in its inbox; the sender
	// gets its own copy, as for anyone.
	b.SendToUser(999, "nobody")
	if m := b.NextMsg(); m.Content != "nobody" || m.ToUserId != 999 {
		t.Fatalf("got %+v, want the sender's copy", m)
	}
	if err := c.Nodes[0].Hub.SendMessageToUid(1, 999, "x"); err != nil {
		t.Fatalf("SendMessageToUid to offline: %v", err)
	}
}

// remoteJoin: JoinChannelIds and UnJoinChannelIds on a node where the uid
// has no connection.
func (s Suite) remoteJoin(t *testing.T, n int) {
	c := s.start(t, n)
	a := c.Nodes[0].Login(t, c.Rec, 1)
	b := c.Nodes[1].Login(t, c.Rec, 2)
	other := c.Nodes[n-1]
	for _, uid := range []uint64{1, 2} {
		if err := other.Hub.JoinChannelIds(uid, "r"); err != nil {
			t.Fatal(err)
		}
	}
	wantUids(t, "ChannelUserIds", c.Nodes[0].Hub.ChannelUserIds("r"), 1, 2)
	AwaitRoute(t, other, "r", a, b)
	AwaitRoute(t, c.Nodes[0], "r", a, b)
	AwaitRoute(t, c.Nodes[1], "r", a, b)
	a.SendTo("r", "hello")
	b.WantContent("hello")
	a.WantContent("hello")

	if err := c.Nodes[1].Hub.UnJoinChannelIds(1, "r"); err != nil {
		t.Fatal(err)
	}
	wantUids(t, "ChannelUserIds after leave", c.Nodes[1].Hub.ChannelUserIds("r"), 2)
	Eventually(t, "uid 1 left r on its node", func() bool { return len(c.Nodes[0].Hub.UserChannelIds(1)) == 0 })
	b.SendTo("r", "after")
	b.WantContent("after")
	b.SendToUser(1, "marker")
	a.WantContent("marker") // not "after"
	b.WantContent("marker")

	for _, node := range c.Nodes {
		if err := node.Hub.JoinChannelIds(999, "r"); !errors.Is(err, chart.ErrUserOffline) {
			t.Fatalf("JoinChannelIds(999) = %v", err)
		}
		if err := node.Hub.UnJoinChannelIds(999, "r"); !errors.Is(err, chart.ErrUserOffline) {
			t.Fatalf("UnJoinChannelIds(999) = %v", err)
		}
	}
}

// control: Broadcast reaches every connection on every node; Disconnect
// on a node without the uid's connections closes them all, on every node,
// with 4001, and LogoutServer runs once.
func (s Suite) control(t *testing.T, n int) {
	c := s.start(t, n)
	a1 := c.Nodes[0].Login(t, c.Rec, 1)
	b := c.Nodes[1].Login(t, c.Rec, 2)
	a2 := c.Nodes[n-1].Dial(t, 1)
	Eventually(t, "second device reachable", func() bool {
		c.Nodes[1].Hub.SendMessageToUid(2, 1, "ping")
		f, ok := a2.next(50 * time.Millisecond)
		return ok && f.Content == "ping"
	})
	if err := c.Nodes[1].Hub.Broadcast(chart.Message{ChannelId: "notice", Content: "to all"}); err != nil {
		t.Fatal(err)
	}
	for _, cl := range []*Client{a1, a2, b} {
		for {
			m := cl.NextMsg()
			if m.Content == "ping" {
				continue // the probes above
			}
			if m.Content != "to all" || m.UserId != 0 || m.ChannelId != "notice" {
				t.Fatalf("uid %d got %+v, want the broadcast", cl.Uid, m)
			}
			break
		}
	}
	if err := c.Nodes[1].Hub.Disconnect(1, "banned"); err != nil {
		t.Fatal(err)
	}
	for _, cl := range []*Client{a1, a2} {
		if code, text := cl.CloseReason(); code != chart.CloseDisconnected || text != "banned" {
			t.Fatalf("uid 1 closed with %d %q", code, text)
		}
	}
	if got := Recv(t, c.Rec.Logouts, "logout"); got != 1 {
		t.Fatalf("logout of %d, want 1", got)
	}
	b.Close()
	if got := Recv(t, c.Rec.Logouts, "logout"); got != 2 {
		t.Fatalf("logout of %d, want 2 (a second logout of 1?)", got)
	}
	if err := c.Nodes[0].Hub.Disconnect(1, "again"); !errors.Is(err, chart.ErrUserOffline) {
		t.Fatalf("Disconnect of an offline uid = %v", err)
	}
}

// loginOnce: a uid moving from one node to another is logged in once and
// out once.
func (s Suite) loginOnce(t *testing.T, n int) {
	c := s.start(t, n)
	phone := c.Nodes[0].Login(t, c.Rec, 7)
	laptop := c.Nodes[n-1].Dial(t, 7)
	// The laptop's node registers uid 7 asynchronously; once the cluster
	// routes to it, the phone may go.
	if err := c.Nodes[n-1].Hub.JoinChannelIds(7, "x"); err != nil {
		t.Fatal(err)
	}
	AwaitRoute(t, c.Nodes[0], "x", phone, laptop)
	phone.Close()
	if !c.Nodes[0].Hub.IsOnline(7) {
		t.Fatal("uid 7 offline while its laptop is connected")
	}
	laptop.Close()
	Eventually(t, "uid 7 offline", func() bool { return !c.Nodes[0].Hub.IsOnline(7) })
	// Sentinel events: a login and logout of uid 8 must come next.
	c.Nodes[1].Login(t, c.Rec, 8).Close()
	if got := Recv(t, c.Rec.Logouts, "logout"); got != 7 {
		t.Fatalf("logout of %d, want 7", got)
	}
	if got := Recv(t, c.Rec.Logouts, "logout"); got != 8 {
		t.Fatalf("logout of %d, want 8 (a second logout of 7?)", got)
	}
	if len(c.Rec.Logins) != 0 {
		t.Fatalf("extra login of %d", <-c.Rec.Logins)
	}

	// Connections on every node at once: still one login, one logout.
	var conns []*Client
	for _, node := range c.Nodes {
		conns = append(conns, node.Dial(t, 12))
	}
	if got := Recv(t, c.Rec.Logins, "login"); got != 12 {
		t.Fatalf("login of %d, want 12", got)
	}
	// Every node has registered uid 12 once its connection gets a channel
	// message (otherwise closing now may rightly log it out and in again).
	if err := c.Nodes[0].Hub.JoinChannelIds(12, "z"); err != nil {
		t.Fatal(err)
	}
	AwaitRoute(t, c.Nodes[0], "z", conns...)
	for _, cl := range conns {
		cl.Close()
	}
	Eventually(t, "uid 12 offline", func() bool { return !c.Nodes[0].Hub.IsOnline(12) })
	c.Nodes[0].Login(t, c.Rec, 13).Close() // a second login of 12 would come first
	if got := Recv(t, c.Rec.Logouts, "logout"); got != 12 {
		t.Fatalf("logout of %d, want 12", got)
	}
	if got := Recv(t, c.Rec.Logouts, "logout"); got != 13 {
		t.Fatalf("logout of %d, want 13 (a second logout of 12?)", got)
	}
}

// secondNode: a connection on a second node gets the channels the uid
// joined on its first.
func (s Suite) secondNode(t *testing.T, n int) {
	c := s.start(t, n)
	first := c.Nodes[0].Login(t, c.Rec, 3)
	if err := c.Nodes[0].Hub.JoinChannelIds(3, "news"); err != nil {
		t.Fatal(err)
	}
	second := c.Nodes[1].Dial(t, 3)
	Eventually(t, "channels loaded", func() bool {
		return reflect.DeepEqual(c.Nodes[1].Hub.UserChannelIds(3), []string{"news"})
	})
	AwaitRoute(t, c.Nodes[n-1], "news", first, second)
	c.Nodes[n-1].Hub.Publish("news", chart.Message{Content: "extra"})
	first.WantContent("extra")
	second.WantContent("extra")
}

// startStreams starts two nodes of a fresh cluster, or skips the test when
// the broker keeps no streams (chart.Streams).
// keepsStreams reports whether the suite's broker keeps streams.
func (s Suite) keepsStreams(t *testing.T) bool {
	t.Helper()
	probe := s.NewCluster(t)()
	_, streams := probe.(chart.Streams)
	probe.Close()
	return streams
}

func (s Suite) startStreams(t *testing.T) *Cluster {
	t.Helper()
	newNode := s.NewCluster(t)
	probe := newNode()
	_, streams := probe.(chart.Streams)
	probe.Close()
	if !streams {
		t.Skip("the broker keeps no streams (chart.Streams)")
	}
	return StartCluster(t, 2, newNode)
}

// recovery: with a broker that keeps streams (chart.Streams), a chart.v1
// client that reconnects to another node recovers the channel and direct
// messages it missed there, once and in order. Skipped for a broker
// without streams.
func (s Suite) recovery(t *testing.T) {
	c := s.startStreams(t)
	a, b := c.Nodes[0], c.Nodes[1]
	keep := a.Login(t, c.Rec, 1) // keeps uid 1 online, in "room", throughout
	if err := a.Hub.JoinChannelIds(1, "room"); err != nil {
		t.Fatal(err)
	}
	AwaitRoute(t, b, "room", keep)
	v1 := NewV1Client(t, a.URL+"?id=1")
	v1.Connect()
	b.Hub.Publish("room", chart.Message{Content: "before"})
	v1.WaitFor("before")                      // Publish returns before the broker appended: no order across streams
	b.Hub.SendMessageToUid(9, 1, "dm before") // so that v1 has an inbox position
	v1.WaitFor("dm before")
	v1.Drop()
	b.Hub.SendMessageToUid(9, 1, "dm while away")
	for i := 0; i < 5; i++ {
		b.Hub.Publish("room", chart.Message{Content: "missed " + strconv.Itoa(i)})
	}
	v1.URL = b.URL + "?id=1"
	v1.Connect()
	v1.WaitFor("missed 4")
	v1.WaitFor("dm while away")
	var got []string
	for _, m := range v1.Messages() {
		got = append(got, m.Content)
	}
	if want := []string{"before", "dm before", "dm while away", "missed 0", "missed 1", "missed 2", "missed 3", "missed 4"}; !slices.Equal(got, want) {
		t.Fatalf("after reconnecting to another node: %q, want %q", got, want)
	}
	room, _ := v1.Welcome()["channels"].(map[string]any)["room"].(map[string]any)
	if room["recovered"] != true {
		t.Fatalf("welcome %v: room not recovered", v1.Welcome())
	}
}

// recoveryAfterKill: a chart.v1 client's node dies; it reconnects to a
// survivor and recovers what was published meanwhile, once and in order.
// Skipped for a broker without streams.
func (s Suite) recoveryAfterKill(t *testing.T) {
	c := s.startStreams(t)
	a, b := c.Nodes[0], c.Nodes[1]
	c.Rec.OnLogin = func(uid uint64) { a.Hub.JoinChannelIds(uid, "room") }
	v1 := NewV1Client(t, a.URL+"?id=1")
	v1.Connect()
	Eventually(t, "uid 1 in room everywhere", func() bool { return len(b.Hub.ChannelUserIds("room")) == 1 })
	b.Hub.Publish("room", chart.Message{Content: "before"})
	v1.WaitFor("before")
	a.Kill()
	<-v1.Gone()
	for i := 0; i < 5; i++ {
		b.Hub.Publish("room", chart.Message{Content: "missed " + strconv.Itoa(i)})
	}
	// The survivor's user, logged in again there, joins room there.
	c.Rec.OnLogin = func(uid uint64) { b.Hub.JoinChannelIds(uid, "room") }
	v1.URL = b.URL + "?id=1"
	v1.Connect()
	v1.WaitFor("missed 4")
	var got []string
	for _, m := range v1.Messages() {
		got = append(got, m.Content)
	}
	if want := []string{"before", "missed 0", "missed 1", "missed 2", "missed 3", "missed 4"}; !slices.Equal(got, want) {
		t.Fatalf("after its node died: %q, want %q", got, want)
	}
}

// sendOnce: a chart.v1 client's message with an id, retried after a
// reconnect to another node, is acknowledged again with the same position
// and delivered once. Skipped for a broker without streams.
func (s Suite) sendOnce(t *testing.T) {
	c := s.startStreams(t)
	a, b := c.Nodes[0], c.Nodes[1]
	member := a.Login(t, c.Rec, 2)
	if err := a.Hub.JoinChannelIds(2, "room"); err != nil {
		t.Fatal(err)
	}
	c.Rec.OnLogin = func(uid uint64) {
		if uid == 1 {
			a.Hub.JoinChannelIds(1, "room")
		}
	}
	v1 := NewV1Client(t, a.URL+"?id=1")
	v1.Connect()
	Eventually(t, "uid 1 in room", func() bool { return len(b.Hub.ChannelUserIds("room")) == 2 })
	const frame = `{"id":"once-1","channel_id":"room","content":"exactly once"}`
	first := v1.WaitAck("once-1", v1.Send(frame))
	member.WantContent("exactly once")
	v1.Drop()
	v1.URL = b.URL + "?id=1"
	v1.Connect()
	again := v1.WaitAck("once-1", v1.Send(frame)) // the retry, on the other node
	if again["offset"] != first["offset"] || again["epoch"] != first["epoch"] {
		t.Fatalf("retry acknowledged with %v, first try with %v", again, first)
	}
	a.Hub.Publish("room", chart.Message{Content: "marker"})
	member.WantContent("marker") // not a second "exactly once"
}

// killNode: a node dies; its users expire from presence and get their
// LogoutServer once, from a survivor; a user also connected elsewhere
// stays online.
func (s Suite) killNode(t *testing.T) {
	c := s.start(t, 3)
	c.Nodes[1].Login(t, c.Rec, 4)
	c.Nodes[2].Login(t, c.Rec, 5)
	c.Nodes[2].Login(t, c.Rec, 6)
	six := c.Nodes[0].Dial(t, 6)
	if err := c.Nodes[0].Hub.JoinChannelIds(6, "keep"); err != nil {
		t.Fatal(err)
	}
	Eventually(t, "uid 6 registered on node 0", func() bool {
		return reflect.DeepEqual(c.Nodes[2].Hub.UserChannelIds(6), []string{"keep"})
	})
	c.Nodes[2].Kill()
	Eventually(t, "uid 5 expired", func() bool { return !c.Nodes[0].Hub.IsOnline(5) })
	if got := Recv(t, c.Rec.Logouts, "logout of 5"); got != 5 {
		t.Fatalf("logout of %d, want 5", got)
	}
	wantUids(t, "OnlineUserIds", c.Nodes[1].Hub.OnlineUserIds(), 4, 6)
	wantUids(t, "ChannelUserIds", c.Nodes[1].Hub.ChannelUserIds("keep"), 6)
	c.Nodes[0].Hub.Publish("keep", chart.Message{Content: "still here"})
	six.WantContent("still here")
	// Exactly once: the next logout is the sentinel's.
	c.Nodes[1].Login(t, c.Rec, 9).Close()
	if got := Recv(t, c.Rec.Logouts, "logout"); got != 9 {
		t.Fatalf("logout of %d, want 9", got)
	}
}

// outage: the backend goes away mid-conversation. Local chat goes on, the
// failure is reported, and once the backend is back presence is
// re-published, the other node gets what was sent during the outage
// (with streams: late, once each), and no message published after
// recovery is lost.
func (s Suite) outage(t *testing.T) {
	c := s.start(t, 2)
	a := c.Nodes[0].Login(t, c.Rec, 1)
	a2 := c.Nodes[0].Login(t, c.Rec, 3)
	b := c.Nodes[1].Login(t, c.Rec, 2)
	for i, uid := range []uint64{1, 3, 2} {
		if err := c.Nodes[i/2].Hub.JoinChannelIds(uid, "room"); err != nil {
			t.Fatal(err)
		}
	}
	a.SendTo("room", "before")
	for _, cl := range []*Client{a, a2, b} {
		cl.WantContent("before")
	}

	restore := s.Outage(t)
	a.SendTo("room", "local")
	a.WantContent("local")
	a2.WantContent("local")
	c.Rec.WantErr(t, chart.ErrBroker)

	// No goroutine grows while the broker is away: let a few heartbeats
	// fail, then chat locally.
	g0, e0 := runtime.NumGoroutine(), c.Nodes[0].Hub.Stats().BrokerErrors
	Eventually(t, "heartbeats failing", func() bool { return c.Nodes[0].Hub.Stats().BrokerErrors >= e0+3 })
	for i := 0; i < 100; i++ {
		a.SendTo("room", "local"+strconv.Itoa(i))
	}
	for i := 0; i < 100; i++ {
		a.WantContent("local" + strconv.Itoa(i))
		a2.WantContent("local" + strconv.Itoa(i))
	}
	if g := runtime.NumGoroutine(); g > g0+10 {
		t.Fatalf("goroutines grew from %d to %d during the outage", g0, g)
	}
	restore()

	Eventually(t, "presence re-published", func() bool {
		return slices.Equal(c.Nodes[1].Hub.OnlineUserIds(), []uint64{1, 2, 3}) &&
			slices.Equal(c.Nodes[0].Hub.ChannelUserIds("room"), []uint64{1, 2, 3})
	})
	if s.keepsStreams(t) {
		// What node A could not append during the outage it appends once
		// the broker is back: b gets the 101 "local" messages then, late,
		// each once. (Without streams, b never gets them.)
		want := []string{"local"}
		for i := 0; i < 100; i++ {
			want = append(want, "local"+strconv.Itoa(i))
		}
		var got []string
		for len(got) < len(want) {
			got = append(got, b.NextMsg().Content)
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("uid 2 got %q, want the outage's 101 messages once each", got)
		}
	}
	// b may still see "local" without streams (published before the outage
	// took effect): AwaitRoute drops it.
	AwaitRoute(t, c.Nodes[0], "room", a, a2, b)
	AwaitRoute(t, c.Nodes[1], "room", a, a2, b)
	for i := 0; i < 20; i++ {
		a.SendTo("room", "a"+strconv.Itoa(i))
		b.SendTo("room", "b"+strconv.Itoa(i))
	}
	for _, cl := range []*Client{a, a2, b} {
		na, nb := 0, 0
		for na+nb < 40 {
			m := cl.NextMsg()
			switch m.Content {
			case "a" + strconv.Itoa(na):
				na++
			case "b" + strconv.Itoa(nb):
				nb++
			default:
				t.Fatalf("uid %d: got %q after a%d/b%d", cl.Uid, m.Content, na, nb)
			}
		}
	}
	if c.Nodes[0].Hub.Stats().BrokerErrors == 0 {
		t.Fatal("Stats.BrokerErrors = 0")
	}
}

// tunnel: a chart.v1 client on node A, through a TCP proxy, loses its
// connection while three senders on both nodes write 67 channel messages
// each and one of them 20 direct messages to it: the proxy resets the
// connection, or blackholes it (bytes dropped, no FIN or RST, new
// connections refused) for a while, or node A dies. The client reconnects
// (through the proxy, or to node B) with a slow hello, so that messages
// arrive during the recovery too, and ends with every message exactly
// once, each sender's in order, and no frame twice. Skipped for a broker
// without streams.
func (s Suite) tunnel(t *testing.T, cut string) {
	c := s.startStreams(t)
	a, b := c.Nodes[0], c.Nodes[1]
	c.Rec.OnLogin = func(uid uint64) { b.Hub.JoinChannelIds(uid, "room") }
	u, err := url.Parse(a.URL)
	if err != nil {
		t.Fatal(err)
	}
	p := NewProxy(t, u.Host)
	v1 := NewV1Client(t, "ws://"+p.Addr()+u.Path+"?id=1")
	v1.HelloDelay = 30 * time.Millisecond
	v1.Connect()
	c.Rec.WantLogin(t, 1)
	nodes := []*Server{a, b, b}
	if cut == "kill" {
		nodes[0] = b // senders on the node that survives
	}
	var senders []*Client
	for i, n := range nodes {
		senders = append(senders, n.Login(t, c.Rec, uint64(i+2)))
	}
	Eventually(t, "everyone in room on both nodes", func() bool {
		return len(a.Hub.ChannelUserIds("room")) == 4 && len(b.Hub.ChannelUserIds("room")) == 4
	})
	AwaitRoute(t, a, "room", senders...)
	AwaitRoute(t, b, "room", senders...)
	senders[0].SendTo("room", "start")
	v1.WaitFor("start")

	done := make(chan struct{})
	var wg sync.WaitGroup
	for i, sn := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < 67; k++ {
				sn.SendTo("room", fmt.Sprintf("s%d-%d", i, k))
				if i == 2 && k < 20 {
					sn.SendToUser(1, fmt.Sprintf("dm-%d", k))
				}
				time.Sleep(5 * time.Millisecond) // a steady pace across the cut
			}
		}()
	}
	go func() { wg.Wait(); close(done) }()
	time.Sleep(30 * time.Millisecond) // some messages before the cut
	gone := v1.Gone()
	switch cut {
	case "reset":
		p.Reset()
		<-gone
		time.Sleep(50 * time.Millisecond) // the tunnel: messages go on meanwhile
	case "blackhole":
		p.Blackhole()
		time.Sleep(100 * time.Millisecond) // messages go into the hole
		p.Restore()
		<-gone
	case "kill":
		a.Kill()
		<-gone
		time.Sleep(50 * time.Millisecond)
		v1.URL = b.URL + "?id=1"
	}
	v1.Drop()
	v1.Connect() // with a hello, while the senders go on
	<-done
	// Each sender's last message, not a marker from one of them: the
	// node reads the senders' connections independently, so a marker
	// may overtake another sender's last messages.
	for i := range senders {
		v1.WaitFor(fmt.Sprintf("s%d-66", i))
	}
	v1.WaitFor("dm-19")
	checkTunnel(t, v1, cut)
}

// checkTunnel: every sender's 67 messages and the 20 direct messages
// exactly once and in order, the room recovered, no frame twice.
func checkTunnel(t *testing.T, v1 *V1Client, cut string) {
	t.Helper()
	next := map[string]int{}
	for _, m := range v1.Messages() {
		var i, k int
		switch {
		case m.ChannelId == "room" && strings.HasPrefix(m.Content, "s") && m.Content != "start":
			fmt.Sscanf(m.Content, "s%d-%d", &i, &k)
			key := fmt.Sprint("s", i)
			if k != next[key] {
				t.Fatalf("sender %d: got message %d after %d (%s)", i, k, next[key], cut)
			}
			next[key]++
		case m.ChannelId == "" && strings.HasPrefix(m.Content, "dm-"):
			fmt.Sscanf(m.Content, "dm-%d", &k)
			if k != next["dm"] {
				t.Fatalf("direct message %d after %d (%s)", k, next["dm"], cut)
			}
			next["dm"]++
		}
	}
	for i := 0; i < 3; i++ {
		if n := next[fmt.Sprint("s", i)]; n != 67 {
			t.Fatalf("sender %d: %d of 67 messages (%s)", i, n, cut)
		}
	}
	if next["dm"] != 20 {
		t.Fatalf("%d of 20 direct messages (%s)", next["dm"], cut)
	}
	seen := map[string]bool{}
	welcomes := 0
	for _, f := range v1.Frames() {
		if w, ok := f["welcome"].(map[string]any); ok {
			welcomes++
			if welcomes == 2 {
				room, _ := w["channels"].(map[string]any)["room"].(map[string]any)
				if room["recovered"] != true {
					t.Fatalf("second welcome %v: room not recovered (%s)", w, cut)
				}
			}
			continue
		}
		if off, _ := f["offset"].(float64); off != 0 {
			key := fmt.Sprint(f["channel_id"], "/", f["epoch"], "/", off)
			if seen[key] {
				t.Fatalf("frame %v came twice (%s)", f, cut)
			}
			seen[key] = true
		}
	}
	if welcomes != 2 {
		t.Fatalf("%d welcomes, want 2 (%s)", welcomes, cut)
	}
}

// resume: once the broker is back after an outage, messages published on
// one node (from the moment its own calls succeed again) reach the members
// on the other, all of them and in order, although that node may
// resubscribe later: it reads what it missed from the streams
// (Node.Resumed), or fills the hole when the next message comes. Skipped
// for a broker without streams.
func (s Suite) resume(t *testing.T) {
	c := s.startStreams(t)
	a, b := c.Nodes[0], c.Nodes[1]
	ca := a.Login(t, c.Rec, 1)
	if err := a.Hub.JoinChannelIds(1, "room"); err != nil {
		t.Fatal(err)
	}
	AwaitRoute(t, b, "room", ca)
	b.Hub.Publish("room", chart.Message{Content: "before"})
	ca.WantContent("before")
	restore := s.Outage(t)
	Eventually(t, "the outage seen", func() bool { return a.Hub.Stats().BrokerErrors > 0 && b.Hub.Stats().BrokerErrors > 0 })
	restore()
	// Until b's appends reach the broker again, its messages are local
	// only (README: Limits); probe for that.
	Eventually(t, "node B appends again", func() bool {
		b.Hub.Publish("room", chart.Message{Content: "probe"})
		msgs, _, _ := b.Hub.History("room", 0, 1)
		return len(msgs) == 1 && msgs[0].Content == "probe"
	})
	for i := 0; i < 100; i++ {
		b.Hub.Publish("room", chart.Message{Content: "after " + strconv.Itoa(i)})
		time.Sleep(2 * time.Millisecond) // spread over the time node A may take to resubscribe
	}
	m := ca.NextMsg()
	for m.Content == "probe" {
		m = ca.NextMsg()
	}
	for i := 0; i < 100; i++ {
		if want := "after " + strconv.Itoa(i); m.Content != want {
			t.Fatalf("uid 1 got %q, want %q", m.Content, want)
		}
		if i < 99 {
			m = ca.NextMsg()
		}
	}
}

// reapedMark: on the broker's Presence (skipped without one), a node
// reaped by another learns it on its next heartbeat (lost and reaped),
// once, and its Restore finds the uid offline everywhere (first), so that
// the hub logs it in again; with Outage set, a node that merely lost its
// record with the backend is not told reaped.
func (s Suite) reapedMark(t *testing.T) {
	newNode := s.NewCluster(t)
	ba, bb := newNode(), newNode()
	defer ba.Close()
	defer bb.Close()
	a, ok := ba.(chart.Presence)
	b, _ := bb.(chart.Presence)
	if !ok {
		t.Skip("the broker keeps no presence (chart.Presence)")
	}
	if _, _, _, err := b.Heartbeat(true); err != nil {
		t.Fatal(err)
	}
	if first, err := b.Connect(7); err != nil || !first {
		t.Fatalf("Connect = %v, %v", first, err)
	}
	var gone []uint64
	Eventually(t, "b reaped by a", func() bool {
		var err error
		gone, _, _, err = a.Heartbeat(true)
		return err == nil && len(gone) == 1
	})
	if gone[0] != 7 {
		t.Fatalf("gone %v, want [7]", gone)
	}
	_, lost, reaped, err := b.Heartbeat(true)
	if err != nil || !lost || !reaped {
		t.Fatalf("b's heartbeat after being reaped: lost %v reaped %v err %v", lost, reaped, err)
	}
	if first, err := b.Restore(7, nil); err != nil || !first {
		t.Fatalf("Restore = %v, %v; want first", first, err)
	}
	if _, lost, reaped, _ := b.Heartbeat(true); lost || reaped {
		t.Fatalf("the mark is told once: lost %v reaped %v", lost, reaped)
	}
	if s.Outage == nil {
		return
	}
	s.Outage(t)()
	Eventually(t, "a heartbeat after the outage", func() bool {
		_, lost, reaped, err := b.Heartbeat(true)
		if err == nil && reaped {
			t.Fatal("a backend that lost its data told b it was reaped")
		}
		return err == nil && lost
	})
}

// isOnlineBatch: a broker whose Presence answers in batches
// (chart.BatchPresence) answers each uid as IsOnline does, in the order
// asked, repeats included, uids of either node alike. Skipped for a broker
// without batches.
func (s Suite) isOnlineBatch(t *testing.T) {
	newNode := s.NewCluster(t)
	ba, bb := newNode(), newNode()
	defer ba.Close()
	defer bb.Close()
	a, ok := ba.(chart.BatchPresence)
	if !ok {
		t.Skip("the broker answers no batches (chart.BatchPresence)")
	}
	for _, c := range []struct {
		b   chart.Broker
		uid uint64
	}{{ba, 501}, {bb, 502}, {bb, 503}} {
		if _, err := c.b.(chart.Presence).Connect(c.uid); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := bb.(chart.Presence).Disconnect(503); err != nil {
		t.Fatal(err)
	}
	uids := []uint64{502, 504, 501, 503, 502}
	got, err := a.IsOnlineBatch(uids)
	want := []bool{true, false, true, false, true}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("IsOnlineBatch(%v) = %v, %v; want %v", uids, got, err, want)
	}
	if got, err := a.IsOnlineBatch(nil); err != nil || len(got) != 0 {
		t.Fatalf("IsOnlineBatch(nil) = %v, %v", got, err)
	}
}

// ackBatch: a broker whose Streams acknowledge in batches (chart.BatchAcks)
// records each acknowledgement as Ack does: only forward, only within the
// stream's epoch ("" for any) and offsets; a bad stream name fails alone
// and is reported; what one node acknowledged, another reads. Skipped for
// a broker without batches.
func (s Suite) ackBatch(t *testing.T) {
	newNode := s.NewCluster(t)
	ba, bb := newNode(), newNode()
	defer ba.Close()
	defer bb.Close()
	a, ok := ba.(chart.BatchAcks)
	b, _ := bb.(chart.Streams)
	if !ok {
		t.Skip("the broker acknowledges no batches (chart.BatchAcks)")
	}
	st := ba.(chart.Streams)
	var epoch string
	for i := 0; i < 3; i++ {
		_, e, err := st.Append("c:ack-x", []byte{'x', byte('0' + i)})
		if err != nil {
			t.Fatal(err)
		}
		epoch = e
		if _, _, err := st.Append("u:98", []byte{'u', byte('0' + i)}); err != nil {
			t.Fatal(err)
		}
	}
	err := a.AckBatch([]chart.StreamAck{
		{Stream: "c:ack-x", Uid: 1, Offset: 2},
		{Stream: "u:98", Uid: 98, Epoch: "", Offset: 3},
		{Stream: "bad", Uid: 1, Offset: 1},
		{Stream: "c:ack-x", Uid: 2, Epoch: "not-" + epoch, Offset: 3},
		{Stream: "c:ack-x", Uid: 3, Offset: 99},
		{Stream: "c:ack-x", Uid: 4, Epoch: epoch, Offset: 3},
	})
	if err == nil {
		t.Fatal("AckBatch with a bad stream name: no error")
	}
	if err := a.AckBatch([]chart.StreamAck{{Stream: "c:ack-x", Uid: 1, Offset: 1}}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		stream string
		uid    uint64
		want   uint64
	}{{"c:ack-x", 1, 2}, {"u:98", 98, 3}, {"c:ack-x", 2, 0}, {"c:ack-x", 3, 0}, {"c:ack-x", 4, 3}} {
		off, e, err := b.Acked(c.stream, c.uid)
		if err != nil || off != c.want || e == "" {
			t.Errorf("Acked(%s, %d) on the other node = %d, %q, %v; want %d", c.stream, c.uid, off, e, err, c.want)
		}
	}
}

// appendBatch: a broker whose Streams take batches (chart.BatchStreams)
// appends a batch's entries at consecutive offsets per stream in the order
// given, entries of several streams mixed; a bad stream name fails alone;
// two nodes appending batches to one stream at once get distinct,
// consecutive offsets; Read returns exactly what was appended, each entry
// timed (StreamEntry.Time) by when it was appended. Skipped for
// a broker without batches.
func (s Suite) appendBatch(t *testing.T) {
	begun := time.Now()
	newNode := s.NewCluster(t)
	ba, bb := newNode(), newNode()
	defer ba.Close()
	defer bb.Close()
	a, ok := ba.(chart.BatchStreams)
	b, _ := bb.(chart.BatchStreams)
	if !ok {
		t.Skip("the broker appends no batches (chart.BatchStreams)")
	}
	batch := []chart.StreamAppend{
		{Stream: "c:batch-x", Data: []byte("x1")},
		{Stream: "u:99", Data: []byte("u1")},
		{Stream: "c:batch-x", Data: []byte("x2")},
		{Stream: "bad", Data: []byte("no")},
		{Stream: "c:batch-x", Data: []byte("x3")},
	}
	a.AppendBatch(batch)
	for i, want := range []uint64{1, 1, 2, 0, 3} {
		e := batch[i]
		if (e.Err != nil) != (want == 0) || e.Offset != want {
			t.Fatalf("entry %d (%s %q): offset %d, err %v; want offset %d", i, e.Stream, e.Data, e.Offset, e.Err, want)
		}
	}
	if batch[0].Epoch == "" || batch[2].Epoch != batch[0].Epoch || batch[4].Epoch != batch[0].Epoch {
		t.Fatalf("epochs of one stream differ: %q %q %q", batch[0].Epoch, batch[2].Epoch, batch[4].Epoch)
	}

	// Two nodes, 4 batches of 10 each, concurrently, to one stream.
	const batches, per = 4, 10 // 80 entries: within every broker's default stream size
	var wg sync.WaitGroup
	errs := make(chan error, 2*batches)
	offs := make(chan map[uint64]string, 2)
	for n, st := range []chart.BatchStreams{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got := make(map[uint64]string)
			for k := 0; k < batches; k++ {
				bt := make([]chart.StreamAppend, per)
				for i := range bt {
					bt[i] = chart.StreamAppend{Stream: "c:batch-y", Data: []byte(fmt.Sprintf("n%d-%d", n, k*per+i))}
				}
				st.AppendBatch(bt)
				for i, e := range bt {
					if e.Err != nil {
						errs <- e.Err
						return
					}
					if i > 0 && e.Offset <= bt[i-1].Offset {
						errs <- fmt.Errorf("node %d batch %d: offset %d after %d", n, k, e.Offset, bt[i-1].Offset)
					}
					got[e.Offset] = string(e.Data)
				}
			}
			offs <- got
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	all := make(map[uint64]string)
	for i := 0; i < 2; i++ {
		for off, d := range <-offs {
			if prev, dup := all[off]; dup {
				t.Fatalf("offset %d given to %q and %q", off, prev, d)
			}
			all[off] = d
		}
	}
	entries, _, complete, last, err := a.Read("c:batch-y", 0, 0)
	if err != nil || !complete || last != 2*batches*per || len(entries) != 2*batches*per {
		t.Fatalf("Read: %d entries, complete %v, last %d, err %v; want %d, true", len(entries), complete, last, err, 2*batches*per)
	}
	for i, e := range entries {
		if e.Offset != uint64(i+1) || string(e.Data) != all[e.Offset] {
			t.Fatalf("entry %d: offset %d %q, want offset %d %q", i, e.Offset, e.Data, i+1, all[uint64(i+1)])
		}
		entryTimed(t, e, begun)
	}
	// The newest alone (a broker may read it another way).
	entries, _, _, _, err = a.Read("c:batch-y", last-1, 0)
	if err != nil || len(entries) != 1 || entries[0].Offset != last {
		t.Fatalf("Read after %d: %v, %v; want the entry at %d", last-1, entries, err, last)
	}
	entryTimed(t, entries[0], begun)
}

// entryTimed fails unless e was appended, by its Time, between begun and
// now (the backend runs on this machine: its clock is this one, to a
// millisecond).
func entryTimed(t *testing.T, e chart.StreamEntry, begun time.Time) {
	t.Helper()
	if at := e.Time; at.Before(begun.Add(-time.Millisecond)) || at.After(time.Now().Add(time.Millisecond)) {
		t.Fatalf("entry %d appended at %v, want between %v and now", e.Offset, at, begun)
	}
}

// roomsUnderLoad: 4 rooms of 10 users, 5 of each room on each of 2 nodes,
// every user sending 30 messages as fast as it can, all at once: every
// member receives every message of its room once, each sender's in order.
func (s Suite) roomsUnderLoad(t *testing.T) {
	c := s.start(t, 2)
	const rooms, size, per = 4, 10, 30
	clients := make([]*Client, rooms*size)
	room := func(i int) string { return "load" + strconv.Itoa(i/size) }
	for i := range clients {
		uid, node := uint64(i+1), c.Nodes[i%2]
		clients[i] = node.Login(t, c.Rec, uid)
		if err := node.Hub.JoinChannelIds(uid, room(i)); err != nil {
			t.Fatal(err)
		}
	}
	for r := 0; r < rooms; r++ {
		for _, node := range c.Nodes {
			AwaitRoute(t, node, room(r*size), clients[r*size:(r+1)*size]...)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(clients))
	for i, cl := range clients {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for k := 0; k < per; k++ {
				cl.SendTo(room(i), fmt.Sprintf("%d:%d", cl.Uid, k))
			}
		}()
		go func() {
			defer wg.Done()
			errs <- receiveRoom(cl, room(i), size*per)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("%v (node stats: %+v / %+v)", err, c.Nodes[0].Hub.Stats(), c.Nodes[1].Hub.Stats())
			return
		}
	}
}

// receiveRoom reads n messages "uid:k" of channel from cl and checks that
// each sender's come once and in order.
func receiveRoom(cl *Client, channel string, n int) error {
	next := make(map[uint64]int)
	for got := 0; got < n; got++ {
		f, ok := cl.next(Wait)
		if !ok {
			return fmt.Errorf("uid %d: %d of %d messages, then nothing for %v (next per sender: %v)", cl.Uid, got, n, Wait, next)
		}
		if f.Error != "" || f.ChannelId != channel {
			return fmt.Errorf("uid %d: unexpected frame %+v", cl.Uid, f)
		}
		m := f.Message
		var uid uint64
		var k int
		if _, err := fmt.Sscanf(m.Content, "%d:%d", &uid, &k); err != nil || uid != m.UserId {
			return fmt.Errorf("uid %d: unexpected message %+v", cl.Uid, m)
		}
		if k != next[uid] {
			return fmt.Errorf("uid %d: from uid %d got message %d, want %d", cl.Uid, uid, k, next[uid])
		}
		next[uid]++
	}
	return nil
}

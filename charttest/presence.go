package charttest

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wuyan94zl/chart"
)

// Roster keeps the member lists one connection learns from presence
// frames (chart.Config.PresenceChannels), as a client should: a "members"
// frame starts a channel's list (its pages follow while "more" is set), a
// "join" or "leave" frame changes it, and "end" (the connection's uid left
// the channel) ends it. A delta for a channel without a list is
// ignored (one can come just before the list). Take fails the test when a
// delta does not fit the list: a join of a uid already in it, a leave of
// one not in it, that is a delta lost or applied twice.
type Roster struct {
	Uid     uint64                         // the connection's uid
	Lists   map[string]map[uint64]struct{} // channel id: members
	filling map[string]bool                // a member list's pages are coming
	Frames  int                            // presence frames taken
	Bytes   int                            // their user ids, counted
}

// NewRoster returns an empty Roster for a connection of uid.
func NewRoster(uid uint64) *Roster {
	return &Roster{Uid: uid, Lists: make(map[string]map[uint64]struct{}), filling: make(map[string]bool)}
}

// Take applies f when it is a presence frame and reports whether it was.
func (r *Roster) Take(t testing.TB, f Frame) bool {
	t.Helper()
	if f.Presence == "" {
		return false
	}
	r.Frames++
	r.Bytes += len(f.UserIds)
	id := f.ChannelId
	list, ok := r.Lists[id]
	switch f.Presence {
	case "members":
		if !r.filling[id] || !ok {
			list = make(map[uint64]struct{})
			r.Lists[id] = list
		}
		for _, uid := range f.UserIds {
			list[uid] = struct{}{}
		}
		r.filling[id] = f.More
	case "join":
		if !ok {
			return true
		}
		for _, uid := range f.UserIds {
			if _, in := list[uid]; in {
				t.Fatalf("uid %d: channel %q: join of %d, already in %v", r.Uid, id, uid, r.Members(id))
			}
			list[uid] = struct{}{}
		}
	case "end": // this uid left: the list ends
		delete(r.Lists, id)
		delete(r.filling, id)
	case "leave":
		if !ok {
			return true
		}
		for _, uid := range f.UserIds {
			if _, in := list[uid]; !in {
				t.Fatalf("uid %d: channel %q: leave of %d, not in %v", r.Uid, id, uid, r.Members(id))
			}
			delete(list, uid)
		}
	default:
		t.Fatalf("uid %d: unknown presence frame %+v", r.Uid, f)
	}
	return true
}

// Members returns the list of channel id, sorted; nil when there is none.
func (r *Roster) Members(id string) []uint64 {
	list, ok := r.Lists[id]
	if !ok {
		return nil
	}
	ids := make([]uint64, 0, len(list))
	for uid := range list {
		ids = append(ids, uid)
	}
	slices.Sort(ids)
	return ids
}

// Has reports whether the connection has a list of channel id.
func (r *Roster) Has(id string) bool {
	_, ok := r.Lists[id]
	return ok
}

// AwaitMembers reads c's frames into r until its list of channel id is
// want (sorted), failing after Wait. Frames that are not presence frames
// are dropped.
func (c *Client) AwaitMembers(r *Roster, id string, want []uint64) {
	c.t.Helper()
	deadline := time.Now().Add(Wait)
	for !r.Has(id) || !slices.Equal(r.Members(id), want) || r.filling[id] {
		left := time.Until(deadline)
		if left <= 0 {
			c.t.Fatalf("uid %d: channel %q: members %v, want %v", c.Uid, id, r.Members(id), want)
		}
		if f, ok := c.next(left); ok {
			r.Take(c.t, f)
		}
	}
}

// Presence reads c's next frame and requires a presence event of kind
// about channel id naming uids.
func (c *Client) Presence(kind, id string, uids ...uint64) Frame {
	c.t.Helper()
	f := c.Next()
	if f.Presence != kind || f.ChannelId != id || !slices.Equal(f.UserIds, uids) || f.More {
		c.t.Fatalf("uid %d: got %s, want presence %q of %q %v", c.Uid, describe(f), kind, id, uids)
	}
	return f
}

func describe(f Frame) string {
	switch {
	case f.Presence != "":
		return fmt.Sprintf("presence %q of %q %v (more %v)", f.Presence, f.ChannelId, f.UserIds, f.More)
	case f.Error != "":
		return fmt.Sprintf("error %q (%s)", f.Error, f.Detail)
	case f.Joined != "" || f.Left != "":
		return fmt.Sprintf("joined %q left %q id %q", f.Joined, f.Left, f.Id)
	}
	return fmt.Sprintf("message %+v", f.Message)
}

// Rest reads c's frames until the connection has ended, and returns them
// with the close code the server sent (websocket.CloseAbnormalClosure when
// it ended without one): for a connection the server is expected to close.
func (c *Client) Rest() (frames []Frame, code int) {
	c.t.Helper()
	deadline := time.After(Wait)
	for {
		select {
		case r, open := <-c.frames:
			if !open {
				var ce *websocket.CloseError
				if errors.As(c.end, &ce) {
					return frames, ce.Code
				}
				return frames, websocket.CloseAbnormalClosure
			}
			frames = append(frames, r.Frame)
		case <-deadline:
			c.t.Fatalf("uid %d: connection still open after %v", c.Uid, Wait)
		}
	}
}

// PresenceRecorder is a Recorder that lets clients join and leave any
// channel (chart.JoinHandler) and records the chart.PresenceHandler calls.
type PresenceRecorder struct {
	*Recorder
	Events chan PresenceEvent
}

// PresenceEvent is one PresenceServer call.
type PresenceEvent struct {
	ChannelId    string
	Joined, Left []uint64
}

// NewPresenceRecorder returns an empty PresenceRecorder.
func NewPresenceRecorder() *PresenceRecorder {
	return &PresenceRecorder{Recorder: NewRecorder(), Events: make(chan PresenceEvent, 10000)}
}

// JoinServer lets every join through.
func (r *PresenceRecorder) JoinServer(*chart.Conn, string) error { return nil }

// PresenceServer records the call, dropping it when the buffer is full.
func (r *PresenceRecorder) PresenceServer(channelId string, joined, left []uint64) {
	select {
	case r.Events <- PresenceEvent{channelId, joined, left}:
	default:
	}
}

// WantEvent waits for the next PresenceServer call and requires it.
func (r *PresenceRecorder) WantEvent(t testing.TB, channelId string, joined, left []uint64) {
	t.Helper()
	e := Recv(t, r.Events, "PresenceServer")
	if e.ChannelId != channelId || !slices.Equal(e.Joined, joined) || !slices.Equal(e.Left, left) {
		t.Fatalf("PresenceServer(%q, %v, %v), want (%q, %v, %v)", e.ChannelId, e.Joined, e.Left, channelId, joined, left)
	}
}

// Churn makes steps random changes to the membership of channelId (a
// channel with presence events) among 12 uids spread over the nodes:
// connections opened and closed on any node (a uid may be on several),
// JoinChannelIds and UnJoinChannelIds, and on a single node join and
// leave requests from clients (refused unless the Handler is a
// JoinHandler). When they are done, it requires every connection's member
// list to become ChannelUserIds, each delta fitting its list (Roster), and
// connections of uids that are no members to have no list.
//
// On several nodes a uid's membership is changed only by the API on one
// node, its home, one change at a time: changes of one uid made on two
// nodes at once (or concurrently on one) can leave the registry of a node
// holding the uid disagreeing with presence (a cluster membership race
// that presence events do not mend), and Churn checks presence events.
func Churn(t *testing.T, nodes []*Server, channelId string, seed int64, steps int) {
	t.Helper()
	type conn struct {
		c    *Client
		r    *Roster
		node *Server
	}
	const users = 12
	rnd := rand.New(rand.NewSource(seed))
	join, _ := json.Marshal(map[string]string{"join": channelId})
	leave, _ := json.Marshal(map[string]string{"leave": channelId})
	home := func(uid uint64) *Server { return nodes[int(uid-1)%len(nodes)] }
	requests := len(nodes) == 1
	var conns []conn
	for i := 0; i < steps; i++ {
		uid := uint64(rnd.Intn(users) + 1)
		node := nodes[rnd.Intn(len(nodes))]
		switch op := rnd.Intn(10); {
		case op < 2 || len(conns) < 4:
			conns = append(conns, conn{node.Dial(t, uid), NewRoster(uid), node})
		case op < 3:
			k := rnd.Intn(len(conns))
			conns[k].c.Close()
			conns = slices.Delete(conns, k, k+1)
		case op < 5 || op < 8 && !requests:
			home(uid).Hub.JoinChannelIds(uid, channelId) // offline: ErrUserOffline
		case op < 7 || !requests:
			home(uid).Hub.UnJoinChannelIds(uid, channelId)
		case op < 8:
			conns[rnd.Intn(len(conns))].c.Send(string(join))
		default:
			conns[rnd.Intn(len(conns))].c.Send(string(leave))
		}
	}
	// Every request was handled once the frame after it was ({} is
	// refused: bad_message); every closed connection is gone once its node
	// counts it no more and presence agrees whether its uid is online.
	for _, x := range conns {
		x.c.Send(`{}`)
	}
	for _, x := range conns {
		for {
			f := x.c.Next()
			if !x.r.Take(t, f) && f.Error == "bad_message" {
				break
			}
		}
	}
	Eventually(t, "closed connections gone", func() bool {
		open := make(map[*Server]int)
		online := make(map[uint64]bool)
		for _, x := range conns {
			open[x.node]++
			online[x.c.Uid] = true
		}
		for _, n := range nodes {
			if n.Hub.Stats().Connections != open[n] {
				return false
			}
		}
		for uid := uint64(1); uid <= users; uid++ {
			if nodes[0].Hub.IsOnline(uid) != online[uid] {
				return false
			}
		}
		return true
	})
	want := nodes[0].Hub.ChannelUserIds(channelId)
	for i, n := range nodes {
		if got := n.Hub.ChannelUserIds(channelId); !slices.Equal(got, want) {
			t.Fatalf("node %d: ChannelUserIds = %v, node 0: %v", i, got, want)
		}
	}
	// The lists converge: in a cluster a late change from another node can
	// undo the right list for a moment, until the roster reads presence
	// again. A round ends with a marker; what is queued before it is all
	// there is: the lists must be right after a round.
	for _, x := range conns {
		// A node answers UserChannelIds of a uid it holds from its registry.
		if local := slices.Contains(x.node.Hub.UserChannelIds(x.c.Uid), channelId); local != slices.Contains(want, x.c.Uid) {
			t.Fatalf("uid %d: member %v in its node's registry, %v in presence (%v): membership itself diverged", x.c.Uid, local, !local, want)
		}
	}
	deadline := time.Now().Add(Wait)
	for round := 0; ; round++ {
		for _, x := range conns {
			if slices.Contains(want, x.c.Uid) {
				x.c.AwaitMembers(x.r, channelId, want)
			}
		}
		marker := "marker " + strconv.Itoa(round)
		nodes[0].Hub.Broadcast(chart.Message{Content: marker})
		wrong := ""
		for _, x := range conns {
			for {
				f := x.c.Next()
				if !x.r.Take(t, f) && f.Content == marker {
					break
				}
			}
			member := slices.Contains(want, x.c.Uid)
			switch {
			case member && !slices.Equal(x.r.Members(channelId), want):
				wrong = fmt.Sprintf("uid %d: members %v, want %v", x.c.Uid, x.r.Members(channelId), want)
			case !member && x.r.Has(channelId):
				wrong = fmt.Sprintf("uid %d is no member but has the list %v", x.c.Uid, x.r.Members(channelId))
			}
		}
		if wrong == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(wrong)
		}
		t.Logf("round %d: %s", round, wrong)
	}
	frames := 0
	for _, x := range conns {
		frames += x.r.Frames
	}
	t.Logf("%d steps over %d nodes, %d connections at the end, members %v: %d presence frames", steps, len(nodes), len(conns), want, frames)
}

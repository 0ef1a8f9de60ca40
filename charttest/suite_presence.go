package charttest

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wuyan94zl/chart"
)

// presence: presence events across nodes (chart.Config.PresenceChannels),
// on two and three nodes. A uid is one member wherever its connections
// are; each member's list converges to ChannelUserIds, each change reaches
// the PresenceHandler once in the cluster; a dead node's users leave the
// lists; random churn ends with every list right.
func (s Suite) presence(t *testing.T) {
	for _, n := range []int{2, 3} {
		t.Run(strconv.Itoa(n)+"nodes", func(t *testing.T) {
			t.Run("Members", func(t *testing.T) { s.presenceMembers(t, n) })
			t.Run("Churn", func(t *testing.T) { s.presenceChurn(t, n) })
		})
	}
	t.Run("KillNode", s.presenceKill)
}

func (s Suite) startPresence(t *testing.T, n int) ([]*Server, *PresenceRecorder) {
	t.Helper()
	newNode := s.NewCluster(t)
	rec := NewPresenceRecorder()
	var nodes []*Server
	for i := 0; i < n; i++ {
		nodes = append(nodes, Start(t, chart.Config{Broker: newNode(), RateLimit: -1, Handler: rec,
			PresenceChannels: func(id string) bool { return strings.HasPrefix(id, "room") },
			PresenceWindow:   20 * time.Millisecond}, rec))
	}
	return nodes, rec
}

func (s Suite) presenceMembers(t *testing.T, n int) {
	nodes, rec := s.startPresence(t, n)
	a, b, last := nodes[0], nodes[1], nodes[n-1]
	c1 := a.Login(t, rec.Recorder, 1)
	c2 := b.Login(t, rec.Recorder, 2)
	c3 := last.Login(t, rec.Recorder, 3)
	r1, r2, r3 := NewRoster(1), NewRoster(2), NewRoster(3)

	// Joined by the API on the uid's node.
	if err := a.Hub.JoinChannelIds(1, "room"); err != nil {
		t.Fatal(err)
	}
	c1.AwaitMembers(r1, "room", []uint64{1})
	rec.WantEvent(t, "room", []uint64{1}, nil)

	// Joined by a client's request on another node.
	c2.Send(`{"join":"room","id":"j"}`)
	c2.AwaitMembers(r2, "room", []uint64{1, 2})
	c1.AwaitMembers(r1, "room", []uint64{1, 2})
	rec.WantEvent(t, "room", []uint64{2}, nil)

	// Joined by the API on a node that does not hold the uid.
	if err := a.Hub.JoinChannelIds(3, "room"); err != nil {
		t.Fatal(err)
	}
	for _, x := range []struct {
		c *Client
		r *Roster
	}{{c1, r1}, {c2, r2}, {c3, r3}} {
		x.c.AwaitMembers(x.r, "room", []uint64{1, 2, 3})
	}
	rec.WantEvent(t, "room", []uint64{3}, nil)

	// A uid on two nodes is one member: its connection on one node
	// closing is no change.
	c2b := a.Dial(t, 2)
	r2b := NewRoster(2)
	c2b.AwaitMembers(r2b, "room", []uint64{1, 2, 3})
	c2.Close()
	// The next change, made on the node that does not hold uid 1, is
	// uid 1's leave, alone: uid 2 is still in.
	if err := b.Hub.UnJoinChannelIds(1, "room"); err != nil {
		t.Fatal(err)
	}
	rec.WantEvent(t, "room", nil, []uint64{1})
	c2b.AwaitMembers(r2b, "room", []uint64{2, 3})
	c3.AwaitMembers(r3, "room", []uint64{2, 3})
	for r1.Has("room") { // its own leave ended uid 1's list
		r1.Take(t, c1.Next())
	}

	// Offline everywhere: a leave.
	c2b.Close()
	c3.AwaitMembers(r3, "room", []uint64{3})
	rec.WantEvent(t, "room", nil, []uint64{2})
	for i, node := range nodes {
		wantUids(t, "node "+strconv.Itoa(i)+" ChannelUserIds", node.Hub.ChannelUserIds("room"), 3)
	}
	select {
	case e := <-rec.Events:
		t.Fatalf("unexpected PresenceServer%+v", e)
	default:
	}
}

func (s Suite) presenceChurn(t *testing.T, n int) {
	nodes, _ := s.startPresence(t, n)
	Churn(t, nodes, "room", int64(n), 300)
}

// presenceKill: the users of a node that died leave the lists of the
// members on the others once it is reaped.
func (s Suite) presenceKill(t *testing.T) {
	nodes, rec := s.startPresence(t, 2)
	a, b := nodes[0], nodes[1]
	c1 := a.Login(t, rec.Recorder, 1)
	b.Login(t, rec.Recorder, 2)
	b.Dial(t, 3)
	rec.WantLogin(t, 3)
	a.Hub.JoinChannelIds(1, "room")
	a.Hub.JoinChannelIds(2, "room")
	a.Hub.JoinChannelIds(3, "room")
	r1 := NewRoster(1)
	c1.AwaitMembers(r1, "room", []uint64{1, 2, 3})
	b.Kill()
	c1.AwaitMembers(r1, "room", []uint64{1})
	wantUids(t, "ChannelUserIds", a.Hub.ChannelUserIds("room"), 1)
}

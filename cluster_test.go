package chart_test

import (
	"errors"
	"slices"
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
// that left that node meanwhile is logged out there, and is not left
// online in presence when the node comes back; joins made meanwhile are
// re-published. A cut longer than the TTL gets the node's users logged out
// by the others; back, their presence is restored without a new login.
func TestPartition(t *testing.T) {
	bus := chart.NewMemoryBus()
	bus.TTL = 1500 * time.Millisecond
	var brokers []chart.Broker
	c := charttest.StartCluster(t, 2, func() chart.Broker {
		b := bus.Broker()
		brokers = append(brokers, b)
		return b
	})
	a, b := c.Nodes[0], c.Nodes[1]
	a.Login(t, c.Rec, 1)
	three := a.Login(t, c.Rec, 3)
	b.Login(t, c.Rec, 2)

	bus.Cut(brokers[0], true)
	three.Close()
	if got := charttest.Recv(t, c.Rec.Logouts, "logout"); got != 3 {
		t.Fatalf("logout of %d, want 3", got)
	}
	if err := a.Hub.JoinChannelIds(1, "p"); err != nil {
		t.Fatal(err) // served locally
	}
	c.Rec.WantErr(t, chart.ErrBroker)
	bus.Cut(brokers[0], false)
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
	select {
	case uid := <-c.Rec.Logins:
		t.Fatalf("login of %d after the partition", uid)
	default:
	}
}

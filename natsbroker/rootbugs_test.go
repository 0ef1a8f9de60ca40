package natsbroker

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/wuyan94zl/chart"
	"github.com/wuyan94zl/chart/charttest"
)

// The tests here fail on bugs of the root package (chart), reported to be
// fixed there; they run with CHART_ROOT_BUGS=1.
func rootBug(t *testing.T) {
	if os.Getenv("CHART_ROOT_BUGS") == "" {
		t.Skip("a root-package bug: run with CHART_ROOT_BUGS=1")
	}
}

// TestRootTimedOutAppendLost: node A's NATS is blackholed when uid 1
// sends to channel "room": SendMessageToChannelIds reports it published,
// its append times out unstored (the server never got it), and the hub,
// taking the timeout as "maybe stored", sends it to no other node
// (cluster.go, brokerStreams.settle): uid 2 on node B never gets it,
// although it gets the message sent after it once NATS is back.
func TestRootTimedOutAppendLost(t *testing.T) {
	rootBug(t)
	srv := startNATS(t)
	proxy := charttest.NewProxy(t, strings.TrimPrefix(srv.url(), "nats://"))
	opt := Options{Timeout: 300 * time.Millisecond}
	ba, err := Connect("nats://"+proxy.Addr(), opt)
	if err != nil {
		t.Fatal(err)
	}
	bb, err := Connect(srv.url(), opt)
	if err != nil {
		t.Fatal(err)
	}
	rec := charttest.NewRecorder()
	a := charttest.Start(t, chart.Config{Broker: ba, RateLimit: -1, Handler: rec}, rec)
	b := charttest.Start(t, chart.Config{Broker: bb, RateLimit: -1, Handler: rec}, rec)
	a.Login(t, rec, 1)
	c2 := b.Login(t, rec, 2)
	a.Hub.JoinChannelIds(1, "room")
	b.Hub.JoinChannelIds(2, "room")
	charttest.AwaitRoute(t, a, "room", c2)
	proxy.Blackhole()
	if !a.Hub.SendMessageToChannelIds(1, "lost?", "room")["room"] {
		t.Fatal("refused")
	}
	if err := rec.WantErr(t, context.DeadlineExceeded); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatal(err)
	}
	proxy.Restore()
	charttest.Eventually(t, "node A back", func() bool {
		return a.Hub.SendMessageToChannelIds(1, "after", "room")["room"] && ba.nc.IsConnected()
	})
	for {
		m := c2.NextMsg()
		if m.Content == "lost?" {
			return
		}
		if m.Content == "after" {
			t.Fatal(`uid 2 got "after" but never "lost?", which SendMessageToChannelIds reported published`)
		}
	}
}

package natsbroker

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wuyan94zl/chart"
	"github.com/wuyan94zl/chart/charttest"
)

// TestTimedOutAppendRedone: node A's NATS is blackholed when uid 1 sends
// to channel "room": SendMessageToChannelIds reports it published, and its
// append times out unstored (the server never got it). Once NATS answers
// again, A looks for it in the stream, does not find it, and appends it
// again: uid 2 on node B gets it, once, after the messages sent after it. (Before:
// never; the hub took the timeout as "maybe stored", sent it to no other
// node, and reset the stream.)
func TestTimedOutAppendRedone(t *testing.T) {
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
	var got []string
	for !slices.Contains(got, "lost?") {
		got = append(got, c2.NextMsg().Content)
	}
	if !a.Hub.SendMessageToChannelIds(1, "end", "room")["room"] {
		t.Fatal("end refused")
	}
	for {
		m := c2.NextMsg()
		if m.Content == "end" {
			return
		}
		if m.Content == "lost?" {
			t.Fatalf(`uid 2 got "lost?" twice (after %q)`, got)
		}
	}
}

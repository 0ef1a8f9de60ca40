package chart_test

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/wuyan94zl/chart"
	"github.com/wuyan94zl/chart/charttest"
)

// start is charttest.Start for this package's own tests, which check that
// every frame the hub sends is one JSON object of the known fields.
func start(t testing.TB, cfg chart.Config, h chart.Handler) *charttest.Server {
	t.Helper()
	s := charttest.Start(t, cfg, h)
	s.Strict = true
	return s
}

// seedHandler is the original README's example handler, written against the
// package-level API: on login it joins two channels, leaves one and sends
// a message to both.
type seedHandler struct {
	*charttest.Recorder
	sent chan map[string]bool
}

func (d *seedHandler) LoginServer(uid uint64) {
	chart.JoinChannelIds(uid, "channel_one", "channel_two")
	chart.UnJoinChannelIds(uid, "channel_one")
	d.sent <- chart.SendMessageToChannelIds(uid, "test", "channel_one", "channel_two")
	d.Recorder.LoginServer(uid)
}

// useDefaultHub points DefaultHub at a fresh hub for one test.
func useDefaultHub(t *testing.T, cfg chart.Config) *chart.Hub {
	old := chart.DefaultHub
	chart.DefaultHub = chart.New(cfg)
	t.Cleanup(func() { chart.DefaultHub = old })
	return chart.DefaultHub
}

func TestSeedExample(t *testing.T) {
	hub := useDefaultHub(t, chart.Config{})
	rec := charttest.NewRecorder()
	h := &seedHandler{Recorder: rec, sent: make(chan map[string]bool, 1)}
	s := charttest.Serve(t, hub, h)
	s.Strict = true

	c := s.Dial(t, 888)
	if got := charttest.Recv(t, h.sent, "SendMessageToChannelIds result"); !reflect.DeepEqual(got, map[string]bool{"channel_one": false, "channel_two": true}) {
		t.Fatalf("SendMessageToChannelIds = %v, want map[channel_one:false channel_two:true]", got)
	}
	charttest.Recv(t, rec.Logins, "login")

	// The message sent inside LoginServer reaches the new connection.
	m := c.NextMsg()
	if m.ChannelId != "channel_two" || m.Content != "test" || m.UserId != 888 || m.Type != chart.TypeText {
		t.Fatalf("login message = %+v", m)
	}
	if _, err := time.ParseInLocation(chart.TimeLayout, m.SendTime, time.Local); err != nil {
		t.Fatalf("send_time %q: %v", m.SendTime, err)
	}

	// The seed page's button: one message to each channel, "type" as a string.
	c.Send(`{"channel_id": "channel_one","content": "发送的消息","type": "3"}`)
	c.Send(`{"channel_id": "channel_two","content": "发送的消息","type": "3"}`)
	e := c.NextErr("not_joined")
	if e.ChannelId != "channel_one" {
		t.Fatalf("error frame channel = %q", e.ChannelId)
	}
	if err := rec.WantErr(t, chart.ErrNotJoined); !errors.Is(err, chart.ErrNotJoined) {
		t.Fatal(err)
	}
	m = c.NextMsg()
	if m.ChannelId != "channel_two" || m.Content != "发送的消息" || m.UserId != 888 || m.Type != 3 {
		t.Fatalf("echo = %+v", m)
	}
	got := charttest.Recv(t, rec.Msgs, "SendMessage callback")
	if got != m {
		t.Fatalf("SendMessage saw %+v, client got %+v", got, m)
	}

	if ids := chart.OnlineUserIds(); !reflect.DeepEqual(ids, []uint64{888}) {
		t.Fatalf("OnlineUserIds = %v", ids)
	}
	if ids := chart.UserChannelIds(888); !reflect.DeepEqual(ids, []string{"channel_two"}) {
		t.Fatalf("UserChannelIds = %v", ids)
	}
	c.Close()
	if uid := charttest.Recv(t, rec.Logouts, "logout"); uid != 888 {
		t.Fatalf("logout uid %d", uid)
	}
	if chart.IsOnline(888) || chart.ChannelUserIds("channel_two") != nil {
		t.Fatalf("uid 888 still present after logout")
	}
}

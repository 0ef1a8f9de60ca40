package chart

import (
	"errors"
	"reflect"
	"testing"
	"time"
)

// seedHandler is the original README's example handler, written against the
// package-level API: on login it joins two channels, leaves one and sends
// a message to both.
type seedHandler struct {
	*recorder
	sent chan map[string]bool
}

func (d *seedHandler) LoginServer(uid uint64) {
	JoinChannelIds(uid, "channel_one", "channel_two")
	UnJoinChannelIds(uid, "channel_one")
	d.sent <- SendMessageToChannelIds(uid, "test", "channel_one", "channel_two")
	d.recorder.LoginServer(uid)
}

// useDefaultHub points DefaultHub at a fresh hub for one test.
func useDefaultHub(t *testing.T, cfg Config) *Hub {
	old := DefaultHub
	DefaultHub = New(cfg)
	t.Cleanup(func() { DefaultHub = old })
	return DefaultHub
}

func TestSeedExample(t *testing.T) {
	hub := useDefaultHub(t, Config{})
	rec := newRecorder()
	h := &seedHandler{recorder: rec, sent: make(chan map[string]bool, 1)}
	s := startHubServer(t, hub, h)

	c := s.dial(t, 888)
	if got := recv(t, h.sent, "SendMessageToChannelIds result"); !reflect.DeepEqual(got, map[string]bool{"channel_one": false, "channel_two": true}) {
		t.Fatalf("SendMessageToChannelIds = %v, want map[channel_one:false channel_two:true]", got)
	}
	recv(t, rec.logins, "login")

	// The message sent inside LoginServer reaches the new connection.
	m := c.nextMsg()
	if m.ChannelId != "channel_two" || m.Content != "test" || m.UserId != 888 || m.Type != TypeText {
		t.Fatalf("login message = %+v", m)
	}
	if _, err := time.ParseInLocation(TimeLayout, m.SendTime, time.Local); err != nil {
		t.Fatalf("send_time %q: %v", m.SendTime, err)
	}

	// The seed page's button: one message to each channel, "type" as a string.
	c.send(`{"channel_id": "channel_one","content": "发送的消息","type": "3"}`)
	c.send(`{"channel_id": "channel_two","content": "发送的消息","type": "3"}`)
	e := c.nextErr("not_joined")
	if e.ChannelId != "channel_one" {
		t.Fatalf("error frame channel = %q", e.ChannelId)
	}
	if err := rec.wantErr(t, ErrNotJoined); !errors.Is(err, ErrNotJoined) {
		t.Fatal(err)
	}
	m = c.nextMsg()
	if m.ChannelId != "channel_two" || m.Content != "发送的消息" || m.UserId != 888 || m.Type != 3 {
		t.Fatalf("echo = %+v", m)
	}
	got := recv(t, rec.msgs, "SendMessage callback")
	if got != m {
		t.Fatalf("SendMessage saw %+v, client got %+v", got, m)
	}

	if ids := OnlineUserIds(); !reflect.DeepEqual(ids, []uint64{888}) {
		t.Fatalf("OnlineUserIds = %v", ids)
	}
	if ids := UserChannelIds(888); !reflect.DeepEqual(ids, []string{"channel_two"}) {
		t.Fatalf("UserChannelIds = %v", ids)
	}
	c.closeNow()
	if uid := recv(t, rec.logouts, "logout"); uid != 888 {
		t.Fatalf("logout uid %d", uid)
	}
	if IsOnline(888) || ChannelUserIds("channel_two") != nil {
		t.Fatalf("uid 888 still present after logout")
	}
}

package chart_test

import (
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wuyan94zl/chart"
	"github.com/wuyan94zl/chart/charttest"
)

// strictApp is a presenceApp that also decides leaves: "lobby" cannot be
// left, and a JoinServer of "room-panic" panics.
type strictApp struct{ *presenceApp }

func (a strictApp) LeaveServer(c *chart.Conn, channelId string) error {
	if channelId == "lobby" {
		return chart.Refuse("stay", "the lobby cannot be left")
	}
	return nil
}

func (a strictApp) JoinServer(c *chart.Conn, channelId string) error {
	if channelId == "room-panic" {
		panic("boom")
	}
	return a.presenceApp.JoinServer(c, channelId)
}

// TestJoinRefusedWithoutJoinHandler: an application without JoinServer
// keeps membership its own: requests get "refused", nothing changes.
func TestJoinRefusedWithoutJoinHandler(t *testing.T) {
	rec := charttest.NewRecorder()
	s := start(t, chart.Config{PresenceChannels: rooms}, rec)
	c := s.Login(t, rec, 1)
	s.Hub.JoinChannelIds(1, "lobby")
	c.Send(`{"join":"room","id":"r1"}`)
	if f := c.NextErr("refused"); f.ChannelId != "room" || f.Id != "r1" || !strings.Contains(f.Detail, "JoinServer") {
		t.Fatalf("got %+v", f)
	}
	c.Send(`{"leave":"lobby"}`)
	if f := c.NextErr("refused"); f.ChannelId != "lobby" {
		t.Fatalf("got %+v", f)
	}
	if got := s.Hub.UserChannelIds(1); !slices.Equal(got, []string{"lobby"}) {
		t.Fatalf("UserChannelIds = %v", got)
	}
	rec.NoErr(t) // the application's decision: not an error to log
}

// TestJoinRequests: what a client may ask, what it is told, and that bad
// requests neither reach the application nor cost anyone else anything.
func TestJoinRequests(t *testing.T) {
	app := newPresenceApp()
	s := start(t, chart.Config{PresenceChannels: rooms, PresenceWindow: 20 * time.Millisecond}, strictApp{app})
	other := s.Login(t, app.Recorder, 2)
	s.Hub.JoinChannelIds(2, "lobby")
	c := s.Login(t, app.Recorder, 1)

	c.Send(`{"join":"lobby","id":"a"}`) // no presence events there: the answer only
	if f := c.Next(); f.Joined != "lobby" || f.Id != "a" {
		t.Fatalf("got %+v", f)
	}
	c.SendTo("lobby", "hello")
	other.WantContent("hello")
	c.WantContent("hello")

	asked := app.asked.Load()
	for _, tc := range []struct {
		frame, code, channel string
	}{
		{`{"join":"secret"}`, "forbidden", "secret"},       // JoinServer said no
		{`{"join":"room-panic"}`, "refused", "room-panic"}, // JoinServer panicked
		{`{"leave":"lobby"}`, "stay", "lobby"},             // LeaveServer said no
		{`{"join":""}`, "invalid_channel", ""},             // not asked
		{`{"join":"` + strings.Repeat("x", 257) + `"}`, "invalid_channel", strings.Repeat("x", 64) + "..."},
		{`{"join":5}`, "bad_message", ""},
		{`{"join":"room","leave":"lobby"}`, "bad_message", ""},
		{`{"join":"room","id":"` + strings.Repeat("i", 65) + `"}`, "bad_message", "room"},
	} {
		c.Send(tc.frame)
		if f := c.NextErr(tc.code); f.ChannelId != tc.channel {
			t.Fatalf("%.80s: got %+v", tc.frame, f)
		}
	}
	if n := app.asked.Load() - asked; n != 1 {
		t.Fatalf("presenceApp.JoinServer asked %d times, want 1 (secret; room-panic panicked before)", n)
	}
	app.WantErr(t, chart.ErrCallbackPanic)

	// A 60 KiB channel id: a short error frame, not asked.
	ws := c.WS
	ws.WriteMessage(websocket.TextMessage, []byte(`{"join":"`+strings.Repeat("<", 60<<10)+`","id":"big"}`))
	if f := c.NextErr("invalid_channel"); len(f.ChannelId) > 70 || f.Id != "big" || len(f.Detail) > 300 {
		t.Fatalf("error frame with a %d-byte channel id, %d-byte message", len(f.ChannelId), len(f.Detail))
	}
	if err := app.WantErr(t, chart.ErrInvalidChannel); len(err.Error()) > 300 {
		t.Fatalf("reported error of %d bytes", len(err.Error()))
	}

	// A message that happens to carry "join" is a message, as before.
	c.Send(`{"channel_id":"lobby","content":"still a message","join":"room"}`)
	other.WantContent("still a message")
	c.WantContent("still a message")

	// A leave JoinServer allows, of a channel never joined: answered.
	c.Send(`{"leave":"room-never"}`)
	if f := c.Next(); f.Left != "room-never" {
		t.Fatalf("got %+v", f)
	}
	if got := s.Hub.UserChannelIds(1); !slices.Equal(got, []string{"lobby"}) {
		t.Fatalf("UserChannelIds = %v", got)
	}
	// Nobody else heard of any of it.
	s.Hub.Publish("lobby", chart.Message{Content: "end"})
	other.WantContent("end")
	if st := s.Hub.Stats(); st.MessagesRefused != 9 {
		t.Fatalf("MessagesRefused = %d, want 9", st.MessagesRefused)
	}
}

// TestJoinFlood: a client asking to join 30 channels with
// MaxChannelsPerUid 10 gets 10, and 20 refusals the application never
// sees; under the default rate limit a flood of requests is cut at the
// burst and closed with 4029.
func TestJoinFlood(t *testing.T) {
	app := newPresenceApp()
	s := start(t, chart.Config{PresenceChannels: rooms, MaxChannelsPerUid: 10, RateLimit: -1}, app)
	c := s.Login(t, app.Recorder, 1)
	for i := 0; i < 30; i++ {
		c.Send(`{"join":"room` + strconv.Itoa(i) + `"}`)
	}
	joined, refused := 0, 0
	for joined+refused < 30 {
		switch f := c.Next(); {
		case f.Joined != "":
			joined++
		case f.Error == "too_many_channels":
			refused++
		case f.Presence == "":
			t.Fatalf("got %+v", f)
		}
	}
	if joined != 10 || refused != 20 || app.asked.Load() != 10 || len(s.Hub.UserChannelIds(1)) != 10 {
		t.Fatalf("%d joined, %d refused, JoinServer asked %d times, %d channels", joined, refused, app.asked.Load(), len(s.Hub.UserChannelIds(1)))
	}
	t.Logf("30 join requests, MaxChannelsPerUid 10: %d joined, %d refused (too_many_channels), JoinServer asked %d times", joined, refused, app.asked.Load())

	// The default rate limit: 50/s, burst 100.
	app2 := newPresenceApp()
	s2 := start(t, chart.Config{PresenceChannels: rooms}, app2)
	d := s2.Login(t, app2.Recorder, 1)
	begin := time.Now()
	sent := 0
	for ; sent < 5000; sent++ { // until the server has closed
		if d.WS.WriteMessage(websocket.TextMessage, []byte(`{"join":"room`+strconv.Itoa(sent)+`"}`)) != nil {
			break
		}
	}
	frames, code := d.Rest()
	took := time.Since(begin)
	joined, limited := 0, 0
	for _, f := range frames {
		switch {
		case f.Joined != "":
			joined++
		case f.Error == "rate_limited":
			limited++
		}
	}
	if code != chart.CloseRateLimited {
		t.Fatalf("close code %d, want %d", code, chart.CloseRateLimited)
	}
	if max := 100 + int(50*took.Seconds()) + 1; joined > max || limited < 99 {
		t.Fatalf("%d joined (at most %d), %d rate_limited", joined, max, limited)
	}
	t.Logf("a flood of join requests (%d written), default rate limit: %d joined, %d rate_limited, closed with %d after %v", sent, joined, limited, chart.CloseRateLimited, took.Round(time.Millisecond))
}

// TestPresenceFlapping: five clients join and leave a room 200 times
// each, as fast as they can (no rate limit): a member of the room gets at
// most two frames per window whatever they do, and ends with the right
// list. Under the default rate limit one flapper is cut off at the burst.
func TestPresenceFlapping(t *testing.T) {
	const flappers, flaps = 5, 200
	window := 100 * time.Millisecond
	app := newPresenceApp()
	s := start(t, chart.Config{PresenceChannels: rooms, PresenceWindow: window, RateLimit: -1}, app)
	obs := s.Login(t, app.Recorder, 1)
	s.Hub.JoinChannelIds(1, "room")
	r := charttest.NewRoster(1)
	obs.AwaitMembers(r, "room", uids(1))
	r.Frames, r.Bytes = 0, 0
	var fl []*charttest.Client
	for uid := uint64(2); uid < 2+flappers; uid++ {
		fl = append(fl, s.Login(t, app.Recorder, uid))
	}
	begin := time.Now()
	for i := 0; i < flaps; i++ {
		for _, c := range fl {
			c.Send(`{"join":"room"}`)
			c.Send(`{"leave":"room"}`)
		}
	}
	for _, c := range fl { // every request handled
		for answers := 0; answers < 2*flaps; {
			if f := c.Next(); f.Joined != "" || f.Left != "" {
				answers++
			} else if f.Error != "" {
				t.Fatalf("uid %d: %+v", c.Uid, f)
			}
		}
	}
	// A last change after them all: once it is seen, so is everything.
	mk := s.Login(t, app.Recorder, 99)
	s.Hub.JoinChannelIds(99, "room")
	obs.AwaitMembers(r, "room", uids(1, 99))
	took := time.Since(begin)
	bound := 2 * (int(took/window) + 2)
	t.Logf("%d clients x %d joins and leaves in %v: the member got %d presence frames naming %d uids (one per change: %d frames); bound %d",
		flappers, flaps, took.Round(time.Millisecond), r.Frames, r.Bytes, 2*flappers*flaps, bound)
	if r.Frames > bound {
		t.Fatalf("the member got %d presence frames, want at most %d", r.Frames, bound)
	}
	if got := s.Hub.ChannelUserIds("room"); !slices.Equal(got, uids(1, 99)) {
		t.Fatalf("ChannelUserIds = %v", got)
	}
	mk.AwaitMembers(charttest.NewRoster(99), "room", uids(1, 99))

	// With the default rate limit a flapper is cut off at the burst: its
	// accepted requests are what the members can hear of.
	app2 := newPresenceApp()
	s2 := start(t, chart.Config{PresenceChannels: rooms, PresenceWindow: window}, app2)
	obs2 := s2.Login(t, app2.Recorder, 1)
	s2.Hub.JoinChannelIds(1, "room")
	r2 := charttest.NewRoster(1)
	obs2.AwaitMembers(r2, "room", uids(1))
	r2.Frames = 0
	f := s2.Login(t, app2.Recorder, 2)
	begin = time.Now()
	for i := 0; i < 5000; i++ { // until the server has closed
		if f.WS.WriteMessage(websocket.TextMessage, []byte(`{"join":"room"}`)) != nil ||
			f.WS.WriteMessage(websocket.TextMessage, []byte(`{"leave":"room"}`)) != nil {
			break
		}
	}
	if code := f.CloseCode(); code != chart.CloseRateLimited {
		t.Fatalf("flapper closed with %d, want %d", code, chart.CloseRateLimited)
	}
	charttest.Recv(t, app2.Logouts, "flapper's logout")
	m2 := s2.Login(t, app2.Recorder, 99)
	s2.Hub.JoinChannelIds(99, "room")
	obs2.AwaitMembers(r2, "room", uids(1, 99))
	took = time.Since(begin)
	t.Logf("one flapper, default rate limit: closed with %d; the member got %d presence frames in %v", chart.CloseRateLimited, r2.Frames, took.Round(time.Millisecond))
	if bound := 2 * (int(took/window) + 2); r2.Frames > bound {
		t.Fatalf("the member got %d presence frames, want at most %d", r2.Frames, bound)
	}
	m2.AwaitMembers(charttest.NewRoster(99), "room", uids(1, 99))
}

package chart_test

import (
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/gorilla/websocket"
	"github.com/wuyan94zl/chart"
	"github.com/wuyan94zl/chart/charttest"
)

func TestTwoUsersInOneChannel(t *testing.T) {
	rec := charttest.NewRecorder()
	rec.OnLogin = func(uid uint64) {}
	s := start(t, chart.Config{}, rec)
	a := s.Login(t, rec, 1)
	b := s.Login(t, rec, 2)
	for _, uid := range []uint64{1, 2} {
		if err := s.Hub.JoinChannelIds(uid, "room"); err != nil {
			t.Fatal(err)
		}
	}
	a.Send(`{"channel_id":"room","content":"hi from 1","type":1}`)
	for _, c := range []*charttest.Client{a, b} {
		m := c.NextMsg()
		if m.ChannelId != "room" || m.UserId != 1 || m.Content != "hi from 1" || m.Type != 1 || m.ToUserId != 0 {
			t.Fatalf("uid %d got %+v", c.Uid, m)
		}
	}
	b.Send(`{"channel_id":"room","content":"hi from 2","type":"2","user_id":1}`) // user_id cannot be forged
	for _, c := range []*charttest.Client{a, b} {
		if m := c.NextMsg(); m.UserId != 2 || m.Content != "hi from 2" || m.Type != 2 {
			t.Fatalf("uid %d got %+v", c.Uid, m)
		}
	}
	if m := charttest.Recv(t, rec.Msgs, "SendMessage"); m.UserId != 1 || m.Content != "hi from 1" {
		t.Fatalf("SendMessage got %+v", m)
	}
	if m := charttest.Recv(t, rec.Msgs, "SendMessage"); m.UserId != 2 {
		t.Fatalf("SendMessage got %+v", m)
	}
	if got := s.Hub.ChannelUserIds("room"); !reflect.DeepEqual(got, []uint64{1, 2}) {
		t.Fatalf("ChannelUserIds = %v", got)
	}
	rec.NoErr(t)
}

func TestSecondTab(t *testing.T) {
	rec := charttest.NewRecorder()
	s := start(t, chart.Config{}, rec)
	tab1 := s.Login(t, rec, 5)
	if err := s.Hub.JoinChannelIds(5, "news"); err != nil {
		t.Fatal(err)
	}
	tab2 := s.Dial(t, 5)
	other := s.Login(t, rec, 6)
	s.Hub.JoinChannelIds(6, "news")

	// The second tab shares the uid's membership without a second login:
	// a message published now reaches both tabs, which proves tab2 is
	// registered, and no login event arrived for it.
	if ok := s.Hub.SendMessageToChannelIds(6, "one", "news"); !ok["news"] {
		t.Fatal("publish failed")
	}
	for _, c := range []*charttest.Client{tab1, tab2, other} {
		if m := c.NextMsg(); m.Content != "one" {
			t.Fatalf("got %+v", m)
		}
	}
	select {
	case uid := <-rec.Logins:
		t.Fatalf("second tab logged in uid %d again", uid)
	default:
	}

	// Closing one tab is no logout; the other tab still receives.
	tab1.Close()
	s.Hub.SendMessageToChannelIds(6, "two", "news")
	if m := tab2.NextMsg(); m.Content != "two" {
		t.Fatalf("got %+v", m)
	}
	other.NextMsg()
	select {
	case uid := <-rec.Logouts:
		t.Fatalf("logout of uid %d with a tab still open", uid)
	default:
	}
	if !s.Hub.IsOnline(5) {
		t.Fatal("uid 5 offline with a tab open")
	}
	tab2.Close()
	if uid := charttest.Recv(t, rec.Logouts, "logout"); uid != 5 {
		t.Fatalf("logout uid %d", uid)
	}
	if got := s.Hub.ChannelUserIds("news"); !reflect.DeepEqual(got, []uint64{6}) {
		t.Fatalf("ChannelUserIds after logout = %v", got)
	}
}

func TestDirectMessages(t *testing.T) {
	rec := charttest.NewRecorder()
	s := start(t, chart.Config{}, rec)
	a := s.Login(t, rec, 10)
	b1 := s.Login(t, rec, 11)
	b2 := s.Dial(t, 11)
	// Make sure the second connection is registered before messaging it.
	s.Hub.JoinChannelIds(11, "sync")
	s.Hub.Publish("sync", chart.Message{Content: "ready"})
	b1.NextMsg()
	b2.NextMsg()

	a.Send(`{"to_user_id":11,"content":"psst","type":3}`)
	for _, c := range []*charttest.Client{b1, b2, a} { // both of b's tabs, and a's own echo
		m := c.NextMsg()
		if m.ToUserId != 11 || m.UserId != 10 || m.Content != "psst" || m.ChannelId != "" {
			t.Fatalf("uid %d got %+v", c.Uid, m)
		}
	}
	if m := charttest.Recv(t, rec.Msgs, "SendMessage"); m.ToUserId != 11 || m.UserId != 10 {
		t.Fatalf("SendMessage got %+v", m)
	}

	// to_user_id as a string, from the API, and to an offline user.
	b1.Send(`{"to_user_id":"10","content":"back","type":"3"}`)
	if m := a.NextMsg(); m.UserId != 11 || m.Content != "back" {
		t.Fatalf("got %+v", m)
	}
	if err := s.Hub.SendMessageToUid(0, 10, "from the system"); err != nil {
		t.Fatal(err)
	}
	if m := a.NextMsg(); m.UserId != 0 || m.ToUserId != 10 || m.Content != "from the system" || m.Type != chart.TypeText {
		t.Fatalf("got %+v", m)
	}
	// To a user who is offline: kept in its inbox, delivered when it comes.
	if err := s.Hub.SendMessageToUid(10, 99, "while you were away"); err != nil {
		t.Fatalf("SendMessageToUid to offline = %v", err)
	}
	a.NextMsg() // the sender's own copy
	a.Send(`{"to_user_id":99,"content":"and this","type":3}`)
	if m := a.NextMsg(); m.ToUserId != 99 || m.Content != "and this" {
		t.Fatalf("got %+v, want the sender's copy", m)
	}
	if m := charttest.Recv(t, rec.Msgs, "SendMessage"); m.ToUserId != 10 || m.Online != true {
		t.Fatalf("SendMessage got %+v", m)
	}
	if m := charttest.Recv(t, rec.Msgs, "SendMessage"); m.ToUserId != 99 || m.Online {
		t.Fatalf("SendMessage got %+v, want Online false", m)
	}
	late := s.Login(t, rec, 99)
	for _, want := range []string{"while you were away", "and this"} {
		if m := late.NextMsg(); m.Content != want || m.UserId != 10 || m.Offset == 0 {
			t.Fatalf("late arrival got %+v, want %q", m, want)
		}
	}
	late.Close()
	if uid := charttest.Recv(t, rec.Logouts, "logout"); uid != 99 {
		t.Fatalf("logout of %d", uid)
	}
	// Written to its socket, they count as received: not sent again.
	again := s.Login(t, rec, 99)
	s.Hub.SendMessageToUid(0, 99, "marker")
	if m := again.NextMsg(); m.Content != "marker" {
		t.Fatalf("second connection got %+v first, want only new messages", m)
	}
	rec.NoErr(t)
}

// apiHandler calls the API from inside its callbacks.
type apiHandler struct {
	*charttest.Recorder
	hub *chart.Hub
}

func (h *apiHandler) LoginServer(uid uint64) {
	h.hub.JoinChannelIds(uid, "lobby", "uid-"+strconv.FormatUint(uid, 10))
	h.hub.SendMessageToChannelIds(uid, "welcome "+strconv.FormatUint(uid, 10), "uid-"+strconv.FormatUint(uid, 10))
	h.Recorder.LoginServer(uid)
}

func (h *apiHandler) SendMessage(m chart.Message) {
	// Every callback may use the API: answer each message in the lobby,
	// move the sender to another channel, and query presence.
	if m.Content == "ping" {
		h.hub.SendMessageToChannelIds(m.UserId, "pong", "lobby")
		h.hub.JoinChannelIds(m.UserId, "after")
		h.hub.OnlineUserIds()
		h.hub.Stats()
	}
	h.Recorder.SendMessage(m)
}

func (h *apiHandler) LogoutServer(uid uint64) {
	h.hub.OnlineUserIds()
	if err := h.hub.JoinChannelIds(uid, "x"); !errors.Is(err, chart.ErrUserOffline) {
		panic(fmt.Sprintf("join after logout: %v", err))
	}
	h.Recorder.LogoutServer(uid)
}

func TestCallbacksCallTheAPI(t *testing.T) {
	hub := chart.New(chart.Config{})
	rec := charttest.NewRecorder()
	s := charttest.Serve(t, hub, &apiHandler{Recorder: rec, hub: hub})
	s.Strict = true
	c := s.Login(t, rec, 3)
	if m := c.NextMsg(); m.Content != "welcome 3" || m.ChannelId != "uid-3" {
		t.Fatalf("got %+v", m)
	}
	c.Send(`{"channel_id":"lobby","content":"ping","type":3}`)
	if m := c.NextMsg(); m.Content != "ping" {
		t.Fatalf("got %+v", m)
	}
	if m := c.NextMsg(); m.Content != "pong" || m.UserId != 3 {
		t.Fatalf("got %+v", m)
	}
	charttest.Recv(t, rec.Msgs, "SendMessage")
	if got := hub.UserChannelIds(3); !reflect.DeepEqual(got, []string{"after", "lobby", "uid-3"}) {
		t.Fatalf("UserChannelIds = %v", got)
	}
	c.Close()
	charttest.Recv(t, rec.Logouts, "logout")
}

func TestUnjoinedAndInvalidChannels(t *testing.T) {
	rec := charttest.NewRecorder()
	s := start(t, chart.Config{MaxChannelsPerUid: 2}, rec)
	c := s.Login(t, rec, 4)

	c.Send(`{"channel_id":"secret","content":"let me in","type":3}`)
	f := c.NextErr("not_joined")
	if f.ChannelId != "secret" || f.Detail == "" {
		t.Fatalf("error frame %+v", f)
	}
	err := rec.WantErr(t, chart.ErrNotJoined)
	var ce *chart.Error
	if !errors.As(err, &ce) || ce.Uid != 4 || ce.ChannelId != "secret" {
		t.Fatalf("error %v does not name uid and channel", err)
	}

	// Somebody else's channel stays private to its members.
	s.Login(t, rec, 8)
	s.Hub.JoinChannelIds(8, "secret")
	c.Send(`{"channel_id":"secret","content":"let me in","type":3}`)
	c.NextErr("not_joined")
	rec.WantErr(t, chart.ErrNotJoined) // a client's refused frame has no caller: reported

	if err := s.Hub.JoinChannelIds(4, ""); !errors.Is(err, chart.ErrInvalidChannel) {
		t.Fatalf("join empty channel: %v", err)
	}
	if err := s.Hub.JoinChannelIds(4, "a", "b", "c"); !errors.Is(err, chart.ErrTooManyChannels) {
		t.Fatalf("join over the limit: %v", err)
	}
	if got := s.Hub.UserChannelIds(4); !reflect.DeepEqual(got, []string{"a", "b"}) {
		t.Fatalf("UserChannelIds = %v", got)
	}
	if err := s.Hub.Publish("", chart.Message{}); !errors.Is(err, chart.ErrInvalidChannel) {
		t.Fatalf("publish to empty channel: %v", err)
	}
	for _, fn := range []func() error{
		func() error { return s.Hub.JoinChannelIds(77, "a") },
		func() error { return s.Hub.UnJoinChannelIds(77, "a") },
	} {
		if err := fn(); !errors.Is(err, chart.ErrUserOffline) {
			t.Fatalf("call for offline uid: %v", err)
		}
		rec.NoErr(t) // returned to the caller, so not reported as well
	}
	if got := s.Hub.SendMessageToChannelIds(77, "x", "a", "b"); !reflect.DeepEqual(got, map[string]bool{"a": false, "b": false}) {
		t.Fatalf("SendMessageToChannelIds for offline uid = %v", got)
	}
	rec.WantErr(t, chart.ErrUserOffline)
	// The connection survived all of it.
	s.Hub.JoinChannelIds(4, "a")
	c.Send(`{"channel_id":"a","content":"still here","type":3}`)
	if m := c.NextMsg(); m.Content != "still here" {
		t.Fatalf("got %+v", m)
	}
}

func TestMalformedFrames(t *testing.T) {
	rec := charttest.NewRecorder()
	s := start(t, chart.Config{}, rec)
	c := s.Login(t, rec, 20)
	peer := s.Login(t, rec, 21)
	s.Hub.JoinChannelIds(20, "room")
	s.Hub.JoinChannelIds(21, "room")
	bad := []string{
		`not json`,
		`{"channel_id":"room","content":"x"`,
		`["channel_id","room"]`,
		`{"channel_id":"room","content":5,"type":3}`,
		`{"channel_id":"room","content":"x","type":"three"}`,
		`{"channel_id":"room","content":"x","type":256}`,
		`{"channel_id":"room","content":"x","type":-1}`,
		`{"channel_id":"room","content":"x","type":1.5}`,
		`{"channel_id":7,"content":"x","type":3}`,
		`{"content":"x","type":3}`,
		`{"channel_id":"room","type":3}`,
		`{"channel_id":"room","to_user_id":21,"content":"x","type":3}`,
		`{"to_user_id":"abc","content":"x","type":3}`,
		`{"channel_id":"room","content":"x","type":3} {"more":1}`,
		``,
	}
	for _, frame := range bad {
		c.Send(frame)
		f := c.NextErr("bad_message")
		if f.Detail == "" || strings.Contains(f.Detail, "Go ") || strings.Contains(f.Detail, `\"`) {
			t.Fatalf("frame %q: error frame %q does not explain in the client's terms", frame, f.Detail)
		}
	}
	// Each refusal was reported before its error frame was sent; a
	// connection's first ten are, then one a second, so that a client
	// cannot flood the log.
	for i := 0; i < 10; i++ {
		rec.WantErr(t, chart.ErrBadMessage)
	}
	rec.NoErr(t)
	c.WS.WriteMessage(websocket.BinaryMessage, []byte(`{"channel_id":"room","content":"binary","type":3}`))
	c.NextErr("bad_message")

	// The connection stays open and nobody else saw anything.
	c.Send(`{"channel_id":"room","content":"fine","type":3}`)
	if m := peer.NextMsg(); m.Content != "fine" {
		t.Fatalf("peer got %+v first", m)
	}
	if m := c.NextMsg(); m.Content != "fine" {
		t.Fatalf("got %+v", m)
	}
	if st := s.Hub.Stats(); st.MessagesRefused != uint64(len(bad)+1) || st.MessagesIn != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestBurstArrivesInOrder(t *testing.T) {
	rec := charttest.NewRecorder()
	s := start(t, chart.Config{}, rec)
	var clients []*charttest.Client
	for uid := uint64(1); uid <= 5; uid++ {
		clients = append(clients, s.Login(t, rec, uid))
		s.Hub.JoinChannelIds(uid, "burst")
	}
	const n = 1000
	// Each client's goroutine reads its frames while the burst goes out.
	for i := 0; i < n; i++ {
		if ok := s.Hub.SendMessageToChannelIds(1, strconv.Itoa(i), "burst"); !ok["burst"] {
			t.Fatalf("message %d not published", i)
		}
	}
	for _, c := range clients {
		for i := 0; i < n; i++ {
			if m, want := c.NextMsg(), strconv.Itoa(i); m.Content != want || m.UserId != 1 || m.ChannelId != "burst" {
				t.Fatalf("uid %d message %d = %+v, want content %s", c.Uid, i, m, want)
			}
		}
	}
	if st := s.Hub.Stats(); st.MessagesOut != n*5 || st.Dropped != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestPresence(t *testing.T) {
	rec := charttest.NewRecorder()
	s := start(t, chart.Config{}, rec)
	for uid := uint64(30); uid < 34; uid++ {
		s.Login(t, rec, uid)
	}
	s.Hub.JoinChannelIds(31, "b", "a")
	s.Hub.JoinChannelIds(33, "a")
	s.Hub.JoinChannelIds(33, "a") // twice is a no-op
	if got := s.Hub.OnlineUserIds(); !reflect.DeepEqual(got, []uint64{30, 31, 32, 33}) {
		t.Fatalf("OnlineUserIds = %v", got)
	}
	if got := s.Hub.ChannelUserIds("a"); !reflect.DeepEqual(got, []uint64{31, 33}) {
		t.Fatalf("ChannelUserIds(a) = %v", got)
	}
	if got := s.Hub.UserChannelIds(31); !reflect.DeepEqual(got, []string{"a", "b"}) {
		t.Fatalf("UserChannelIds(31) = %v", got)
	}
	if got := s.Hub.ChannelUserIds("none"); len(got) != 0 {
		t.Fatalf("ChannelUserIds(none) = %v", got)
	}
	if s.Hub.IsOnline(99) || s.Hub.UserChannelIds(99) != nil {
		t.Fatal("uid 99 is not online")
	}
	s.Hub.UnJoinChannelIds(31, "a", "never-joined")
	if got := s.Hub.ChannelUserIds("a"); !reflect.DeepEqual(got, []uint64{33}) {
		t.Fatalf("ChannelUserIds(a) after leave = %v", got)
	}
	st := s.Hub.Stats()
	if st.Users != 4 || st.Connections != 4 || st.Channels != 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestLargeMessageFromBusinessCode(t *testing.T) {
	rec := charttest.NewRecorder()
	s := start(t, chart.Config{SendQueueBytes: 64 << 10}, rec)
	a := s.Login(t, rec, 1)
	b := s.Login(t, rec, 2)
	s.Hub.JoinChannelIds(1, "room")
	s.Hub.JoinChannelIds(2, "room")
	// Bigger than a whole send queue: delivered, not taken for a slow consumer.
	big := strings.Repeat("b", 1<<20)
	if err := s.Hub.Publish("room", chart.Message{Content: big}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*charttest.Client{a, b} {
		if m := c.NextMsg(); m.Content != big {
			t.Fatalf("uid %d got %d bytes", c.Uid, len(m.Content))
		}
	}
	s.Hub.Publish("room", chart.Message{Content: "after"})
	for _, c := range []*charttest.Client{a, b} {
		if m := c.NextMsg(); m.Content != "after" {
			t.Fatalf("uid %d got %+v", c.Uid, m)
		}
	}
	if st := s.Hub.Stats(); st.Disconnects.SlowConsumer != 0 || st.Connections != 2 {
		t.Fatalf("stats %+v", st)
	}
}

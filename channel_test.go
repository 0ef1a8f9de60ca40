package chart

import (
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestTwoUsersInOneChannel(t *testing.T) {
	rec := newRecorder()
	rec.onLogin = func(uid uint64) {}
	s := startServer(t, Config{}, rec)
	a := s.login(t, rec, 1)
	b := s.login(t, rec, 2)
	for _, uid := range []uint64{1, 2} {
		if err := s.hub.JoinChannelIds(uid, "room"); err != nil {
			t.Fatal(err)
		}
	}
	a.send(`{"channel_id":"room","content":"hi from 1","type":1}`)
	for _, c := range []*client{a, b} {
		m := c.nextMsg()
		if m.ChannelId != "room" || m.UserId != 1 || m.Content != "hi from 1" || m.Type != 1 || m.ToUserId != 0 {
			t.Fatalf("uid %d got %+v", c.uid, m)
		}
	}
	b.send(`{"channel_id":"room","content":"hi from 2","type":"2","user_id":1}`) // user_id cannot be forged
	for _, c := range []*client{a, b} {
		if m := c.nextMsg(); m.UserId != 2 || m.Content != "hi from 2" || m.Type != 2 {
			t.Fatalf("uid %d got %+v", c.uid, m)
		}
	}
	if m := recv(t, rec.msgs, "SendMessage"); m.UserId != 1 || m.Content != "hi from 1" {
		t.Fatalf("SendMessage got %+v", m)
	}
	if m := recv(t, rec.msgs, "SendMessage"); m.UserId != 2 {
		t.Fatalf("SendMessage got %+v", m)
	}
	if got := s.hub.ChannelUserIds("room"); !reflect.DeepEqual(got, []uint64{1, 2}) {
		t.Fatalf("ChannelUserIds = %v", got)
	}
	rec.noErr(t)
}

func TestSecondTab(t *testing.T) {
	rec := newRecorder()
	s := startServer(t, Config{}, rec)
	tab1 := s.login(t, rec, 5)
	if err := s.hub.JoinChannelIds(5, "news"); err != nil {
		t.Fatal(err)
	}
	tab2 := s.dial(t, 5)
	other := s.login(t, rec, 6)
	s.hub.JoinChannelIds(6, "news")

	// The second tab shares the uid's membership without a second login:
	// a message published now reaches both tabs, which proves tab2 is
	// registered, and no login event arrived for it.
	if ok := s.hub.SendMessageToChannelIds(6, "one", "news"); !ok["news"] {
		t.Fatal("publish failed")
	}
	for _, c := range []*client{tab1, tab2, other} {
		if m := c.nextMsg(); m.Content != "one" {
			t.Fatalf("got %+v", m)
		}
	}
	select {
	case uid := <-rec.logins:
		t.Fatalf("second tab logged in uid %d again", uid)
	default:
	}

	// Closing one tab is no logout; the other tab still receives.
	tab1.closeNow()
	s.hub.SendMessageToChannelIds(6, "two", "news")
	if m := tab2.nextMsg(); m.Content != "two" {
		t.Fatalf("got %+v", m)
	}
	other.nextMsg()
	select {
	case uid := <-rec.logouts:
		t.Fatalf("logout of uid %d with a tab still open", uid)
	default:
	}
	if !s.hub.IsOnline(5) {
		t.Fatal("uid 5 offline with a tab open")
	}
	tab2.closeNow()
	if uid := recv(t, rec.logouts, "logout"); uid != 5 {
		t.Fatalf("logout uid %d", uid)
	}
	if got := s.hub.ChannelUserIds("news"); !reflect.DeepEqual(got, []uint64{6}) {
		t.Fatalf("ChannelUserIds after logout = %v", got)
	}
}

func TestDirectMessages(t *testing.T) {
	rec := newRecorder()
	s := startServer(t, Config{}, rec)
	a := s.login(t, rec, 10)
	b1 := s.login(t, rec, 11)
	b2 := s.dial(t, 11)
	// Make sure the second connection is registered before messaging it.
	s.hub.JoinChannelIds(11, "sync")
	s.hub.Publish("sync", Message{Content: "ready"})
	b1.nextMsg()
	b2.nextMsg()

	a.send(`{"to_user_id":11,"content":"psst","type":3}`)
	for _, c := range []*client{b1, b2, a} { // both of b's tabs, and a's own echo
		m := c.nextMsg()
		if m.ToUserId != 11 || m.UserId != 10 || m.Content != "psst" || m.ChannelId != "" {
			t.Fatalf("uid %d got %+v", c.uid, m)
		}
	}
	if m := recv(t, rec.msgs, "SendMessage"); m.ToUserId != 11 || m.UserId != 10 {
		t.Fatalf("SendMessage got %+v", m)
	}

	// to_user_id as a string, from the API, and to an offline user.
	b1.send(`{"to_user_id":"10","content":"back","type":"3"}`)
	if m := a.nextMsg(); m.UserId != 11 || m.Content != "back" {
		t.Fatalf("got %+v", m)
	}
	if err := s.hub.SendMessageToUid(0, 10, "from the system"); err != nil {
		t.Fatal(err)
	}
	if m := a.nextMsg(); m.UserId != 0 || m.ToUserId != 10 || m.Content != "from the system" || m.Type != TypeText {
		t.Fatalf("got %+v", m)
	}
	err := s.hub.SendMessageToUid(10, 99, "nobody")
	var ce *Error
	if !errors.Is(err, ErrUserOffline) || !errors.As(err, &ce) || ce.ToUid != 99 {
		t.Fatalf("SendMessageToUid to offline = %v", err)
	}
	rec.wantErr(t, ErrUserOffline)
	a.send(`{"to_user_id":99,"content":"nobody","type":3}`)
	if f := a.nextErr("user_offline"); f.ToUserId != 99 {
		t.Fatalf("error frame %+v", f)
	}
}

// apiHandler calls the API from inside its callbacks.
type apiHandler struct {
	*recorder
	hub *Hub
}

func (h *apiHandler) LoginServer(uid uint64) {
	h.hub.JoinChannelIds(uid, "lobby", "uid-"+strconv.FormatUint(uid, 10))
	h.hub.SendMessageToChannelIds(uid, "welcome "+strconv.FormatUint(uid, 10), "uid-"+strconv.FormatUint(uid, 10))
	h.recorder.LoginServer(uid)
}

func (h *apiHandler) SendMessage(m Message) {
	// Every callback may use the API: answer each message in the lobby,
	// move the sender to another channel, and query presence.
	if m.Content == "ping" {
		h.hub.SendMessageToChannelIds(m.UserId, "pong", "lobby")
		h.hub.JoinChannelIds(m.UserId, "after")
		h.hub.OnlineUserIds()
		h.hub.Stats()
	}
	h.recorder.SendMessage(m)
}

func (h *apiHandler) LogoutServer(uid uint64) {
	h.hub.OnlineUserIds()
	if err := h.hub.JoinChannelIds(uid, "x"); !errors.Is(err, ErrUserOffline) {
		panic(fmt.Sprintf("join after logout: %v", err))
	}
	h.recorder.LogoutServer(uid)
}

func TestCallbacksCallTheAPI(t *testing.T) {
	hub := New(Config{})
	rec := newRecorder()
	s := startHubServer(t, hub, &apiHandler{recorder: rec, hub: hub})
	c := s.login(t, rec, 3)
	if m := c.nextMsg(); m.Content != "welcome 3" || m.ChannelId != "uid-3" {
		t.Fatalf("got %+v", m)
	}
	c.send(`{"channel_id":"lobby","content":"ping","type":3}`)
	if m := c.nextMsg(); m.Content != "ping" {
		t.Fatalf("got %+v", m)
	}
	if m := c.nextMsg(); m.Content != "pong" || m.UserId != 3 {
		t.Fatalf("got %+v", m)
	}
	recv(t, rec.msgs, "SendMessage")
	if got := hub.UserChannelIds(3); !reflect.DeepEqual(got, []string{"after", "lobby", "uid-3"}) {
		t.Fatalf("UserChannelIds = %v", got)
	}
	c.closeNow()
	recv(t, rec.logouts, "logout")
}

func TestUnjoinedAndInvalidChannels(t *testing.T) {
	rec := newRecorder()
	s := startServer(t, Config{MaxChannelsPerUid: 2}, rec)
	c := s.login(t, rec, 4)

	c.send(`{"channel_id":"secret","content":"let me in","type":3}`)
	f := c.nextErr("not_joined")
	if f.ChannelId != "secret" || f.Detail == "" {
		t.Fatalf("error frame %+v", f)
	}
	err := rec.wantErr(t, ErrNotJoined)
	var ce *Error
	if !errors.As(err, &ce) || ce.Uid != 4 || ce.ChannelId != "secret" {
		t.Fatalf("error %v does not name uid and channel", err)
	}

	// Somebody else's channel stays private to its members.
	s.login(t, rec, 8)
	s.hub.JoinChannelIds(8, "secret")
	c.send(`{"channel_id":"secret","content":"let me in","type":3}`)
	c.nextErr("not_joined")

	if err := s.hub.JoinChannelIds(4, ""); !errors.Is(err, ErrInvalidChannel) {
		t.Fatalf("join empty channel: %v", err)
	}
	if err := s.hub.JoinChannelIds(4, "a", "b", "c"); !errors.Is(err, ErrTooManyChannels) {
		t.Fatalf("join over the limit: %v", err)
	}
	if got := s.hub.UserChannelIds(4); !reflect.DeepEqual(got, []string{"a", "b"}) {
		t.Fatalf("UserChannelIds = %v", got)
	}
	if err := s.hub.Publish("", Message{}); !errors.Is(err, ErrInvalidChannel) {
		t.Fatalf("publish to empty channel: %v", err)
	}
	for _, fn := range []func() error{
		func() error { return s.hub.JoinChannelIds(77, "a") },
		func() error { return s.hub.UnJoinChannelIds(77, "a") },
		func() error { return s.hub.SendMessageToUid(4, 77, "x") },
	} {
		if err := fn(); !errors.Is(err, ErrUserOffline) {
			t.Fatalf("call for offline uid: %v", err)
		}
		rec.wantErr(t, ErrUserOffline)
	}
	if got := s.hub.SendMessageToChannelIds(77, "x", "a", "b"); !reflect.DeepEqual(got, map[string]bool{"a": false, "b": false}) {
		t.Fatalf("SendMessageToChannelIds for offline uid = %v", got)
	}
	rec.wantErr(t, ErrUserOffline)
	// The connection survived all of it.
	s.hub.JoinChannelIds(4, "a")
	c.send(`{"channel_id":"a","content":"still here","type":3}`)
	if m := c.nextMsg(); m.Content != "still here" {
		t.Fatalf("got %+v", m)
	}
}

func TestMalformedFrames(t *testing.T) {
	rec := newRecorder()
	s := startServer(t, Config{}, rec)
	c := s.login(t, rec, 20)
	peer := s.login(t, rec, 21)
	s.hub.JoinChannelIds(20, "room")
	s.hub.JoinChannelIds(21, "room")
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
		c.send(frame)
		f := c.nextErr("bad_message")
		if f.Detail == "" {
			t.Fatalf("frame %q: error frame without message", frame)
		}
		rec.wantErr(t, ErrBadMessage)
	}
	c.ws.WriteMessage(2, []byte(`{"channel_id":"room","content":"binary","type":3}`))
	c.nextErr("bad_message")

	// The connection stays open and nobody else saw anything.
	c.send(`{"channel_id":"room","content":"fine","type":3}`)
	if m := peer.nextMsg(); m.Content != "fine" {
		t.Fatalf("peer got %+v first", m)
	}
	if m := c.nextMsg(); m.Content != "fine" {
		t.Fatalf("got %+v", m)
	}
	if st := s.hub.Stats(); st.MessagesRefused != uint64(len(bad)+1) || st.MessagesIn != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestBurstArrivesInOrder(t *testing.T) {
	rec := newRecorder()
	s := startServer(t, Config{}, rec)
	var clients []*client
	for uid := uint64(1); uid <= 5; uid++ {
		clients = append(clients, s.login(t, rec, uid))
		s.hub.JoinChannelIds(uid, "burst")
	}
	const n = 1000
	done := make(chan error, len(clients))
	for _, c := range clients {
		go func(c *client) {
			for i := 0; i < n; i++ {
				c.ws.SetReadDeadline(time.Now().Add(wait))
				var m Message
				if err := c.ws.ReadJSON(&m); err != nil {
					done <- fmt.Errorf("uid %d message %d: %w", c.uid, i, err)
					return
				}
				if want := strconv.Itoa(i); m.Content != want || m.UserId != 1 || m.ChannelId != "burst" {
					done <- fmt.Errorf("uid %d message %d = %+v, want content %s", c.uid, i, m, want)
					return
				}
			}
			done <- nil
		}(c)
	}
	for i := 0; i < n; i++ {
		if ok := s.hub.SendMessageToChannelIds(1, strconv.Itoa(i), "burst"); !ok["burst"] {
			t.Fatalf("message %d not published", i)
		}
	}
	for range clients {
		if err := recv(t, done, "burst reader"); err != nil {
			t.Fatal(err)
		}
	}
	if st := s.hub.Stats(); st.MessagesOut != n*5 || st.Dropped != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestPresence(t *testing.T) {
	rec := newRecorder()
	s := startServer(t, Config{}, rec)
	for uid := uint64(30); uid < 34; uid++ {
		s.login(t, rec, uid)
	}
	s.hub.JoinChannelIds(31, "b", "a")
	s.hub.JoinChannelIds(33, "a")
	s.hub.JoinChannelIds(33, "a") // twice is a no-op
	if got := s.hub.OnlineUserIds(); !reflect.DeepEqual(got, []uint64{30, 31, 32, 33}) {
		t.Fatalf("OnlineUserIds = %v", got)
	}
	if got := s.hub.ChannelUserIds("a"); !reflect.DeepEqual(got, []uint64{31, 33}) {
		t.Fatalf("ChannelUserIds(a) = %v", got)
	}
	if got := s.hub.UserChannelIds(31); !reflect.DeepEqual(got, []string{"a", "b"}) {
		t.Fatalf("UserChannelIds(31) = %v", got)
	}
	if got := s.hub.ChannelUserIds("none"); len(got) != 0 {
		t.Fatalf("ChannelUserIds(none) = %v", got)
	}
	if s.hub.IsOnline(99) || s.hub.UserChannelIds(99) != nil {
		t.Fatal("uid 99 is not online")
	}
	s.hub.UnJoinChannelIds(31, "a", "never-joined")
	if got := s.hub.ChannelUserIds("a"); !reflect.DeepEqual(got, []uint64{33}) {
		t.Fatalf("ChannelUserIds(a) after leave = %v", got)
	}
	st := s.hub.Stats()
	if st.Users != 4 || st.Connections != 4 || st.Channels != 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestLargeMessageFromBusinessCode(t *testing.T) {
	rec := newRecorder()
	s := startServer(t, Config{SendQueueBytes: 64 << 10}, rec)
	a := s.login(t, rec, 1)
	b := s.login(t, rec, 2)
	s.hub.JoinChannelIds(1, "room")
	s.hub.JoinChannelIds(2, "room")
	// Bigger than a whole send queue: delivered, not taken for a slow consumer.
	big := strings.Repeat("b", 1<<20)
	if err := s.hub.Publish("room", Message{Content: big}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*client{a, b} {
		if m := c.nextMsg(); m.Content != big {
			t.Fatalf("uid %d got %d bytes", c.uid, len(m.Content))
		}
	}
	s.hub.Publish("room", Message{Content: "after"})
	for _, c := range []*client{a, b} {
		if m := c.nextMsg(); m.Content != "after" {
			t.Fatalf("uid %d got %+v", c.uid, m)
		}
	}
	if st := s.hub.Stats(); st.Disconnects.SlowConsumer != 0 || st.Connections != 2 {
		t.Fatalf("stats %+v", st)
	}
}

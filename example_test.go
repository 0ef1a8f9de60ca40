package chart_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"

	"github.com/gorilla/websocket"
	"github.com/wuyan94zl/chart"
)

// lobby is a Handler that puts every user into the "lobby" channel.
type lobby struct {
	hub      *chart.Hub
	loggedIn chan uint64
}

func (l *lobby) SendMessage(msg chart.Message) {
	// Store msg in your database here.
}

func (l *lobby) LoginServer(uid uint64) {
	l.hub.JoinChannelIds(uid, "lobby")
	l.loggedIn <- uid
}

func (l *lobby) LogoutServer(uid uint64) {}

func (l *lobby) ErrorLogServer(err error) { slog.Warn("chat", "err", err) }

// A chat server on a hub of its own: the HTTP handler authenticates the
// user and hands the request to NewServer; the browser then talks JSON.
func ExampleHub_NewServer() {
	hub := chart.New(chart.Config{})
	defer hub.Shutdown(context.Background())
	h := &lobby{hub: hub, loggedIn: make(chan uint64, 1)}

	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		uid, _ := strconv.ParseUint(r.FormValue("id"), 10, 64) // authenticate properly in real code
		hub.NewServer(w, r, uid, h)
	}))
	defer srv.Close()

	// A client, as a browser's `new WebSocket(url)` would be.
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/?id=7", nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer ws.Close()
	<-h.loggedIn

	ws.WriteMessage(websocket.TextMessage, []byte(`{"channel_id":"lobby","content":"hello","type":"3"}`))
	var m chart.Message
	ws.ReadJSON(&m)
	fmt.Println(m.ChannelId, m.UserId, m.Type, m.Content)
	// Output: lobby 7 3 hello
}

// The original chart's calls, on the package-level API (DefaultHub), as
// business code makes them inside LoginServer.
func ExampleSendMessageToChannelIds() {
	sent := make(chan map[string]bool, 1)
	login := func(uid uint64) {
		chart.JoinChannelIds(uid, "channel_one", "channel_two")
		chart.UnJoinChannelIds(uid, "channel_one")
		sent <- chart.SendMessageToChannelIds(uid, "test", "channel_one", "channel_two")
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chart.NewServer(w, r, 888, nil)
		login(888) // normally in Handler.LoginServer
	}))
	defer srv.Close()
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer ws.Close()
	fmt.Println(<-sent)
	var m chart.Message
	ws.ReadJSON(&m)
	fmt.Println(m.ChannelId, m.Content)
	// Output:
	// map[channel_one:false channel_two:true]
	// channel_two test
}

// Business code can post to a channel without being a member, e.g. a
// system notice; UserId 0 marks it as coming from the system.
func ExampleHub_Publish() {
	hub := chart.New(chart.Config{})
	err := hub.Publish("lobby", chart.Message{Type: 1, Content: "maintenance at 22:00"})
	fmt.Println(err)
	// Output: <nil>
}

// Configuration: zero fields take safe defaults; set only what differs.
func ExampleNew() {
	hub := chart.New(chart.Config{
		MaxMessageSize: 16 << 10,
		AllowedOrigins: []string{"https://app.example.com"},
		SlowConsumer:   chart.SlowConsumerDropOldest,
	})
	cfg := hub.Config()
	fmt.Println(cfg.MaxMessageSize, cfg.SendQueueBytes, cfg.PingInterval, cfg.RateLimit)
	// Output: 16384 1048576 54s 50
}

// Shutdown on SIGTERM: connections get their queued messages and a 1001
// close, LogoutServer runs for everyone.
func ExampleHub_Shutdown() {
	hub := chart.New(chart.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 5e9)
	defer cancel()
	fmt.Println(hub.Shutdown(ctx))
	fmt.Println(hub.Publish("lobby", chart.Message{}))
	// Output:
	// <nil>
	// chart: channel "lobby": hub closed
}

// moderated is a Handler with the optional MessageFilter: "announcements"
// is read-only but for uid 1, and users may not message uid 1 directly.
type moderated struct{ lobby }

func (m *moderated) FilterMessage(c *chart.Conn, msg *chart.Message) error {
	switch {
	case msg.ChannelId == "announcements" && c.Uid() != 1:
		return chart.Refuse("read_only", "announcements are read-only")
	case msg.ToUserId == 1:
		return chart.Refuse("no_dm", "the admin takes no direct messages")
	}
	return nil
}

func (m *moderated) LoginServer(uid uint64) {
	m.hub.JoinChannelIds(uid, "announcements")
	m.loggedIn <- uid
}

// A hub that is its own http.Handler: Authenticate takes the uid from a
// bearer token (a real application verifies a signed token or a session),
// FilterMessage moderates before delivery, Disconnect bans.
func ExampleConfig_authenticate() {
	h := &moderated{lobby{loggedIn: make(chan uint64, 1)}}
	tokens := map[string]uint64{"secret-of-7": 7}
	hub := chart.New(chart.Config{
		Handler: h,
		Authenticate: func(r *http.Request) (uint64, any, error) {
			uid, ok := tokens[strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")]
			if !ok {
				return 0, nil, chart.Refuse("bad_token", "unknown token")
			}
			return uid, nil, nil
		},
	})
	h.hub = hub
	srv := httptest.NewServer(hub) // in production: http.Handle("/ws", hub)
	defer srv.Close()
	defer hub.Shutdown(context.Background())

	url := "ws" + strings.TrimPrefix(srv.URL, "http")
	_, resp, _ := websocket.DefaultDialer.Dial(url, nil)
	fmt.Println("without a token:", resp.StatusCode)

	ws, _, err := websocket.DefaultDialer.Dial(url, http.Header{"Authorization": {"Bearer secret-of-7"}})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer ws.Close()
	<-h.loggedIn
	ws.WriteMessage(websocket.TextMessage, []byte(`{"channel_id":"announcements","content":"free pizza","type":3}`))
	var refusal struct{ Error, Message string }
	ws.ReadJSON(&refusal)
	fmt.Println("refused:", refusal.Error)

	hub.Disconnect(7, "banned")
	_, _, err = ws.ReadMessage()
	fmt.Println(err)
	// Output:
	// without a token: 401
	// refused: read_only
	// websocket: close 4001: banned
}

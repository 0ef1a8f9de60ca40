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

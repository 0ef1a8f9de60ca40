package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wuyan94zl/chart"
	"go.uber.org/goleak"
)

// The browser test in e2e/ drives the page; these tests check the server's
// side of the contract over real sockets: uid validation, presence pushes,
// the join/leave API and chat messages between two clients.

func newTestServer(t *testing.T) *httptest.Server {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	return startDemo(t, newApp(log).routes())
}

// startDemo serves h on a free loopback port with the demo's own
// http.Server settings (newHTTPServer), timeouts included.
func startDemo(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.Config = newHTTPServer(h)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

func TestRejectsBadUID(t *testing.T) {
	srv := newTestServer(t)
	for _, id := range []string{"", "0", "abc", "-3", "1.5"} {
		res, err := http.Get(srv.URL + "/ws?id=" + id)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusBadRequest {
			t.Errorf("/ws?id=%q: status %d, want 400", id, res.StatusCode)
		}
	}
}

func TestAPIRejectsBadRequests(t *testing.T) {
	srv := newTestServer(t)
	for _, tc := range []struct {
		body string
		code int
		want string
	}{
		{`{"uid":5,"channels":["go"]}`, http.StatusConflict, "user_offline"},
		{`{"uid":5,"channels":["presence"]}`, http.StatusBadRequest, "invalid_channel"},
		{`{"uid":5,"channels":["  "]}`, http.StatusBadRequest, "invalid_channel"},
		{`{"uid":5,"channels":[]}`, http.StatusBadRequest, "invalid_channel"},
		{`{"uid":0,"channels":["go"]}`, http.StatusBadRequest, "bad_request"},
		{`not json`, http.StatusBadRequest, "bad_request"},
	} {
		res, err := http.Post(srv.URL+"/api/join", "application/json", strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		var got apiError
		err = json.NewDecoder(res.Body).Decode(&got)
		res.Body.Close()
		if err != nil || res.StatusCode != tc.code || got.Error != tc.want {
			t.Errorf("join %s: status %d, body %+v (%v); want %d %q", tc.body, res.StatusCode, got, err, tc.code, tc.want)
		}
	}
	res, err := http.Get(srv.URL + "/api/channels?uid=x")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusBadRequest {
		t.Errorf("/api/channels?uid=x: status %d, want 400", res.StatusCode)
	}
}

// client is a WebSocket client of the demo, as the page is.
type client struct {
	t  *testing.T
	ws *websocket.Conn
}

func dial(t *testing.T, srv *httptest.Server, query string) *client {
	t.Helper()
	return dialURL(t, "ws"+strings.TrimPrefix(srv.URL, "http")+"/ws?"+query, nil)
}

// dialer bounds the handshake and never goes through an HTTP proxy.
var dialer = websocket.Dialer{HandshakeTimeout: 5 * time.Second}

// dialURL opens a WebSocket to url with the given request headers.
func dialURL(t *testing.T, url string, header http.Header) *client {
	t.Helper()
	ws, res, err := dialer.Dial(url, header)
	if err != nil {
		status := 0
		if res != nil {
			status = res.StatusCode
		}
		t.Fatalf("dial %s: %v (HTTP %d)", url, err, status)
	}
	res.Body.Close()
	c := &client{t: t, ws: ws}
	t.Cleanup(func() { ws.Close() })
	return c
}

// next reads frames until one matches, failing after a deadline.
func (c *client) next(what string, match func(chart.Message) bool) chart.Message {
	c.t.Helper()
	if err := c.ws.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		c.t.Fatal(err)
	}
	for {
		var m chart.Message
		if err := c.ws.ReadJSON(&m); err != nil {
			c.t.Fatalf("waiting for %s: %v", what, err)
		}
		if match(m) {
			return m
		}
	}
}

// nextPresence reads until a presence push whose online uids are want.
func (c *client) nextPresence(want ...uint64) presence {
	c.t.Helper()
	var p presence
	c.next("presence", func(m chart.Message) bool {
		if m.ChannelId != presenceChannel || m.UserId != 0 || m.Type != presenceType {
			return false
		}
		p = presence{}
		if err := json.Unmarshal([]byte(m.Content), &p); err != nil {
			c.t.Fatalf("presence content %q: %v", m.Content, err)
		}
		var got []uint64
		for _, u := range p.Users {
			got = append(got, u.UID)
		}
		return slices.Equal(got, want)
	})
	return p
}

// postChannels calls /api/join or /api/leave on the server at base
// ("http://host:port").
func postChannels(t *testing.T, base string, op string, uid uint64, channels ...string) []string {
	t.Helper()
	body, _ := json.Marshal(channelsRequest{UID: uid, Channels: channels})
	res, err := http.Post(base+"/api/"+op, "application/json", strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var got channelsResponse
	if err := json.NewDecoder(res.Body).Decode(&got); err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("%s %v for %d: status %d, %v", op, channels, uid, res.StatusCode, err)
	}
	return got.Channels
}

func TestPresenceChannelsAndMessages(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	srv := newTestServer(t)

	ann := dial(t, srv, "id=7&name=%20Ann%0A")
	p := ann.nextPresence(7)
	if p.Event != "online" || p.UID != 7 || p.Users[0].Name != "Ann" {
		t.Errorf("first push = %+v, want Ann (7) online with a cleaned name", p)
	}
	bob := dial(t, srv, "id=8&name=Bob")
	bob.nextPresence(7, 8)
	pushed := ann.nextPresence(7, 8)

	// /api/online agrees with the last push and is never older.
	res, err := http.Get(srv.URL + "/api/online")
	if err != nil {
		t.Fatal(err)
	}
	var online presence
	err = json.NewDecoder(res.Body).Decode(&online)
	res.Body.Close()
	if err != nil || online.Version < pushed.Version || len(online.Users) != 2 || online.Users[1].Name != "Bob" {
		t.Errorf("/api/online = %+v (%v), want Ann and Bob at version >= %d", online, err, pushed.Version)
	}

	// Everyone starts in the lobby; presence is not listed.
	if got := postChannels(t, srv.URL, "join", 7, "go"); !slices.Equal(got, []string{"go", "lobby"}) {
		t.Errorf("ann's channels after join = %q, want [go lobby]", got)
	}
	postChannels(t, srv.URL, "join", 8, "go")

	if err := ann.ws.WriteJSON(map[string]any{"channel_id": "go", "content": "hi <b>Bob</b>", "type": 3}); err != nil {
		t.Fatal(err)
	}
	got := bob.next("ann's message", func(m chart.Message) bool { return m.ChannelId == "go" })
	if got.UserId != 7 || got.Content != "hi <b>Bob</b>" || got.SendTime == "" {
		t.Errorf("bob got %+v, want Ann's message as sent", got)
	}

	// A client's fake presence push is refused, not delivered.
	if err := ann.ws.WriteJSON(map[string]any{"channel_id": presenceChannel, "content": `{"users":[]}`, "type": presenceType}); err != nil {
		t.Fatal(err)
	}
	var refusal struct{ Error, Message, ChannelId string }
	ann.ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	for refusal.Error == "" {
		if err := ann.ws.ReadJSON(&refusal); err != nil {
			t.Fatal(err)
		}
	}
	if refusal.Error != "read_only" {
		t.Errorf("fake presence push answered with %+v, want read_only", refusal)
	}
	ann.ws.WriteJSON(map[string]any{"channel_id": "go", "content": "after the fake", "type": 3})
	if m := bob.next("the next message", func(m chart.Message) bool { return m.ChannelId != lobbyChannel }); m.Content != "after the fake" {
		t.Errorf("bob got %+v, want the message after the refused fake", m)
	}

	if got := postChannels(t, srv.URL, "leave", 8, "go", "lobby"); len(got) != 0 {
		t.Errorf("bob's channels after leaving both = %q, want none", got)
	}

	bob.ws.Close()
	if p := ann.nextPresence(7); p.Event != "offline" || p.UID != 8 {
		t.Errorf("push after Bob left = %+v, want Bob (8) offline", p)
	}
	// Close everything before the deferred leak check, which retries while
	// the hub logs Ann out.
	ann.ws.Close()
	srv.Close()
}

func TestCleanName(t *testing.T) {
	for in, want := range map[string]string{
		"  Ann  ":                   "Ann",
		"Bob\n\t":                   "Bob",
		"Zo\u0000ë":                 "Zoë",
		strings.Repeat("é", 40):     strings.Repeat("é", maxNameRunes),
		"":                          "",
		"<img src=x onerror=alert>": "<img src=x onerror=alert>", // text, rendered as text
	} {
		if got := cleanName(in); got != want {
			t.Errorf("cleanName(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestServerTimeoutsSpareWebSockets checks what newHTTPServer's comment
// claims: http.Server's timeouts end at the upgrade. With every one of them
// cut to 100 ms, a WebSocket still carries messages well after that.
func TestServerTimeoutsSpareWebSockets(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	h := newApp(log).routes()
	srv := httptest.NewUnstartedServer(h)
	srv.Config = newHTTPServer(h)
	const short = 100 * time.Millisecond
	c := srv.Config
	c.ReadHeaderTimeout, c.ReadTimeout, c.WriteTimeout, c.IdleTimeout = short, short, short, short
	srv.Start()
	t.Cleanup(srv.Close)

	ann := dial(t, srv, "id=31&name=Ann")
	ann.nextPresence(31)
	// Not synchronisation: the point is to let every server timeout pass.
	time.Sleep(3 * short)
	if err := ann.ws.WriteJSON(map[string]any{"channel_id": lobbyChannel, "content": "still here"}); err != nil {
		t.Fatal(err)
	}
	got := ann.next("own message", func(m chart.Message) bool { return m.ChannelId == lobbyChannel })
	if got.UserId != 31 || got.Content != "still here" {
		t.Errorf("got %+v, want Ann's message back", got)
	}
	ann.ws.Close()
	waitOffline(t, 31)
}

// waitOffline waits until the hub has logged every uid out, so that the next
// test starts with nobody online.
func waitOffline(t *testing.T, uids ...uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for _, uid := range uids {
		for chart.IsOnline(uid) {
			if time.Now().After(deadline) {
				t.Fatalf("uid %d still online after 5 s", uid)
			}
			<-tick.C
		}
	}
}

// TestClientScriptAndConfig checks what the page loads besides itself: the
// library's client at /chart.js and its timing at /api/config.
func TestClientScriptAndConfig(t *testing.T) {
	a := newApp(slog.New(slog.NewTextHandler(io.Discard, nil)))
	a.client = clientOptions{Heartbeat: 500, HeartbeatTimeout: 1500, MaxDelay: 1000}
	srv := startDemo(t, a.routes())

	res, err := http.Get(srv.URL + "/chart.js")
	if err != nil {
		t.Fatal(err)
	}
	script, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/javascript") ||
		!strings.Contains(string(script), "export class Chart") {
		t.Errorf("/chart.js: HTTP %d, %s, %.60q; want the client as JavaScript", res.StatusCode, res.Header.Get("Content-Type"), script)
	}

	// The page imports it from there.
	res, err = http.Get(srv.URL + "/app.js")
	if err != nil {
		t.Fatal(err)
	}
	app, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if !strings.Contains(string(app), `from '/chart.js'`) {
		t.Errorf("/app.js does not import /chart.js")
	}

	res, err = http.Get(srv.URL + "/api/config?heartbeat=1")
	if err != nil {
		t.Fatal(err)
	}
	var got clientOptions
	err = json.NewDecoder(res.Body).Decode(&got)
	res.Body.Close()
	if err != nil || got != a.client || res.Header.Get("Cache-Control") != "no-store" {
		t.Errorf("/api/config = %+v (%v, Cache-Control %q), want %+v, no-store; the query changes nothing",
			got, err, res.Header.Get("Cache-Control"), a.client)
	}
}

func TestNewClientOptions(t *testing.T) {
	ms := time.Millisecond
	if got, err := newClientOptions(10*time.Second, 10*time.Second, 10*time.Second); err != nil || got != defaultClientOptions {
		t.Errorf("the flags' defaults give %+v, %v; want %+v", got, err, defaultClientOptions)
	}
	if got, err := newClientOptions(0, 100*ms, time.Hour); err != nil || got.Heartbeat != 0 || got.MaxDelay != 3600000 {
		t.Errorf("heartbeat off, bounds: %+v, %v", got, err)
	}
	for _, tc := range [][3]time.Duration{
		{99 * ms, time.Second, time.Second},
		{time.Second, 0, time.Second},
		{time.Second, time.Second, 0},
		{-time.Second, time.Second, time.Second},
		{time.Second, time.Hour + ms, time.Second},
	} {
		if _, err := newClientOptions(tc[0], tc[1], tc[2]); err == nil {
			t.Errorf("newClientOptions(%v, %v, %v) accepted, want an error", tc[0], tc[1], tc[2])
		}
	}
}

// TestChannelsRememberedAcrossReconnect: a user who reconnects is back in
// the channels they had before their page's first frame is read, so that
// a chart.js page recovers what was sent there meanwhile.
func TestChannelsRememberedAcrossReconnect(t *testing.T) {
	srv := newTestServer(t)
	ann := dial(t, srv, "id=41&name=Ann")
	ann.nextPresence(41)
	postChannels(t, srv.URL, "join", 41, "go")
	postChannels(t, srv.URL, "leave", 41, lobbyChannel)
	ann.ws.Close()
	waitOffline(t, 41)

	ann = dial(t, srv, "id=41&name=Ann")
	ann.nextPresence(41)
	res, err := http.Get(srv.URL + "/api/channels?uid=41")
	if err != nil {
		t.Fatal(err)
	}
	var got channelsResponse
	err = json.NewDecoder(res.Body).Decode(&got)
	res.Body.Close()
	if err != nil || !slices.Equal(got.Channels, []string{"go"}) {
		t.Errorf("channels after reconnecting = %q (%v), want [go]: the ones Ann had, lobby left", got.Channels, err)
	}
	if !slices.Contains(chart.UserChannelIds(41), presenceChannel) {
		t.Errorf("Ann is not back in the presence channel: %q", chart.UserChannelIds(41))
	}
	ann.ws.Close()
	waitOffline(t, 41)
}

// TestRememberExpiresAndIsBounded: channels are kept for rememberFor, for
// maxRemembered users, maxRememberedChannels each.
func TestRememberExpiresAndIsBounded(t *testing.T) {
	a := newApp(slog.New(slog.NewTextHandler(io.Discard, nil)))
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	a.now = func() time.Time { return now }

	a.remember(1, []string{"go"})
	if got, ok := a.recall(1); !ok || !slices.Equal(got, []string{"go"}) {
		t.Errorf("recall = %q, %v; want [go], true", got, ok)
	}
	if _, ok := a.recall(1); ok {
		t.Error("a second recall found the channels again, want them forgotten")
	}

	a.remember(2, []string{"go"})
	now = now.Add(rememberFor + time.Second)
	if got, ok := a.recall(2); ok {
		t.Errorf("recall after rememberFor = %q, want nothing", got)
	}

	many := make([]string, maxRememberedChannels+10)
	for i := range many {
		many[i] = fmt.Sprintf("c%03d", i)
	}
	a.remember(3, many)
	if got, _ := a.recall(3); len(got) != maxRememberedChannels {
		t.Errorf("kept %d channels of %d, want %d", len(got), len(many), maxRememberedChannels)
	}

	for uid := uint64(1); uid <= maxRemembered+100; uid++ {
		a.remember(uid, []string{"go"})
		if uid == maxRemembered/2 {
			now = now.Add(rememberFor + time.Second) // the first half expires
		}
	}
	if n := len(a.left); n > maxRemembered {
		t.Errorf("%d users remembered, want at most %d", n, maxRemembered)
	}
	if _, ok := a.recall(maxRemembered + 100); !ok {
		t.Error("the last user remembered was forgotten")
	}
}

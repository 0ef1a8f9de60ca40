package chart_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wuyan94zl/chart"
	"github.com/wuyan94zl/chart/charttest"
)

// app is a Handler with every optional interface: it records the events
// of all callbacks, in order, on one channel, and runs optional hooks.
type app struct {
	*charttest.Recorder
	events chan string // "connect 7", "disconnect 7 <kind>", "logout 7"

	mu       sync.Mutex
	conns    map[uint64]*chart.Conn // the latest connection of each uid
	connect  func(c *chart.Conn) error
	filter   func(c *chart.Conn, m *chart.Message) error
	onLogout func(uid uint64)
	onLogin  func(uid uint64)
}

func newApp() *app {
	return &app{Recorder: charttest.NewRecorder(), events: make(chan string, 10000), conns: make(map[uint64]*chart.Conn)}
}

func (a *app) ConnectServer(c *chart.Conn) error {
	a.mu.Lock()
	a.conns[c.Uid()] = c
	fn := a.connect
	a.mu.Unlock()
	a.events <- fmt.Sprint("connect ", c.Uid())
	if fn != nil {
		return fn(c)
	}
	return nil
}

func (a *app) DisconnectServer(c *chart.Conn, reason error) {
	kind := "other"
	for _, k := range []error{chart.ErrClientClosed, chart.ErrDisconnected, chart.ErrExpired, chart.ErrReplaced, chart.ErrHubClosed} {
		if errors.Is(reason, k) {
			kind = k.Error()
		}
	}
	a.events <- fmt.Sprint("disconnect ", c.Uid(), " ", kind)
}

func (a *app) FilterMessage(c *chart.Conn, m *chart.Message) error {
	if a.filter != nil {
		return a.filter(c, m)
	}
	return nil
}

func (a *app) LoginServer(uid uint64) {
	if a.onLogin != nil {
		a.onLogin(uid)
	}
	a.Recorder.LoginServer(uid)
}

func (a *app) LogoutServer(uid uint64) {
	if a.onLogout != nil {
		a.onLogout(uid)
	}
	a.events <- fmt.Sprint("logout ", uid)
	a.Recorder.LogoutServer(uid)
}

func (a *app) conn(uid uint64) *chart.Conn {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.conns[uid]
}

// wantEvents takes the next events and requires them to be want, in order.
func (a *app) wantEvents(t *testing.T, want ...string) {
	t.Helper()
	for _, w := range want {
		if got := charttest.Recv(t, a.events, w); got != w {
			t.Fatalf("event %q, want %q", got, w)
		}
	}
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// serveHub serves hub as an http.Handler (ServeHTTP) and shuts it down at
// the end of the test; it returns the ws:// URL.
func serveHub(t *testing.T, hub *chart.Hub) string {
	t.Helper()
	srv := httptest.NewServer(hub)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), charttest.Wait)
		defer cancel()
		if err := hub.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		srv.Close()
	})
	return "ws" + strings.TrimPrefix(srv.URL, "http")
}

// TestServeHTTP: the Hub as an http.Handler authenticates with a token
// carried in the subprotocol list, exposes what Authenticate returned as
// Meta, and refuses with 401 or the status and code the error carries.
func TestServeHTTP(t *testing.T) {
	a := newApp()
	metas := make(chan any, 1)
	a.connect = func(c *chart.Conn) error {
		metas <- []any{c.Meta(), c.Uid(), c.Subprotocol(), c.ID() != 0, c.RemoteAddr() != nil}
		return nil
	}
	hub := chart.New(chart.Config{
		Handler:      a,
		Logger:       quiet,
		Subprotocols: []string{"access_token"},
		Authenticate: func(r *http.Request) (uint64, any, error) {
			p := websocket.Subprotocols(r)
			if len(p) == 2 && p[0] == "access_token" {
				switch p[1] {
				case "tok-7":
					return 7, "claims of 7", nil
				case "banned":
					return 0, nil, &chart.Error{Kind: chart.ErrUnauthorized, Status: http.StatusForbidden, Code: "banned"}
				}
			}
			return 0, nil, errors.New("no valid token")
		},
	})
	url := serveHub(t, hub)
	d := websocket.Dialer{HandshakeTimeout: charttest.Wait, Subprotocols: []string{"access_token", "tok-7"}}
	ws, resp, err := d.Dial(url, nil)
	if err != nil {
		t.Fatalf("dial with a token: %v", err)
	}
	defer ws.Close()
	if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != "access_token" {
		t.Fatalf("negotiated subprotocol %q", got)
	}
	a.WantLogin(t, 7)
	if got, want := charttest.Recv(t, metas, "ConnectServer"), []any{"claims of 7", uint64(7), "access_token", true, true}; !reflect.DeepEqual(got, want) {
		t.Fatalf("ConnectServer saw %v, want %v", got, want)
	}
	for _, tc := range []struct {
		protocols []string
		status    int
		body      string
	}{
		{nil, http.StatusUnauthorized, "chart: unauthorized\n"},
		{[]string{"access_token", "forged"}, http.StatusUnauthorized, "chart: unauthorized\n"},
		{[]string{"access_token", "banned"}, http.StatusForbidden, "chart: banned\n"},
	} {
		d.Subprotocols = tc.protocols
		_, resp, err := d.Dial(url, nil)
		if err == nil || resp == nil || resp.StatusCode != tc.status {
			t.Fatalf("dial with %q: %v, response %+v; want HTTP %d", tc.protocols, err, resp, tc.status)
		}
		body, _ := io.ReadAll(resp.Body)
		if string(body) != tc.body {
			t.Fatalf("dial with %q: body %q, want %q", tc.protocols, body, tc.body)
		}
		if err := a.WantErr(t, chart.ErrUnauthorized); tc.protocols == nil && err.Error() != "chart: unauthorized: no valid token" {
			t.Fatalf("reported %q", err)
		}
	}
}

// TestServeHTTPWithoutAuthenticate: a misconfigured hub says so.
func TestServeHTTPWithoutAuthenticate(t *testing.T) {
	a := newApp()
	url := serveHub(t, chart.New(chart.Config{Handler: a, Logger: quiet}))
	_, resp, err := websocket.DefaultDialer.Dial(url, nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusInternalServerError {
		t.Fatalf("dial: %v, %+v; want 500", err, resp)
	}
	a.WantErr(t, chart.ErrUnauthorized)
}

// TestConnectServerRefuses: a refused connection is closed with 4003 and
// the error's text, and no other callback runs for it.
func TestConnectServerRefuses(t *testing.T) {
	a := newApp()
	a.connect = func(c *chart.Conn) error {
		if c.Uid() == 9 {
			return chart.Refuse("banned", "uid 9 is banned")
		}
		return nil
	}
	s := start(t, chart.Config{}, a)
	c := s.Dial(t, 9)
	if code, text := c.CloseReason(); code != chart.CloseRefused || text != "uid 9 is banned" {
		t.Fatalf("close %d %q, want %d with the error's text", code, text, chart.CloseRefused)
	}
	s.Login(t, a.Recorder, 10) // the next login is 10's: 9 never logged in
	a.wantEvents(t, "connect 9", "connect 10")
	if s.Hub.IsOnline(9) {
		t.Fatal("refused uid 9 is online")
	}
	a.NoErr(t)
}

// TestDisconnectServer: each connection's end is reported with why, and
// before the LogoutServer it causes.
func TestDisconnectServer(t *testing.T) {
	a := newApp()
	s := start(t, chart.Config{}, a)
	first := s.Login(t, a.Recorder, 1)
	second := s.Dial(t, 1)
	a.wantEvents(t, "connect 1", "connect 1")
	first.Close()
	a.wantEvents(t, "disconnect 1 closed by the client")
	a.conn(1).Close("see you")
	if code, text := second.CloseReason(); code != chart.CloseDisconnected || text != "see you" {
		t.Fatalf("close %d %q, want %d \"see you\"", code, text, chart.CloseDisconnected)
	}
	a.wantEvents(t, "disconnect 1 disconnected by the application", "logout 1")
	if st := s.Hub.Stats(); st.Disconnects.Normal != 1 || st.Disconnects.Application != 1 {
		t.Fatalf("disconnects %+v", st.Disconnects)
	}
	a.NoErr(t) // neither end is an error
}

// TestSetExpiry: a connection whose credentials expire is closed with
// 4002; one whose expiry was moved stays.
func TestSetExpiry(t *testing.T) {
	a := newApp()
	a.connect = func(c *chart.Conn) error {
		c.SetExpiry(time.Now().Add(200 * time.Millisecond))
		switch c.Uid() {
		case 3:
			c.SetExpiry(time.Now().Add(time.Hour)) // a fresh token arrived
		case 4:
			c.SetExpiry(time.Now().Add(-time.Second)) // expired already
		}
		return nil
	}
	s := start(t, chart.Config{}, a)
	if code := s.Dial(t, 4).CloseCode(); code != chart.CloseExpired {
		t.Fatalf("expired token: close %d, want %d", code, chart.CloseExpired)
	}
	two := s.Login(t, a.Recorder, 2) // the first login: 4 never logged in
	three := s.Login(t, a.Recorder, 3)
	s.Hub.JoinChannelIds(3, "room")
	began := time.Now()
	if code := two.CloseCode(); code != chart.CloseExpired {
		t.Fatalf("close %d, want %d", code, chart.CloseExpired)
	}
	if d := time.Since(began); d > 5*time.Second {
		t.Fatalf("expired after %v", d)
	}
	a.wantEvents(t, "connect 4", "connect 2", "connect 3", "disconnect 2 credentials expired", "logout 2")
	s.Hub.Publish("room", chart.Message{Content: "still here"})
	three.WantContent("still here")
	a.conn(3).SetExpiry(time.Time{})
	a.NoErr(t)
}

// TestFilterMessage: a filter makes a channel read-only, decides who may
// message whom and rewrites content; refused messages reach nobody and
// not SendMessage, and the sender learns why.
func TestFilterMessage(t *testing.T) {
	a := newApp()
	a.filter = func(c *chart.Conn, m *chart.Message) error {
		switch {
		case m.ChannelId == "news" && c.Uid() != 1:
			return chart.Refuse("read_only", "news is read-only")
		case m.ToUserId == 4 && c.Uid() == 2:
			return errors.New("2 may not write to 4")
		}
		m.Content = strings.ReplaceAll(m.Content, "darn", "****")
		return nil
	}
	s := start(t, chart.Config{}, a)
	editor := s.Login(t, a.Recorder, 1)
	reader := s.Login(t, a.Recorder, 2)
	other := s.Login(t, a.Recorder, 4)
	for _, uid := range []uint64{1, 2} {
		s.Hub.JoinChannelIds(uid, "news")
	}
	reader.SendTo("news", "fake news")
	if f := reader.NextErr("read_only"); f.ChannelId != "news" || !strings.Contains(f.Detail, "news is read-only") {
		t.Fatalf("error frame %+v", f)
	}
	reader.SendToUser(4, "hello")
	if f := reader.NextErr("refused"); f.ToUserId != 4 || !strings.Contains(f.Detail, "2 may not write to 4") {
		t.Fatalf("error frame %+v", f)
	}
	editor.SendTo("news", "darn good news")
	for _, c := range []*charttest.Client{reader, editor} {
		if m := c.NextMsg(); m.Content != "**** good news" || m.UserId != 1 {
			t.Fatalf("uid %d got %+v, want the filtered post (and nothing refused before it)", c.Uid, m)
		}
	}
	other.SendToUser(2, "hi")
	if m := reader.NextMsg(); m.Content != "hi" || m.UserId != 4 {
		t.Fatalf("got %+v, want 4's direct message first", m)
	}
	if m := charttest.Recv(t, a.Msgs, "SendMessage"); m.Content != "**** good news" {
		t.Fatalf("SendMessage got %+v first, want the accepted post", m)
	}
	if st := s.Hub.Stats(); st.MessagesRefused != 2 {
		t.Fatalf("refused %d, want 2", st.MessagesRefused)
	}
	a.NoErr(t) // a filter's refusal is the application's own decision
}

// TestFilterPanics: a panicking filter refuses the message and the
// connection lives on.
func TestFilterPanics(t *testing.T) {
	a := newApp()
	a.filter = func(c *chart.Conn, m *chart.Message) error {
		if m.Content == "boom" {
			panic("filter bug")
		}
		return nil
	}
	s := start(t, chart.Config{}, a)
	c := s.Login(t, a.Recorder, 1)
	s.Hub.JoinChannelIds(1, "r")
	c.SendTo("r", "boom")
	c.NextErr("refused")
	a.WantErr(t, chart.ErrCallbackPanic)
	c.SendTo("r", "fine")
	c.WantContent("fine")
}

// TestDisconnect: Disconnect closes every connection of a uid with 4001,
// and LogoutServer runs once.
func TestDisconnect(t *testing.T) {
	a := newApp()
	s := start(t, chart.Config{}, a)
	clients := []*charttest.Client{s.Login(t, a.Recorder, 5), s.Dial(t, 5), s.Dial(t, 5)}
	if err := s.Hub.Disconnect(5, "banned"); err != nil {
		t.Fatal(err)
	}
	for _, c := range clients {
		if code, text := c.CloseReason(); code != chart.CloseDisconnected || text != "banned" {
			t.Fatalf("close %d %q", code, text)
		}
	}
	if got := charttest.Recv(t, a.Logouts, "logout"); got != 5 {
		t.Fatalf("logout of %d", got)
	}
	s.Login(t, a.Recorder, 6).Close()
	if got := charttest.Recv(t, a.Logouts, "logout"); got != 6 {
		t.Fatalf("logout of %d, want 6 (a second logout of 5?)", got)
	}
	if err := s.Hub.Disconnect(99, "x"); !errors.Is(err, chart.ErrUserOffline) {
		t.Fatalf("Disconnect(99) = %v", err)
	}
}

// TestBroadcast reaches every online user, in a channel or not, as a
// system message.
func TestBroadcast(t *testing.T) {
	a := newApp()
	s := start(t, chart.Config{}, a)
	one, two := s.Login(t, a.Recorder, 1), s.Login(t, a.Recorder, 2)
	s.Hub.JoinChannelIds(1, "room")
	if err := s.Hub.Broadcast(chart.Message{ChannelId: "notice", UserId: 1, ToUserId: 2, Type: 9, Content: "maintenance at 22:00"}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*charttest.Client{one, two} {
		if m := c.NextMsg(); m.Content != "maintenance at 22:00" || m.UserId != 0 || m.ToUserId != 0 || m.ChannelId != "notice" || m.Type != 9 || m.SendTime == "" {
			t.Fatalf("uid %d got %+v", c.Uid, m)
		}
	}
	if err := s.Hub.Broadcast(chart.Message{ChannelId: strings.Repeat("x", 300)}); !errors.Is(err, chart.ErrInvalidChannel) {
		t.Fatalf("Broadcast with a bad channel id = %v", err)
	}
}

// TestUserChannelIdsDuringLogout: LogoutServer still sees the channels.
func TestUserChannelIdsDuringLogout(t *testing.T) {
	a := newApp()
	s := start(t, chart.Config{}, a)
	seen := make(chan []string, 1)
	a.onLogout = func(uid uint64) { seen <- s.Hub.UserChannelIds(uid) }
	c := s.Login(t, a.Recorder, 1)
	s.Hub.JoinChannelIds(1, "b", "a")
	c.Close()
	if got := charttest.Recv(t, seen, "logout"); !reflect.DeepEqual(got, []string{"a", "b"}) {
		t.Fatalf("UserChannelIds in LogoutServer = %v", got)
	}
	charttest.Eventually(t, "channels forgotten", func() bool { return s.Hub.UserChannelIds(1) == nil })
}

// slowLogout is a Handler whose LogoutServer takes a millisecond, as one
// that writes to a database would, and whose LoginServer joins "room".
type slowLogout struct {
	hub    *chart.Hub
	errors chan error
}

func (h *slowLogout) SendMessage(chart.Message) {}
func (h *slowLogout) LoginServer(uid uint64)    { h.hub.JoinChannelIds(uid, "room") }
func (h *slowLogout) LogoutServer(uint64)       { time.Sleep(time.Millisecond) }
func (h *slowLogout) ErrorLogServer(err error) {
	select {
	case h.errors <- err:
	default:
	}
}

// TestReconnectOrdering: a reconnecting user's first message is never
// refused because the previous connection's LogoutServer still runs: the
// new connection reads its first frame after its LoginServer.
func TestReconnectOrdering(t *testing.T) {
	hub := chart.New(chart.Config{Logger: quiet})
	h := &slowLogout{hub: hub, errors: make(chan error, 1000)}
	s := charttest.Serve(t, hub, h)
	for i := 0; i < 500; i++ {
		c := s.Dial(t, 1)
		c.SendTo("room", fmt.Sprint("first message ", i))
		if f := c.Next(); f.Error != "" || f.Content != fmt.Sprint("first message ", i) {
			t.Fatalf("reconnect %d: first message answered with %+v", i, f)
		}
		c.Close()
	}
	select {
	case err := <-h.errors:
		t.Fatalf("error reported: %v", err)
	default:
	}
}

// TestMaxConnsPerUid: past the cap a uid's oldest connections are closed
// with 4009; a flood of one uid's connections costs the cap, not the flood.
func TestMaxConnsPerUid(t *testing.T) {
	a := newApp()
	s := start(t, chart.Config{MaxConnsPerUid: 3}, a)
	var clients []*charttest.Client
	for i := 0; i < 5; i++ {
		clients = append(clients, s.Dial(t, 1))
	}
	for _, c := range clients[:2] {
		if code := c.CloseCode(); code != chart.CloseReplaced {
			t.Fatalf("oldest closed with %d, want %d", code, chart.CloseReplaced)
		}
	}
	s.Hub.JoinChannelIds(1, "room")
	s.Hub.Publish("room", chart.Message{Content: "to the newest three"})
	for _, c := range clients[2:] {
		c.WantContent("to the newest three")
	}

	// 1,000 connections of one uid with the default cap (32).
	rec := charttest.NewRecorder()
	s2 := start(t, chart.Config{}, rec)
	for i := 0; i < 1000; i++ {
		s2.Open(t, 7, nil) // nobody reads: the evicted ones do not answer their close
	}
	charttest.Eventually(t, "evicted connections gone", func() bool {
		return s2.Hub.Stats().Connections == chart.DefaultMaxConnsPerUid
	})
	s2.Hub.JoinChannelIds(7, "room")
	before := s2.Hub.Stats().MessagesOut
	s2.Hub.Publish("room", chart.Message{Content: "x"})
	if n := s2.Hub.Stats().MessagesOut - before; n != chart.DefaultMaxConnsPerUid {
		t.Fatalf("one message queued %d times, want %d", n, chart.DefaultMaxConnsPerUid)
	}
	if st := s2.Hub.Stats(); st.Disconnects.Application != 1000-chart.DefaultMaxConnsPerUid {
		t.Fatalf("disconnects %+v", st.Disconnects)
	}
}

// TestMaxConnsPerIP refuses a client IP's connections past the cap with
// 429, until one closes.
func TestMaxConnsPerIP(t *testing.T) {
	a := newApp()
	s := start(t, chart.Config{MaxConnsPerIP: 2}, a)
	first := s.Dial(t, 1)
	s.Dial(t, 2)
	if status := s.DialRefused(t, 3, nil); status != http.StatusTooManyRequests {
		t.Fatalf("third connection: HTTP %d, want 429", status)
	}
	a.WantErr(t, chart.ErrTooManyConns)
	first.Close()
	charttest.Eventually(t, "slot released", func() bool { return s.Hub.Stats().Connections == 1 })
	s.Dial(t, 3)
}

// TestOriginRefusalExplains: the refusal names what was compared and how
// to fix it.
func TestOriginRefusalExplains(t *testing.T) {
	a := newApp()
	s := start(t, chart.Config{}, a)
	host := strings.TrimPrefix(strings.TrimSuffix(s.URL, "/ws"), "ws://")
	for origin, want := range map[string]string{
		"http://app.example.com": `Origin "http://app.example.com" is not the request's Host "` + host + `": behind a reverse proxy, forward the Host with its port (nginx: proxy_set_header Host $http_host)`,
		"null":                   `page opened as a file sends Origin "null"`,
	} {
		if status := s.DialRefused(t, 1, http.Header{"Origin": {origin}}); status != http.StatusForbidden {
			t.Fatalf("Origin %s: HTTP %d", origin, status)
		}
		if err := a.WantErr(t, chart.ErrOriginNotAllowed); !strings.Contains(err.Error(), want) {
			t.Fatalf("refusal %q does not say %q", err, want)
		}
	}
}

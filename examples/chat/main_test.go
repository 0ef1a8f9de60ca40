package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
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

// The browser tests in e2e/ drive the page; these tests check the server's
// side of the contract over real sockets: sessions, the API's checks,
// join and leave requests (JoinServer), the online list's presence events,
// display names, and chat messages between clients.

// testEnv is one demo (its own hub) served on a free loopback port with the
// demo's own http.Server settings (newHTTPServer), timeouts included.
type testEnv struct {
	t   *testing.T
	a   *app
	srv *httptest.Server
}

func newEnv(t *testing.T, configure ...func(*options)) *testEnv {
	t.Helper()
	var o options
	for _, f := range configure {
		f(&o)
	}
	a := newApp(slog.New(slog.NewTextHandler(io.Discard, nil)), o)
	e := &testEnv{t: t, a: a, srv: startDemo(t, a.routes())}
	t.Cleanup(e.close)
	return e
}

// startDemo serves h on a free loopback port with newHTTPServer's settings.
func startDemo(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.Config = newHTTPServer(h)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

// close stops the server and the hub and waits for every connection's
// goroutines; tests that check for leaks call it before they return.
func (e *testEnv) close() {
	e.srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.a.hub.Shutdown(ctx); err != nil {
		e.t.Errorf("hub shutdown: %v", err)
	}
}

func (e *testEnv) base() string { return e.srv.URL }

// member is a signed-in user as a client sees it: its uid and cookie.
type member struct {
	UID    uint64 `json:"uid"`
	Name   string `json:"name"`
	cookie *http.Cookie
}

func (m member) header() http.Header {
	return http.Header{"Cookie": {m.cookie.String()}}
}

// call makes an API request and returns its status and body. body "" sends
// none; header adds to the request's headers.
func call(t *testing.T, base, method, path, body string, header http.Header) (*http.Response, []byte) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, base+path, r)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range header {
		req.Header[k] = v
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, b
}

// signIn signs name in at base and returns the session.
func signIn(t *testing.T, base, name string) member {
	t.Helper()
	body, _ := json.Marshal(nameRequest{Name: name})
	res, b := call(t, base, "POST", "/api/signin", string(body), nil)
	var m member
	if err := json.Unmarshal(b, &m); err != nil || res.StatusCode != http.StatusOK || m.UID == 0 {
		t.Fatalf("sign in %q: HTTP %d %s (%v)", name, res.StatusCode, b, err)
	}
	for _, c := range res.Cookies() {
		if c.Name == sessionCookie {
			m.cookie = c
		}
	}
	if m.cookie == nil {
		t.Fatalf("sign in %q: no %s cookie in %q", name, sessionCookie, res.Header["Set-Cookie"])
	}
	return m
}

// apiJSON makes an API request as m that must succeed, decoding the answer
// into out.
func apiJSON(t *testing.T, base string, m member, method, path string, in, out any) {
	t.Helper()
	body := ""
	if in != nil {
		b, _ := json.Marshal(in)
		body = string(b)
	}
	res, b := call(t, base, method, path, body, m.header())
	if res.StatusCode != http.StatusOK {
		t.Fatalf("%s %s as %d: HTTP %d %s", method, path, m.UID, res.StatusCode, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v in %s", method, path, err, b)
		}
	}
}

func channelsOf(t *testing.T, base string, m member) []string {
	t.Helper()
	var got channelsResponse
	apiJSON(t, base, m, "GET", "/api/channels", nil, &got)
	return got.Channels
}

// namesOf asks /api/names as m for the names of uids.
func namesOf(t *testing.T, base string, m member, uids ...uint64) map[string]string {
	t.Helper()
	ids := make([]string, len(uids))
	for i, u := range uids {
		ids[i] = fmt.Sprint(u)
	}
	var got namesResponse
	apiJSON(t, base, m, "GET", "/api/names?uids="+strings.Join(ids, ","), nil, &got)
	return got.Names
}

// client is a WebSocket client of the demo, as the page is.
type client struct {
	t  *testing.T
	ws *websocket.Conn
}

// dialer bounds the handshake and never goes through an HTTP proxy.
var dialer = websocket.Dialer{HandshakeTimeout: 5 * time.Second}

// dial opens a WebSocket to base's /ws (plus query) as m.
func dial(t *testing.T, base string, m member, query string, header http.Header) *client {
	t.Helper()
	h := m.header()
	for k, v := range header {
		h[k] = v
	}
	url := "ws" + strings.TrimPrefix(base, "http") + "/ws" + query
	ws, res, err := dialer.Dial(url, h)
	if err != nil {
		status := 0
		if res != nil {
			status = res.StatusCode
		}
		t.Fatalf("dial %s as %d: %v (HTTP %d)", url, m.UID, err, status)
	}
	res.Body.Close()
	c := &client{t: t, ws: ws}
	t.Cleanup(func() { ws.Close() })
	return c
}

// next reads frames until one matches, failing after a deadline.
func (c *client) next(what string, match func(chart.Message) bool) chart.Message {
	c.t.Helper()
	if err := c.ws.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
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

// frame is any frame the server sends, as far as these tests read it.
type frame struct {
	Presence  string   `json:"presence"`
	ChannelId string   `json:"channel_id"`
	UserIds   []uint64 `json:"user_ids"`
	More      bool     `json:"more"`
	Joined    string   `json:"joined"`
	Left      string   `json:"left"`
	Id        string   `json:"id"`
	Error     string   `json:"error"`
	Message   string   `json:"message"`
	Content   *string  `json:"content"`
	size      int
}

// nextFrame reads frames until one matches, failing after a deadline.
func (c *client) nextFrame(what string, match func(frame) bool) frame {
	c.t.Helper()
	if err := c.ws.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		c.t.Fatal(err)
	}
	for {
		_, data, err := c.ws.ReadMessage()
		if err != nil {
			c.t.Fatalf("waiting for %s: %v", what, err)
		}
		var f frame
		if err := json.Unmarshal(data, &f); err != nil {
			c.t.Fatalf("frame %q: %v", data, err)
		}
		f.size = len(data)
		if match(f) {
			return f
		}
	}
}

// nextDelta reads until the library's presence event kind ("join",
// "leave") of the presence channel names uid.
func (c *client) nextDelta(kind string, uid uint64) frame {
	c.t.Helper()
	return c.nextFrame(kind+" of "+fmt.Sprint(uid), func(f frame) bool {
		return f.Presence == kind && f.ChannelId == presenceChannel && slices.Contains(f.UserIds, uid)
	})
}

// loggedIn reads until the connection's member list of the presence
// channel, which LoginServer's join sends: the user is logged in, joined
// to its channels, and its name is known.
func (c *client) loggedIn() {
	c.t.Helper()
	c.nextFrame("the member list", func(f frame) bool {
		return f.Presence == "members" && f.ChannelId == presenceChannel && !f.More
	})
}

// request sends a join or leave request (op) for channel and returns the
// error code of its answer, "" when granted.
func (c *client) request(op, channel string) string {
	c.t.Helper()
	id := fmt.Sprintf("r%d", time.Now().UnixNano())
	if err := c.ws.WriteJSON(map[string]string{op: channel, "id": id}); err != nil {
		c.t.Fatal(err)
	}
	f := c.nextFrame(op+" "+channel, func(f frame) bool { return f.Id == id })
	want := map[string]string{"join": f.Joined, "leave": f.Left}[op]
	if f.Error == "" && want != channel {
		c.t.Fatalf("%s %q answered %+v", op, channel, f)
	}
	return f.Error
}

// mustRequest is request that must be granted.
func (c *client) mustRequest(op string, channels ...string) {
	c.t.Helper()
	for _, ch := range channels {
		if code := c.request(op, ch); code != "" {
			c.t.Fatalf("%s %q refused: %s", op, ch, code)
		}
	}
}

// closeCode reads until the connection closes and returns its close code.
func (c *client) closeCode() int {
	c.t.Helper()
	c.ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		if _, _, err := c.ws.ReadMessage(); err != nil {
			if ce, ok := err.(*websocket.CloseError); ok {
				return ce.Code
			}
			c.t.Fatalf("connection ended without a close frame: %v", err)
		}
	}
}

// waitFor polls cond every few milliseconds for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5 s", what)
		}
		<-tick.C
	}
}

// waitOffline waits until the hub has logged every uid out.
func (e *testEnv) waitOffline(uids ...uint64) {
	e.t.Helper()
	for _, uid := range uids {
		waitFor(e.t, fmt.Sprintf("uid %d offline", uid), func() bool { return !e.a.hub.IsOnline(uid) })
	}
}

// users returns how many users the demo keeps a display name for.
func (e *testEnv) users() int {
	e.a.mu.Lock()
	defer e.a.mu.Unlock()
	return len(e.a.users)
}

func TestSignIn(t *testing.T) {
	e := newEnv(t)
	ann := signIn(t, e.base(), "  Ann \n Lee ")
	if ann.Name != "Ann Lee" || ann.UID == 0 || ann.UID > maxUID {
		t.Errorf("signed in as %+v, want the name tidied and a uid from 1 to 2^53-1", ann)
	}
	c := ann.cookie
	if !c.HttpOnly || c.SameSite != http.SameSiteLaxMode || c.Path != "/" || c.Secure ||
		c.MaxAge != int(sessionTTL/time.Second) {
		t.Errorf("cookie %+v: want HttpOnly, SameSite=Lax, Path=/, not Secure over HTTP, Max-Age %v", c, sessionTTL)
	}
	var who sessionResponse
	apiJSON(t, e.base(), ann, "GET", "/api/session", nil, &who)
	if who.UID != ann.UID || who.Name != "Ann Lee" {
		t.Errorf("/api/session = %+v, want %+v", who, ann)
	}
	if again := signIn(t, e.base(), "Ann Lee"); again.UID == ann.UID {
		t.Errorf("two sign-ins as %q got the same uid %d", "Ann Lee", ann.UID)
	}

	for _, name := range []string{"", "   ", strings.Repeat("a", maxNameRunes+1), "Ann\x00Lee", "Ann\x1bLee", "Ann\u202eeeL",
		"zero\u200bwidth", "<b>", "a\u0301\u0301\u0301", "Ann@home"} {
		body, _ := json.Marshal(nameRequest{Name: name})
		res, b := call(t, e.base(), "POST", "/api/signin", string(body), nil)
		if res.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "invalid_name") || len(res.Cookies()) != 0 {
			t.Errorf("sign in as %q: HTTP %d %s, cookies %v; want 400 invalid_name and no cookie", name, res.StatusCode, b, res.Cookies())
		}
	}
	for _, name := range []string{"Zoë", "Zoe\u0308", "李雷", "O'Brien-Smith", "ann_2.0", strings.Repeat("é", maxNameRunes)} {
		if err := validName(name); err != nil {
			t.Errorf("validName(%q) = %v, want it accepted", name, err)
		}
	}
}

// TestSecureCookie: over TLS, or with -secure-cookie, the cookie is Secure.
func TestSecureCookie(t *testing.T) {
	a := newApp(slog.New(slog.NewTextHandler(io.Discard, nil)), options{})
	srv := httptest.NewTLSServer(a.routes())
	t.Cleanup(srv.Close)
	res, err := srv.Client().Post(srv.URL+"/api/signin", "application/json", strings.NewReader(`{"name":"Ann"}`))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if cs := res.Cookies(); len(cs) != 1 || !cs[0].Secure || !cs[0].HttpOnly {
		t.Errorf("over TLS: cookies %+v, want one Secure HttpOnly cookie", cs)
	}

	e := newEnv(t, func(o *options) { o.secureCookie = true })
	if m := signIn(t, e.base(), "Bob"); !m.cookie.Secure {
		t.Errorf("with -secure-cookie over HTTP: cookie %+v, want Secure", m.cookie)
	}
}

// TestSessionCookieChecked: a cookie that was altered, expired, or signed
// with another key is no session, for the API and the socket alike.
func TestSessionCookieChecked(t *testing.T) {
	e := newEnv(t)
	ann := signIn(t, e.base(), "Ann")
	other := newApp(slog.New(slog.NewTextHandler(io.Discard, nil)), options{})
	forged := other.sessions.encode(session{UID: ann.UID, Name: "Ann", Expires: time.Now().Add(time.Hour)})
	payload, sig, _ := strings.Cut(ann.cookie.Value, ".")
	flipped := []byte(sig)
	flipped[3] ^= 1
	// A payload naming uid 7, with Ann's signature.
	seven := e.a.sessions.encode(session{UID: 7, Name: "Ann", Expires: time.Now().Add(time.Hour)})
	sevenPayload, _, _ := strings.Cut(seven, ".")

	for name, value := range map[string]string{
		"other key":        forged,
		"altered mac":      payload + "." + string(flipped),
		"swapped payload":  sevenPayload + "." + sig,
		"no signature":     payload,
		"empty":            "",
		"garbage":          "x.y",
		"trailing byte":    e.a.sessions.encode(session{UID: 7, Name: "Ann", Expires: time.Now().Add(time.Hour)}) + "x",
		"expired (signed)": e.a.sessions.encode(session{UID: ann.UID, Name: "Ann", Expires: time.Now().Add(-time.Second)}),
	} {
		h := http.Header{"Cookie": {(&http.Cookie{Name: sessionCookie, Value: value}).String()}}
		if res, b := call(t, e.base(), "GET", "/api/session", "", h); res.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s: /api/session answered HTTP %d %s, want 401", name, res.StatusCode, b)
		}
		url := "ws" + strings.TrimPrefix(e.base(), "http") + "/ws"
		ws, res, err := dialer.Dial(url, h)
		if err == nil {
			ws.Close()
			t.Errorf("%s: the socket accepted the cookie", name)
		} else if res == nil || res.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s: dial %v, want 401", name, err)
		}
	}

	// The session's own expiry, as the server's clock sees it.
	e.a.sessions.now = func() time.Time { return time.Now().Add(sessionTTL + time.Minute) }
	if res, _ := call(t, e.base(), "GET", "/api/session", "", ann.header()); res.StatusCode != http.StatusUnauthorized {
		t.Errorf("after sessionTTL: HTTP %d, want 401", res.StatusCode)
	}
}

func TestSessionKey(t *testing.T) {
	if k, err := sessionKey(""); err != nil || len(k) != minKeyLen {
		t.Errorf("random key: %d bytes, %v", len(k), err)
	}
	if k, err := sessionKey("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="); err != nil || string(k) != "0123456789abcdef0123456789abcdef" {
		t.Errorf("base64 key: %q, %v", k, err)
	}
	for _, bad := range []string{"not base64!", "c2hvcnQ="} {
		if _, err := sessionKey(bad); err == nil {
			t.Errorf("sessionKey(%q) accepted", bad)
		}
	}
}

// TestSocketTakesUidFromSession: without a session the socket is refused;
// with one, a uid or a name in the URL is ignored.
func TestSocketTakesUidFromSession(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	e := newEnv(t)
	url := "ws" + strings.TrimPrefix(e.base(), "http") + "/ws?id=7&name=Mallory"
	if ws, res, err := dialer.Dial(url, nil); err == nil {
		ws.Close()
		t.Error("a socket without a session was accepted")
	} else if res == nil || res.StatusCode != http.StatusUnauthorized {
		t.Errorf("a socket without a session: %v, want 401", err)
	}

	ann := signIn(t, e.base(), "Ann")
	c := dial(t, e.base(), ann, "?id=7&name=Mallory", nil)
	c.loggedIn()
	if got := namesOf(t, e.base(), ann, ann.UID, 7); !maps.Equal(got, map[string]string{fmt.Sprint(ann.UID): "Ann"}) {
		t.Errorf("names = %v, want only Ann's, as signed in", got)
	}
	if e.a.hub.IsOnline(7) {
		t.Error("uid 7, from the URL, is online")
	}
	c.ws.Close()
	e.waitOffline(ann.UID)
	e.close()
}

// TestAPIRefusesForeignRequests: what a page of another origin can make a
// browser send, and what else the API does not accept, is refused and
// changes nothing.
func TestAPIRefusesForeignRequests(t *testing.T) {
	e := newEnv(t, func(o *options) { o.origins = []string{"http://friend.example"} })
	ann := signIn(t, e.base(), "Ann")
	c := dial(t, e.base(), ann, "", nil)
	c.loggedIn()
	before := channelsOf(t, e.base(), ann)

	own := e.base()
	withCookie := func(h http.Header) http.Header {
		h = h.Clone()
		if h == nil {
			h = http.Header{}
		}
		h.Set("Cookie", ann.cookie.String())
		return h
	}
	for _, tc := range []struct {
		name         string
		method, path string
		body         string
		header       http.Header
		status       int
		code         string
	}{
		{"foreign origin, JSON", "POST", "/api/signout", `{}`,
			http.Header{"Origin": {"http://evil.example"}}, 403, "forbidden_origin"},
		{"foreign origin, no-cors text/plain", "POST", "/api/signout", `{}`,
			http.Header{"Origin": {"http://evil.example"}, "Content-Type": {"text/plain;charset=UTF-8"}, "Sec-Fetch-Mode": {"no-cors"}}, 403, "forbidden_origin"},
		{"same site, other port", "POST", "/api/signout", `{}`,
			http.Header{"Origin": {"http://127.0.0.1:1"}}, 403, "forbidden_origin"},
		{"null origin", "POST", "/api/signout", `{}`,
			http.Header{"Origin": {"null"}}, 403, "forbidden_origin"},
		{"foreign sign-in", "POST", "/api/signin", `{"name":"Mallory"}`,
			http.Header{"Origin": {"http://evil.example"}}, 403, "forbidden_origin"},
		{"cross-site GET without Origin (an <img>)", "GET", "/api/channels", "",
			http.Header{"Sec-Fetch-Site": {"cross-site"}}, 403, "forbidden_origin"},
		{"same-site GET without Origin", "GET", "/api/names?uids=1", "",
			http.Header{"Sec-Fetch-Site": {"same-site"}}, 403, "forbidden_origin"},
		{"own origin, text/plain", "POST", "/api/signout", `{}`,
			http.Header{"Origin": {own}, "Content-Type": {"text/plain"}}, 415, "unsupported_media_type"},
		{"own origin, a form", "POST", "/api/signout", `x=1`,
			http.Header{"Origin": {own}, "Content-Type": {"application/x-www-form-urlencoded"}}, 415, "unsupported_media_type"},
		{"no content type", "POST", "/api/signout", `{}`,
			http.Header{"Content-Type": {""}}, 415, "unsupported_media_type"},
		{"a uid in the body", "POST", "/api/signout", `{"uid":7}`, nil, 400, "bad_request"},
		{"two objects", "POST", "/api/signout", `{}{}`, nil, 400, "bad_request"},
		{"too large", "POST", "/api/signin", `{"name":"` + strings.Repeat("a", maxBody) + `"}`, nil, 413, "too_large"},
		{"names: too many uids", "GET", "/api/names?uids=" + strings.Repeat("1,", maxNamesPerCall) + "1", "", nil, 400, "bad_request"},
		{"names: not a uid", "GET", "/api/names?uids=1,x", "", nil, 400, "bad_request"},
		// Joining and leaving are socket requests now: the API has none.
		{"no join API", "POST", "/api/join", `{"channels":["evil"]}`, nil, 405, ""},
		{"no leave API", "POST", "/api/leave", `{"channels":["lobby"]}`, nil, 405, ""},
	} {
		res, b := call(t, e.base(), tc.method, tc.path, tc.body, withCookie(tc.header))
		var got apiError
		json.Unmarshal(b, &got)
		if res.StatusCode != tc.status || got.Error != tc.code {
			t.Errorf("%s: HTTP %d %s, want %d %q", tc.name, res.StatusCode, b, tc.status, tc.code)
		}
		if res.Header.Get("Access-Control-Allow-Origin") != "" {
			t.Errorf("%s: answered with CORS headers", tc.name)
		}
	}
	if after := channelsOf(t, e.base(), ann); !slices.Equal(after, before) {
		t.Errorf("Ann's channels went from %q to %q", before, after)
	}
	if !e.a.hub.IsOnline(ann.UID) {
		t.Error("a refused sign-out closed Ann's connection")
	}
	if res, _ := call(t, e.base(), "GET", "/api/channels", "", nil); res.StatusCode != http.StatusUnauthorized {
		t.Errorf("/api/channels without a session: HTTP %d, want 401", res.StatusCode)
	}

	// A CORS preflight from a foreign origin is refused, so the browser
	// never sends the request itself; from an allowed origin it passes.
	res, _ := call(t, e.base(), "OPTIONS", "/api/signout", "", http.Header{"Origin": {"http://evil.example"}, "Access-Control-Request-Method": {"POST"}})
	if res.StatusCode != http.StatusForbidden || res.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("foreign preflight: HTTP %d, %q", res.StatusCode, res.Header.Get("Access-Control-Allow-Origin"))
	}
	res, _ = call(t, e.base(), "OPTIONS", "/api/signout", "", http.Header{"Origin": {"http://friend.example"}, "Access-Control-Request-Method": {"POST"}})
	if res.StatusCode != http.StatusNoContent || res.Header.Get("Access-Control-Allow-Origin") != "http://friend.example" ||
		res.Header.Get("Access-Control-Allow-Credentials") != "true" {
		t.Errorf("allowed preflight: HTTP %d, headers %v", res.StatusCode, res.Header)
	}
	res, b := call(t, e.base(), "GET", "/api/channels", "", withCookie(http.Header{"Origin": {"http://friend.example"}}))
	if res.StatusCode != http.StatusOK || res.Header.Get("Access-Control-Allow-Origin") != "http://friend.example" {
		t.Errorf("channels from an allowed origin: HTTP %d %s, headers %v", res.StatusCode, b, res.Header)
	}
	// The socket follows the same list.
	dial(t, e.base(), ann, "", http.Header{"Origin": {"http://friend.example"}}).ws.Close()
	ws, res, err := dialer.Dial("ws"+strings.TrimPrefix(e.base(), "http")+"/ws", withCookie(http.Header{"Origin": {"http://evil.example"}}))
	if err == nil {
		ws.Close()
		t.Error("a socket from a foreign origin was accepted")
	} else if res == nil || res.StatusCode != http.StatusForbidden {
		t.Errorf("a socket from a foreign origin: %v, want 403", err)
	}
}

// TestPresenceJoinsAndMessages: the online list is the library's presence
// events of the presence channel, names come from /api/names, channels
// change by the user's own join and leave requests within JoinServer's
// rules, messages go both ways, and clients cannot post to the presence
// channel nor join or leave it.
func TestPresenceJoinsAndMessages(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	e := newEnv(t)
	base := e.base()

	ann := signIn(t, base, "Ann")
	bob := signIn(t, base, "Bob")
	annC := dial(t, base, ann, "", nil)
	list := annC.nextFrame("Ann's member list", func(f frame) bool { return f.Presence == "members" })
	if list.ChannelId != presenceChannel || list.More || len(list.UserIds) != 0 {
		t.Errorf("Ann's first list %+v, want the presence channel's, empty (she comes in the next change)", list)
	}
	annC.nextDelta("join", ann.UID)
	bobC := dial(t, base, bob, "", nil)
	if f := annC.nextDelta("join", bob.UID); !slices.Equal(f.UserIds, []uint64{bob.UID}) {
		t.Errorf("Ann was told %+v, want Bob's join", f)
	}
	list = bobC.nextFrame("Bob's member list", func(f frame) bool { return f.Presence == "members" })
	if list.ChannelId != presenceChannel || !slices.Equal(list.UserIds, []uint64{ann.UID}) {
		t.Errorf("Bob's list %+v, want Ann", list)
	}
	want := map[string]string{fmt.Sprint(ann.UID): "Ann", fmt.Sprint(bob.UID): "Bob"}
	if got := namesOf(t, base, bob, ann.UID, bob.UID, 12345); !maps.Equal(got, want) {
		t.Errorf("/api/names = %v, want %v", got, want)
	}

	// Channels: everyone starts in the lobby; presence is not listed; a
	// join acts on the requesting user.
	annC.mustRequest("join", "go")
	if got := channelsOf(t, base, ann); !slices.Equal(got, []string{"go", "lobby"}) {
		t.Errorf("Ann's channels after joining go = %q, want [go lobby]", got)
	}
	if got := channelsOf(t, base, bob); !slices.Equal(got, []string{"lobby"}) {
		t.Errorf("Bob's channels = %q, want [lobby]: Ann's join is hers", got)
	}
	bobC.mustRequest("join", "go")
	for _, tc := range []struct{ op, channel, code string }{
		{"join", presenceChannel, "invalid_channel"},
		{"leave", presenceChannel, "invalid_channel"},
		{"join", " go", "invalid_channel"},
		{"join", "a\u0007b", "invalid_channel"},
		{"join", "a\u202eb", "invalid_channel"},
		{"join", strings.Repeat("x", maxChannelLen+1), "invalid_channel"},
	} {
		if code := bobC.request(tc.op, tc.channel); code != tc.code {
			t.Errorf("%s %q: %q, want %q", tc.op, tc.channel, code, tc.code)
		}
	}
	// At most maxChannels: Bob has 2.
	for i := range maxChannels - 2 {
		bobC.mustRequest("join", fmt.Sprintf("room %d", i))
	}
	if code := bobC.request("join", "one too many"); code != "too_many_channels" {
		t.Errorf("join past %d channels: %q, want too_many_channels", maxChannels, code)
	}
	if n := len(channelsOf(t, base, bob)); n != maxChannels {
		t.Errorf("Bob is in %d channels, want %d", n, maxChannels)
	}
	if !slices.Contains(e.a.hub.UserChannelIds(bob.UID), presenceChannel) {
		t.Error("Bob left the presence channel")
	}

	if err := annC.ws.WriteJSON(map[string]any{"channel_id": "go", "content": "hi <b>Bob</b>", "type": 3}); err != nil {
		t.Fatal(err)
	}
	got := bobC.next("Ann's message", func(m chart.Message) bool { return m.ChannelId == "go" })
	if got.UserId != ann.UID || got.Content != "hi <b>Bob</b>" || got.SendTime == "" {
		t.Errorf("Bob got %+v, want Ann's message as sent", got)
	}

	// A client's post to the presence channel is refused, not delivered.
	fake := `{"presence":"join","channel_id":"presence","user_ids":[7]}`
	if err := annC.ws.WriteJSON(map[string]any{"channel_id": presenceChannel, "content": fake, "type": 1}); err != nil {
		t.Fatal(err)
	}
	if f := annC.nextFrame("the refusal", func(f frame) bool { return f.Error != "" }); f.Error != "read_only" {
		t.Errorf("a post to presence answered with %+v, want read_only", f)
	}
	annC.ws.WriteJSON(map[string]any{"channel_id": "go", "content": "after the fake", "type": 3})
	m := bobC.next("the next message", func(m chart.Message) bool { return m.ChannelId != lobbyChannel })
	if m.Content != "after the fake" {
		t.Errorf("Bob got %+v, want the message after the refused post", m)
	}

	for _, ch := range channelsOf(t, base, bob) {
		bobC.mustRequest("leave", ch)
	}
	if got := channelsOf(t, base, bob); len(got) != 0 {
		t.Errorf("Bob's channels after leaving all = %q, want none", got)
	}
	if got := channelsOf(t, base, ann); !slices.Equal(got, []string{"go", "lobby"}) {
		t.Errorf("Ann's channels = %q after Bob left his, want [go lobby]", got)
	}

	bobC.ws.Close()
	if f := annC.nextDelta("leave", bob.UID); !slices.Equal(f.UserIds, []uint64{bob.UID}) {
		t.Errorf("Ann was told %+v, want Bob's leave", f)
	}
	if got := namesOf(t, base, ann, bob.UID); len(got) != 0 {
		t.Errorf("Bob's name after he left: %v, want none", got)
	}
	annC.ws.Close()
	e.waitOffline(ann.UID, bob.UID)
	if n := e.users(); n != 0 {
		t.Errorf("%d display names kept after everyone left, want 0", n)
	}
	e.close()
}

// TestNamesNeverFromURL: plain GETs of /ws with names in the URL, signed in
// or not, change no name and keep nothing (the review grew the old demo's
// name map by 73 MB with 200,000 of them).
func TestNamesNeverFromURL(t *testing.T) {
	e := newEnv(t)
	ann := signIn(t, e.base(), "Ann")
	annC := dial(t, e.base(), ann, "", nil)
	annC.loggedIn()
	for i := range 500 {
		h := http.Header(nil)
		if i%2 == 0 {
			h = ann.header()
		}
		res, _ := call(t, e.base(), "GET", fmt.Sprintf("/ws?id=%d&name=Mallory%d", ann.UID, i), "", h)
		if res.StatusCode == http.StatusOK || res.StatusCode == http.StatusSwitchingProtocols {
			t.Fatalf("plain GET of /ws: HTTP %d", res.StatusCode)
		}
	}
	if n := e.users(); n != 1 {
		t.Errorf("%d users kept, want 1 (Ann)", n)
	}
	if got := namesOf(t, e.base(), ann, ann.UID); got[fmt.Sprint(ann.UID)] != "Ann" {
		t.Errorf("names = %v, want Ann as signed in", got)
	}
}

// TestNamesDroppedAtLogout: a display name is kept while its user has a
// connection; many users coming and going leave nothing behind.
func TestNamesDroppedAtLogout(t *testing.T) {
	e := newEnv(t)
	var uids []uint64
	for i := range 50 {
		m := signIn(t, e.base(), fmt.Sprintf("user %d", i))
		c := dial(t, e.base(), m, "", nil)
		c.loggedIn()
		if i%2 == 0 {
			dial(t, e.base(), m, "", nil).ws.Close() // a second connection, closed first
		}
		c.ws.Close()
		uids = append(uids, m.UID)
	}
	e.waitOffline(uids...)
	waitFor(t, "no display name kept", func() bool { return e.users() == 0 })
}

// TestManyLoginsStayLinear: 300 users log in while none of them reads. With
// the whole online list pushed on every login (the old demo), the first of
// them would be sent 1.6 MB for it, n² in all (the review's 500 users
// logging in at 50/s were all closed as slow consumers); the library's
// presence events gather the logins of each window (200 ms) into one frame.
// Every connection stays open, and the first user's list, made from the
// frames it gets, ends with everyone.
func TestManyLoginsStayLinear(t *testing.T) {
	const n = 300
	e := newEnv(t)
	url := "ws" + strings.TrimPrefix(e.base(), "http") + "/ws"
	conns := make([]*websocket.Conn, n)
	uids := make([]uint64, n)
	for i := range conns {
		uids[i] = uint64(1000 + i)
		value := e.a.sessions.encode(session{UID: uids[i], Name: fmt.Sprintf("user %d", i), Expires: time.Now().Add(time.Hour)})
		ws, _, err := dialer.Dial(url, http.Header{"Cookie": {sessionCookie + "=" + value}})
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conns[i] = ws
		t.Cleanup(func() { ws.Close() })
	}
	waitFor(t, "everyone logged in", func() bool { return len(e.a.hub.ChannelUserIds(presenceChannel)) == n })
	st := e.a.hub.Stats()
	if st.Disconnects.SlowConsumer != 0 || st.Connections != n {
		t.Fatalf("after %d logins: %d connections, %d closed as slow consumers; want %d, 0", n, st.Connections, st.Disconnects.SlowConsumer, n)
	}

	first := &client{t: t, ws: conns[0]}
	list := map[uint64]bool{}
	frames, named, bytes := 0, 0, 0
	for len(list) < n {
		f := first.nextFrame(fmt.Sprintf("presence (%d of %d online)", len(list), n), func(f frame) bool { return f.Presence != "" })
		if f.ChannelId != presenceChannel {
			t.Fatalf("presence of %q", f.ChannelId)
		}
		frames, named, bytes = frames+1, named+len(f.UserIds), bytes+f.size
		switch f.Presence {
		case "members":
			clear(list)
			fallthrough
		case "join":
			for _, u := range f.UserIds {
				list[u] = true
			}
		default:
			t.Fatalf("a %q frame while users only log in: %+v", f.Presence, f)
		}
	}
	for _, u := range uids {
		if !list[u] {
			t.Fatalf("uid %d missing from user 0's list", u)
		}
	}
	// One frame per window: the dials took a few seconds at most.
	t.Logf("user 0: %d presence frames, %d uids, %d bytes for %d logins", frames, named, bytes, n)
	if named != n || frames > 60 {
		t.Errorf("user 0 got %d frames naming %d uids, want each of the %d once, in a frame per window", frames, named, n)
	}
}

// TestSignOut: signing out clears the cookie and closes the user's
// connections with 4001, which clients do not reconnect after.
func TestSignOut(t *testing.T) {
	e := newEnv(t)
	ann := signIn(t, e.base(), "Ann")
	c1 := dial(t, e.base(), ann, "", nil)
	c1.loggedIn()
	c2 := dial(t, e.base(), ann, "", nil)
	// The dial returns at the handshake's answer; the hub registers the
	// connection right after. (One that registers after the sign-out lives
	// on: a stateless session cannot be revoked, see session.go.)
	waitFor(t, "both connections registered", func() bool { return e.a.hub.Stats().Connections == 2 })
	res, b := call(t, e.base(), "POST", "/api/signout", `{}`, ann.header())
	if res.StatusCode != http.StatusOK {
		t.Fatalf("sign out: HTTP %d %s", res.StatusCode, b)
	}
	if cs := res.Cookies(); len(cs) != 1 || cs[0].Name != sessionCookie || cs[0].MaxAge >= 0 || cs[0].Value != "" {
		t.Errorf("sign-out cookies %+v, want %s cleared", cs, sessionCookie)
	}
	for i, c := range []*client{c1, c2} {
		if code := c.closeCode(); code != chart.CloseDisconnected {
			t.Errorf("connection %d closed with %d, want %d", i+1, code, chart.CloseDisconnected)
		}
	}
	e.waitOffline(ann.UID)
}

// TestSessionExpiryClosesSocket: a connection ends with 4002 when its
// session does, and the client is then refused until it signs in again.
func TestSessionExpiryClosesSocket(t *testing.T) {
	e := newEnv(t)
	// A session signed now that ends in 1 to 2 s (expiries are whole seconds).
	e.a.sessions.now = func() time.Time { return time.Now().Add(2*time.Second - sessionTTL) }
	ann := signIn(t, e.base(), "Ann")
	e.a.sessions.now = time.Now
	c := dial(t, e.base(), ann, "", nil)
	if code := c.closeCode(); code != chart.CloseExpired {
		t.Errorf("closed with %d, want %d", code, chart.CloseExpired)
	}
	ws, res, err := dialer.Dial("ws"+strings.TrimPrefix(e.base(), "http")+"/ws", ann.header())
	if err == nil {
		ws.Close()
		t.Error("the expired session connected again")
	} else if res == nil || res.StatusCode != http.StatusUnauthorized {
		t.Errorf("reconnecting with an expired session: %v, want 401", err)
	}
}

// TestSignInElsewhereSignsOut: signing in again in the same browser (with
// its cookie) closes the previous user's connections.
func TestSignInElsewhereSignsOut(t *testing.T) {
	e := newEnv(t)
	ann := signIn(t, e.base(), "Ann")
	c := dial(t, e.base(), ann, "", nil)
	c.loggedIn()
	res, b := call(t, e.base(), "POST", "/api/signin", `{"name":"Bob"}`, ann.header())
	if res.StatusCode != http.StatusOK {
		t.Fatalf("second sign-in: HTTP %d %s", res.StatusCode, b)
	}
	if code := c.closeCode(); code != chart.CloseDisconnected {
		t.Errorf("Ann's connection closed with %d, want %d", code, chart.CloseDisconnected)
	}
}

// TestHTTPServerLimits: every timeout and the header bound are set, and a
// client sending its body slowly is dropped after ReadTimeout.
func TestHTTPServerLimits(t *testing.T) {
	s := newHTTPServer(http.NotFoundHandler())
	if s.ReadHeaderTimeout <= 0 || s.ReadTimeout <= 0 || s.WriteTimeout <= 0 || s.IdleTimeout <= 0 ||
		s.MaxHeaderBytes <= 0 || s.MaxHeaderBytes > 64<<10 {
		t.Fatalf("newHTTPServer: %+v; want every timeout and MaxHeaderBytes set", s)
	}

	a := newApp(slog.New(slog.NewTextHandler(io.Discard, nil)), options{})
	h := a.routes()
	srv := httptest.NewUnstartedServer(h)
	srv.Config = newHTTPServer(h)
	srv.Config.ReadTimeout = 300 * time.Millisecond
	srv.Start()
	t.Cleanup(srv.Close)
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /api/signin HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
	start := time.Now()
	ended := make(chan struct{}) // the server answered or closed
	go func() {
		defer close(ended)
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		io.Copy(io.Discard, conn)
	}()
	// One byte of body every 50 ms, until the server gives up.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for done := false; !done; {
		select {
		case <-ended:
			done = true
		case <-tick.C:
			conn.Write([]byte(" "))
		}
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("a slow body held the connection for %v with ReadTimeout 300 ms", d)
	}
}

// TestServerTimeoutsSpareWebSockets checks what newHTTPServer's comment
// claims: http.Server's timeouts end at the upgrade. With every one of them
// cut to 100 ms, a WebSocket still carries messages well after that.
func TestServerTimeoutsSpareWebSockets(t *testing.T) {
	a := newApp(slog.New(slog.NewTextHandler(io.Discard, nil)), options{})
	h := a.routes()
	srv := httptest.NewUnstartedServer(h)
	srv.Config = newHTTPServer(h)
	const short = 100 * time.Millisecond
	c := srv.Config
	c.ReadHeaderTimeout, c.ReadTimeout, c.WriteTimeout, c.IdleTimeout = short, short, short, short
	srv.Start()
	t.Cleanup(srv.Close)

	ann := signIn(t, srv.URL, "Ann")
	annC := dial(t, srv.URL, ann, "", nil)
	annC.loggedIn()
	// Not synchronisation: the point is to let every server timeout pass.
	time.Sleep(3 * short)
	if err := annC.ws.WriteJSON(map[string]any{"channel_id": lobbyChannel, "content": "still here"}); err != nil {
		t.Fatal(err)
	}
	got := annC.next("own message", func(m chart.Message) bool { return m.ChannelId == lobbyChannel })
	if got.UserId != ann.UID || got.Content != "still here" {
		t.Errorf("got %+v, want Ann's message back", got)
	}
}

// TestClientScriptAndConfig checks what the page loads besides itself: the
// library's client at /chart.js, its timing at /api/config, and the page's
// security headers.
func TestClientScriptAndConfig(t *testing.T) {
	e := newEnv(t, func(o *options) {
		o.client = clientOptions{Heartbeat: 500, HeartbeatTimeout: 1500, MaxDelay: 1000}
	})
	srv := e.srv

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

	// The page imports it from there, and connects to /ws with nothing in
	// the URL.
	res, err = http.Get(srv.URL + "/app.js")
	if err != nil {
		t.Fatal(err)
	}
	app, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if !strings.Contains(string(app), `from '/chart.js'`) || strings.Contains(string(app), "/ws?") {
		t.Errorf("/app.js does not import /chart.js, or puts something in the socket's URL")
	}
	res, err = http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if csp := res.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") {
		t.Errorf("the page's Content-Security-Policy is %q", csp)
	}

	res, b := call(t, srv.URL, "GET", "/api/config?heartbeat=1", "", nil)
	var got clientOptions
	err = json.Unmarshal(b, &got)
	if err != nil || got != e.a.client || res.Header.Get("Cache-Control") != "no-store" {
		t.Errorf("/api/config = %+v (%v, Cache-Control %q), want %+v, no-store; the query changes nothing",
			got, err, res.Header.Get("Cache-Control"), e.a.client)
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

func TestParseOrigins(t *testing.T) {
	got, err := parseOrigins(" https://App.example.com , http://localhost:3000,")
	if err != nil || !slices.Equal(got, []string{"https://app.example.com", "http://localhost:3000"}) {
		t.Errorf("parseOrigins = %q, %v", got, err)
	}
	for _, bad := range []string{"*", "app.example.com", "https://a.example/path", "ftp://a.example", "https://"} {
		if _, err := parseOrigins(bad); err == nil {
			t.Errorf("parseOrigins(%q) accepted", bad)
		}
	}
}

// TestChannelsRememberedAcrossReconnect: a user who reconnects is back in
// the channels they had before their page's first frame is read, so that
// a chart.js page recovers what was sent there meanwhile.
func TestChannelsRememberedAcrossReconnect(t *testing.T) {
	e := newEnv(t)
	ann := signIn(t, e.base(), "Ann")
	c := dial(t, e.base(), ann, "", nil)
	c.loggedIn()
	c.mustRequest("join", "go")
	c.mustRequest("leave", lobbyChannel)
	c.ws.Close()
	e.waitOffline(ann.UID)

	c = dial(t, e.base(), ann, "", nil)
	c.loggedIn()
	if got := channelsOf(t, e.base(), ann); !slices.Equal(got, []string{"go"}) {
		t.Errorf("channels after reconnecting = %q, want [go]: the ones Ann had, lobby left", got)
	}
	if !slices.Contains(e.a.hub.UserChannelIds(ann.UID), presenceChannel) {
		t.Errorf("Ann is not back in the presence channel: %q", e.a.hub.UserChannelIds(ann.UID))
	}
}

// TestRememberExpiresAndIsBounded: channels are kept for rememberFor, for
// maxRemembered users, maxRememberedChannels each.
func TestRememberExpiresAndIsBounded(t *testing.T) {
	a := newApp(slog.New(slog.NewTextHandler(io.Discard, nil)), options{})
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

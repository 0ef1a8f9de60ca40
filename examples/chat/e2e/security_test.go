package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/gorilla/websocket"
)

// These tests attack the demo from real Chromium, as the review of issue 14
// did: pages of other origins in the victim's browser, a client posting to
// the presence channel.

// awaitPromise makes chromedp.Evaluate wait for the promise the expression
// returns.
func awaitPromise(p *runtime.EvaluateParams) *runtime.EvaluateParams { return p.WithAwaitPromise(true) }

// attackJS is what a page of another origin makes its visitor's browser
// send to the demo at demo, with the visitor's cookies: the requests an
// HTML page can send without asking anyone (no-cors fetches with a
// text/plain body, an <img>), a JSON request (which needs a CORS preflight),
// reads of the API, and a WebSocket. It resolves to what the page could
// see of each.
const attackJS = `(async (demo, uid) => {
	const out = {};
	const attempt = async (name, path, opts) => {
		try {
			const r = await fetch(demo + path, Object.assign({credentials: "include"}, opts));
			out[name] = r.type + " " + r.status;
		} catch (e) {
			out[name] = e.name;
		}
	};
	const text = (body) => ({method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"}, body: JSON.stringify(body)});
	await attempt("signout", "/api/signout", text({}));
	await attempt("signin", "/api/signin", text({name: "Mallory"}));
	await attempt("signout-json", "/api/signout", {method: "POST", headers: {"Content-Type": "application/json"}, body: "{}"});
	await attempt("read-channels", "/api/channels", {});
	await attempt("read-session", "/api/session", {});
	await attempt("read-names", "/api/names?uids=" + uid, {});
	// Joining and leaving are requests over the socket: the page would
	// send them once it opened.
	out.ws = await new Promise((resolve) => {
		const ws = new WebSocket(demo.replace(/^http/, "ws") + "/ws");
		ws.onopen = () => {
			ws.send(JSON.stringify({leave: "gophers"}));
			ws.send(JSON.stringify({join: "evil"}));
			resolve("open");
			ws.close();
		};
		ws.onclose = (e) => resolve("closed " + e.code);
	});
	out.img = await new Promise((resolve) => {
		const img = new Image();
		img.onload = () => resolve("load");
		img.onerror = () => resolve("error");
		img.src = demo + "/ws?id=" + uid + "&name=Mallory";
		document.body.append(img);
	});
	return out;
})`

// TestForeignPagesChangeNothing: while Ann is signed in, pages of two other
// origins open in another tab of her browser (a page on another port of the
// same host, which is the same site, so her SameSite=Lax cookie goes with
// its requests; and one on another site) and try to sign her out or in as
// someone else, read her channels and names, open a socket as her (to leave
// and join channels for her), and rename her with
// <img src=/ws?id=...&name=Mallory>.
// The demo refuses each (its log says so), and nothing changes: her
// channels, her session, her connection, her name as Bob sees it.
func TestForeignPagesChangeNothing(t *testing.T) {
	requireChromium(t)
	root := repoRoot(t)
	bin := buildDemo(t, root)
	srv := newDemoServer(t, bin, freeAddr(t))
	srv.start()
	foreign := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		io.WriteString(w, "<!doctype html><title>somewhere else</title><p>nothing to see</p>")
	}))
	t.Cleanup(foreign.Close)
	_, port, _ := net.SplitHostPort(foreign.Listener.Addr().String())

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	annBrowser := newBrowser(t, ctx, 1280, 800)
	ann := newPage(t, annBrowser, "Ann")
	bob := newPage(t, newBrowser(t, ctx, 1280, 800), "Bob")
	annUID := ann.login(srv.URL(), "Ann")
	bobUID := bob.login(srv.URL(), "Bob")
	ann.join(channel)
	bob.waitOnline(annUID, bobUID)
	before := ann.channelsFromServer()
	if !slices.Equal(before, []string{channel, "lobby"}) {
		t.Fatalf("Ann's channels = %q, want [%s lobby]", before, channel)
	}
	for _, origin := range []string{"http://127.0.0.1:" + port, "http://localhost:" + port} {
		t.Log("a page at " + origin + " in a tab of Ann's browser")
		evil := newPage(t, newTab(t, annBrowser), "page at "+origin)
		evil.run("open the foreign page", chromedp.Navigate(origin+"/"))
		var got map[string]string
		evil.run("attack", chromedp.Evaluate(attackJS+fmt.Sprintf("(%s, %d)", jsString(srv.URL()), annUID), &got, awaitPromise))
		t.Logf("what the page at %s saw: %v", origin, got)
		want := map[string]string{
			// Sent, refused; a no-cors answer is opaque to the page.
			"signout": "opaque 0", "signin": "opaque 0",
			// The preflight is refused: the request is never sent.
			"signout-json": "TypeError",
			// Without CORS headers the page cannot read an answer.
			"read-channels": "TypeError", "read-session": "TypeError", "read-names": "TypeError",
			// The socket is refused (403 for the origin, or 401 without the
			// cookie on another site): it never opens.
			"ws": "closed 1006",
			// No image, and no name taken from the URL.
			"img": "error",
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("page at %s: %s gave %q, want %q", origin, k, got[k], v)
			}
		}
		// The server saw and refused each request that was sent.
		for _, path := range []string{"/api/signout", "/api/signin"} {
			line := `msg="api refused" code=forbidden_origin method=POST path=` + path + ` origin=` + origin
			if !strings.Contains(srv.logs.String(), line) {
				t.Errorf("the demo did not log %s", line)
			}
		}
	}

	t.Log("nothing changed for Ann")
	if after := ann.channelsFromServer(); !slices.Equal(after, before) {
		t.Errorf("Ann's channels went from %q to %q", before, after)
	}
	if got := ann.channels(); !slices.Equal(got, before) {
		t.Errorf("Ann's page lists %q, want %q", got, before)
	}
	if status, body := ann.fetchJSON("GET", "/api/session", nil); status != http.StatusOK || body["uid"] != float64(annUID) || body["name"] != "Ann" {
		t.Errorf("Ann's session after the attacks: HTTP %d %v, want uid %d, Ann", status, body, annUID)
	}
	if got := ann.connection(); got != "open" {
		t.Errorf("Ann's connection is %q, want open", got)
	}

	// A later login reaches Bob after anything the attacks could have
	// changed (presence events arrive in order): then his list still shows
	// Ann under her own name, and Mallory nowhere.
	dan := signInHTTP(t, srv.URL(), "Dan")
	dial(t, srv.URL(), dan)
	bob.waitOnline(dan.UID)
	var text string
	bob.eval("Bob's page", `document.body.textContent`, &text)
	if strings.Contains(text, "Mallory") {
		t.Errorf("Bob's page shows Mallory: %q", text)
	}
	if got := bob.onlineTexts(); !containsAll(got, "Ann", fmt.Sprint(annUID)) {
		t.Errorf("Bob's online list %q does not show Ann (%d) by her name", got, annUID)
	}
}

// TestPresenceIsReadOnly: a client of Ann's (a second chart.js client in
// her tab, with her session) posts a fake presence event to the presence
// channel, and asks to leave it and to join it again: the server refuses
// each (read_only, invalid_channel), Bob's list never shows the fake, and
// Ann stays in his list.
func TestPresenceIsReadOnly(t *testing.T) {
	requireChromium(t)
	root := repoRoot(t)
	bin := buildDemo(t, root)
	srv := newDemoServer(t, bin, freeAddr(t))
	srv.start()

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	ann := newPage(t, newBrowser(t, ctx, 1280, 800), "Ann")
	bob := newPage(t, newBrowser(t, ctx, 1280, 800), "Bob")
	annUID := ann.login(srv.URL(), "Ann")
	bobUID := bob.login(srv.URL(), "Bob")
	bob.waitOnline(annUID, bobUID)

	var got string
	ann.run("post to presence", chromedp.Evaluate(`(async () => {
		const { Chart } = await import("/chart.js");
		const c = new Chart(location.origin.replace(/^http/, "ws") + "/ws");
		const fake = {presence: "join", channel_id: "presence", user_ids: [7]};
		try {
			await c.send({channel_id: "presence", content: JSON.stringify(fake), type: 1});
			return "delivered";
		} catch (e) {
			return e.code;
		} finally {
			c.close();
		}
	})()`, &got, awaitPromise))
	if got != "read_only" {
		t.Errorf("a client's post to presence: %q, want refused with read_only", got)
	}
	for _, req := range []string{`c.leave("presence")`, `c.join("presence")`} {
		if got := ann.otherClient(req); got != "invalid_channel" {
			t.Errorf("%s: %q, want refused with invalid_channel", req, got)
		}
	}

	dan := signInHTTP(t, srv.URL(), "Dan")
	dial(t, srv.URL(), dan)
	bob.waitOnline(dan.UID)
	var seven bool
	bob.eval("uid 7", `[...document.querySelectorAll('[data-testid="online"]')].some(e => e.dataset.uid === "7" || e.textContent.includes("Mallory"))`, &seven)
	if seven {
		t.Errorf("Bob's online list shows the fake: %q", bob.onlineTexts())
	}
}

// TestSignInFlow: the sign-in form, the session cookie (HttpOnly,
// SameSite=Lax), a reload, a second tab of the same browser, signing out in
// one tab (the other follows) and signing in as someone else (the other
// tab follows too).
func TestSignInFlow(t *testing.T) {
	requireChromium(t)
	root := repoRoot(t)
	bin := buildDemo(t, root)
	srv := newDemoServer(t, bin, freeAddr(t))
	srv.start()

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	browser := newBrowser(t, ctx, 1280, 800)
	one := newPage(t, browser, "tab 1")
	two := newPage(t, newTab(t, browser), "tab 2")
	t.Cleanup(func() {
		for _, p := range []*page{one, two} {
			if errs := p.jsErrors(); len(errs) > 0 {
				t.Errorf("%s: uncaught JavaScript exceptions: %q", p.name, errs)
			}
		}
	})

	t.Log("a name the server refuses is explained on the form")
	one.run("open page", chromedp.Navigate(srv.URL()+"/"), chromedp.WaitVisible(tid("login-name"), chromedp.ByQuery))
	one.fill("login-name", "<b>Ann</b>")
	one.click(tid("login-submit"))
	one.waitFor("the error", `!document.getElementById("login-error").hidden &&
		document.getElementById("login-error").textContent.includes("letters, digits")`)

	t.Log("sign in: a uid from the server, the name tidied, an HttpOnly cookie")
	uid := one.signIn("  Ann   Lee ")
	var name, cookie string
	one.eval("name", `document.getElementById("me-name").textContent`, &name)
	one.eval("document.cookie", `document.cookie`, &cookie)
	if name != "Ann Lee" || strings.Contains(cookie, "chat_session") {
		t.Errorf("shown as %q, document.cookie %q; want Ann Lee, and the session invisible to scripts", name, cookie)
	}
	var cookies []*network.Cookie
	one.run("cookies", chromedp.ActionFunc(func(ctx context.Context) error {
		var err error
		cookies, err = network.GetCookies().WithURLs([]string{srv.URL()}).Do(ctx)
		return err
	}))
	if len(cookies) != 1 || cookies[0].Name != "chat_session" || !cookies[0].HTTPOnly ||
		cookies[0].SameSite != network.CookieSameSiteLax || cookies[0].Secure {
		t.Errorf("cookies %+v, want chat_session, HttpOnly, SameSite=Lax, not Secure over http", cookies)
	}

	t.Log("a reload and a second tab are the same user")
	one.run("reload", chromedp.Reload())
	one.waitReady()
	two.run("open page", chromedp.Navigate(srv.URL()+"/"))
	two.waitReady()
	if a, b := one.uid(), two.uid(); a != uid || b != uid {
		t.Errorf("after a reload %d, in a second tab %d; want %d", a, b, uid)
	}

	t.Log("signing out in one tab signs the other out")
	two.click("#logout")
	two.waitFor("sign-in form", `!document.getElementById("login-screen").hidden`)
	one.waitFor("sign-in form", `!document.getElementById("login-screen").hidden &&
		document.getElementById("login-error").textContent.includes("another tab")`)

	t.Log("signing in again gives a new uid; signing in as someone else in the other tab follows")
	again := one.signIn("Ann")
	if again == uid {
		t.Errorf("signed in again with uid %d, the one that signed out", uid)
	}
	bob := two.signIn("Bob")
	one.waitReady()
	one.waitFor("tab 1 shows Bob", `document.getElementById("me-name").textContent === "Bob"`)
	if got := one.uid(); got != bob || bob == again {
		t.Errorf("tab 1 shows uid %d, want Bob's %d (Ann had %d)", got, bob, again)
	}
}

// member is a user signed in over HTTP, outside any browser.
type member struct {
	UID    uint64 `json:"uid"`
	Name   string `json:"name"`
	cookie string
}

// signInHTTP signs name in at base as a program would.
func signInHTTP(t *testing.T, base, name string) member {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"name": name})
	res, err := http.Post(base+"/api/signin", "application/json", strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var m member
	if err := json.NewDecoder(res.Body).Decode(&m); err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("sign in %q: HTTP %d, %v", name, res.StatusCode, err)
	}
	for _, c := range res.Cookies() {
		if c.Name == "chat_session" {
			m.cookie = c.Name + "=" + c.Value
		}
	}
	return m
}

// wsClient is a program's WebSocket connection to the demo.
type wsClient struct {
	m  member
	ws *websocket.Conn
}

func dial(t *testing.T, base string, m member) *wsClient {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	ws, res, err := d.Dial("ws"+strings.TrimPrefix(base, "http")+"/ws", http.Header{"Cookie": {m.cookie}})
	if err != nil {
		t.Fatalf("dial as %s: %v", m.Name, err)
	}
	res.Body.Close()
	t.Cleanup(func() { ws.Close() })
	return &wsClient{m: m, ws: ws}
}

func (c *wsClient) send(to uint64, content string) error {
	return c.ws.WriteJSON(map[string]any{"to_user_id": to, "content": content, "type": 3})
}

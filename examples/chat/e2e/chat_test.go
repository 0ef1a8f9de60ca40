package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

const (
	channel   = "gophers"
	injection = `<img src=x onerror="window.__pwned=1">`
)

// TestChatInBrowsers signs users in from separate Chromium processes
// and checks what each of them sees: channel messages both ways in order,
// the online list kept by the library's presence events on login and
// logout, joining and leaving channels from the page (requests over the
// socket), unread counts, direct messages, an error frame, a refused join,
// HTML injection rendered as text, recovery from a server restart, and a
// phone-sized layout. Ann and Bob take
// part throughout; Cleo, a third browser, joins the conversation and then
// signs out.
func TestChatInBrowsers(t *testing.T) {
	requireChromium(t)
	root := repoRoot(t)
	bin := buildDemo(t, root)
	srv := newDemoServer(t, bin, freeAddr(t))
	srv.start()

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	ann := newPage(t, newBrowser(t, ctx, 1280, 800), "Ann")
	bob := newPage(t, newBrowser(t, ctx, 1280, 800), "Bob")
	cleo := newPage(t, newBrowser(t, ctx, 1280, 800), "Cleo")
	everyone := []*page{ann, bob, cleo}
	t.Cleanup(func() {
		for _, p := range everyone {
			if errs := p.jsErrors(); len(errs) > 0 {
				t.Errorf("%s: uncaught JavaScript exceptions: %q", p.name, errs)
			}
		}
	})

	t.Log("sign in: everyone gets a uid from the server, lands in the lobby and sees the others online")
	annUID := ann.login(srv.URL(), "Ann")
	bobUID := bob.login(srv.URL(), "Bob")
	cleoUID := cleo.login(srv.URL(), "Cleo")
	if annUID == bobUID || bobUID == cleoUID || annUID == cleoUID {
		t.Fatalf("uids given: %d, %d, %d; want three different ones", annUID, bobUID, cleoUID)
	}
	for _, p := range everyone {
		if got := p.channels(); !slices.Equal(got, []string{"lobby"}) {
			t.Fatalf("%s: channels after sign-in = %q, want [lobby]", p.name, got)
		}
		p.waitOnline(annUID, bobUID, cleoUID)
	}
	// Presence events carry uids; the page asks /api/names for the names,
	// so each sees the others by name.
	ann.waitFor("Bob and Cleo by name", `(() => {
		const texts = [...document.querySelectorAll('[data-testid="online"]')].map(e => e.textContent);
		return texts.some(t => t.includes("Bob") && t.includes("#`+fmt.Sprint(bobUID)+`")) &&
			texts.some(t => t.includes("Cleo") && t.includes("#`+fmt.Sprint(cleoUID)+`"));
	})()`)

	t.Log("join a channel and talk, every message seen by all in order")
	for _, p := range everyone {
		p.join(channel)
		if got := p.channelsFromServer(); !slices.Equal(got, []string{channel, "lobby"}) {
			t.Fatalf("%s: the server has %q after the page joined %s, want [%s lobby]", p.name, got, channel, channel)
		}
	}
	for _, p := range everyone {
		p.waitOnlineExactly(annUID, bobUID, cleoUID)
	}
	conversation := []struct {
		from *page
		text string
	}{
		{ann, "Morning! The chart demo is live, come say hi in #gophers."},
		{bob, "Here. Messages land the moment I hit send."},
		{cleo, "Hi both! My online list updated by itself when you joined."},
		{ann, "That's the library's presence events: one small frame per login."},
		{bob, "Nice. Restart test after lunch?"},
		{cleo, "Count me in. Signing off for now, see you later!"},
	}
	for _, line := range conversation {
		line.from.send(line.text)
		for _, p := range everyone {
			p.waitLastMessage(line.text)
		}
	}
	for _, p := range everyone {
		got := p.messages()
		if len(got) != len(conversation) {
			t.Fatalf("%s shows %d messages, want %d: %v", p.name, len(got), len(conversation), got)
		}
		for i, line := range conversation {
			m := got[i]
			mine := line.from == p
			wantSender := line.from.name
			if mine {
				wantSender = "You"
			}
			if m.Content != line.text || m.Mine != mine || m.Sender != wantSender || m.Direct {
				t.Errorf("%s: message %d = %v, want %s: %q (mine=%v)", p.name, i, m, wantSender, line.text, mine)
			}
			if !strings.Contains(m.Text, line.text) {
				t.Errorf("%s: message %d text %q does not contain the content", p.name, i, m.Text)
			}
		}
	}

	t.Log("a message in another channel shows as unread")
	bob.selectChannel("lobby")
	const lobbyNote = "Standup in five minutes, folks."
	bob.send(lobbyNote)
	bob.waitLastMessage(lobbyNote)
	bob.selectChannel(channel)
	ann.waitFor("unread badge on lobby", `document.querySelector('[data-testid="channel"][data-channel="lobby"] .badge')?.textContent === "1"`)

	t.Log("direct message")
	const dm = "Psst, this one is just for you."
	ann.fill("dm-uid", fmt.Sprint(bobUID))
	ann.send(dm)
	bob.waitLastMessage(dm)
	ann.waitLastMessage(dm)
	if m := last(bob.messages()); !m.Direct || m.Mine || m.Sender != "Ann" || m.From != fmt.Sprint(annUID) {
		t.Errorf("Bob sees the direct message as %v from %s, want a direct message from Ann (%d)", m, m.From, annUID)
	}
	if m := last(ann.messages()); !m.Direct || !m.Mine {
		t.Errorf("Ann sees her direct message as %v, want mine and direct", m)
	}
	const reply = "Got it. Keeping it between us."
	bob.fill("dm-uid", fmt.Sprint(annUID))
	bob.send(reply)
	ann.waitLastMessage(reply)
	bob.waitLastMessage(reply)
	ann.clearDirect()
	bob.clearDirect()

	takeScreenshot(t, ann, root)

	t.Log("signing out is pushed to the others' online lists")
	cleo.click("#logout")
	cleo.waitFor("signed out", `document.querySelector('[data-testid="connection"]').textContent === "closed" &&
		!document.getElementById("login-screen").hidden`)
	for _, p := range []*page{ann, bob} {
		p.waitFor("Cleo offline", `![...document.querySelectorAll('[data-testid="online"]')].some(e => e.dataset.uid === "`+fmt.Sprint(cleoUID)+`")`)
		p.waitOnlineExactly(annUID, bobUID)
	}
	if status, body := cleo.fetchJSON("GET", "/api/session", nil); status != http.StatusUnauthorized {
		t.Errorf("Cleo's browser after signing out: /api/session HTTP %d %v, want 401", status, body)
	}

	t.Log("the unread channel keeps its message")
	ann.selectChannel("lobby")
	// Direct messages follow the user into every channel view.
	if got := contents(ann.messages()); !slices.Equal(got, []string{lobbyNote, dm, reply}) {
		t.Errorf("Ann's lobby shows %q, want %q", got, []string{lobbyNote, dm, reply})
	}
	ann.waitFor("lobby badge cleared", `!document.querySelector('[data-testid="channel"][data-channel="lobby"] .badge')`)
	ann.selectChannel(channel)
	ann.waitLastMessage(reply)

	t.Log("an error frame from the server is shown")
	// Ann is taken out of the channel behind her page's back (by another
	// client of hers, as another tab would): the server refuses her next
	// message there.
	if got := ann.otherClient(`c.leave(` + jsString(channel) + `)`); got != "ok" {
		t.Fatalf("leave from another client of Ann's: %s", got)
	}
	ann.send("Hello, is anyone there?")
	ann.waitFor("not_joined error from the server", `[...document.querySelectorAll('[data-testid="error"]')].some(e => e.dataset.code === "not_joined")`)
	ann.join(channel) // already listed: the page's join request puts her back

	t.Log("a join the server refuses is shown with its code, and changes nothing")
	bob.fill("channel-input", "presence")
	bob.click(tid("join"))
	bob.waitFor("invalid_channel error", `[...document.querySelectorAll('[data-testid="error"]')].some(e => e.dataset.code === "invalid_channel")`)
	if got := bob.channels(); !slices.Equal(got, []string{channel, "lobby"}) {
		t.Errorf("Bob's page lists %q after a refused join, want [%s lobby]", got, channel)
	}

	t.Log("HTML in a message is text")
	ann.send(injection)
	bob.waitLastMessage(injection)
	ann.waitLastMessage(injection)
	// One more round trip, so an image error handler would have had time to run.
	bob.send("That should read as plain text.")
	ann.waitLastMessage("That should read as plain text.")
	bob.waitLastMessage("That should read as plain text.") // its echo, before bobBefore is taken
	for _, p := range []*page{ann, bob} {
		var pwned string
		p.eval("check __pwned", `typeof window.__pwned + "/" + document.querySelectorAll("#messages img").length`, &pwned)
		if pwned != "undefined/0" {
			t.Errorf("%s: injected HTML ran or rendered: typeof __pwned / images = %s", p.name, pwned)
		}
	}

	t.Log("server restart: pages show the outage, reconnect and restore channels")
	bobBefore := contents(bob.messages())
	srv.kill()
	for _, p := range []*page{ann, bob} {
		p.waitFor("connection lost", `document.querySelector('[data-testid="connection"]').textContent !== "open"`)
	}
	if got := ann.connection(); got == "open" {
		t.Fatalf("Ann shows %q while the server is down", got)
	}
	// A message written while the server is down waits in chart.js's
	// outbox, and goes out once the page has rejoined its channel (the
	// restarted server forgot that Ann was in it).
	const queued = "Typed while the server was down."
	ann.send(queued)
	ann.waitFor("the message waiting", `!document.querySelector('[data-testid="pending"]').hidden`)
	srv.start()
	for _, p := range []*page{ann, bob} {
		p.waitReady()
		if got := p.channels(); !slices.Equal(got, []string{channel, "lobby"}) {
			t.Errorf("%s: channels after reconnect = %q, want [%s lobby]", p.name, got, channel)
		}
		p.waitOnline(annUID, bobUID)
		// The restarted server kept no history: the page says that what
		// was sent meanwhile may be missing.
		p.waitFor("a gap marker", `document.querySelectorAll('#messages [data-testid="gap"]').length === 1`)
	}
	ann.waitLastMessage(queued)
	ann.waitFor("nothing waiting", `document.querySelector('[data-testid="pending"]').hidden`)
	after := []struct {
		from *page
		text string
	}{
		{ann, "Back after the restart?"},
		{bob, "Back, and still in #gophers."},
	}
	for _, line := range after {
		line.from.send(line.text)
		ann.waitLastMessage(line.text)
		bob.waitLastMessage(line.text)
	}
	// Bob gets the queued message if his page had rejoined the channel
	// when Ann's went out, which the test does not order.
	got := contents(bob.messages())
	without := append(slices.Clone(bobBefore), after[0].text, after[1].text)
	with := append(append(slices.Clone(bobBefore), queued), after[0].text, after[1].text)
	if !slices.Equal(got, without) && !slices.Equal(got, with) {
		t.Errorf("Bob after restart: %q, want the earlier messages %q, perhaps %q, then %q, %q",
			got, bobBefore, queued, after[0].text, after[1].text)
	}

	t.Log("leave a channel")
	bob.fill("channel-input", channel)
	bob.click(tid("leave"))
	bob.waitFor("channel left", `!document.querySelector('[data-testid="channel"][data-channel="`+channel+`"]')`)
	if got := bob.channels(); !slices.Equal(got, []string{"lobby"}) {
		t.Errorf("Bob: channels after leaving = %q, want [lobby]", got)
	}
	if got := bob.channelsFromServer(); !slices.Equal(got, []string{"lobby"}) {
		t.Errorf("Bob: the server has %q after the page left %s, want [lobby]", got, channel)
	}

	t.Log("phone-sized screen: no sideways scrolling, drawer opens")
	bob.run("phone viewport", chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(1)))
	var overflow bool
	bob.eval("overflow", `document.documentElement.scrollWidth > window.innerWidth`, &overflow)
	if overflow {
		t.Errorf("Bob: the page scrolls sideways at 390px wide")
	}
	bob.click("#menu")
	bob.run("channels in drawer", chromedp.WaitVisible(tid("channel-input"), chromedp.ByQuery))
}

// takeScreenshot captures a page. With CHART_SCREENSHOT set it is written
// to docs/chat.png at the repository root, otherwise to a temporary file.
func takeScreenshot(t *testing.T, p *page, root string) {
	t.Helper()
	var png []byte
	p.run("blur", chromedp.Evaluate(`document.activeElement && document.activeElement.blur()`, nil))
	// Let hover and focus transitions finish, so the picture is settled.
	p.waitFor("no running animations", `document.getAnimations().every(a => a.playState !== "running")`)
	p.run("screenshot", chromedp.CaptureScreenshot(&png))
	path := filepath.Join(t.TempDir(), "chat.png")
	if os.Getenv("CHART_SCREENSHOT") != "" {
		path = filepath.Join(root, "docs", "chat.png")
	}
	writeFile(t, path, png)
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s (%d bytes)", path, len(data))
}

func last(ms []shownMessage) shownMessage {
	if len(ms) == 0 {
		return shownMessage{}
	}
	return ms[len(ms)-1]
}

func contents(ms []shownMessage) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Content
	}
	return out
}

func containsAll(texts []string, parts ...string) bool {
	for _, text := range texts {
		ok := true
		for _, part := range parts {
			ok = ok && strings.Contains(text, part)
		}
		if ok {
			return true
		}
	}
	return false
}

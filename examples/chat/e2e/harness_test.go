package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// chromiumPath is Debian's Chromium, the browser CI installs.
const chromiumPath = "/usr/bin/chromium"

// stepTimeout bounds one browser step: a click, a wait, a few evaluations.
const stepTimeout = 20 * time.Second

// requireChromium skips the test when Chromium is missing, except on CI,
// where a missing browser is a failure.
func requireChromium(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err == nil {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("CI is set but %s is missing: install it with apt-get install -y chromium", chromiumPath)
	}
	t.Skipf("skipping browser test: %s not found (apt-get install -y chromium); with CI set this fails instead", chromiumPath)
}

// repoRoot returns the chart module's root, three levels above this package.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	mod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil || !bytes.Contains(mod, []byte("module github.com/wuyan94zl/chart\n")) {
		t.Fatalf("%s is not the chart module's root (go.mod: %v)", root, err)
	}
	return root
}

// buildDemo compiles ./examples/chat into a temporary directory, with the
// race detector when this test has it.
func buildDemo(t *testing.T, root string) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to build the demo: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "chat")
	args := []string{"build", "-buildvcs=false", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "./examples/chat")
	cmd := exec.Command(goBin, args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return bin
}

// freeAddr returns a loopback address whose port was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// syncBuffer collects a process's output; it is written and read from
// different goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// demoServer is the chat demo running as a child process. It can be killed
// and started again on the same address, with the same session key, so
// that its users stay signed in across the restart.
type demoServer struct {
	t      *testing.T
	bin    string
	addr   string
	args   []string // flags after -addr
	key    string   // CHAT_SESSION_KEY
	logs   *syncBuffer
	cmd    *exec.Cmd
	exited chan struct{}
}

// newDemoServer prepares the demo binary on addr, with more flags if given.
func newDemoServer(t *testing.T, bin, addr string, args ...string) *demoServer {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	s := &demoServer{t: t, bin: bin, addr: addr, args: args, key: base64.StdEncoding.EncodeToString(key), logs: &syncBuffer{}}
	t.Cleanup(func() {
		s.kill()
		logs := s.logs.String()
		if strings.Contains(logs, "WARNING: DATA RACE") {
			t.Errorf("the demo server reported a data race:\n%s", logs)
		} else if t.Failed() {
			t.Logf("demo server output:\n%s", logs)
		}
	})
	return s
}

// URL returns the demo's base URL.
func (s *demoServer) URL() string { return "http://" + s.addr }

// start runs the binary and waits until it serves the page.
func (s *demoServer) start() {
	s.t.Helper()
	args := append([]string{"-addr", s.addr}, s.args...)
	fmt.Fprintf(s.logs, "--- starting %s %s\n", s.bin, strings.Join(args, " "))
	cmd := exec.Command(s.bin, args...)
	cmd.Env = append(os.Environ(), "CHAT_SESSION_KEY="+s.key)
	cmd.Stdout, cmd.Stderr = s.logs, s.logs
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start demo: %v", err)
	}
	exited := make(chan struct{})
	go func() {
		err := cmd.Wait()
		fmt.Fprintf(s.logs, "--- demo exited: %v\n", err)
		close(exited)
	}()
	s.cmd, s.exited = cmd, exited

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if s.serving(ctx) {
			return
		}
		select {
		case <-ctx.Done():
			s.t.Fatalf("demo did not serve %s within 15s:\n%s", s.URL(), s.logs.String())
		case <-exited:
			s.t.Fatalf("demo exited before serving:\n%s", s.logs.String())
		case <-tick.C:
		}
	}
}

// serving reports whether the page is served with status 200.
func (s *demoServer) serving(ctx context.Context) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL()+"/", nil)
	if err != nil {
		return false
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	res.Body.Close()
	return res.StatusCode == http.StatusOK
}

// kill ends the server abruptly, as a crash would, and waits for it.
func (s *demoServer) kill() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.exited
	s.cmd = nil
}

// newBrowser starts a Chromium process of its own, with a fresh profile,
// and returns a context for its first tab. The browser is closed in
// t.Cleanup.
func newBrowser(t *testing.T, parent context.Context, width, height int) context.Context {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.Flag("force-color-profile", "srgb"),
		chromedp.Flag("force-device-scale-factor", "1"),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(width, height),
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(parent, opts...)
	ctx, cancelCtx := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		cancelCtx()
		cancelAlloc() // waits for the browser process to exit
	})
	// The window size includes browser chrome even when headless; the
	// emulated viewport makes the page exactly width x height.
	if err := chromedp.Run(ctx, chromedp.EmulateViewport(int64(width), int64(height))); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// newTab opens another tab in the browser of ctx (same profile, same
// cookies) and returns its context; it is closed in t.Cleanup. A new tab
// waits for a debugger before it runs any script or timer: chromedp does
// not release it, so this does.
func newTab(t *testing.T, browser context.Context) context.Context {
	t.Helper()
	ctx, cancel := chromedp.NewContext(browser)
	t.Cleanup(cancel)
	if err := chromedp.Run(ctx, runtime.RunIfWaitingForDebugger()); err != nil {
		t.Fatalf("open a tab: %v", err)
	}
	return ctx
}

// page is one signed-in user's tab.
type page struct {
	t    *testing.T
	name string // for failure messages
	ctx  context.Context

	mu         sync.Mutex
	exceptions []string // uncaught JavaScript exceptions
}

func newPage(t *testing.T, ctx context.Context, name string) *page {
	p := &page{t: t, name: name, ctx: ctx}
	chromedp.ListenTarget(ctx, func(ev any) {
		if e, ok := ev.(*runtime.EventExceptionThrown); ok {
			text := e.ExceptionDetails.Text
			if e.ExceptionDetails.Exception != nil {
				text += " " + e.ExceptionDetails.Exception.Description
			}
			p.mu.Lock()
			p.exceptions = append(p.exceptions, text)
			p.mu.Unlock()
		}
	})
	return p
}

// jsErrors returns the uncaught exceptions seen so far.
func (p *page) jsErrors() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.exceptions...)
}

// tid is the CSS selector of a data-testid.
func tid(id string) string { return `[data-testid="` + id + `"]` }

// run performs actions within stepTimeout and fails the test on error,
// with a snapshot of the page to explain it.
func (p *page) run(what string, actions ...chromedp.Action) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, stepTimeout)
	defer cancel()
	if err := chromedp.Run(ctx, actions...); err != nil {
		p.t.Fatalf("%s: %s: %v\npage state: %s", p.name, what, err, p.describe())
	}
}

// waitFor polls a JavaScript expression until it is truthy. A poll cut
// short because the page navigated (it reloads itself when another tab
// signs in as someone else) starts again on the new page, within the
// same step timeout.
func (p *page) waitFor(what, expr string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, stepTimeout)
	defer cancel()
	for {
		err := chromedp.Run(ctx, chromedp.Poll(expr, nil, chromedp.WithPollingInterval(50*time.Millisecond)))
		if err == nil {
			return
		}
		if !strings.Contains(err.Error(), "navigated or closed") || ctx.Err() != nil {
			p.t.Fatalf("%s: wait for %s: %v\npage state: %s", p.name, what, err, p.describe())
		}
	}
}

// eval evaluates a JavaScript expression into res.
func (p *page) eval(what, expr string, res any) {
	p.t.Helper()
	p.run(what, chromedp.Evaluate(expr, res))
}

// describe returns a short summary of the page for failure messages.
func (p *page) describe() string {
	ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
	defer cancel()
	var s string
	err := chromedp.Run(ctx, chromedp.Evaluate(`JSON.stringify({
		connection: document.querySelector('[data-testid="connection"]')?.textContent,
		connectionStates: window.__connectionStates,
		ready: document.getElementById('app')?.dataset.ready,
		channels: [...document.querySelectorAll('[data-testid="channel"]')].map(e => e.textContent),
		online: [...document.querySelectorAll('[data-testid="online"]')].map(e => e.textContent),
		messages: [...document.querySelectorAll('[data-testid="message"], [data-testid="gap"]')].map(e => e.textContent),
		pending: document.querySelector('[data-testid="pending"]')?.textContent,
		errors: [...document.querySelectorAll('[data-testid="error"]')].map(e => e.textContent),
	})`, &s))
	if err != nil {
		return "(unavailable: " + err.Error() + ")"
	}
	return s
}

// fill replaces an input's value by typing, so the page sees real key and
// input events.
func (p *page) fill(testid, value string) {
	p.t.Helper()
	clear := `(() => {
		const input = document.querySelector(` + jsString(tid(testid)) + `);
		input.value = "";
		input.dispatchEvent(new Event("input", {bubbles: true}));
	})()`
	p.run("fill "+testid, chromedp.WaitVisible(tid(testid), chromedp.ByQuery),
		chromedp.Evaluate(clear, nil),
		chromedp.SendKeys(tid(testid), value, chromedp.ByQuery))
}

// clearDirect clicks the button that empties dm-uid, so that send goes to
// the selected channel again.
func (p *page) clearDirect() {
	p.t.Helper()
	p.click("#dm-clear")
	p.waitFor("dm-uid empty", `document.querySelector('[data-testid="dm-uid"]').value === ""`)
}

// click clicks the element matching a CSS selector.
func (p *page) click(sel string) {
	p.t.Helper()
	p.run("click "+sel, chromedp.Click(sel, chromedp.ByQuery, chromedp.NodeVisible))
}

// login opens the page, signs in with a display name and waits until the
// socket is open and the channel list synchronised. It returns the uid the
// server gave, as the page shows it.
func (p *page) login(base, name string) uint64 {
	p.t.Helper()
	p.run("open page", chromedp.Navigate(base+"/"), chromedp.WaitVisible(tid("login-name"), chromedp.ByQuery))
	return p.signIn(name)
}

// signIn fills in the sign-in form shown and waits until the chat is ready;
// it returns the uid the page shows.
func (p *page) signIn(name string) uint64 {
	p.t.Helper()
	p.fill("login-name", name)
	p.click(tid("login-submit"))
	p.waitReady()
	return p.uid()
}

// uid returns the signed-in uid the page shows ("#4821…").
func (p *page) uid() uint64 {
	p.t.Helper()
	var text string
	p.eval("read uid", `document.querySelector('[data-testid="login-uid"]').textContent`, &text)
	uid, err := strconv.ParseUint(strings.TrimPrefix(text, "#"), 10, 64)
	if err != nil || uid == 0 {
		p.t.Fatalf("%s: the page shows uid %q", p.name, text)
	}
	return uid
}

// fetchJSON makes a request from the page (same origin, with its session
// cookie, as the page's own code or another tab of it would) and returns
// the status and the answer.
func (p *page) fetchJSON(method, path string, body any) (int, map[string]any) {
	p.t.Helper()
	b := "undefined"
	if body != nil {
		j, _ := json.Marshal(body)
		b = jsString(string(j))
	}
	var res struct {
		Status int            `json:"status"`
		Body   map[string]any `json:"body"`
	}
	p.run("fetch "+path, chromedp.Evaluate(`(async () => {
		const opts = {method: `+jsString(method)+`, headers: {}};
		const body = `+b+`;
		if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = body; }
		const r = await fetch(`+jsString(path)+`, opts);
		let j = null;
		try { j = await r.json(); } catch (_) {}
		return {status: r.status, body: j};
	})()`, &res, func(ep *runtime.EvaluateParams) *runtime.EvaluateParams { return ep.WithAwaitPromise(true) }))
	return res.Status, res.Body
}

// channelsFromServer returns the signed-in user's channels as the server
// has them (GET /api/channels from the page).
func (p *page) channelsFromServer() []string {
	p.t.Helper()
	status, body := p.fetchJSON("GET", "/api/channels", nil)
	list, _ := body["channels"].([]any)
	if status != http.StatusOK {
		p.t.Fatalf("%s: /api/channels: HTTP %d %v", p.name, status, body)
	}
	out := make([]string, len(list))
	for i, c := range list {
		out[i], _ = c.(string)
	}
	return out
}

// connection returns the text of the connection state element: chart.js's
// state, "connecting", "open" or "closed".
func (p *page) connection() string {
	p.t.Helper()
	var s string
	p.eval("read connection", `document.querySelector('[data-testid="connection"]').textContent`, &s)
	return s
}

// waitReady waits for "open" and for the page to have synchronised its
// channels after (re)connecting.
func (p *page) waitReady() {
	p.t.Helper()
	p.waitFor("open and synchronised", `document.querySelector('[data-testid="connection"]').textContent === "open" &&
		document.getElementById("app").dataset.ready === "true"`)
}

// watchConnection records, from now on, every state the connection element
// shows (its data-state) in window.__connectionStates, starting with the
// current one. A MutationObserver sees every change, however brief, which
// polling could miss.
func (p *page) watchConnection() {
	p.t.Helper()
	p.eval("watch the connection state", `(() => {
		const el = document.querySelector('[data-testid="connection"]');
		window.__connectionStates = [el.dataset.state];
		if (window.__connectionObserver) return;
		window.__connectionObserver = new MutationObserver((records) => {
			// Each record holds the value before its change: the value after
			// it is the next record's old value, or, for the last, the current.
			records.forEach((r, i) => window.__connectionStates.push(
				i + 1 < records.length ? records[i + 1].oldValue : el.dataset.state));
		});
		window.__connectionObserver.observe(el, {attributes: true, attributeFilter: ["data-state"], attributeOldValue: true});
	})()`, nil)
}

// connectionStates returns the states recorded since watchConnection, a
// state repeated in a row once.
func (p *page) connectionStates() []string {
	p.t.Helper()
	var all []string
	p.eval("read the connection states", `window.__connectionStates || []`, &all)
	var out []string
	for _, s := range all {
		if len(out) == 0 || out[len(out)-1] != s {
			out = append(out, s)
		}
	}
	return out
}

// join joins a channel with the channel input and the join button and waits
// until it is listed and selected.
func (p *page) join(channel string) {
	p.t.Helper()
	p.fill("channel-input", channel)
	p.click(tid("join"))
	p.waitFor("channel "+channel+" selected", `document.querySelector('[data-testid="channel"][data-channel=`+jsString(channel)+`]')?.classList.contains("active")`)
}

// selectChannel clicks a channel in the list.
func (p *page) selectChannel(channel string) {
	p.t.Helper()
	sel := `[data-testid="channel"][data-channel=` + jsString(channel) + `]`
	p.click(sel)
	p.waitFor("channel "+channel+" selected", `document.querySelector('`+sel+`').classList.contains("active")`)
}

// channels returns the names shown in the channel list, in order.
func (p *page) channels() []string {
	p.t.Helper()
	var out []string
	p.eval("read channels", `[...document.querySelectorAll('[data-testid="channel"]')].map(e => e.dataset.channel)`, &out)
	return out
}

// send types a message and clicks send.
func (p *page) send(text string) {
	p.t.Helper()
	p.fill("message-input", text)
	p.click(tid("send"))
}

// shownMessage is one message element as the page renders it.
type shownMessage struct {
	From    string `json:"from"`
	Sender  string `json:"sender"`
	Content string `json:"content"`
	Text    string `json:"text"`
	Mine    bool   `json:"mine"`
	Direct  bool   `json:"direct"`
}

func (m shownMessage) String() string {
	kind := ""
	if m.Direct {
		kind = " (direct)"
	}
	if m.Mine {
		kind += " (mine)"
	}
	return fmt.Sprintf("%s%s: %q", m.Sender, kind, m.Content)
}

// messages returns the messages shown, in order.
func (p *page) messages() []shownMessage {
	p.t.Helper()
	var raw string
	p.eval("read messages", `JSON.stringify([...document.querySelectorAll('[data-testid="message"]')].map(e => ({
		from: e.dataset.from,
		sender: e.querySelector('.sender').textContent,
		content: e.querySelector('[data-part="content"]').textContent,
		text: e.textContent,
		mine: e.dataset.mine === "true",
		direct: e.dataset.direct === "true",
	})))`, &raw)
	var out []shownMessage
	if err := json.Unmarshal([]byte(raw), &out); err != nil {
		p.t.Fatalf("%s: decode messages: %v", p.name, err)
	}
	return out
}

// waitLastMessage waits until the last message shown has this content.
func (p *page) waitLastMessage(content string) {
	p.t.Helper()
	p.waitFor("last message "+strconv.Quote(content), `(() => {
		const all = document.querySelectorAll('[data-testid="message"]');
		return all.length > 0 && all[all.length - 1].querySelector('[data-part="content"]').textContent === `+jsString(content)+`;
	})()`)
}

// waitOnline waits until every uid is in the online list.
func (p *page) waitOnline(uids ...uint64) {
	p.t.Helper()
	parts := make([]string, len(uids))
	for i, uid := range uids {
		parts[i] = strconv.Quote("#" + strconv.FormatUint(uid, 10))
	}
	p.waitFor("online "+strings.Join(parts, ","), `(() => {
		const texts = [...document.querySelectorAll('[data-testid="online"]')].map(e => e.textContent);
		return [`+strings.Join(parts, ",")+`].every(uid => texts.some(t => t.includes(uid)));
	})()`)
}

// waitOnlineExactly waits until the online list shows exactly these uids.
func (p *page) waitOnlineExactly(uids ...uint64) {
	p.t.Helper()
	want := make([]string, len(uids))
	for i, uid := range uids {
		want[i] = strconv.Quote(strconv.FormatUint(uid, 10))
	}
	p.waitFor("online exactly "+strings.Join(want, ","), `(() => {
		const got = [...document.querySelectorAll('[data-testid="online"]')].map(e => e.dataset.uid).sort();
		return JSON.stringify(got) === JSON.stringify([`+strings.Join(want, ",")+`].sort());
	})()`)
}

// otherClient runs expr with c, a second chart.js client in the page's tab
// (the page's session: as another tab of the user would), once it is open,
// and returns "ok" or the error code it rejected with.
func (p *page) otherClient(expr string) string {
	p.t.Helper()
	var got string
	p.run("another client: "+expr, chromedp.Evaluate(`(async () => {
		const { Chart } = await import("/chart.js");
		const c = new Chart(location.origin.replace(/^http/, "ws") + "/ws");
		try {
			await `+expr+`;
			return "ok";
		} catch (e) {
			return e.code || String(e);
		} finally {
			c.close();
		}
	})()`, &got, func(ep *runtime.EvaluateParams) *runtime.EvaluateParams { return ep.WithAwaitPromise(true) }))
	return got
}

// onlineTexts returns the text of each online list entry.
func (p *page) onlineTexts() []string {
	p.t.Helper()
	var out []string
	p.eval("read online", `[...document.querySelectorAll('[data-testid="online"]')].map(e => e.textContent)`, &out)
	return out
}

// jsString quotes s as a JavaScript string literal.
func jsString(s string) string {
	b, err := json.Marshal(s)
	if err != nil {
		panic(err) // a string always encodes
	}
	return string(b)
}

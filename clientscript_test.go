package chart_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wuyan94zl/chart"
)

func TestClientScript(t *testing.T) {
	want, err := os.ReadFile("client/chart.js")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(chart.ClientScript)
	defer srv.Close()

	get := func(method, inm string) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+"/chart.js", nil)
		if inm != "" {
			req.Header.Set("If-None-Match", inm)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		return res, body
	}

	res, body := get("GET", "")
	if res.StatusCode != 200 || !bytes.Equal(body, want) {
		t.Fatalf("GET: %d, %d bytes; want 200 and client/chart.js (%d bytes)", res.StatusCode, len(body), len(want))
	}
	if ct := res.Header.Get("Content-Type"); ct != "text/javascript; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
	if cc := res.Header.Get("Cache-Control"); cc != "no-cache" {
		t.Errorf("Cache-Control %q", cc)
	}
	etag := res.Header.Get("ETag")
	if len(etag) < 10 || etag[0] != '"' {
		t.Fatalf("ETag %q", etag)
	}

	for _, inm := range []string{etag, "W/" + etag, `"other", ` + etag, "*"} {
		res, body = get("GET", inm)
		if res.StatusCode != http.StatusNotModified || len(body) != 0 || res.Header.Get("ETag") != etag {
			t.Errorf("If-None-Match %s: %d, %d bytes, ETag %q; want 304, empty, the ETag", inm, res.StatusCode, len(body), res.Header.Get("ETag"))
		}
	}
	if res, body = get("GET", `"stale"`); res.StatusCode != 200 || len(body) != len(want) {
		t.Errorf("stale ETag: %d, %d bytes; want 200 and the script", res.StatusCode, len(body))
	}
	if res, body = get("HEAD", ""); res.StatusCode != 200 || len(body) != 0 || res.Header.Get("Content-Length") != strconv.Itoa(len(want)) {
		t.Errorf("HEAD: %d, %d bytes, Content-Length %q", res.StatusCode, len(body), res.Header.Get("Content-Length"))
	}
	if res, _ = get("POST", ""); res.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d, want 405", res.StatusCode)
	}
}

func ExampleClientScript() {
	// Pages import the client with: import { Chart } from "/chart.js";
	http.Handle("/chart.js", chart.ClientScript)
	http.Handle("/ws", chart.New(chart.Config{ /* Authenticate, Handler */ }))
}

// joinHandler joins every uid to "lobby" and to its own channel "u<uid>"
// (so that the JavaScript tests do not see each other's messages).
type joinHandler struct{ hub *chart.Hub }

func (h *joinHandler) LoginServer(uid uint64) {
	h.hub.JoinChannelIds(uid, "lobby", "u"+strconv.FormatUint(uid, 10))
}
func (h *joinHandler) LogoutServer(uint64)       {}
func (h *joinHandler) SendMessage(chart.Message) {}
func (h *joinHandler) ErrorLogServer(error)      {}

// trackingListener remembers the connections it accepted, so that the test
// can cut them at the TCP level (the client sees 1006).
type trackingListener struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

func (l *trackingListener) cut() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Close()
	}
	n := len(l.conns)
	l.conns = nil
	return n
}

// TestClientJS runs the JavaScript client's tests (client/test, node
// --test) against a real hub. The environment tells them where:
// CHART_URL (ws://…/?id=, append the uid), CHART_CONTROL (an HTTP server
// that publishes (channel, prefix, n, from), cuts connections, disconnects, reports acks) and
// CHART_DEAD_URL (a port nobody listens on).
func TestClientJS(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed: the JavaScript client (client/) is not tested; install Node.js 20 or newer")
	}
	files, _ := filepath.Glob("client/test/*.test.mjs")
	if len(files) == 0 {
		t.Fatal("no client/test/*.test.mjs")
	}

	h := &joinHandler{}
	hub := chart.New(chart.Config{
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
		Handler: h,
		Authenticate: func(r *http.Request) (uint64, any, error) {
			uid, err := strconv.ParseUint(r.FormValue("id"), 10, 64)
			return uid, nil, err
		},
	})
	h.hub = hub

	ws := httptest.NewUnstartedServer(hub)
	tl := &trackingListener{Listener: ws.Listener}
	ws.Listener = tl
	ws.Start()

	mux := http.NewServeMux()
	mux.HandleFunc("/publish", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.FormValue("n"))
		from, _ := strconv.Atoi(r.FormValue("from"))
		for i := from; i < from+n; i++ {
			m := chart.Message{Type: chart.TypeText, Content: r.FormValue("prefix") + strconv.Itoa(i)}
			if err := hub.Publish(r.FormValue("channel"), m); err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
		}
	})
	mux.HandleFunc("/cut", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, strconv.Itoa(tl.cut()))
	})
	mux.HandleFunc("/disconnect", func(w http.ResponseWriter, r *http.Request) {
		uid, _ := strconv.ParseUint(r.FormValue("uid"), 10, 64)
		if err := hub.Disconnect(uid, "test"); err != nil {
			http.Error(w, err.Error(), 500)
		}
	})
	mux.HandleFunc("/online", func(w http.ResponseWriter, r *http.Request) {
		uid, _ := strconv.ParseUint(r.FormValue("uid"), 10, 64)
		io.WriteString(w, strconv.FormatBool(hub.IsOnline(uid)))
	})
	mux.HandleFunc("/acked", func(w http.ResponseWriter, r *http.Request) {
		uid, _ := strconv.ParseUint(r.FormValue("uid"), 10, 64)
		off, _ := hub.Acked(uid, r.FormValue("channel"))
		io.WriteString(w, strconv.FormatUint(off, 10))
	})
	ctl := httptest.NewServer(mux)

	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadURL := "ws://" + dead.Addr().String() + "/?id="
	dead.Close()

	defer func() {
		ctl.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := hub.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		ws.Close()
	}()

	args := []string{"--test", "--test-reporter=spec"}
	hasWS := func(flags ...string) bool {
		return exec.Command(node, append(flags, "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)")...).Run() == nil
	}
	switch {
	case hasWS():
	case hasWS("--experimental-websocket"): // Node 20.10+, 21
		args = append([]string{"--experimental-websocket"}, args...)
	default:
		v, _ := exec.Command(node, "--version").Output()
		t.Skipf("node %s has no WebSocket (needs Node.js 20.10 or newer): the JavaScript client (client/) is not tested", bytes.TrimSpace(v))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, append(args, files...)...)
	cmd.Env = append(os.Environ(),
		"CHART_URL="+"ws"+strings.TrimPrefix(ws.URL, "http")+"/?id=",
		"CHART_CONTROL="+ctl.URL,
		"CHART_DEAD_URL="+deadURL,
		"NO_COLOR=1",
	)
	out, err := cmd.CombinedOutput()
	t.Logf("%s %s:\n%s", node, strings.Join(append(args, files...), " "), out)
	if err != nil {
		t.Fatalf("node --test: %v", err)
	}
}

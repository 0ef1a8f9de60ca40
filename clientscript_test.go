package chart_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
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
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
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
// (so that the JavaScript tests do not see each other's messages). As a
// ConnectHandler it records the credentials of every connection (/conns),
// keeps each uid's open connections (for /close, /freeze, /cut), refuses
// the requests with ?refuse=1 (4003) and expires those with ?expired=1 at
// once (4002 before registration, as an expired token is).
type joinHandler struct {
	hub   *chart.Hub
	mu    sync.Mutex
	conns map[uint64][]*chart.Conn // open connections by uid
	creds map[uint64][]*connInfo   // every connection's credentials by uid, in order
}

// connInfo is what Authenticate saw of a request: the Meta of its Conn.
type connInfo struct {
	Token     string   `json:"token"`     // ?token=
	Protocols []string `json:"protocols"` // Sec-WebSocket-Protocol
	refuse    bool
	expired   bool
}

func authenticate(r *http.Request) (uint64, any, error) {
	uid, err := strconv.ParseUint(r.FormValue("id"), 10, 64)
	info := &connInfo{
		Token:     r.FormValue("token"),
		Protocols: websocket.Subprotocols(r),
		refuse:    r.FormValue("refuse") != "",
		expired:   r.FormValue("expired") != "",
	}
	return uid, info, err
}

func (h *joinHandler) LoginServer(uid uint64) {
	h.hub.JoinChannelIds(uid, "lobby", "u"+strconv.FormatUint(uid, 10))
}
func (h *joinHandler) LogoutServer(uint64)       {}
func (h *joinHandler) SendMessage(chart.Message) {}
func (h *joinHandler) ErrorLogServer(error)      {}

func (h *joinHandler) ConnectServer(c *chart.Conn) error {
	info := c.Meta().(*connInfo)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.creds[c.Uid()] = append(h.creds[c.Uid()], info)
	switch {
	case info.refuse:
		return chart.Refuse("test_refused", "refused by the test") // 4003
	case info.expired:
		c.SetExpiry(time.Now().Add(-time.Second)) // 4002, never registered
		return nil
	}
	h.conns[c.Uid()] = append(h.conns[c.Uid()], c)
	return nil
}

func (h *joinHandler) DisconnectServer(c *chart.Conn, _ error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	cs := h.conns[c.Uid()]
	for i := range cs {
		if cs[i] == c {
			h.conns[c.Uid()] = append(cs[:i:i], cs[i+1:]...)
			break
		}
	}
}

// connsOf returns uid's open connections (as the hub sees them: a frozen
// one stays open).
func (h *joinHandler) connsOf(uid uint64) []*chart.Conn {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]*chart.Conn(nil), h.conns[uid]...)
}

// tapConn is a server-side TCP connection that the test can freeze (from
// then on both directions are dropped in silence: no byte, no FIN, no RST,
// as on a dead network path) or write a frame to (a close frame with a code
// the hub's API cannot send on demand). Each Write is one whole frame (the
// hub's batches reach a net.Conn without writev one frame per Write), so an
// injected frame never splits one.
type tapConn struct {
	net.Conn
	wmu    sync.Mutex
	frozen atomic.Bool
	closed atomic.Bool
}

func (c *tapConn) Close() error {
	c.closed.Store(true)
	return c.Conn.Close()
}

// CloseWrite passes the half-close through (the hub's refusals use it).
func (c *tapConn) CloseWrite() error {
	return c.Conn.(*net.TCPConn).CloseWrite()
}

func (c *tapConn) Read(b []byte) (int, error) {
	for {
		n, err := c.Conn.Read(b)
		if err != nil || !c.frozen.Load() {
			return n, err
		}
		// Frozen: what the client sends is dropped.
	}
}

func (c *tapConn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.frozen.Load() {
		return len(b), nil // dropped
	}
	return c.Conn.Write(b)
}

func (c *tapConn) freeze() {
	c.wmu.Lock()
	c.frozen.Store(true)
	c.wmu.Unlock()
}

// writeClose writes a close frame with code, as the hub does (unmasked,
// reason "test").
func (c *tapConn) writeClose(code int) error {
	f := []byte{0x88, 2 + 4, byte(code >> 8), byte(code), 't', 'e', 's', 't'}
	_, err := c.Write(f)
	return err
}

// trackingListener remembers the connections it accepted, so that the test
// can cut (the client sees 1006), freeze or write to those of a uid.
type trackingListener struct {
	net.Listener
	mu    sync.Mutex
	conns []*tapConn
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &tapConn{Conn: c}
	l.mu.Lock()
	l.conns = append(l.conns, tc)
	l.mu.Unlock()
	return tc, nil
}

// of returns the open TCP connections of conns (matched by the client's
// address), and forgets the closed ones.
func (l *trackingListener) of(conns []*chart.Conn) []*tapConn {
	l.mu.Lock()
	defer l.mu.Unlock()
	open := l.conns[:0]
	for _, tc := range l.conns {
		if !tc.closed.Load() {
			open = append(open, tc)
		}
	}
	clear(l.conns[len(open):])
	l.conns = open
	var out []*tapConn
	for _, c := range conns {
		for _, tc := range l.conns {
			if tc.RemoteAddr().String() == c.RemoteAddr().String() {
				out = append(out, tc)
			}
		}
	}
	return out
}

// silentListener accepts TCP connections and never answers the WebSocket
// handshake, as a hung server. It counts the handshakes begun and those
// whose connection is still open: a client that gave up on one must close
// it. (A connection on which nothing is sent is not counted: Node's fetch
// opens spare ones and closes them when idle.)
type silentListener struct {
	net.Listener
	handshakes, open atomic.Int64
	wg               sync.WaitGroup
	mu               sync.Mutex
	conns            []net.Conn
}

func newSilentListener(t *testing.T) *silentListener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &silentListener{Listener: ln}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			l.mu.Lock()
			l.conns = append(l.conns, c)
			l.mu.Unlock()
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				if _, err := c.Read(make([]byte, 1)); err != nil {
					return
				}
				l.handshakes.Add(1)
				l.open.Add(1)
				io.Copy(io.Discard, c) // until the client closes it
				l.open.Add(-1)
			}()
		}
	}()
	return l
}

func (l *silentListener) closeConns() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Close()
	}
	l.conns = nil
}

func (l *silentListener) close() {
	l.Listener.Close()
	l.closeConns()
	l.wg.Wait()
}

// TestClientJS runs the JavaScript client's tests (client/test, node
// --test) against a real hub. The environment tells them where:
// CHART_URL (ws://…/?id=, append the uid; &token=, &refuse=1, &expired=1
// see joinHandler), CHART_CONTROL (an HTTP server to publish, cut, freeze
// or close a uid's connections, disconnect, report acks and credentials),
// CHART_DEAD_URL (a port nobody listens on) and CHART_SILENT_URL (a
// server that accepts TCP connections and never answers).
func TestClientJS(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed: the JavaScript client (client/) is not tested; install Node.js 20 or newer")
	}
	files, _ := filepath.Glob("client/test/*.test.mjs")
	if len(files) == 0 {
		t.Fatal("no client/test/*.test.mjs")
	}

	h := &joinHandler{conns: map[uint64][]*chart.Conn{}, creds: map[uint64][]*connInfo{}}
	hub := chart.New(chart.Config{
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		Handler:      h,
		Authenticate: authenticate,
	})
	h.hub = hub

	ws := httptest.NewUnstartedServer(hub)
	tl := &trackingListener{Listener: ws.Listener}
	ws.Listener = tl
	ws.Start()

	uidOf := func(r *http.Request) uint64 {
		uid, _ := strconv.ParseUint(r.FormValue("uid"), 10, 64)
		return uid
	}
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
	// /cut?uid= closes the uid's TCP connections; /freeze?uid= makes them
	// silent. Both answer how many there were.
	mux.HandleFunc("/cut", func(w http.ResponseWriter, r *http.Request) {
		tcs := tl.of(h.connsOf(uidOf(r)))
		for _, tc := range tcs {
			tc.Close()
		}
		io.WriteString(w, strconv.Itoa(len(tcs)))
	})
	mux.HandleFunc("/freeze", func(w http.ResponseWriter, r *http.Request) {
		tcs := tl.of(h.connsOf(uidOf(r)))
		for _, tc := range tcs {
			tc.freeze()
		}
		io.WriteString(w, strconv.Itoa(len(tcs)))
	})
	// /close?uid=&code= closes the uid's connections with code: 4001 with
	// Conn.Close, 4002 with SetExpiry(now); any other code (4008, 4029,
	// 4009: the hub sends them only under load or at its limits) is written
	// as the hub writes it, a close frame on the connection.
	mux.HandleFunc("/close", func(w http.ResponseWriter, r *http.Request) {
		code, _ := strconv.Atoi(r.FormValue("code"))
		conns := h.connsOf(uidOf(r))
		if len(conns) == 0 {
			http.Error(w, "no connection", 404)
			return
		}
		switch code {
		case chart.CloseDisconnected:
			for _, c := range conns {
				c.Close("test")
			}
		case chart.CloseExpired:
			for _, c := range conns {
				c.SetExpiry(time.Now())
			}
		default:
			tcs := tl.of(conns)
			if len(tcs) == 0 {
				http.Error(w, "no TCP connection", 404)
				return
			}
			for _, tc := range tcs {
				if err := tc.writeClose(code); err != nil {
					http.Error(w, err.Error(), 500)
					return
				}
			}
		}
	})
	mux.HandleFunc("/conns", func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		defer h.mu.Unlock()
		json.NewEncoder(w).Encode(h.creds[uidOf(r)])
	})
	mux.HandleFunc("/disconnect", func(w http.ResponseWriter, r *http.Request) {
		if err := hub.Disconnect(uidOf(r), "test"); err != nil {
			http.Error(w, err.Error(), 500)
		}
	})
	mux.HandleFunc("/online", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, strconv.FormatBool(hub.IsOnline(uidOf(r))))
	})
	mux.HandleFunc("/acked", func(w http.ResponseWriter, r *http.Request) {
		off, _ := hub.Acked(uidOf(r), r.FormValue("channel"))
		io.WriteString(w, strconv.FormatUint(off, 10))
	})
	silent := newSilentListener(t)
	// /silent reports the silent server's handshakes; ?close=1 closes its
	// connections first.
	mux.HandleFunc("/silent", func(w http.ResponseWriter, r *http.Request) {
		if r.FormValue("close") != "" {
			silent.closeConns()
		}
		fmt.Fprintf(w, `{"handshakes":%d,"open":%d}`, silent.handshakes.Load(), silent.open.Load())
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
		silent.close()
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
		"CHART_SILENT_URL=ws://"+silent.Addr().String()+"/?id=",
		"NO_COLOR=1",
	)
	out, err := cmd.CombinedOutput()
	t.Logf("%s %s:\n%s", node, strings.Join(append(args, files...), " "), out)
	if err != nil {
		t.Fatalf("node --test: %v", err)
	}
}

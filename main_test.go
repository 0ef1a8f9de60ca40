package chart

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// wait is the longest any test waits for one expected event.
const wait = 10 * time.Second

// recorder is a Handler that records every callback on channels, so tests
// can wait for events instead of sleeping. Optional hooks run inside the
// callbacks, before the event is recorded.
type recorder struct {
	logins  chan uint64
	logouts chan uint64
	msgs    chan Message
	errs    chan error

	onLogin   func(uid uint64)
	onMessage func(m Message)
}

func newRecorder() *recorder {
	return &recorder{
		logins:  make(chan uint64, 1000),
		logouts: make(chan uint64, 1000),
		msgs:    make(chan Message, 20000),
		errs:    make(chan error, 20000),
	}
}

func (r *recorder) SendMessage(m Message) {
	if r.onMessage != nil {
		r.onMessage(m)
	}
	r.msgs <- m
}

func (r *recorder) LoginServer(uid uint64) {
	if r.onLogin != nil {
		r.onLogin(uid)
	}
	r.logins <- uid
}

func (r *recorder) LogoutServer(uid uint64) { r.logouts <- uid }
func (r *recorder) ErrorLogServer(err error) {
	select {
	case r.errs <- err:
	default:
	}
}

// recv waits for one value from ch.
func recv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(wait):
		t.Fatalf("timed out waiting for %s", what)
	}
	var zero T
	return zero
}

// wantErr waits for an error matching target on r.errs, skipping others.
func (r *recorder) wantErr(t testing.TB, target error) error {
	t.Helper()
	deadline := time.After(wait)
	for {
		select {
		case err := <-r.errs:
			if errors.Is(err, target) {
				return err
			}
		case <-deadline:
			t.Fatalf("timed out waiting for an error matching %v", target)
			return nil
		}
	}
}

// noErr fails if an error was reported.
func (r *recorder) noErr(t testing.TB) {
	t.Helper()
	select {
	case err := <-r.errs:
		t.Fatalf("unexpected error: %v", err)
	default:
	}
}

// server is a hub behind a real HTTP server, as business code deploys it:
// /ws?id=UID calls NewServer with the handler.
type server struct {
	hub        *Hub
	srv        *httptest.Server
	url        string
	registered chan uint64 // uids of upgraded connections, once NewServer returned
}

// hijackWatch notes whether NewServer took the connection over.
type hijackWatch struct {
	http.ResponseWriter
	hijacked bool
}

func (w *hijackWatch) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.hijacked = true
	return w.ResponseWriter.(http.Hijacker).Hijack()
}

func startServer(t testing.TB, cfg Config, h Handler) *server {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return startHubServer(t, New(cfg), h)
}

func startHubServer(t testing.TB, hub *Hub, h Handler) *server {
	t.Helper()
	mux := http.NewServeMux()
	registered := make(chan uint64, 10000)
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		uid, _ := strconv.ParseUint(r.FormValue("id"), 10, 64)
		hw := &hijackWatch{ResponseWriter: w}
		hub.NewServer(hw, r, uid, h)
		if hw.hijacked {
			// NewServer returns once the connection is registered.
			select {
			case registered <- uid:
			default:
			}
		}
	})
	srv := httptest.NewServer(mux)
	s := &server{hub: hub, srv: srv, url: "ws" + strings.TrimPrefix(srv.URL, "http") + "/ws", registered: registered}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		if err := hub.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		srv.Close()
	})
	return s
}

// client is a real WebSocket client.
type client struct {
	t   testing.TB
	ws  *websocket.Conn
	uid uint64
}

// frameIn is what a client receives: a Message or an error frame.
type frameIn struct {
	Message
	Error  string `json:"error"`
	Detail string `json:"message"`
}

func (s *server) dial(t testing.TB, uid uint64) *client {
	t.Helper()
	return s.dialHeader(t, uid, nil)
}

func (s *server) dialHeader(t testing.TB, uid uint64, hdr http.Header) *client {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: wait}
	ws, resp, err := d.Dial(s.url+"?id="+strconv.FormatUint(uid, 10), hdr)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial uid %d: %v (HTTP %d)", uid, err, status)
	}
	c := &client{t: t, ws: ws, uid: uid}
	t.Cleanup(func() { ws.Close() })
	// The handshake answer can reach the client before NewServer has
	// registered the connection; wait for that, so the test may use the
	// API for this uid at once.
	for got := uint64(0); got != uid; {
		got = recv(t, s.registered, "registration")
	}
	return c
}

// send writes a raw text frame.
func (c *client) send(s string) {
	c.t.Helper()
	c.ws.SetWriteDeadline(time.Now().Add(wait))
	if err := c.ws.WriteMessage(websocket.TextMessage, []byte(s)); err != nil {
		c.t.Fatalf("uid %d send: %v", c.uid, err)
	}
}

// next reads the next frame, which must be one JSON object.
func (c *client) next() frameIn {
	c.t.Helper()
	c.ws.SetReadDeadline(time.Now().Add(wait))
	mt, data, err := c.ws.ReadMessage()
	if err != nil {
		c.t.Fatalf("uid %d read: %v", c.uid, err)
	}
	if mt != websocket.TextMessage {
		c.t.Fatalf("uid %d: got frame type %d, want text", c.uid, mt)
	}
	var f frameIn
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil || dec.More() {
		c.t.Fatalf("uid %d: frame %q is not one known JSON object: %v", c.uid, data, err)
	}
	return f
}

// nextMsg reads the next frame and requires a message.
func (c *client) nextMsg() Message {
	c.t.Helper()
	f := c.next()
	if f.Error != "" {
		c.t.Fatalf("uid %d: got error frame %q (%s), want a message", c.uid, f.Error, f.Detail)
	}
	return f.Message
}

// nextErr reads the next frame and requires an error frame with code.
func (c *client) nextErr(code string) frameIn {
	c.t.Helper()
	f := c.next()
	if f.Error != code {
		c.t.Fatalf("uid %d: got %+v, want error frame %q", c.uid, f, code)
	}
	return f
}

// closeCode reads until the connection ends and returns the close code
// (websocket.CloseAbnormalClosure when there was no close frame).
func (c *client) closeCode() int {
	c.t.Helper()
	c.ws.SetReadDeadline(time.Now().Add(wait))
	for {
		_, _, err := c.ws.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return ce.Code
		}
		var ne interface{ Timeout() bool }
		if errors.As(err, &ne) && ne.Timeout() {
			c.t.Fatalf("uid %d: connection still open after %v", c.uid, wait)
		}
		return websocket.CloseAbnormalClosure
	}
}

// closeNow closes the client cleanly and waits for the server's answer.
func (c *client) closeNow() {
	c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(wait))
	c.closeCode()
	c.ws.Close()
}

// login dials uid and waits for its LoginServer.
func (s *server) login(t testing.TB, r *recorder, uid uint64) *client {
	t.Helper()
	c := s.dial(t, uid)
	if got := recv(t, r.logins, "login"); got != uid {
		t.Fatalf("login of uid %d, want %d", got, uid)
	}
	return c
}

// eventually polls cond until it holds; for state that has no event.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// Package charttest is a test kit for chart: real hubs behind httptest
// servers, real WebSocket clients, a recording Handler, and the behaviour
// suite every Broker must pass (Suite), which runs the same scenarios on
// two and three nodes sharing one broker backend.
//
// It depends only on what chart itself depends on, so that broker modules
// can run the suite without pulling anything into the root module.
package charttest

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
	"github.com/wuyan94zl/chart"
)

// Wait is the longest a test waits for one expected event.
var Wait = 15 * time.Second

// Recorder is a Handler that records every callback on buffered channels,
// so tests wait for events instead of sleeping.
type Recorder struct {
	Logins  chan uint64
	Logouts chan uint64
	Msgs    chan chart.Message
	Errs    chan error
	// OnLogin, when set, runs inside LoginServer before it is recorded.
	OnLogin func(uid uint64)
}

// NewRecorder returns an empty Recorder.
func NewRecorder() *Recorder {
	return &Recorder{
		Logins:  make(chan uint64, 1000),
		Logouts: make(chan uint64, 1000),
		Msgs:    make(chan chart.Message, 20000),
		Errs:    make(chan error, 20000),
	}
}

// SendMessage records m.
func (r *Recorder) SendMessage(m chart.Message) {
	select {
	case r.Msgs <- m:
	default:
	}
}

// LoginServer records uid after running OnLogin.
func (r *Recorder) LoginServer(uid uint64) {
	if r.OnLogin != nil {
		r.OnLogin(uid)
	}
	r.Logins <- uid
}

// LogoutServer records uid.
func (r *Recorder) LogoutServer(uid uint64) { r.Logouts <- uid }

// ErrorLogServer records err, dropping it when the buffer is full.
func (r *Recorder) ErrorLogServer(err error) {
	select {
	case r.Errs <- err:
	default:
	}
}

// WantErr waits for an error matching target, skipping others.
func (r *Recorder) WantErr(t testing.TB, target error) error {
	t.Helper()
	deadline := time.After(Wait)
	for {
		select {
		case err := <-r.Errs:
			if errors.Is(err, target) {
				return err
			}
		case <-deadline:
			t.Fatalf("timed out waiting for an error matching %v", target)
			return nil
		}
	}
}

// Recv waits for one value from ch.
func Recv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(Wait):
		t.Fatalf("timed out waiting for %s", what)
	}
	var zero T
	return zero
}

// Eventually polls cond until it holds, for state that has no event (such
// as presence expiring with a TTL).
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(Wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Server is a hub behind a real HTTP server: /ws?id=UID calls NewServer.
type Server struct {
	Hub        *chart.Hub
	URL        string // ws://.../ws
	srv        *httptest.Server
	registered chan uint64
	killed     bool
}

type hijackWatch struct {
	http.ResponseWriter
	hijacked bool
}

func (w *hijackWatch) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.hijacked = true
	return w.ResponseWriter.(http.Hijacker).Hijack()
}

// Start serves a new hub with cfg (its Logger discards when nil) and h.
// The test's cleanup shuts it down.
func Start(t testing.TB, cfg chart.Config, h chart.Handler) *Server {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	hub := chart.New(cfg)
	mux := http.NewServeMux()
	s := &Server{Hub: hub, registered: make(chan uint64, 10000)}
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		uid, _ := strconv.ParseUint(r.FormValue("id"), 10, 64)
		hw := &hijackWatch{ResponseWriter: w}
		hub.NewServer(hw, r, uid, h)
		if hw.hijacked {
			select {
			case s.registered <- uid:
			default:
			}
		}
	})
	s.srv = httptest.NewServer(mux)
	s.URL = "ws" + strings.TrimPrefix(s.srv.URL, "http") + "/ws"
	t.Cleanup(func() {
		if !s.killed {
			ctx, cancel := context.WithTimeout(context.Background(), Wait)
			defer cancel()
			if err := hub.Shutdown(ctx); err != nil {
				t.Errorf("shutdown: %v", err)
			}
		}
		s.srv.Close()
	})
	return s
}

// Kill stops the node abruptly (Hub.Close), as if its process died.
func (s *Server) Kill() {
	s.killed = true
	s.Hub.Close()
	s.srv.CloseClientConnections()
}

// Client is a real WebSocket client. A goroutine reads its frames into a
// buffer, so tests can wait for a frame with a deadline without breaking
// the connection.
type Client struct {
	t      testing.TB
	WS     *websocket.Conn
	Uid    uint64
	frames chan Frame
}

// Frame is what a client receives: a Message or an error frame.
type Frame struct {
	chart.Message
	Error  string `json:"error"`
	Detail string `json:"message"`
}

// Dial connects uid and waits until NewServer registered the connection.
func (s *Server) Dial(t testing.TB, uid uint64) *Client {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: Wait}
	ws, resp, err := d.Dial(s.URL+"?id="+strconv.FormatUint(uid, 10), nil)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial uid %d: %v (HTTP %d)", uid, err, status)
	}
	c := &Client{t: t, WS: ws, Uid: uid, frames: make(chan Frame, 10000)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(c.frames)
		for {
			_, data, err := ws.ReadMessage()
			if err != nil {
				return
			}
			var f Frame
			if json.Unmarshal(data, &f) != nil {
				f.Error = "unparsable frame: " + string(data)
			}
			c.frames <- f
		}
	}()
	t.Cleanup(func() {
		ws.Close()
		<-done
	})
	for got := uint64(0); got != uid; {
		got = Recv(t, s.registered, "registration")
	}
	return c
}

// Login dials uid and waits for its LoginServer on r.
func (s *Server) Login(t testing.TB, r *Recorder, uid uint64) *Client {
	t.Helper()
	c := s.Dial(t, uid)
	if got := Recv(t, r.Logins, "login"); got != uid {
		t.Fatalf("login of uid %d, want %d", got, uid)
	}
	return c
}

// Send writes a raw text frame.
func (c *Client) Send(s string) {
	c.t.Helper()
	c.WS.SetWriteDeadline(time.Now().Add(Wait))
	if err := c.WS.WriteMessage(websocket.TextMessage, []byte(s)); err != nil {
		c.t.Fatalf("uid %d send: %v", c.Uid, err)
	}
}

// SendTo sends content to a channel.
func (c *Client) SendTo(channelId, content string) {
	c.t.Helper()
	b, _ := json.Marshal(map[string]any{"channel_id": channelId, "content": content, "type": 3})
	c.Send(string(b))
}

// SendToUser sends content to a user.
func (c *Client) SendToUser(uid uint64, content string) {
	c.t.Helper()
	b, _ := json.Marshal(map[string]any{"to_user_id": uid, "content": content, "type": 3})
	c.Send(string(b))
}

// next waits up to d for the next frame; ok is false on timeout.
func (c *Client) next(d time.Duration) (f Frame, ok bool) {
	c.t.Helper()
	select {
	case f, open := <-c.frames:
		if !open {
			c.t.Fatalf("uid %d: connection closed", c.Uid)
		}
		return f, true
	case <-time.After(d):
		return Frame{}, false
	}
}

// Next waits for the next frame.
func (c *Client) Next() Frame {
	c.t.Helper()
	f, ok := c.next(Wait)
	if !ok {
		c.t.Fatalf("uid %d: no frame within %v", c.Uid, Wait)
	}
	return f
}

// NextMsg waits for the next frame and requires a message.
func (c *Client) NextMsg() chart.Message {
	c.t.Helper()
	f := c.Next()
	if f.Error != "" {
		c.t.Fatalf("uid %d: got error frame %q (%s), want a message", c.Uid, f.Error, f.Detail)
	}
	return f.Message
}

// WantContent waits for the next message and requires its content.
func (c *Client) WantContent(content string) chart.Message {
	c.t.Helper()
	m := c.NextMsg()
	if m.Content != content {
		c.t.Fatalf("uid %d: got %+v, want content %q", c.Uid, m, content)
	}
	return m
}

// Quiet fails if a frame arrives within d.
func (c *Client) Quiet(d time.Duration) {
	c.t.Helper()
	if f, ok := c.next(d); ok {
		c.t.Fatalf("uid %d: unexpected frame %+v", c.Uid, f)
	}
}

// WaitClosed discards frames until the server has closed the connection.
func (c *Client) WaitClosed() {
	c.t.Helper()
	deadline := time.After(Wait)
	for {
		select {
		case _, open := <-c.frames:
			if !open {
				return
			}
		case <-deadline:
			c.t.Fatalf("uid %d: connection still open", c.Uid)
		}
	}
}

// Close closes the client cleanly and waits until the server closed too.
func (c *Client) Close() {
	c.WS.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(Wait))
	deadline := time.After(Wait)
	for {
		select {
		case _, open := <-c.frames:
			if !open {
				c.WS.Close()
				return
			}
		case <-deadline:
			c.t.Fatalf("uid %d: server did not close", c.Uid)
		}
	}
}

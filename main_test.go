package chart

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"
)

// TestMain covers the black-box tests (package chart_test) too: they are
// in the same test binary.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// The black-box tests use the test kit charttest, which these internal
// tests cannot import (it imports chart). What follows is the little that
// the internal tests need; anything more belongs in charttest.

// wait is the longest an internal test waits for one expected event.
const wait = 10 * time.Second

// recorder is a Handler that records logins and logouts.
type recorder struct {
	logins, logouts chan uint64
}

func newRecorder() *recorder {
	return &recorder{logins: make(chan uint64, 100), logouts: make(chan uint64, 100)}
}

func (r *recorder) LoginServer(uid uint64)  { r.logins <- uid }
func (r *recorder) LogoutServer(uid uint64) { r.logouts <- uid }
func (r *recorder) SendMessage(Message)     {}
func (r *recorder) ErrorLogServer(error)    {}

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

// server is a hub behind a real HTTP server: ?id=UID calls NewServer.
type server struct {
	hub        *Hub
	url        string
	registered chan uint64 // uids whose NewServer returned
}

func startServer(t testing.TB, cfg Config, h Handler) *server {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &server{hub: New(cfg), registered: make(chan uint64, 100)}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		uid, _ := strconv.ParseUint(r.FormValue("id"), 10, 64)
		s.hub.NewServer(w, r, uid, h) // returns once the connection is registered
		select {
		case s.registered <- uid:
		default:
		}
	}))
	s.url = "ws" + strings.TrimPrefix(srv.URL, "http")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		if err := s.hub.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		srv.Close()
	})
	return s
}

// client is a real WebSocket client, read by the test itself.
type client struct {
	t  testing.TB
	ws *websocket.Conn
}

// frameIn is what a client receives: a Message or an error frame.
type frameIn struct {
	Message
	Error  string `json:"error"`
	Detail string `json:"message"`
}

// dial connects uid and waits until NewServer registered the connection.
func (s *server) dial(t testing.TB, uid uint64) *client {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: wait}
	ws, _, err := d.Dial(s.url+"?id="+strconv.FormatUint(uid, 10), nil)
	if err != nil {
		t.Fatalf("dial uid %d: %v", uid, err)
	}
	t.Cleanup(func() { ws.Close() })
	if got := recv(t, s.registered, "registration"); got != uid {
		t.Fatalf("registration of uid %d, want %d", got, uid)
	}
	return &client{t: t, ws: ws}
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

// closeNow closes the client cleanly and waits for the server's answer.
func (c *client) closeNow() {
	c.t.Helper()
	c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(wait))
	c.ws.SetReadDeadline(time.Now().Add(wait))
	for {
		_, _, err := c.ws.ReadMessage()
		if err == nil {
			continue
		}
		var ne interface{ Timeout() bool }
		if errors.As(err, &ne) && ne.Timeout() {
			c.t.Fatalf("connection still open after %v", wait)
		}
		break
	}
	c.ws.Close()
}

package charttest

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/gorilla/websocket"
	"github.com/wuyan94zl/chart"
)

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

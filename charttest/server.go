package charttest

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wuyan94zl/chart"
)

// Server is a hub behind a real HTTP server: /ws?id=UID calls NewServer.
type Server struct {
	Hub        *chart.Hub
	URL        string // ws://.../ws
	srv        *httptest.Server
	mu         sync.Mutex
	dials      uint64
	registered map[string]chan struct{} // by the dial's token, until NewServer returned
	killed     bool

	// Strict makes the Clients dialled or attached from here afterwards
	// fail the test on any frame they hand out that is not a text frame
	// holding exactly one JSON object with no field that Frame lacks.
	Strict bool
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
	return Serve(t, chart.New(cfg), h)
}

// Serve is Start for a hub the test made itself, such as chart.DefaultHub
// or one that its Handler must know before the first connection.
func Serve(t testing.TB, hub *chart.Hub, h chart.Handler) *Server {
	t.Helper()
	mux := http.NewServeMux()
	s := &Server{Hub: hub, registered: make(map[string]chan struct{})}
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		uid, _ := strconv.ParseUint(r.FormValue("id"), 10, 64)
		hw := &hijackWatch{ResponseWriter: w}
		hub.NewServer(hw, r, uid, h)
		s.mu.Lock()
		done := s.registered[r.FormValue("dial")]
		delete(s.registered, r.FormValue("dial"))
		s.mu.Unlock()
		if hw.hijacked && done != nil {
			close(done)
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
	return s.DialHeader(t, uid, nil)
}

// DialHeader is Dial with extra request headers, such as Origin.
func (s *Server) DialHeader(t testing.TB, uid uint64, hdr http.Header) *Client {
	t.Helper()
	return s.Attach(t, s.Open(t, uid, hdr), uid)
}

// Open is DialHeader without the Client: it returns the bare connection,
// registered, which nothing reads until the test does. It stands for a
// client that stalls, or one the test reads itself or gives to Attach
// later. The test's cleanup closes it.
func (s *Server) Open(t testing.TB, uid uint64, hdr http.Header) *websocket.Conn {
	t.Helper()
	// The handshake answer can reach the client before NewServer has
	// registered the connection; wait for that (this very dial's, named
	// by a token), so that the test may use the API for this uid at once.
	s.mu.Lock()
	s.dials++
	token := strconv.FormatUint(s.dials, 10)
	done := make(chan struct{})
	s.registered[token] = done
	s.mu.Unlock()
	ws, status, err := s.dialToken(uid, hdr, token)
	if err != nil {
		s.mu.Lock()
		delete(s.registered, token)
		s.mu.Unlock()
		t.Fatalf("dial uid %d: %v (HTTP %d)", uid, err, status)
	}
	t.Cleanup(func() { ws.Close() })
	select {
	case <-done:
	case <-time.After(Wait):
		t.Fatalf("uid %d: connection not registered within %v", uid, Wait)
	}
	return ws
}

// Attach makes a Client of ws, uid's connection from Open: from now on a
// goroutine of the Client reads ws, so set ws up (a ping handler, say)
// before, and read it only through the Client after.
func (s *Server) Attach(t testing.TB, ws *websocket.Conn, uid uint64) *Client {
	t.Helper()
	return newClient(t, ws, uid, s.Strict)
}

// DialRefused dials uid with the extra request headers hdr, requires the
// server to refuse the WebSocket handshake, and returns the HTTP status of
// the refusal.
func (s *Server) DialRefused(t testing.TB, uid uint64, hdr http.Header) int {
	t.Helper()
	ws, status, err := s.dial(uid, hdr)
	if err == nil {
		ws.Close()
		t.Fatalf("dial uid %d: accepted, want a refusal", uid)
	}
	if status == 0 {
		t.Fatalf("dial uid %d: %v, without an HTTP answer", uid, err)
	}
	return status
}

// dial connects uid; status is the HTTP status of the answer, 0 if none.
func (s *Server) dial(uid uint64, hdr http.Header) (ws *websocket.Conn, status int, err error) {
	return s.dialToken(uid, hdr, "")
}

// dialToken is dial naming the dial by token, for Open.
func (s *Server) dialToken(uid uint64, hdr http.Header, token string) (ws *websocket.Conn, status int, err error) {
	d := websocket.Dialer{HandshakeTimeout: Wait}
	url := s.URL + "?id=" + strconv.FormatUint(uid, 10)
	if token != "" {
		url += "&dial=" + token
	}
	ws, resp, err := d.Dial(url, hdr)
	if resp != nil {
		status = resp.StatusCode
	}
	return ws, status, err
}

// Login dials uid and waits for its LoginServer on r.
func (s *Server) Login(t testing.TB, r *Recorder, uid uint64) *Client {
	t.Helper()
	c := s.Dial(t, uid)
	r.WantLogin(t, uid)
	return c
}

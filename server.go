package chart

import (
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/gorilla/websocket"
)

// Accepting a connection: NewServer checks the request, upgrades it,
// registers the connection and starts its read goroutine (conn.go).

// noBuffers is a websocket.BufferPool that never holds a buffer. The hub
// writes frames itself, so gorilla's write buffer is never needed and an
// idle connection keeps none.
type noBuffers struct{}

func (noBuffers) Get() any  { return nil }
func (noBuffers) Put(x any) {}

func (h *Hub) newUpgrader() websocket.Upgrader {
	return websocket.Upgrader{
		ReadBufferSize:  h.cfg.ReadBufferSize,
		WriteBufferPool: noBuffers{},
		// NewServer checks the origin itself, to report the refusal.
		CheckOrigin: func(*http.Request) bool { return true },
	}
}

// NewServer upgrades the request to a WebSocket for uid and registers the
// connection. It returns as soon as the connection is registered and its
// read goroutine runs, which lets net/http free the request's buffers; the
// connection lives on until the client leaves or the hub shuts down.
//
// The first connection of a uid triggers handler.LoginServer; the last one
// to close triggers handler.LogoutServer. A nil handler is allowed and
// ignores every event.
//
// Refusals are answered over HTTP and reported to handler.ErrorLogServer:
// 400 for uid 0 (ErrInvalidUid), 403 for a foreign Origin
// (ErrOriginNotAllowed), 503 after Shutdown (ErrHubClosed), and gorilla's
// answer when the request is not a valid WebSocket upgrade (ErrUpgrade).
func (h *Hub) NewServer(w http.ResponseWriter, r *http.Request, uid uint64, handler Handler) {
	if handler == nil {
		handler = nopHandler{}
	} else if h.cfg.Handler == nil {
		h.lastHandler.Store(&handlerRef{handler})
	}
	if status, text, err := h.admit(r, uid); err != nil {
		http.Error(w, text, status)
		h.report(handler, err)
		return
	}
	ws, err := h.upgrader.Upgrade(w, r, nil)
	if err != nil {
		// gorilla has answered the request with an HTTP error.
		h.report(handler, newError(ErrUpgrade, uid, "", err))
		return
	}
	c := &Conn{hub: h, uid: uid, handler: handler, ws: ws, nc: ws.NetConn()}
	ws.SetPingHandler(c.onPing)
	ws.SetPongHandler(c.onPong)
	ws.SetCloseHandler(func(int, string) error { return nil }) // the writer answers
	drain, ok := h.register(c)
	if !ok {
		// Shutdown began meanwhile. No writer exists yet: this goroutine is
		// the connection's only writer.
		c.nc.SetWriteDeadline(time.Now().Add(h.cfg.WriteWait))
		c.nc.Write(closeFrame(closeGoingAway, "server shutting down"))
		c.nc.Close()
		h.report(handler, newError(ErrHubClosed, uid, "", nil))
		return
	}
	go c.readLoop(drain)
}

// admit decides whether a request may become a connection; when it may
// not, it returns the HTTP status and text to answer, and the error.
func (h *Hub) admit(r *http.Request, uid uint64) (status int, text string, err error) {
	switch {
	case h.closed.Load():
		return http.StatusServiceUnavailable, "chart: server shutting down", newError(ErrHubClosed, uid, "", nil)
	case uid == 0:
		return http.StatusBadRequest, "chart: invalid uid", newError(ErrInvalidUid, 0, "", nil)
	case !h.checkOrigin(r):
		origin := errors.New(strings.Join(r.Header["Origin"], ", "))
		return http.StatusForbidden, "chart: origin not allowed", &Error{Kind: ErrOriginNotAllowed, Uid: uid, Err: origin}
	}
	return 0, "", nil
}

// checkOrigin implements the default origin policy: no Origin header
// (non-browser client), the request's own host, or an allowed origin.
func (h *Hub) checkOrigin(r *http.Request) bool {
	if h.cfg.CheckOrigin != nil {
		return h.cfg.CheckOrigin(r)
	}
	origins := r.Header["Origin"]
	if len(origins) == 0 {
		return true
	}
	u, err := url.Parse(origins[0])
	if err != nil || u.Host == "" {
		return slices.Contains(h.cfg.AllowedOrigins, origins[0]) || slices.Contains(h.cfg.AllowedOrigins, "*")
	}
	if strings.EqualFold(u.Host, r.Host) {
		return true
	}
	for _, a := range h.cfg.AllowedOrigins {
		if a == "*" || strings.EqualFold(a, u.Host) || strings.EqualFold(a, u.Scheme+"://"+u.Host) {
			return true
		}
	}
	return false
}

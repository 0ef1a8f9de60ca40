package chart

import (
	"cmp"
	"errors"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/websocket"
)

// Accepting a connection: NewServer (or ServeHTTP, which authenticates
// first) checks the request, upgrades it, lets ConnectServer decide,
// registers the connection and queues the start of its read goroutine
// (read.go) behind the uid's login.

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
		Subprotocols:    append([]string{ProtocolV1}, h.cfg.Subprotocols...),
		// The hub checks the origin itself, to explain a refusal.
		CheckOrigin: func(*http.Request) bool { return true },
	}
}

// NewServer upgrades the request to a WebSocket for uid and registers the
// connection. It returns as soon as the connection is registered, which
// lets net/http free the request's buffers; the connection lives on until
// the client leaves or the hub shuts down.
//
// The first connection of a uid triggers handler.LoginServer; the last one
// to close triggers handler.LogoutServer. A nil handler is allowed and
// ignores every event. The connection's first frame is read after its
// uid's LoginServer has returned.
//
// Refusals are answered over HTTP and reported to handler.ErrorLogServer:
// 400 for uid 0 (ErrInvalidUid), 403 for a foreign Origin
// (ErrOriginNotAllowed), 429 past MaxConnsPerIP (ErrTooManyConns), 503
// after Shutdown (ErrHubClosed), and gorilla's answer when the request is
// not a valid WebSocket upgrade (ErrUpgrade).
func (h *Hub) NewServer(w http.ResponseWriter, r *http.Request, uid uint64, handler Handler) {
	if handler == nil {
		handler = nopHandler{}
	} else if h.cfg.Handler == nil {
		h.lastHandler.Store(&handlerRef{handler})
	}
	h.serve(w, r, uid, nil, handler)
}

// ServeHTTP makes the Hub an http.Handler, as in http.Handle("/ws", hub):
// it authenticates the request with Config.Authenticate (a refusal is
// answered with 401, or the error's Status and Code), then serves the
// connection as NewServer does, with Config.Handler.
func (h *Hub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	handler := h.cfg.Handler
	if handler == nil {
		// No callbacks: this node may reap dead nodes' uids (it has no
		// LogoutServer to lose).
		handler = nopHandler{}
		if h.lastHandler.Load() == nil {
			h.lastHandler.Store(&handlerRef{handler})
		}
	}
	if h.cfg.Authenticate == nil {
		http.Error(w, "chart: Config.Authenticate is not set", http.StatusInternalServerError)
		h.report(handler, &Error{Kind: ErrUnauthorized, Err: errors.New("ServeHTTP needs Config.Authenticate")})
		return
	}
	var uid uint64
	var meta any
	err := error(ErrUnauthorized)
	h.call(handler, 0, "Authenticate", func() { uid, meta, err = h.cfg.Authenticate(r) })
	if err != nil {
		status, body := http.StatusUnauthorized, "unauthorized"
		var e *Error
		if errors.As(err, &e) {
			status, body = cmp.Or(e.Status, status), cmp.Or(clip(e.Code), body)
		}
		http.Error(w, "chart: "+body, status)
		if e != nil && e.Err != nil {
			err = e.Err // the application's own words, without a second prefix
		}
		h.report(handler, &Error{Kind: ErrUnauthorized, Uid: uid, Err: err})
		return
	}
	h.serve(w, r, uid, meta, handler)
}

// serve upgrades an admitted request and registers its connection.
func (h *Hub) serve(w http.ResponseWriter, r *http.Request, uid uint64, meta any, handler Handler) {
	ip := ""
	if h.cfg.MaxConnsPerIP > 0 {
		ip = h.cfg.ClientIP(r)
	}
	if status, text, err := h.admit(r, uid, ip); err != nil {
		http.Error(w, text, status)
		h.report(handler, err)
		return
	}
	ws, err := h.upgrader.Upgrade(w, r, nil)
	if err != nil {
		// gorilla has answered the request with an HTTP error.
		h.releaseIP(ip)
		h.report(handler, newError(ErrUpgrade, uid, "", err))
		return
	}
	c := &Conn{hub: h, id: h.connIDs.Add(1), uid: uid, meta: meta, handler: handler, ws: ws, nc: ws.NetConn(), ip: ip,
		v1: ws.Subprotocol() == ProtocolV1, hold: []held{}}
	if pollable(c.nc) {
		// Polled: gorilla's reader (which has read nothing: Upgrade
		// refuses a client that sends before the handshake completes) is
		// not needed, and not kept.
		c.ws = nil
		if !c.v1 {
			c.proto = ws.Subprotocol()
		}
	} else {
		ws.SetReadLimit(h.cfg.MaxMessageSize)
		ws.SetPingHandler(c.onPing)
		ws.SetPongHandler(c.onPong)
		ws.SetCloseHandler(func(int, string) error { return nil }) // the writer answers
	}
	if !h.connect(c) {
		h.releaseIP(ip)
		return
	}
	drain, ok := h.register(c)
	if !ok {
		// Shutdown began meanwhile.
		h.releaseIP(ip)
		c.closeNow(closeGoingAway, "server shutting down")
		h.report(handler, newError(ErrHubClosed, uid, "", nil))
		return
	}
	if h.queueEvent(uid, c.start) {
		drain = true
	}
	if drain {
		h.readers.Add(1)
		go func() {
			defer h.readers.Done()
			h.drainEvents(uid)
		}()
	}
}

// connect runs the handler's ConnectServer, if it has one; false when it
// refused the connection, which is then closed with CloseRefused.
func (h *Hub) connect(c *Conn) bool {
	ch, ok := c.handler.(ConnectHandler)
	if !ok {
		return true
	}
	err := error(Refuse("refused", "connect handler failed"))
	h.call(c.handler, c.uid, "ConnectServer", func() { err = ch.ConnectServer(c) })
	c.mu.Lock()
	expired := c.expired
	c.mu.Unlock()
	switch {
	case err != nil:
		c.SetExpiry(time.Time{})
		c.closeNow(CloseRefused, h.refusal(c, err, "", 0).Err.Error())
		return false
	case expired:
		c.closeNow(CloseExpired, "credentials expired")
		return false
	}
	return true
}

// closeNow writes a close frame and closes a connection that has no
// writer goroutine: one that was never registered.
//
// Closing at once while the client's frames (a hello, a send) wait unread
// would make the kernel answer with a reset, and the client would see 1006
// instead of the code: so the write side is shut first, and what the
// client still sends is read and dropped until it closes too, at most
// CloseGrace and 64 KiB.
func (c *Conn) closeNow(code int, text string) {
	c.nc.SetWriteDeadline(time.Now().Add(c.hub.cfg.WriteWait))
	_, err := c.nc.Write(closeFrame(code, text))
	if cw, ok := c.nc.(interface{ CloseWrite() error }); ok && err == nil && cw.CloseWrite() == nil {
		c.nc.SetReadDeadline(time.Now().Add(c.hub.cfg.CloseGrace))
		io.CopyN(io.Discard, c.nc, 64<<10)
	}
	c.nc.Close()
}

// admit decides whether a request may become a connection; when it may
// not, it returns the HTTP status and text to answer, and the error. When
// it admits a request with ip set, it counts the IP's connection: the
// caller releases it if the connection does not register.
func (h *Hub) admit(r *http.Request, uid uint64, ip string) (status int, text string, err error) {
	switch {
	case h.closed.Load():
		return http.StatusServiceUnavailable, "chart: server shutting down", newError(ErrHubClosed, uid, "", nil)
	case uid == 0:
		return http.StatusBadRequest, "chart: invalid uid", newError(ErrInvalidUid, 0, "", nil)
	case !h.checkOrigin(r):
		return http.StatusForbidden, "chart: origin not allowed", &Error{Kind: ErrOriginNotAllowed, Uid: uid, Err: originError(r)}
	case ip != "" && !h.takeIP(ip):
		return http.StatusTooManyRequests, "chart: too many connections", &Error{Kind: ErrTooManyConns, Uid: uid, Err: errors.New("from " + clip(ip))}
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

// originError explains a refused Origin: what was compared, and how to fix
// it.
func originError(r *http.Request) error {
	origin := strings.Join(r.Header["Origin"], ", ")
	fix := `behind a reverse proxy, forward the Host with its port (nginx: proxy_set_header Host $http_host); ` +
		`or list the origin in Config.AllowedOrigins`
	if origin == "null" {
		fix = `a page opened as a file sends Origin "null": serve it from this server, or allow "null" in Config.AllowedOrigins while developing`
	}
	return errors.New("Origin " + strconv.Quote(clip(origin)) + " is not the request's Host " + strconv.Quote(clip(r.Host)) + ": " + fix)
}

package chart

import (
	"fmt"
	"runtime/debug"
)

// Handler is implemented by business code and passed to NewServer. The hub
// calls it without holding any lock, so every method may call any function
// of this package. A panic in a method is recovered and reported to
// ErrorLogServer (ErrCallbackPanic, with the stack); the server goes on.
//
// Which goroutine runs what:
//   - LoginServer and LogoutServer run on whichever goroutine drains the
//     uid's login/logout queue: for a connection's arrival, its read
//     goroutine, after NewServer has returned and before the connection's
//     first frame is read; for a departure, the read goroutine of the
//     connection that closed (or, after Shutdown, that same goroutine).
//     With a Broker, the LogoutServer of a dead node's users runs on a
//     worker of the heartbeat.
//   - SendMessage runs on the sender's read goroutine, after the message was
//     queued for its recipients; a slow SendMessage delays only that sender.
//   - ErrorLogServer runs where the error happened: the connection's read
//     goroutine for connection errors, the caller's goroutine for API calls
//     and for NewServer, a broker goroutine for broker failures.
//
// LoginServer and LogoutServer of one uid never overlap and arrive in order:
// a uid that reconnects sees LogoutServer finish before the next LoginServer.
//
// With Config.Broker, first and last connection mean in the whole cluster:
// a uid moving from a node to another is not logged out. LoginServer runs
// on the node of the first connection, LogoutServer on the node of the
// last one (or on a surviving node for the users of a dead node); the
// order guarantee then holds per node.
type Handler interface {
	// SendMessage is called for every message a client sent over its
	// WebSocket and the hub accepted, with UserId and SendTime set by the
	// server. Messages sent through the API do not come back here.
	SendMessage(msg Message)
	// LoginServer is called once when a uid's first connection is
	// registered and ready to receive: JoinChannelIds and
	// SendMessageToChannelIds called here reach that connection.
	LoginServer(uid uint64)
	// LogoutServer is called once after a uid's last connection closed;
	// its channel memberships are gone by then.
	LogoutServer(uid uint64)
	// ErrorLogServer receives every error: refused messages, failed
	// connections, API calls for offline users, recovered panics. Each
	// matches an Err* sentinel with errors.Is.
	ErrorLogServer(err error)
}

// nopHandler stands in for a nil Handler.
type nopHandler struct{}

func (nopHandler) SendMessage(Message)  {}
func (nopHandler) LoginServer(uint64)   {}
func (nopHandler) LogoutServer(uint64)  {}
func (nopHandler) ErrorLogServer(error) {}

// handlerRef boxes a Handler for atomic.Pointer.
type handlerRef struct{ handler Handler }

// call runs fn, a call into handler, and turns a panic into an
// ErrCallbackPanic reported through handler.
func (h *Hub) call(handler Handler, uid uint64, name string, fn func()) {
	defer func() {
		if r := recover(); r != nil {
			h.report(handler, &Error{Kind: ErrCallbackPanic, Uid: uid, Err: fmt.Errorf("%s: %v\n%s", name, r, debug.Stack())})
		}
	}()
	fn()
}

// report is the one way an error reaches business code: handler's
// ErrorLogServer, or for an error that belongs to no connection (handler
// nil) the fallback handler, or when there is none the Logger. A panic in
// ErrorLogServer is logged.
func (h *Hub) report(handler Handler, err error) {
	if handler == nil {
		handler = h.fallbackHandler()
	}
	if handler == nil {
		h.cfg.Logger.Warn("chart", "err", err)
		return
	}
	defer func() {
		if r := recover(); r != nil {
			h.cfg.Logger.Error("chart: ErrorLogServer panicked", "err", err, "panic", r, "stack", string(debug.Stack()))
		}
	}()
	handler.ErrorLogServer(err)
}

// fail reports err (see report) and returns it, for API calls.
func (h *Hub) fail(handler Handler, err error) error {
	h.report(handler, err)
	return err
}

// fallbackHandler is Config.Handler, else the handler last given to
// NewServer, else nil.
func (h *Hub) fallbackHandler() Handler {
	if h.cfg.Handler != nil {
		return h.cfg.Handler
	}
	if ref := h.lastHandler.Load(); ref != nil {
		return ref.handler
	}
	return nil
}

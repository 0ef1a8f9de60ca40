package chart

import (
	"errors"
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
	// ErrorLogServer receives the errors no caller sees: refused client
	// messages, failed connections, broker failures, recovered panics,
	// SendMessageToChannelIds for an offline uid. An error an API call
	// returns is not reported here too. Each matches an Err* sentinel with
	// errors.Is.
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

// ConnectHandler is an optional interface of a Handler, found by type
// assertion. ConnectServer runs for each connection after the WebSocket
// handshake, before the connection is registered (so before LoginServer)
// and before its first frame is read, on the goroutine of NewServer or
// ServeHTTP. It may read the Conn and set its expiry. An error refuses the
// connection: it is closed with CloseRefused (4003), the error's text
// (its first 123 bytes) as the close reason, and no other callback runs
// for it.
type ConnectHandler interface {
	ConnectServer(c *Conn) error
}

// DisconnectHandler is an optional interface of a Handler. DisconnectServer
// runs once for each connection that was registered, after it closed, with
// why: ErrClientClosed, ErrHubClosed (Shutdown), ErrDisconnected,
// ErrExpired, ErrReplaced, ErrSlowConsumer, ErrRateLimited,
// ErrMessageTooLarge, ErrConnection, ... (match with errors.Is). It runs in
// order with the uid's LoginServer and LogoutServer: before the
// LogoutServer that its closing may cause.
type DisconnectHandler interface {
	DisconnectServer(c *Conn, reason error)
}

// MessageFilter is an optional interface of a Handler. FilterMessage runs
// for every message a client sends, channel or direct, after the server
// set UserId and SendTime and before anything is delivered. Returning nil
// delivers the message as the filter left it (it may change any field;
// the destination is checked afterwards). An error refuses it: nothing is
// delivered, SendMessage is not called, and the sender gets an error frame
// with the code of an *Error (see Refuse), else "refused", and the error's
// text. It runs on the sender's read goroutine. A panic refuses the message.
type MessageFilter interface {
	FilterMessage(c *Conn, m *Message) error
}

// filter runs the handler's MessageFilter, if it has one, on a client's
// message; a refusal comes back as an *Error of kind ErrRefused.
func (h *Hub) filter(c *Conn, m *Message) error {
	f, ok := c.handler.(MessageFilter)
	if !ok {
		return nil
	}
	err := error(Refuse("refused", "message filter failed"))
	h.call(c.handler, c.uid, "FilterMessage", func() { err = f.FilterMessage(c, m) })
	if err == nil {
		return nil
	}
	return h.refusal(c, err, m.ChannelId, m.ToUserId)
}

// refusal turns an error the application returned into the ErrRefused
// the client is told about, keeping its Code and its own message.
func (h *Hub) refusal(c *Conn, err error, channelId string, toUid uint64) *Error {
	r := &Error{Kind: ErrRefused, Uid: c.uid, ChannelId: channelId, ToUid: toUid, Err: err}
	var e *Error
	if errors.As(err, &e) {
		r.Code = e.Code
		if e.Err != nil {
			r.Err = e.Err
		}
	}
	return r
}

// JoinHandler is an optional interface of a Handler: with it, clients may
// ask to join a channel themselves, with the frame {"join":"room"}, and to
// leave one with {"leave":"room"} (any client, chart.v1 or not; see README,
// "Joining from the client"). JoinServer decides each join: nil lets c's
// uid join (all its connections, as JoinChannelIds), an error refuses it
// and the client gets an error frame with the error's code (see Refuse),
// else "refused". It runs on c's read goroutine, after the request passed
// the rate limit and the channel id was found valid, with no lock held. A
// panic refuses. Without JoinHandler every such request is refused
// ("refused"): membership stays the application's.
type JoinHandler interface {
	JoinServer(c *Conn, channelId string) error
}

// LeaveHandler is an optional interface of a Handler that also implements
// JoinHandler: LeaveServer decides a client's requests to leave a channel,
// as JoinServer its joins. Without it a client may leave any channel.
type LeaveHandler interface {
	LeaveServer(c *Conn, channelId string) error
}

// PresenceHandler is an optional interface of Config.Handler (else of the
// handler last given to NewServer), for the channels with presence events
// (Config.PresenceChannels): PresenceServer hears of the uids that joined
// and left channelId, the changes of one PresenceWindow together, as the
// channel's members do (a uid that left and came back within the window
// is in neither list). Each change is told once in the cluster, by the
// node that made it (where JoinChannelIds or UnJoinChannelIds ran, where
// a client asked, where the uid's last connection closed); the users of a
// node that died are not (their LogoutServer runs). It runs on a timer's
// goroutine, one call at a time per channel, with no lock held; joined
// and left are sorted, and its own.
type PresenceHandler interface {
	PresenceServer(channelId string, joined, left []uint64)
}

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
//   - LoginServer runs on the new connection's read goroutine, after
//     NewServer has returned and before the connection's first frame is read.
//   - LogoutServer runs on the read goroutine of the uid's last connection,
//     after it closed (or in Shutdown, on that same goroutine).
//   - SendMessage runs on the sender's read goroutine, after the message was
//     queued for its recipients; a slow SendMessage delays only that sender.
//   - ErrorLogServer runs where the error happened: the connection's read
//     goroutine for connection errors, the caller's goroutine for API calls
//     and for NewServer.
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
type handlerRef struct{ h Handler }

// call runs fn, a call into user code, and turns a panic into an error
// reported through h (or the logger if reporting panics too).
func (hub *Hub) call(h Handler, uid uint64, name string, fn func()) {
	defer func() {
		if r := recover(); r != nil {
			err := &Error{Kind: ErrCallbackPanic, Uid: uid, Err: fmt.Errorf("%s: %v\n%s", name, r, debug.Stack())}
			if name == "ErrorLogServer" {
				hub.cfg.Logger.Error("chart: ErrorLogServer panicked", "err", err)
				return
			}
			hub.reportTo(h, err)
		}
	}()
	fn()
}

// reportTo hands err to h's ErrorLogServer, recovering a panic in it.
func (hub *Hub) reportTo(h Handler, err error) {
	if h == nil {
		hub.report(err)
		return
	}
	hub.call(h, 0, "ErrorLogServer", func() { h.ErrorLogServer(err) })
}

// report hands an error that belongs to no connection to Config.Handler, or
// to the handler last passed to NewServer, or to the logger.
func (hub *Hub) report(err error) {
	h := hub.cfg.Handler
	if h == nil {
		if ref := hub.lastHandler.Load(); ref != nil {
			h = ref.h
		}
	}
	if h == nil {
		hub.cfg.Logger.Warn("chart", "err", err)
		return
	}
	hub.reportTo(h, err)
}

// userEvent is a pending LoginServer or LogoutServer call, or with a
// Broker, a presence change that may lead to one.
type userEvent struct {
	kind  eventKind
	h     Handler
	u     *user    // evUp, evRestore: the local user
	chans []string // evDown: the channels it left here
}

type eventKind uint8

const (
	evLogin   eventKind = iota // LoginServer
	evLogout                   // LogoutServer
	evUp                       // first connection here: Connect, maybe LoginServer
	evDown                     // last connection here: Disconnect, maybe LogoutServer
	evRestore                  // re-publish presence after an outage
	evGone                     // reaped from a dead node: LogoutServer
	evPurge                    // after an outage: Disconnect a uid no longer here
)

// pushEvent queues a login or logout for uid. The caller holds s.mu. It
// returns true when the caller must run drainEvents (nobody is draining
// this uid's events yet). Queueing under the lock that decided the
// transition, and draining one at a time, keeps each uid's LoginServer and
// LogoutServer calls in order without holding a lock while they run.
func (s *userShard) pushEvent(uid uint64, ev userEvent) bool {
	q, busy := s.events[uid]
	s.events[uid] = append(q, ev)
	return !busy
}

// drainEvents runs uid's queued login/logout callbacks in order, with no
// lock held while each runs.
func (hub *Hub) drainEvents(uid uint64) {
	s := hub.userShard(uid)
	for {
		s.mu.Lock()
		q := s.events[uid]
		if len(q) == 0 {
			delete(s.events, uid)
			s.mu.Unlock()
			return
		}
		ev := q[0]
		q[0] = userEvent{}
		s.events[uid] = q[1:]
		s.mu.Unlock()
		if hub.killed.Load() {
			continue // Close: the node is dead
		}
		kind := ev.kind
		switch kind {
		case evUp:
			if hub.clusterUp(ev.u) {
				kind = evLogin
			}
		case evDown:
			if hub.clusterDown(uid, ev.chans) {
				kind = evLogout
			}
		case evRestore:
			hub.clusterRestore(ev.u)
		case evGone:
			ev.h, kind = hub.fallbackHandler(), evLogout
		case evPurge:
			hub.clusterPurge(uid)
		}
		switch kind {
		case evLogin:
			hub.call(ev.h, uid, "LoginServer", func() { ev.h.LoginServer(uid) })
		case evLogout:
			hub.call(ev.h, uid, "LogoutServer", func() { ev.h.LogoutServer(uid) })
		}
	}
}

// fallbackHandler is Config.Handler, else the handler last given to
// NewServer, else one that ignores everything.
func (hub *Hub) fallbackHandler() Handler {
	if hub.cfg.Handler != nil {
		return hub.cfg.Handler
	}
	if ref := hub.lastHandler.Load(); ref != nil {
		return ref.h
	}
	return nopHandler{}
}

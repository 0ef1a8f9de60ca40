package chart

import (
	"errors"
	"fmt"
	"strconv"
)

// Sentinel errors. Every error the hub returns or hands to
// Handler.ErrorLogServer matches one of them with errors.Is; most arrive
// wrapped in an *Error that names the user and channel concerned.
var (
	// ErrUserOffline: the uid has no open connection (on any node of the
	// cluster, with a Broker).
	ErrUserOffline = errors.New("user offline")
	// ErrNotJoined: the sender has not joined the channel it sent to.
	ErrNotJoined = errors.New("channel not joined")
	// ErrInvalidChannel: a channel id is empty or longer than MaxChannelIdLen.
	ErrInvalidChannel = errors.New("invalid channel id")
	// ErrTooManyChannels: a uid tried to join more than
	// Config.MaxChannelsPerUid channels.
	ErrTooManyChannels = errors.New("too many channels")
	// ErrInvalidUid: uid 0 is reserved for system messages and cannot connect.
	ErrInvalidUid = errors.New("invalid uid")
	// ErrBadMessage: an inbound frame is not a valid message (malformed JSON,
	// wrong field types, a binary frame, no destination).
	ErrBadMessage = errors.New("bad message")
	// ErrMessageTooLarge: an inbound message exceeded Config.MaxMessageSize;
	// the connection is closed with status 1009.
	ErrMessageTooLarge = errors.New("message too large")
	// ErrRateLimited: a connection sent faster than Config.RateLimit allows.
	ErrRateLimited = errors.New("rate limited")
	// ErrSlowConsumer: a connection's send queue overflowed; with the default
	// policy the connection is closed with status 1008.
	ErrSlowConsumer = errors.New("slow consumer")
	// ErrOriginNotAllowed: the upgrade request came from a foreign Origin.
	ErrOriginNotAllowed = errors.New("origin not allowed")
	// ErrUpgrade: the HTTP request could not be upgraded to a WebSocket.
	ErrUpgrade = errors.New("websocket upgrade failed")
	// ErrHubClosed: the hub has been shut down.
	ErrHubClosed = errors.New("hub closed")
	// ErrCallbackPanic: a Handler callback panicked; the error carries the
	// panic value and stack.
	ErrCallbackPanic = errors.New("callback panicked")
	// ErrConnection: a connection failed (network error, missed pongs, write
	// timeout, protocol violation).
	ErrConnection = errors.New("connection failed")
	// ErrBroker: a call to Config.Broker failed (the backend is
	// unreachable, for instance). Local delivery goes on; the error wraps
	// the broker's.
	ErrBroker = errors.New("broker failed")
)

// Error is the concrete error the hub reports. Kind is one of the Err*
// sentinels; Uid and ChannelId name what it concerns (zero when nothing);
// Err is the underlying cause, if any. errors.Is matches both Kind and Err,
// and errors.As(err, &e) gives the fields to code that wants them.
type Error struct {
	Kind      error
	Uid       uint64
	ChannelId string
	ToUid     uint64
	Err       error
}

// Error formats as "chart: uid 7: channel "news": channel not joined: cause".
func (e *Error) Error() string {
	b := []byte("chart: ")
	if e.Uid != 0 {
		b = append(b, "uid "...)
		b = strconv.AppendUint(b, e.Uid, 10)
		b = append(b, ": "...)
	}
	if e.ChannelId != "" {
		b = append(b, "channel "...)
		b = strconv.AppendQuote(b, e.ChannelId)
		b = append(b, ": "...)
	}
	if e.ToUid != 0 {
		b = append(b, "to uid "...)
		b = strconv.AppendUint(b, e.ToUid, 10)
		b = append(b, ": "...)
	}
	if e.Kind != nil {
		b = append(b, e.Kind.Error()...)
	}
	if e.Err != nil {
		if e.Kind != nil {
			b = append(b, ": "...)
		}
		b = append(b, e.Err.Error()...)
	}
	return string(b)
}

// Unwrap returns Kind and Err, so errors.Is sees both.
func (e *Error) Unwrap() []error {
	switch {
	case e.Kind == nil:
		return []error{e.Err}
	case e.Err == nil:
		return []error{e.Kind}
	}
	return []error{e.Kind, e.Err}
}

// errorCode is the "error" field of the error frame sent to a client.
func errorCode(err error) string {
	switch {
	case errors.Is(err, ErrNotJoined):
		return "not_joined"
	case errors.Is(err, ErrUserOffline):
		return "user_offline"
	case errors.Is(err, ErrRateLimited):
		return "rate_limited"
	case errors.Is(err, ErrMessageTooLarge):
		return "too_large"
	case errors.Is(err, ErrInvalidChannel):
		return "invalid_channel"
	case errors.Is(err, ErrTooManyChannels):
		return "too_many_channels"
	case errors.Is(err, ErrHubClosed):
		return "hub_closed"
	case errors.Is(err, ErrBroker):
		return "broker_failed"
	}
	return "bad_message"
}

func newError(kind error, uid uint64, channelId string, cause error) *Error {
	return &Error{Kind: kind, Uid: uid, ChannelId: channelId, Err: cause}
}

func badMessage(uid uint64, format string, args ...any) *Error {
	return &Error{Kind: ErrBadMessage, Uid: uid, Err: fmt.Errorf(format, args...)}
}

package chart

import (
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"
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
	// ErrRateLimited: a uid sent faster than Config.RateLimit allows.
	ErrRateLimited = errors.New("rate limited")
	// ErrSlowConsumer: a connection's send queue overflowed; with the default
	// policy the connection is closed with CloseSlowConsumer (4008).
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
	// ErrRefused: the application refused a message (FilterMessage) or a
	// connection (ConnectServer, closed with CloseRefused).
	ErrRefused = errors.New("refused")
	// ErrUnauthorized: Config.Authenticate refused the request (401 unless
	// the error carries another Status).
	ErrUnauthorized = errors.New("unauthorized")
	// ErrDisconnected: the application closed the connection (Disconnect,
	// Conn.Close), with CloseDisconnected.
	ErrDisconnected = errors.New("disconnected by the application")
	// ErrExpired: the connection's credentials expired (Conn.SetExpiry);
	// it was closed with CloseExpired.
	ErrExpired = errors.New("credentials expired")
	// ErrReplaced: the uid opened more than Config.MaxConnsPerUid
	// connections and this, its oldest, was closed with CloseReplaced.
	ErrReplaced = errors.New("replaced by a newer connection")
	// ErrTooManyConns: the client's IP holds Config.MaxConnsPerIP
	// connections already (HTTP 429).
	ErrTooManyConns = errors.New("too many connections")
	// ErrClientClosed: the client closed the connection.
	ErrClientClosed = errors.New("closed by the client")
	// ErrMessageTimeout: a client took longer than Config.MessageTimeout
	// to send one message; the connection was dropped.
	ErrMessageTimeout = errors.New("message not completed in time")
	// ErrOverloaded: incomplete inbound messages of all connections
	// together reached Config.MaxPendingBytes; the message that went over
	// was refused (error frame "overloaded"), its connection kept.
	ErrOverloaded = errors.New("server overloaded")
)

// Error is the concrete error the hub reports. Kind is one of the Err*
// sentinels; Uid and ChannelId name what it concerns (zero when nothing);
// Err is the underlying cause, if any. errors.Is matches both Kind and Err,
// and errors.As(err, &e) gives the fields to code that wants them.
//
// Code and Status are for errors the application returns to the hub: Code
// is the "error" field a client sees in its error frame (from
// FilterMessage) and Status the HTTP status of a refused request (from
// Config.Authenticate). Empty, they follow from Kind. See Refuse.
type Error struct {
	Kind      error
	Uid       uint64
	ChannelId string
	ToUid     uint64
	Err       error
	Code      string
	Status    int
}

// Refuse returns an error for FilterMessage, ConnectServer or
// Config.Authenticate to return: the client sees code (in an error frame,
// or as the body of the refused request) and message.
//
//	return chart.Refuse("read_only", "this channel is read-only")
func Refuse(code, message string) *Error {
	return &Error{Kind: ErrRefused, Code: code, Err: errors.New(message)}
}

// maxQuoted bounds how much of a client-chosen string (a channel id, an
// origin) an error message or error frame repeats.
const maxQuoted = 64

// clip cuts a client-chosen string (a channel id, an origin, a code) to
// maxQuoted bytes, clipMessage an error message to four times that, so
// that neither repeats much of what a client sent.
func clip(s string) string        { return cut(s, maxQuoted) }
func clipMessage(s string) string { return cut(s, 4*maxQuoted) }

// cut returns s cut to at most n bytes on a rune boundary, marked with
// "..." when cut.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
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
		b = strconv.AppendQuote(b, clip(e.ChannelId))
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

// errorCodes maps the sentinels a client can meet to the "error" field of
// its error frame, most specific first.
var errorCodes = []struct {
	kind error
	code string
}{
	{ErrNotJoined, "not_joined"},
	{ErrUserOffline, "user_offline"},
	{ErrRateLimited, "rate_limited"},
	{ErrMessageTooLarge, "too_large"},
	{ErrInvalidChannel, "invalid_channel"},
	{ErrTooManyChannels, "too_many_channels"},
	{ErrHubClosed, "hub_closed"},
	{ErrBroker, "broker_failed"},
	{ErrRefused, "refused"},
	{ErrOverloaded, "overloaded"},
}

// errorCode is the "error" field of the error frame sent to a client.
func errorCode(err error) string {
	var e *Error
	if errors.As(err, &e) && e.Code != "" {
		return clip(e.Code)
	}
	for _, c := range errorCodes {
		if errors.Is(err, c.kind) {
			return c.code
		}
	}
	return "bad_message"
}

func newError(kind error, uid uint64, channelId string, cause error) *Error {
	return &Error{Kind: kind, Uid: uid, ChannelId: channelId, Err: cause}
}

func badMessage(uid uint64, format string, args ...any) *Error {
	return &Error{Kind: ErrBadMessage, Uid: uid, Err: fmt.Errorf(format, args...)}
}

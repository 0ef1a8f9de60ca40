package chart

import (
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Defaults applied to the zero fields of a Config.
const (
	DefaultMaxMessageSize    = 64 << 10
	DefaultPingInterval      = 54 * time.Second
	DefaultPongWait          = 60 * time.Second
	DefaultWriteWait         = 10 * time.Second
	DefaultCloseGrace        = time.Second
	DefaultSendQueueLen      = 4096
	DefaultSendQueueBytes    = 1 << 20
	DefaultRateLimit         = 50
	DefaultRateBurst         = 100
	DefaultReadBufferSize    = 128
	DefaultMaxChannelIdLen   = 256
	DefaultMaxChannelsPerUid = 1024
	DefaultMessageTimeout    = 10 * time.Second
	DefaultMaxPendingBytes   = 32 << 20
	DefaultReadRate          = 256 << 10
	DefaultMaxConnsPerUid    = 32
	DefaultHistorySize       = 100
	DefaultHistoryTTL        = 10 * time.Minute
	DefaultInboxSize         = 1000
	DefaultInboxTTL          = 24 * time.Hour
	DefaultMaxHistoryBytes   = 64 << 20
	DefaultHelloTimeout      = 3 * time.Second
	DefaultBrokerWait        = 50 * time.Millisecond
	DefaultPresenceWindow    = 200 * time.Millisecond
)

// SlowConsumerPolicy says what happens when a connection's send queue is full.
type SlowConsumerPolicy int

const (
	// SlowConsumerDisconnect closes the connection with CloseSlowConsumer
	// (4008) and reports ErrSlowConsumer. It is the default: a client that
	// cannot keep up gets a clear signal and reconnects, and nobody buffers
	// for it.
	SlowConsumerDisconnect SlowConsumerPolicy = iota
	// SlowConsumerDropOldest discards the oldest queued messages to make
	// room, counting them in Stats.Dropped. The client stays connected but
	// misses messages.
	SlowConsumerDropOldest
)

// Config tunes a Hub. The zero value is ready to use: every zero field means
// the documented default. Durations and limits that accept a negative value
// say so; a negative value switches that mechanism off.
type Config struct {
	// Handler receives the events of the connections the Hub accepts as
	// an http.Handler (ServeHTTP), and the events that belong to no
	// connection, such as broker failures. When nil, the latter go to the
	// handler most recently passed to NewServer, as in the original chart;
	// when there is none either, to Logger.
	Handler Handler

	// Authenticate makes the Hub an http.Handler: ServeHTTP calls it with
	// each upgrade request and serves the connection for the uid it
	// returns, with meta available as Conn.Meta. An error refuses the
	// request with 401, or with the Status of an *Error (see Refuse), and
	// the Code of an *Error as its body. It runs before the origin check.
	// Nil: ServeHTTP answers 500; NewServer works either way.
	Authenticate func(r *http.Request) (uid uint64, meta any, err error)
	// Subprotocols lists the WebSocket subprotocols the server accepts, in
	// order of preference; the first one a client offers is chosen. A
	// browser can carry a token this way: new WebSocket(url,
	// ["access_token", token]) with Subprotocols ["access_token"], and
	// Authenticate reading websocket.Subprotocols(r). Default none.
	Subprotocols []string

	// Logger logs what no Handler can take. Default slog.Default().
	Logger *slog.Logger

	// MaxMessageSize is the largest inbound message in bytes. A larger one
	// closes the connection with status 1009 (ErrMessageTooLarge).
	// Default 64 KiB.
	MaxMessageSize int64

	// PingInterval is how often the server pings each connection.
	// Default 54 s; negative: never.
	PingInterval time.Duration
	// PongWait is how long a connection may stay silent (no frame, no pong)
	// before it is closed. Default 60 s; negative: forever.
	PongWait time.Duration
	// WriteWait bounds every write to a connection: a write that has not
	// completed after WriteWait (up to 1.5 × WriteWait: the writer moves
	// the socket's deadline once per half WriteWait, not per write) drops
	// the connection. Default 10 s.
	WriteWait time.Duration
	// CloseGrace is how long the server waits for the client to answer its
	// close frame before dropping the TCP connection. Default 1 s.
	CloseGrace time.Duration

	// SendQueueLen and SendQueueBytes bound each connection's queue of
	// outbound messages. Defaults 4096 messages and 1 MiB. Queued frames are
	// shared between connections, so the bytes count what a connection
	// holds back, not memory it owns.
	SendQueueLen   int
	SendQueueBytes int
	// SlowConsumer is the policy when a send queue is full. Default
	// SlowConsumerDisconnect.
	SlowConsumer SlowConsumerPolicy

	// RateLimit is the sustained number of inbound messages per second a
	// uid may send, over all its connections to this node, RateBurst the
	// burst above it. A message over the
	// limit is refused with an error frame (ErrRateLimited); RateBurst
	// refusals in a row close the connection with CloseRateLimited (4029).
	// Pings and pongs from the client count too. Defaults 50/s and 100;
	// RateLimit negative: no limit.
	RateLimit float64
	RateBurst int
	// ReadRate bounds the bytes per second read from a uid's connections
	// to this node together, control frames included, with a burst of
	// MaxMessageSize or ReadRate, whichever is larger. Nothing is refused: a faster client
	// is read more slowly, so that one sender cannot push more into a
	// channel than its members can take. Default 256 KiB/s; negative: no
	// limit.
	ReadRate int
	// MessageTimeout bounds the time from the first frame of an inbound
	// message to its last; pings do not extend it. A client that takes
	// longer is dropped (ErrMessageTimeout). Default 10 s.
	MessageTimeout time.Duration
	// MaxPendingBytes bounds the memory that incomplete inbound messages
	// of all connections hold together, beyond the first 4 KiB of each
	// (so small messages always go through). A message that would go over
	// is refused: its rest is read and discarded, the client gets the
	// error frame "overloaded" (ErrOverloaded) and stays connected.
	// Default 32 MiB; negative: no bound.
	MaxPendingBytes int64

	// MaxConnsPerUid bounds the connections of one uid on this node: a
	// newer one closes the uid's oldest with CloseReplaced (4009), so a
	// user whose dead connections linger can always reconnect. Default 32;
	// negative: no limit.
	MaxConnsPerUid int
	// MaxConnsPerIP bounds the connections from one client IP on this
	// node; past it requests are refused with 429 (ErrTooManyConns).
	// Default 0: no limit.
	MaxConnsPerIP int
	// ClientIP returns a request's client IP for MaxConnsPerIP, e.g. from
	// a header your reverse proxy sets. Default: the host of
	// r.RemoteAddr.
	ClientIP func(r *http.Request) string

	// AllowedOrigins lists the browser origins accepted besides the request's
	// own host: full origins ("https://app.example.com"), hosts
	// ("app.example.com:8443"), or "*" for any. Requests without an Origin
	// header (non-browser clients) are always accepted.
	AllowedOrigins []string
	// CheckOrigin, when set, replaces the origin check entirely.
	CheckOrigin func(r *http.Request) bool

	// ReadBufferSize is the per-connection read buffer. Default 128 bytes:
	// it holds frame headers and small messages, larger payloads are read
	// past it straight into the message buffer. Connections that wait in
	// the poller (Linux, plain TCP) have none: they read through pooled
	// buffers, held only while reading, and ignore it.
	ReadBufferSize int

	// MaxChannelIdLen bounds the length of channel ids. Default 256 bytes.
	MaxChannelIdLen int
	// MaxChannelsPerUid bounds how many channels one uid may join.
	// Default 1024.
	MaxChannelsPerUid int

	// HistorySize and HistoryTTL bound the recent messages each channel
	// keeps (its stream), for History and for clients that recover what
	// they missed. With a Broker that implements Streams, the broker keeps
	// the streams and its own options bound them instead. Defaults 100 messages and 10 minutes; HistorySize
	// negative: channels keep no history and their messages carry no
	// Offset.
	HistorySize int
	HistoryTTL  time.Duration
	// InboxSize and InboxTTL bound each user's inbox: the stream of its
	// direct messages, sent and received. Defaults 1000 messages and 24
	// hours; InboxSize negative: none.
	InboxSize int
	InboxTTL  time.Duration
	// MaxHistoryBytes bounds the memory all streams hold together; past it
	// the oldest messages go first. Default 64 MiB.
	MaxHistoryBytes int64
	// HelloTimeout is how long a chart.v1 client may take to send its
	// hello; without one it gets live messages only. Default 3 s.
	HelloTimeout time.Duration

	// PresenceChannels says which channels carry presence events: their
	// members receive the channel's member list when they join (or
	// connect), then a frame each time uids join or leave it (see README,
	// "Presence"), and a PresenceHandler hears of the same changes. Nil
	// (the default): none. It is called without any lock held, but often
	// (each join), and must give the same answer for a channel on every
	// node and every time: a prefix test, a lookup in a fixed set.
	PresenceChannels func(channelId string) bool
	// PresenceWindow is how long presence changes are gathered before
	// they are sent: the changes of a window go out together, and a uid
	// that leaves and joins again within it (or joins and leaves) is not
	// mentioned, so that a mass reconnect costs each member a frame or two
	// per window, whatever the number of users. Default 200 ms.
	PresenceWindow time.Duration

	// Broker joins this hub to a cluster of hubs (nodes) sharing the
	// broker's backend; see the package doc's "Cluster" section. Each hub
	// needs its own Broker value, which the hub closes in Shutdown. When it
	// also implements Presence (every broker shipped does) presence is the
	// cluster's; otherwise each node answers for itself. Nil (the default):
	// a single node, with no broker call and no goroutine of its own.
	Broker Broker
	// BrokerWait is how long broker calls may go without any of them
	// completing before further calls are refused at once (ErrBrokerDown)
	// as if the broker were down: a frozen broker holds no API call or
	// HTTP handler longer. Calls already in flight wait for the broker's
	// own timeout. Default 50 ms.
	BrokerWait time.Duration
}

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	setDefault(&c.MaxMessageSize, DefaultMaxMessageSize)
	setDefault(&c.PingInterval, DefaultPingInterval)
	setDefault(&c.PongWait, DefaultPongWait)
	setDefault(&c.WriteWait, DefaultWriteWait)
	setDefault(&c.CloseGrace, DefaultCloseGrace)
	setDefault(&c.SendQueueLen, DefaultSendQueueLen)
	setDefault(&c.SendQueueBytes, DefaultSendQueueBytes)
	setDefault(&c.RateLimit, DefaultRateLimit)
	setDefault(&c.RateBurst, DefaultRateBurst)
	setDefault(&c.ReadBufferSize, DefaultReadBufferSize)
	setDefault(&c.MaxChannelIdLen, DefaultMaxChannelIdLen)
	setDefault(&c.MaxChannelsPerUid, DefaultMaxChannelsPerUid)
	setDefault(&c.ReadRate, DefaultReadRate)
	setDefault(&c.MessageTimeout, DefaultMessageTimeout)
	setDefault(&c.MaxPendingBytes, DefaultMaxPendingBytes)
	setDefault(&c.MaxConnsPerUid, DefaultMaxConnsPerUid)
	setDefault(&c.HistorySize, DefaultHistorySize)
	setDefault(&c.HistoryTTL, DefaultHistoryTTL)
	setDefault(&c.InboxSize, DefaultInboxSize)
	setDefault(&c.InboxTTL, DefaultInboxTTL)
	setDefault(&c.MaxHistoryBytes, DefaultMaxHistoryBytes)
	setDefault(&c.HelloTimeout, DefaultHelloTimeout)
	setDefault(&c.BrokerWait, DefaultBrokerWait)
	setDefault(&c.PresenceWindow, DefaultPresenceWindow)
	if c.ClientIP == nil {
		c.ClientIP = remoteHost
	}
	if c.WriteWait < 0 {
		c.WriteWait = DefaultWriteWait
	}
	return c
}

// remoteHost is the default Config.ClientIP.
func remoteHost(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func setDefault[T int | int64 | float64 | time.Duration](p *T, def T) {
	if *p == 0 {
		*p = def
	}
}

package chart

import (
	"log/slog"
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
)

// SlowConsumerPolicy says what happens when a connection's send queue is full.
type SlowConsumerPolicy int

const (
	// Disconnect closes the connection with status 1008 and reports
	// ErrSlowConsumer. It is the default: a client that cannot keep up gets
	// a clear signal and reconnects, and nobody buffers for it.
	Disconnect SlowConsumerPolicy = iota
	// DropOldest discards the oldest queued messages to make room, counting
	// them in Stats.Dropped. The client stays connected but misses messages.
	DropOldest
)

// Config tunes a Hub. The zero value is ready to use: every zero field means
// the documented default. Durations and limits that accept a negative value
// say so; a negative value switches that mechanism off.
type Config struct {
	// Handler receives the events that belong to no connection: errors from
	// API calls such as JoinChannelIds for an offline uid. When nil, they go
	// to the handler most recently passed to NewServer, as in the original
	// chart; when there is none either, to Logger.
	Handler Handler

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
	// WriteWait bounds every write to a connection. Default 10 s.
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
	// SlowConsumer is the policy when a send queue is full. Default Disconnect.
	SlowConsumer SlowConsumerPolicy

	// RateLimit is the sustained number of inbound messages per second a
	// connection may send, RateBurst the burst above it. A message over the
	// limit is refused with an error frame (ErrRateLimited); RateBurst
	// refusals in a row close the connection with status 1008.
	// Defaults 50/s and 100; RateLimit negative: no limit.
	RateLimit float64
	RateBurst int

	// AllowedOrigins lists the browser origins accepted besides the request's
	// own host: full origins ("https://app.example.com"), hosts
	// ("app.example.com:8443"), or "*" for any. Requests without an Origin
	// header (non-browser clients) are always accepted.
	AllowedOrigins []string
	// CheckOrigin, when set, replaces the origin check entirely.
	CheckOrigin func(r *http.Request) bool

	// ReadBufferSize is the per-connection read buffer. Default 128 bytes:
	// it holds frame headers and small messages, larger payloads are read
	// past it straight into the message buffer.
	ReadBufferSize int

	// MaxChannelIdLen bounds the length of channel ids. Default 256 bytes.
	MaxChannelIdLen int
	// MaxChannelsPerUid bounds how many channels one uid may join.
	// Default 1024.
	MaxChannelsPerUid int

	// Broker joins this hub to a cluster of hubs (nodes) sharing the
	// broker's backend; see the package doc's "Cluster" section. Each hub
	// needs its own Broker value, which the hub closes in Shutdown. When it
	// also implements Presence (every broker shipped does) presence is the
	// cluster's; otherwise each node answers for itself. Nil (the default):
	// a single node, with no broker call and no goroutine of its own.
	Broker Broker
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
	if c.WriteWait < 0 {
		c.WriteWait = DefaultWriteWait
	}
	return c
}

func setDefault[T int | int64 | float64 | time.Duration](p *T, def T) {
	if *p == 0 {
		*p = def
	}
}

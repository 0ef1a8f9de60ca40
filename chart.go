package chart

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/gorilla/websocket"
)

// Hub is a chat server: it holds the connections, users and channels, and
// every function of this package is a method on it. Create one with New, or
// use DefaultHub through the package-level functions. A Hub is safe for
// concurrent use, and needs no goroutine of its own: a hub without
// connections runs nothing.
type Hub struct {
	cfg         Config
	upgrader    websocket.Upgrader
	users       [shardCount]userShard
	chans       [shardCount]chanShard
	closed      atomic.Bool
	readers     sync.WaitGroup // one per registered connection
	lastHandler atomic.Pointer[handlerRef]
	stats       counters
	cl          *cluster    // nil without Config.Broker
	killed      atomic.Bool // Close: drop everything, run no callback
}

// New returns a Hub configured by cfg; zero fields take their defaults.
func New(cfg Config) *Hub {
	h := &Hub{cfg: cfg.withDefaults()}
	h.upgrader = websocket.Upgrader{
		ReadBufferSize:  h.cfg.ReadBufferSize,
		WriteBufferPool: noBuffers{},
		// NewServer checks the origin itself, to report the refusal.
		CheckOrigin: func(*http.Request) bool { return true },
	}
	for i := range h.users {
		h.users[i].users = make(map[uint64]*user)
		h.users[i].events = make(map[uint64][]userEvent)
	}
	for i := range h.chans {
		h.chans[i].chans = make(map[string]*channel)
	}
	if cfg.Broker != nil {
		h.startCluster(cfg.Broker)
	}
	return h
}

// DefaultHub is the Hub behind the package-level functions, with the
// default Config. Replace it before the first connection to change its
// configuration, e.g. chart.DefaultHub = chart.New(chart.Config{...}).
var DefaultHub = New(Config{})

// Config returns the hub's configuration with the defaults filled in.
func (h *Hub) Config() Config { return h.cfg }

// Shutdown stops the hub gracefully: new connections are refused with 503,
// every connection gets its queued messages and then a close frame with
// status 1001, and LogoutServer runs for every online uid. It returns when
// all connections are gone, or with ctx.Err() when ctx ends first, in which
// case the remaining connections are dropped at once. Afterwards every API
// call returns ErrHubClosed. Calling it again waits for the same end.
//
// With a Broker, LogoutServer runs for the uids that have no connection
// left on any node, then the heartbeat stops and the broker is closed.
func (h *Hub) Shutdown(ctx context.Context) error {
	h.closed.Store(true)
	conns := h.allConns()
	for _, c := range conns {
		c.close(nil, closeGoingAway, "server shutting down", true)
	}
	done := make(chan struct{})
	go func() {
		h.readers.Wait()
		close(done)
	}()
	select {
	case <-done:
		h.stopCluster()
		return nil
	case <-ctx.Done():
		for _, c := range h.allConns() {
			c.abort()
		}
		h.stopCluster()
		return ctx.Err()
	}
}

// allConns lists every registered connection.
func (h *Hub) allConns() []*conn {
	var list []*conn
	for i := range h.users {
		s := &h.users[i]
		s.mu.RLock()
		for _, u := range s.users {
			list = append(list, u.connList()...)
		}
		s.mu.RUnlock()
	}
	return list
}

// Stats is a snapshot of a hub's counters.
type Stats struct {
	Connections int // open connections
	Users       int // online uids
	Channels    int // channels with at least one member

	MessagesIn      uint64 // client messages accepted
	MessagesRefused uint64 // client messages refused (bad, not joined, rate limited, too large)
	MessagesOut     uint64 // messages queued to connections: one per recipient connection
	Dropped         uint64 // messages discarded for a full queue or a closing connection

	QueuedMessages int // messages waiting in send queues now
	MaxQueueDepth  int // the longest send queue now

	Disconnects Disconnects // connections ended, by reason

	BrokerErrors uint64 // failed broker calls (Config.Broker)
}

// Disconnects counts ended connections by reason.
type Disconnects struct {
	Normal       uint64 // closed by the client or by Shutdown
	SlowConsumer uint64 // send queue overflow
	RateLimited  uint64 // sustained flooding
	TooLarge     uint64 // oversize message
	Failed       uint64 // network error, missed pongs, write timeout, protocol error
}

type counters struct {
	conns                                 atomic.Int64
	in, refused, out, dropped             atomic.Uint64
	normal, slow, limited, large, failing atomic.Uint64
}

func (h *Hub) countDisconnect(err error) {
	switch {
	case err == nil:
		h.stats.normal.Add(1)
	case errors.Is(err, ErrSlowConsumer):
		h.stats.slow.Add(1)
	case errors.Is(err, ErrRateLimited):
		h.stats.limited.Add(1)
	case errors.Is(err, ErrMessageTooLarge):
		h.stats.large.Add(1)
	default:
		h.stats.failing.Add(1)
	}
}

// Stats returns the hub's counters. It visits every connection to measure
// the queues, so call it for monitoring, not per message.
func (h *Hub) Stats() Stats {
	st := Stats{
		Connections:     int(h.stats.conns.Load()),
		MessagesIn:      h.stats.in.Load(),
		MessagesRefused: h.stats.refused.Load(),
		MessagesOut:     h.stats.out.Load(),
		Dropped:         h.stats.dropped.Load(),
		Disconnects: Disconnects{
			Normal:       h.stats.normal.Load(),
			SlowConsumer: h.stats.slow.Load(),
			RateLimited:  h.stats.limited.Load(),
			TooLarge:     h.stats.large.Load(),
			Failed:       h.stats.failing.Load(),
		},
	}
	if h.cl != nil {
		st.BrokerErrors = h.cl.errs.Load()
	}
	for i := range h.users {
		s := &h.users[i]
		s.mu.RLock()
		st.Users += len(s.users)
		s.mu.RUnlock()
	}
	for i := range h.chans {
		s := &h.chans[i]
		s.mu.RLock()
		st.Channels += len(s.chans)
		s.mu.RUnlock()
	}
	for _, c := range h.allConns() {
		c.mu.Lock()
		n := 0
		if c.queue != nil {
			n = len(c.queue.frames)
		}
		c.mu.Unlock()
		st.QueuedMessages += n
		st.MaxQueueDepth = max(st.MaxQueueDepth, n)
	}
	return st
}

// The package-level functions below are wrappers over DefaultHub, as
// http.HandleFunc is over http.DefaultServeMux.

// NewServer calls DefaultHub.NewServer.
func NewServer(w http.ResponseWriter, r *http.Request, uid uint64, h Handler) {
	DefaultHub.NewServer(w, r, uid, h)
}

// JoinChannelIds calls DefaultHub.JoinChannelIds.
func JoinChannelIds(uid uint64, channelIds ...string) error {
	return DefaultHub.JoinChannelIds(uid, channelIds...)
}

// UnJoinChannelIds calls DefaultHub.UnJoinChannelIds.
func UnJoinChannelIds(uid uint64, channelIds ...string) error {
	return DefaultHub.UnJoinChannelIds(uid, channelIds...)
}

// SendMessageToChannelIds calls DefaultHub.SendMessageToChannelIds.
func SendMessageToChannelIds(uid uint64, msg string, channelIds ...string) map[string]bool {
	return DefaultHub.SendMessageToChannelIds(uid, msg, channelIds...)
}

// SendMessageToUid calls DefaultHub.SendMessageToUid.
func SendMessageToUid(uid, toUid uint64, msg string) error {
	return DefaultHub.SendMessageToUid(uid, toUid, msg)
}

// Publish calls DefaultHub.Publish.
func Publish(channelId string, m Message) error { return DefaultHub.Publish(channelId, m) }

// IsOnline calls DefaultHub.IsOnline.
func IsOnline(uid uint64) bool { return DefaultHub.IsOnline(uid) }

// OnlineUserIds calls DefaultHub.OnlineUserIds.
func OnlineUserIds() []uint64 { return DefaultHub.OnlineUserIds() }

// ChannelUserIds calls DefaultHub.ChannelUserIds.
func ChannelUserIds(channelId string) []uint64 { return DefaultHub.ChannelUserIds(channelId) }

// UserChannelIds calls DefaultHub.UserChannelIds.
func UserChannelIds(uid uint64) []string { return DefaultHub.UserChannelIds(uid) }

// GetStats calls DefaultHub.Stats.
func GetStats() Stats { return DefaultHub.Stats() }

// Shutdown calls DefaultHub.Shutdown.
func Shutdown(ctx context.Context) error { return DefaultHub.Shutdown(ctx) }

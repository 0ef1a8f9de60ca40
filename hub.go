package chart

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// Hub is a chat server: it holds the connections, users and channels, and
// every function of this package is a method on it. Create one with New, or
// use DefaultHub through the package-level functions. A Hub is safe for
// concurrent use. It has no central goroutine: without a Broker, a hub
// without connections runs nothing; with one, it runs a heartbeat (see
// Config.Broker).
type Hub struct {
	cfg      Config
	upgrader websocket.Upgrader
	users    [shardCount]userShard // the local registry (registry.go)
	chans    [shardCount]chanShard
	// The backends, behind interfaces: presence answers who is online
	// where (localPresence on a single node), peers reaches the other nodes
	// (noPeers on a single node). cluster.go chooses them.
	presence Presence
	peers    peers
	streams  store      // the streams: this node's (history.go) or the Broker's
	seq      *sequencer // the shared streams' order here; nil for a node's own
	sends    sends      // chart.v1 message ids seen here (recovery.go)
	ids      dedup      // &sends, or the broker's
	pres     rosters    // presence events (presence_events.go)

	closed      atomic.Bool   // Shutdown or Close began
	killed      atomic.Bool   // Close: drop everything, run no callback
	done        chan struct{} // closed by Shutdown and Close
	doneOnce    sync.Once
	readers     sync.WaitGroup // one per registered connection, one per drainer
	lastHandler atomic.Pointer[handlerRef]
	connIDs     atomic.Uint64
	pending     atomic.Int64 // bytes of inbound messages being read (MaxPendingBytes)
	ips         [shardCount]ipShard
	stats       counters
	pauses      pauses // the watchdog that tells a resumed process (pause.go)
	// fanning counts the large fan-outs under way: while one is, a writer
	// that emptied its queue lingers for the frames still coming (write.go).
	fanning atomic.Int32
}

// New returns a Hub configured by cfg; zero fields take their defaults.
// With cfg.Broker it attaches the broker and sends a first heartbeat
// (network I/O; failures go to ErrorLogServer as ErrBroker).
func New(cfg Config) *Hub {
	h := &Hub{cfg: cfg.withDefaults(), done: make(chan struct{})}
	h.pauses.start = time.Now()
	h.upgrader = h.newUpgrader()
	for i := range h.users {
		h.users[i].users = make(map[uint64]*user)
		h.users[i].events = make(map[uint64][]func())
	}
	for i := range h.chans {
		h.chans[i].chans = make(map[string]*channel)
	}
	h.streams = newHistory(&h.cfg)
	h.ids = &h.sends
	h.pres.init(&h.cfg)
	h.connectBackends()
	return h
}

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
	h.stopping()
	for _, c := range h.allConns() {
		c.close(newError(ErrHubClosed, c.uid, "", nil), closeGoingAway, "server shutting down", closeFlush)
	}
	done := make(chan struct{})
	go func() {
		h.readers.Wait()
		close(done)
	}()
	select {
	case <-done:
		h.stopPresence(ctx, true) // the last presence changes out, before the broker goes
		return h.stopPeers(ctx)
	case <-ctx.Done():
		for _, c := range h.allConns() {
			c.abort()
		}
		h.stopPresence(ctx, false)
		h.stopPeers(ctx)
		return ctx.Err()
	}
}

// stopPeers stops the heartbeat and closes the broker, waiting at most
// until ctx ends: a broker that does not answer finishes closing (within
// its own timeouts) after Shutdown returned.
func (h *Hub) stopPeers(ctx context.Context) error {
	stopped := make(chan struct{})
	go func() {
		h.peers.stop()
		close(stopped)
	}()
	select {
	case <-stopped:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close stops the hub at once, as if its process had died: the broker is
// closed first, so the other nodes learn of it only when its presence
// expires (and then run LogoutServer for its users); every connection is
// dropped without a close frame; no LogoutServer runs here. It is meant
// for testing node failures; stop a hub with Shutdown. Afterwards every
// call returns ErrHubClosed.
func (h *Hub) Close() error {
	h.killed.Store(true)
	h.stopping()
	h.peers.stop()
	for _, c := range h.allConns() {
		c.abort()
	}
	h.readers.Wait()
	h.stopPresence(context.Background(), false)
	return nil
}

// stopping refuses new connections and calls, and ends the waits that
// Shutdown and Close must not sit out.
func (h *Hub) stopping() {
	h.closed.Store(true)
	h.stopPauses()
	h.doneOnce.Do(func() { close(h.done) })
}

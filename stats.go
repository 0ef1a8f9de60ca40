package chart

import (
	"errors"
	"sync/atomic"
)

// Stats is a snapshot of a hub's counters.
type Stats struct {
	Connections int // open connections
	Users       int // online uids
	Channels    int // channels with at least one member

	MessagesIn      uint64 // client messages accepted
	MessagesRefused uint64 // client messages refused (bad, not joined, rate limited, too large)
	MessagesOut     uint64 // messages queued to connections: one per recipient connection
	Dropped         uint64 // messages discarded for a full queue or a closing connection

	QueuedMessages int   // messages waiting in send queues now
	MaxQueueDepth  int   // the longest send queue now
	PendingBytes   int64 // memory held by inbound messages being read now (MaxPendingBytes)

	Disconnects Disconnects // connections ended, by reason

	BrokerErrors uint64 // failed broker calls (Config.Broker)
	// Holes counts the times this node stopped waiting for a missing
	// offset of a stream the broker keeps (its publisher failed between
	// appending and publishing it) and delivered what came after it.
	Holes uint64
}

// Disconnects counts ended connections by reason.
type Disconnects struct {
	Normal       uint64 // closed by the client or by Shutdown
	Application  uint64 // closed by the application: Disconnect, Conn.Close, expiry, MaxConnsPerUid
	SlowConsumer uint64 // send queue overflow
	RateLimited  uint64 // sustained flooding
	TooLarge     uint64 // oversize message
	Failed       uint64 // network error, missed pongs, write timeout, protocol error, message timeout, overload
}

type counters struct {
	conns                                        atomic.Int64
	in, refused, out, dropped, brokerErrs, holes atomic.Uint64
	normal, app, slow, limited, large, failing   atomic.Uint64
}

func (h *Hub) countDisconnect(err error) {
	switch {
	case errors.Is(err, ErrClientClosed), errors.Is(err, ErrHubClosed):
		h.stats.normal.Add(1)
	case errors.Is(err, ErrDisconnected), errors.Is(err, ErrExpired), errors.Is(err, ErrReplaced):
		h.stats.app.Add(1)
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
		BrokerErrors:    h.stats.brokerErrs.Load(),
		Holes:           h.stats.holes.Load(),
		PendingBytes:    h.pending.Load(),
		Disconnects: Disconnects{
			Normal:       h.stats.normal.Load(),
			Application:  h.stats.app.Load(),
			SlowConsumer: h.stats.slow.Load(),
			RateLimited:  h.stats.limited.Load(),
			TooLarge:     h.stats.large.Load(),
			Failed:       h.stats.failing.Load(),
		},
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

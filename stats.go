package chart

import (
	"errors"
	"math/bits"
	"net"
	"sync/atomic"
	"time"
)

// Stats is a snapshot of a hub's counters. Hub.Stats costs the same
// whatever the number of connections: every count is kept as it changes,
// in per-shard counters that Stats adds up (no connection is visited).
type Stats struct {
	Connections int // open connections
	Users       int // online uids
	Channels    int // channels with at least one member

	MessagesIn      uint64 // client messages accepted
	MessagesRefused uint64 // client messages refused (bad, not joined, rate limited, too large): the sum of Refusals
	MessagesOut     uint64 // messages queued to connections: one per recipient connection
	Dropped         uint64 // messages discarded for a full queue or a closing connection

	QueuedMessages int // messages (and control frames) waiting in send queues now
	// MaxQueueDepth is the longest send queue now, rounded down to a
	// power of two (0, 1, 2, 4, 8, ...): a queue of 100 counts as 64.
	MaxQueueDepth int
	QueuedBytes   int64 // bytes of the frames waiting in send queues now
	PendingBytes  int64 // memory held by inbound messages being read now (MaxPendingBytes)

	// Refusals counts refused client messages by the code of the error
	// frame the client was sent.
	Refusals Refusals

	Disconnects Disconnects // connections ended, by reason
	// DisconnectReasons counts the same ended connections, by a finer
	// reason: each Disconnects field is the sum of some of these.
	DisconnectReasons DisconnectReasons

	// Delivery is the latency of live messages: from the moment the hub
	// accepted a message (a client's message read and decoded, or the API
	// call that sent it; for a message from another node, its arrival
	// here) to the moment a connection's writer wrote it to the socket.
	// Each recipient connection is one observation; messages replayed
	// from history are not observed.
	Delivery Latency

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

// DisconnectReasons counts ended connections by why they ended. Each
// field's comment starts with its name in Each (the label value of
// chartprom's chart_disconnects_total).
type DisconnectReasons struct {
	ClientClosed   uint64 // client_closed: the client sent a close frame (Disconnects.Normal)
	Shutdown       uint64 // shutdown: Hub.Shutdown (Disconnects.Normal)
	Disconnected   uint64 // disconnected: Disconnect or Conn.Close, a kick (Disconnects.Application)
	Expired        uint64 // expired: Conn.SetExpiry (Disconnects.Application)
	Replaced       uint64 // replaced: over MaxConnsPerUid (Disconnects.Application)
	SlowConsumer   uint64 // slow_consumer: send queue overflow (Disconnects.SlowConsumer)
	RateLimited    uint64 // rate_limited: RateBurst refusals in a row (Disconnects.RateLimited)
	TooLarge       uint64 // too_large: a message over MaxMessageSize (Disconnects.TooLarge)
	BadMessage     uint64 // bad_message: a text frame that is not UTF-8, closed with 1007 (Disconnects.Failed)
	MessageTimeout uint64 // message_timeout: a message not completed within MessageTimeout (Disconnects.Failed)
	PongTimeout    uint64 // pong_timeout: nothing, not even a pong, read for PongWait (Disconnects.Failed)
	ReadError      uint64 // read_error: the connection broke while reading (network error, no close frame, protocol violation; Hub.Close) (Disconnects.Failed)
	WriteError     uint64 // write_error: a write failed or took longer than WriteWait (Disconnects.Failed)
}

// Each calls f with every reason's name and count, in the order of the
// fields.
func (r *DisconnectReasons) Each(f func(reason string, n uint64)) {
	for i, p := range r.fields() {
		f(disconnectNames[i], *p)
	}
}

func (r *DisconnectReasons) fields() [numReasons]*uint64 {
	return [numReasons]*uint64{&r.ClientClosed, &r.Shutdown, &r.Disconnected, &r.Expired, &r.Replaced,
		&r.SlowConsumer, &r.RateLimited, &r.TooLarge, &r.BadMessage, &r.MessageTimeout,
		&r.PongTimeout, &r.ReadError, &r.WriteError}
}

// Indexes of the disconnect reasons, in the order of DisconnectReasons.
const (
	endClientClosed = iota
	endShutdown
	endDisconnected
	endExpired
	endReplaced
	endSlowConsumer
	endRateLimited
	endTooLarge
	endBadMessage
	endMessageTimeout
	endPongTimeout
	endReadError
	endWriteError
	numReasons
)

var disconnectNames = [numReasons]string{"client_closed", "shutdown", "disconnected", "expired", "replaced",
	"slow_consumer", "rate_limited", "too_large", "bad_message", "message_timeout",
	"pong_timeout", "read_error", "write_error"}

// endKinds are the sentinels whose reason is one of the first endKinds
// reasons, in their order.
var endKinds = [...]error{ErrClientClosed, ErrHubClosed, ErrDisconnected, ErrExpired, ErrReplaced,
	ErrSlowConsumer, ErrRateLimited, ErrMessageTooLarge, ErrBadMessage, ErrMessageTimeout}

// Refusals counts refused client messages by the "error" code of the error
// frame that answered them (see the README's wire format). Each field's
// comment starts with its code in Each (the label value of chartprom's
// chart_messages_refused_total).
type Refusals struct {
	NotJoined       uint64 // not_joined
	UserOffline     uint64 // user_offline
	RateLimited     uint64 // rate_limited (also those not answered: over the limit while closing)
	TooLarge        uint64 // too_large (the connection is closed with 1009, no error frame)
	InvalidChannel  uint64 // invalid_channel
	TooManyChannels uint64 // too_many_channels
	HubClosed       uint64 // hub_closed
	BrokerFailed    uint64 // broker_failed
	Refused         uint64 // refused: the application's FilterMessage, whatever code it gave (chart.Refuse)
	Overloaded      uint64 // overloaded
	BadMessage      uint64 // bad_message (also a text frame that is not UTF-8, closed with 1007)
}

// Each calls f with every code and its count, in the order of the fields.
func (r *Refusals) Each(f func(code string, n uint64)) {
	for i, p := range r.fields() {
		f(refusalCode(i), *p)
	}
}

// numCodes counts the codes of Refusals.
const numCodes = 11

func (r *Refusals) fields() [numCodes]*uint64 {
	return [numCodes]*uint64{&r.NotJoined, &r.UserOffline, &r.RateLimited, &r.TooLarge,
		&r.InvalidChannel, &r.TooManyChannels, &r.HubClosed, &r.BrokerFailed, &r.Refused,
		&r.Overloaded, &r.BadMessage}
}

// refusalCodes are the codes of Refusals' fields, in their order: every
// code of errorCodes, then bad_message (TestRefusalCodes keeps them so).
var refusalCodes = [numCodes]string{"not_joined", "user_offline", "rate_limited", "too_large",
	"invalid_channel", "too_many_channels", "hub_closed", "broker_failed", "refused",
	"overloaded", "bad_message"}

// refusalCode is the error code counted at index i of Refusals.
func refusalCode(i int) string { return refusalCodes[i] }

// refusalIndex is the index in Refusals of the code a client is sent for
// err: the application's own codes count as refused.
func refusalIndex(err error) int {
	var e *Error
	if errors.As(err, &e) && e.Code != "" {
		return refusedIndex
	}
	code := errorCode(err)
	for i, c := range refusalCodes {
		if c == code {
			return i
		}
	}
	return numCodes - 1 // bad_message; a code missing here fails TestRefusalCodes
}

const refusedIndex = 8 // "refused"

// Latency is a histogram of delivery latencies, in the form Prometheus
// takes: cumulative buckets.
type Latency struct {
	Count   uint64  // observations
	Sum     float64 // their total, in seconds
	Buckets [NumLatencyBuckets]LatencyBucket
}

// LatencyBucket counts the observations of at most Le.
type LatencyBucket struct {
	Le    time.Duration
	Count uint64
}

// NumLatencyBuckets is the number of Latency.Buckets: 100 µs to 10 s, at
// 1, 2.5 and 5 of each power of ten (Count is the +Inf bucket).
const NumLatencyBuckets = 16

var latencyBounds = [NumLatencyBuckets]int64{
	int64(100 * time.Microsecond), int64(250 * time.Microsecond), int64(500 * time.Microsecond),
	int64(time.Millisecond), int64(2500 * time.Microsecond), int64(5 * time.Millisecond),
	int64(10 * time.Millisecond), int64(25 * time.Millisecond), int64(50 * time.Millisecond),
	int64(100 * time.Millisecond), int64(250 * time.Millisecond), int64(500 * time.Millisecond),
	int64(time.Second), int64(2500 * time.Millisecond), int64(5 * time.Second), int64(10 * time.Second),
}

// counters are a hub's statistics, each kept as it changes: hub-wide
// atomics for what changes per message or per connection at most, and
// statShards for what changes per delivery.
type counters struct {
	conns                               atomic.Int64
	in, out, dropped, brokerErrs, holes atomic.Uint64
	refusals                            [numCodes]atomic.Uint64
	ends                                [numReasons]atomic.Uint64
	shards                              [statShardCount]statShard
}

// statShardCount splits the per-delivery counters: a writer counts in the
// shard of its connection's uid, a fan-out in its first connection's.
const statShardCount = 64

// statShard holds counters of the send queues and the writers: a few
// atomic additions per delivery, spread over 64 shards. What publishers
// add as they queue frames (once per fan-out, see queueTally) and what
// writers add as they take them (once per batch, in their connection's
// shard) are kept apart, as counts that only grow, on cache lines of their
// own, so that a publisher and the writers it wakes do not take the same
// line from each other: what is queued now is the difference, summed over
// the shards.
type statShard struct {
	// The publishers' side.
	pushed, pushedBytes atomic.Uint64     // frames queued, and their bytes
	reached             [32]atomic.Uint32 // queues that grew to 2^k frames (k ≥ 1)
	_                   [64]byte

	// The writers' side (and discarded frames), what every batch adds to
	// first: taken, takenBytes, sum and the low buckets, a cache line or two.
	taken, takenBytes atomic.Uint64                        // frames taken from queues or discarded, and their bytes
	sum               atomic.Uint64                        // nanoseconds observed
	latency           [NumLatencyBuckets + 1]atomic.Uint64 // per bucket (not cumulative); the last is +Inf
	fell              [32]atomic.Uint32                    // queues that went below 2^k frames again (k ≥ 1)
	_                 [64]byte
}

// stat is the counters shard of c.
func (c *Conn) stat() *statShard {
	return &c.hub.stats.shards[(c.uid*0x9E3779B97F4A7C15)>>58]
}

// depthClass is the k of 2^k <= n < 2^(k+1), at most 31; 0 for n < 2.
func depthClass(n int) int { return min(max(bits.Len(uint(n))-1, 0), 31) }

// queued counts a frame of n bytes that made a queue length frames long.
func (s *statShard) queued(length, n int) {
	s.pushed.Add(1)
	s.pushedBytes.Add(uint64(n))
	if length > 1 && length&(length-1) == 0 {
		s.reached[depthClass(length)].Add(1)
	}
}

// resized counts a queued frame replaced by one delta bytes longer.
func (s *statShard) resized(delta int) {
	if delta > 0 {
		s.pushedBytes.Add(uint64(delta))
	} else {
		s.takenBytes.Add(uint64(-delta))
	}
}

// queueTally counts the frames a fan-out queues, to add them to the hub's
// counters once instead of per frame (two atomic additions per delivery
// less): at the end of the fan-out, or every tallyFlush frames. Meanwhile
// the queues may hold frames not yet counted, or already taken by their
// writers (Stats counts no queue below empty).
type queueTally struct {
	s             *statShard
	frames, bytes uint64
	reached       uint32 // bit k: queues reached 2^k frames, counted in counts
	counts        [32]uint32
}

const tallyFlush = 256

// queued counts a frame of n bytes that made c's queue length frames long.
func (t *queueTally) queued(c *Conn, length, n int) {
	if t.s == nil {
		t.s = c.stat()
	}
	t.frames++
	t.bytes += uint64(n)
	if length > 1 && length&(length-1) == 0 {
		k := depthClass(length)
		t.counts[k]++
		t.reached |= 1 << k
	}
	if t.frames >= tallyFlush {
		t.flush()
	}
}

// flush adds the tally to the hub's counters and empties it.
func (t *queueTally) flush() {
	if t.frames == 0 {
		return
	}
	t.s.pushed.Add(t.frames)
	t.s.pushedBytes.Add(t.bytes)
	for r := t.reached; r != 0; r &= r - 1 {
		k := bits.TrailingZeros32(r)
		t.s.reached[k].Add(t.counts[k])
		t.counts[k] = 0
	}
	t.frames, t.bytes, t.reached = 0, 0, 0
}

// unqueued counts frames leaving a queue (taken by the writer, dropped,
// discarded): from length frames, n frames of size bytes go.
func (s *statShard) unqueued(length, n, size int) {
	if n <= 0 {
		return
	}
	s.taken.Add(uint64(n))
	s.takenBytes.Add(uint64(size))
	for k := depthClass(length); k > depthClass(length-n); k-- {
		s.fell[k].Add(1)
	}
}

// observe records the delivery latencies of frames accepted at stamps
// (monotime) and written now.
func (s *statShard) observe(stamps []int64) { s.observeAt(monotime(), stamps) }

// observeAt is observe at now; a 0 in stamps is no message.
func (s *statShard) observeAt(now int64, stamps []int64) {
	var counts [NumLatencyBuckets + 1]uint32
	var sum uint64
	for _, at := range stamps {
		if at == 0 {
			continue
		}
		d := max(now-at, 0)
		sum += uint64(d)
		i := 0
		for i < NumLatencyBuckets && d > latencyBounds[i] {
			i++
		}
		counts[i]++
	}
	for i, n := range counts {
		if n != 0 {
			s.latency[i].Add(uint64(n))
		}
	}
	s.sum.Add(sum)
}

// countRefusal counts a client message refused for err.
func (h *Hub) countRefusal(err error) {
	h.stats.refusals[refusalIndex(err)].Add(1)
}

// countDisconnect counts a connection ended for reason; fromReader: the
// reason is the read error that ended it (nothing else had).
func (h *Hub) countDisconnect(reason error, fromReader bool) {
	h.stats.ends[disconnectReason(reason, fromReader)].Add(1)
}

func disconnectReason(reason error, fromReader bool) int {
	for i, kind := range endKinds {
		if errors.Is(reason, kind) {
			return i
		}
	}
	var ne net.Error
	switch {
	case !fromReader && errors.Is(reason, ErrConnection):
		return endWriteError // only the writer ends a connection with ErrConnection
	case errors.As(reason, &ne) && ne.Timeout():
		return endPongTimeout // a read deadline, and not MessageTimeout's
	}
	return endReadError
}

// Stats returns the hub's counters. It adds up per-shard counters (64
// shards of each kind), whatever the number of connections: cheap enough
// to call for every scrape, though not per message.
func (h *Hub) Stats() Stats {
	st := Stats{
		Connections:  int(h.stats.conns.Load()),
		MessagesIn:   h.stats.in.Load(),
		MessagesOut:  h.stats.out.Load(),
		Dropped:      h.stats.dropped.Load(),
		BrokerErrors: h.stats.brokerErrs.Load(),
		Holes:        h.stats.holes.Load(),
		PendingBytes: h.pending.Load(),
	}
	for i, p := range st.Refusals.fields() {
		*p = h.stats.refusals[i].Load()
		st.MessagesRefused += *p
	}
	for i, p := range st.DisconnectReasons.fields() {
		*p = h.stats.ends[i].Load()
	}
	r := &st.DisconnectReasons
	st.Disconnects = Disconnects{
		Normal:       r.ClientClosed + r.Shutdown,
		Application:  r.Disconnected + r.Expired + r.Replaced,
		SlowConsumer: r.SlowConsumer,
		RateLimited:  r.RateLimited,
		TooLarge:     r.TooLarge,
		Failed:       r.BadMessage + r.MessageTimeout + r.PongTimeout + r.ReadError + r.WriteError,
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
	// Queues: what was queued less what was taken, summed over the
	// shards first (a fan-out counts its frames in one shard, writers in
	// their connection's), the writers' side read first.
	var taken, takenBytes, pushed, pushedBytes uint64
	var fell, reached [32]uint32
	var buckets [NumLatencyBuckets + 1]uint64
	for i := range h.stats.shards {
		s := &h.stats.shards[i]
		taken += s.taken.Load()
		takenBytes += s.takenBytes.Load()
		for k := range fell {
			fell[k] += s.fell[k].Load()
		}
		for k := range buckets {
			buckets[k] += s.latency[k].Load()
		}
		st.Delivery.Sum += float64(s.sum.Load()) / 1e9
	}
	for i := range h.stats.shards {
		s := &h.stats.shards[i]
		pushed += s.pushed.Load()
		pushedBytes += s.pushedBytes.Load()
		for k := range reached {
			reached[k] += s.reached[k].Load()
		}
	}
	st.QueuedMessages = int(max(int64(pushed-taken), 0))
	st.QueuedBytes = max(int64(pushedBytes-takenBytes), 0)
	if st.QueuedMessages > 0 {
		st.MaxQueueDepth = 1
	}
	for k := len(reached) - 1; k > 0; k-- {
		if int32(reached[k]-fell[k]) > 0 {
			st.MaxQueueDepth = 1 << k
			break
		}
	}
	var n uint64
	for k, b := range latencyBounds {
		n += buckets[k]
		st.Delivery.Buckets[k] = LatencyBucket{Le: time.Duration(b), Count: n}
	}
	st.Delivery.Count = n + buckets[NumLatencyBuckets]
	return st
}

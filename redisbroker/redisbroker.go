// Package redisbroker is a chart.Broker, chart.Presence and chart.Streams
// on Redis: messages travel over Redis pub/sub, presence and the streams of
// recent messages live in Redis keys updated by Lua scripts, and each
// node's liveness is a key with a TTL refreshed by its heartbeat.
//
//	b, err := redisbroker.Dial("redis://127.0.0.1:6379", redisbroker.Options{})
//	hub := chart.New(chart.Config{Broker: b})
//
// Each hub needs its own Broker. The scripts touch keys they compute, so
// use a single Redis server (with replicas or Sentinel if you like), not a
// Redis Cluster.
//
// Keys, under Options.Prefix: alive:NODE (string with the node TTL),
// nodes (set of node ids), nu:NODE (set of the node's uids), u:UID (hash:
// n:NODE and c:CHANNEL fields), online (set of uids), c:CHANNEL (set of
// member uids); per stream of chart.Streams (STREAM is c:CHANNEL or
// u:UID) sm:STREAM (hash: epoch, last offset), se:STREAM (list of entries)
// and sa:STREAM (hash: uid, acknowledged offset), all expiring
// Options.StreamTTL after the stream's last append; streams:bytes,
// streams:age and streams:total, which bound the bytes all streams hold
// (Options.MaxBytes). Pub/sub channels:
// PREFIX + the hub's topic, that is PREFIX c:CHANNEL and PREFIX u:UID (Redis
// keeps pub/sub channel names apart from keys, so these do not collide with
// the c:CHANNEL sets).
//
// Streams: one size (Options.StreamSize, default 1000 entries) and one age
// (Options.StreamTTL, default 24 h) serve channels and inboxes alike,
// where a single hub keeps 100 entries / 10 min per channel and 1000 / 24 h
// per inbox by default. A stream whose keys vanished (expired, FLUSHDB, a
// restart without persistence) starts again under a new random epoch, so
// clients learn their positions there were lost (recovered: false).
package redisbroker

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/wuyan94zl/chart"
)

// Options configure a Broker; zero fields take their defaults.
type Options struct {
	// Prefix starts every key and pub/sub channel. Default "chart:".
	// Clusters sharing one Redis need different prefixes.
	Prefix string
	// TTL is how long the node stays alive in presence without heartbeat;
	// it heartbeats every TTL/3. Default chart.DefaultNodeTTL.
	TTL time.Duration
	// Timeout bounds each Redis call. Default 5 s (a loaded broker is
	// slow, not down; calls made while one hangs fail fast anyway, see
	// chart.Config.BrokerWait).
	Timeout time.Duration
	// NodeID names the node; default a random id.
	NodeID string
	// StreamSize bounds the entries kept per stream (each channel's and
	// each inbox's, see chart.Streams). Default DefaultStreamSize.
	StreamSize int
	// StreamTTL is how long a stream's entries are kept, and how long its
	// keys live after the last append. Default DefaultStreamTTL.
	StreamTTL time.Duration
	// MaxBytes bounds the bytes all streams hold together, counted as
	// each entry's data plus a header of about 20 bytes, and 1 KiB per
	// stream for its keys (Redis's own overhead per entry, about 50 bytes,
	// comes on top). Over it, an
	// append deletes the streams appended to longest ago, whole: their
	// next append starts a new epoch, and clients with positions there
	// learn recovered: false. Default DefaultMaxBytes; negative: no bound.
	MaxBytes int64
}

// Broker is a chart.Broker on Redis. Create it with New or Dial.
type Broker struct {
	rdb    redis.UniversalClient
	owned  bool // Close closes rdb
	ps     *redis.PubSub
	opt    Options
	closed chan struct{}
	wg     sync.WaitGroup
	once   sync.Once

	// While Redis is unreachable calls fail at once, but for one probe
	// every probeEvery, so that a sender's goroutine does not wait on
	// dial timeouts and retries for each message.
	down    atomic.Bool
	lastTry atomic.Int64 // unix nanoseconds of the last probe

	// pubq feeds the publishing goroutine; see publish.
	pubq chan pubMsg

	// The subscription changes waiting for the subscribing goroutine;
	// see subscribe.
	subMu   sync.Mutex
	subNext *subBatch
	subKick chan struct{}

	// skew is Redis's clock minus this node's, in milliseconds, as the
	// last heartbeat measured it; known says it was measured. It fences
	// the heartbeat's reaping (see Heartbeat).
	skew  atomic.Int64
	known atomic.Bool
}

// pubMsg is one message waiting to be published.
type pubMsg struct {
	topic string
	data  []byte
}

// publishQueue bounds the messages waiting to be published: what a node
// sends in a few milliseconds at full speed. When it is full, a publish
// waits for room at most publishWait (a busy Redis slows publishers down
// rather than losing their messages), then fails instead of buffering
// without bound.
const (
	publishQueue = 4096
	publishWait  = 100 * time.Millisecond
)

// ErrPublishQueueFull is returned when messages are published faster than
// Redis takes them.
var ErrPublishQueueFull = errors.New("redisbroker: publish queue full")

// errClosed is returned by calls waiting when the broker closes.
var errClosed = errors.New("redisbroker: closed")

// ErrUnreachable is returned without a network call while Redis is known
// to be unreachable.
var ErrUnreachable = errors.New("redisbroker: redis unreachable")

const probeEvery = 100 * time.Millisecond

// allow says whether to try a call now.
func (b *Broker) allow() error {
	if !b.down.Load() {
		return nil
	}
	now, last := time.Now().UnixNano(), b.lastTry.Load()
	if now-last < int64(probeEvery) || !b.lastTry.CompareAndSwap(last, now) {
		return ErrUnreachable
	}
	return nil
}

// done records the outcome of a call: a failure other than an error reply
// from Redis marks it unreachable, a success reachable.
func (b *Broker) done(err error) error {
	var reply redis.Error
	switch {
	case err == nil:
		b.down.Store(false)
	case errors.As(err, &reply):
	default:
		if !b.down.Swap(true) {
			b.lastTry.Store(time.Now().UnixNano())
		}
	}
	return err
}

var (
	_ chart.Broker   = (*Broker)(nil)
	_ chart.Presence = (*Broker)(nil)
)

// New returns a Broker using rdb, which stays the caller's to close.
func New(rdb redis.UniversalClient, opt Options) *Broker {
	if opt.Prefix == "" {
		opt.Prefix = "chart:"
	}
	if opt.TTL <= 0 {
		opt.TTL = chart.DefaultNodeTTL
	}
	if opt.Timeout <= 0 {
		opt.Timeout = 5 * time.Second
	}
	if opt.StreamSize <= 0 {
		opt.StreamSize = DefaultStreamSize
	}
	if opt.StreamTTL < time.Millisecond {
		opt.StreamTTL = DefaultStreamTTL
	}
	if opt.MaxBytes == 0 {
		opt.MaxBytes = DefaultMaxBytes
	}
	if opt.NodeID == "" {
		var b [8]byte
		rand.Read(b[:])
		opt.NodeID = hex.EncodeToString(b[:])
	}
	return &Broker{rdb: rdb, opt: opt, closed: make(chan struct{}), pubq: make(chan pubMsg, publishQueue),
		subKick: make(chan struct{}, 1)}
}

// Dial connects to the Redis server at url (redis://[user:pass@]host:port/db),
// checks that it answers a PING within Options.Timeout, and returns a
// Broker that owns the connection. It fails when Redis is unreachable.
// Its client fails fast: each call is bounded by Options.Timeout and dials
// at most twice (one retry). A client given to New keeps its own options:
// set ContextTimeoutEnabled there for Options.Timeout to bound its calls.
func Dial(url string, opt Options) (*Broker, error) {
	o, err := redis.ParseURL(url)
	if err != nil {
		return nil, err
	}
	o.MaxRetries = 1 // fail fast while Redis is away: the hub goes on locally
	o.DialTimeout = 2 * time.Second
	// One dial per attempt: go-redis's default, 5 dials 100 ms apart,
	// held each call let through to a down Redis (the probes) 0.4-0.8 s.
	o.DialerRetries = 1
	// The retry at once: go-redis waits 8 to 512 ms before it, so that a
	// call begun while Redis was down failed up to half a second after
	// Redis was back, and the hub took the failure for news and refused
	// calls again.
	o.MinRetryBackoff, o.MaxRetryBackoff = -1, -1
	o.Dialer = dialer(redis.NewDialer(o))
	// Options.Timeout, each call's context deadline, bounds the call:
	// without this go-redis ignores it and a call into a frozen Redis
	// waits for its ReadTimeout (5 s).
	o.ContextTimeoutEnabled = true
	b := New(redis.NewClient(o), opt)
	b.owned = true
	ctx, cancel := b.ctx()
	defer cancel()
	if err := b.rdb.Ping(ctx).Err(); err != nil {
		b.rdb.Close()
		return nil, fmt.Errorf("redisbroker: redis at %s: %w", o.Addr, err)
	}
	return b, nil
}

// dialer wraps go-redis's dial so that it never fails: a failed dial
// returns a connection whose reads and writes fail with the dial's error,
// which the caller gets all the same. go-redis's pools stop dialing after
// PoolSize failed dials (10 for its pipeline pool), counted over the
// client's life, and then try again only once a second in the background:
// a node took up to a second after Redis was back to reach it (its calls
// failing with the stale dial error meanwhile), and messages published
// then were lost. A failure on a connection is an ordinary bad
// connection: the next call dials again.
func dialer(dial func(context.Context, string, string) (net.Conn, error)) func(context.Context, string, string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return deadConn{err}, nil
		}
		return c, nil
	}
}

// deadConn is a connection whose dial failed with err.
type deadConn struct{ err error }

func (c deadConn) Read([]byte) (int, error)       { return 0, c.err }
func (c deadConn) Write([]byte) (int, error)      { return 0, c.err }
func (deadConn) Close() error                     { return nil }
func (deadConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (deadConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (deadConn) SetDeadline(time.Time) error      { return nil }
func (deadConn) SetReadDeadline(time.Time) error  { return nil }
func (deadConn) SetWriteDeadline(time.Time) error { return nil }

// NodeID returns the node's id.
func (b *Broker) NodeID() string { return b.opt.NodeID }

// HeartbeatInterval is a third of the TTL.
func (b *Broker) HeartbeatInterval() time.Duration { return b.opt.TTL / 3 }

func (b *Broker) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), b.opt.Timeout)
}

// Attach starts the subscriber goroutine, which delivers messages to n and
// reconnects (resubscribing) after a lost connection.
func (b *Broker) Attach(n chart.Node) error {
	b.ps = b.rdb.Subscribe(context.Background())
	b.wg.Add(3)
	go b.receive(n)
	go b.publishLoop(n)
	go b.subscriber()
	return nil
}

// Publish queues data for the pub/sub channel Prefix+topic; publishLoop
// sends it. Publishing is asynchronous so that a sender does not wait a
// Redis round trip per message: what queues meanwhile goes out in one
// pipeline, in order, and reaches the other nodes together, where it
// batches into few writes per connection as on one node (a synchronous
// publish cut cross-node fan-out to a quarter). The queue holds a copy of
// data, since the caller may reuse it once Publish returns. Failures of the
// pipeline go to the node as broker errors.
//
// While Redis is known to be unreachable, Publish still queues (the
// message goes out if Redis is back by the time publishLoop sends it: a
// node learns that Redis is back only after it is) but does not wait for
// room: a full queue fails at once.
func (b *Broker) Publish(topic string, data []byte) error {
	m := pubMsg{b.opt.Prefix + topic, bytes.Clone(data)}
	select {
	case b.pubq <- m:
		return nil
	default:
	}
	if b.down.Load() {
		return ErrUnreachable
	}
	t := time.NewTimer(publishWait)
	defer t.Stop()
	select {
	case b.pubq <- m:
		return nil
	case <-t.C:
	case <-b.closed:
	}
	return ErrPublishQueueFull
}

// publishLoop sends the queued messages, all that are waiting in one
// pipeline, until Close; then it sends what is left and returns.
func (b *Broker) publishLoop(n chart.Node) {
	defer b.wg.Done()
	batch := make([]pubMsg, 0, 256)
	for {
		select {
		case m := <-b.pubq:
			batch = append(batch, m)
		case <-b.closed:
		drain:
			for {
				select {
				case m := <-b.pubq:
					batch = append(batch, m)
				default:
					break drain
				}
			}
			if len(batch) > 0 && !b.down.Load() {
				b.send(n, batch)
			}
			return
		}
	more:
		for len(batch) < cap(batch) {
			select {
			case m := <-b.pubq:
				batch = append(batch, m)
			default:
				break more
			}
		}
		b.send(n, batch)
		clear(batch)
		batch = batch[:0]
	}
}

// send publishes a batch in one pipeline.
func (b *Broker) send(n chart.Node, batch []pubMsg) {
	ctx, cancel := b.ctx()
	defer cancel()
	_, err := b.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, m := range batch {
			p.Publish(ctx, m.topic, m.data)
		}
		return nil
	})
	if b.done(err) != nil {
		n.BrokerError(fmt.Errorf("redis publish: %w", err))
	}
}

func (b *Broker) receive(n chart.Node) {
	defer b.wg.Done()
	ctx := context.Background()
	// Retries are quick (20 ms, growing to 50 ms), so that the node
	// resubscribes soon after Redis accepts connections again.
	backoff := 20 * time.Millisecond
	failing := false
	for {
		msg, err := b.ps.ReceiveTimeout(ctx, b.HeartbeatInterval())
		select {
		case <-b.closed:
			return
		default:
		}
		if err != nil {
			var ne interface{ Timeout() bool }
			if errors.As(err, &ne) && ne.Timeout() {
				// A dead connection fails the next receive. Bounded: the
				// ping holds go-redis's subscriber lock, which the
				// subscription changes wait for.
				pctx, cancel := b.ctx()
				b.ps.Ping(pctx)
				cancel()
				continue
			}
			if !failing {
				failing = true
				n.BrokerError(fmt.Errorf("redis subscriber: %w", err))
			}
			select {
			case <-b.closed:
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 50*time.Millisecond)
			continue
		}
		if failing {
			// Resubscribed (go-redis did it on reconnecting): the node
			// catches up on what it missed from the streams.
			n.Resumed()
		}
		failing, backoff = false, 20*time.Millisecond
		b.down.Store(false)
		if m, ok := msg.(*redis.Message); ok {
			n.Receive([]byte(m.Payload))
		}
	}
}

// Close sends the messages still queued, stops the subscriber, and closes
// the client when Dial made it.
func (b *Broker) Close() error {
	var err error
	b.once.Do(func() {
		close(b.closed)
		if b.ps != nil {
			err = b.ps.Close()
		}
		b.wg.Wait()
		if b.owned {
			err = errors.Join(err, b.rdb.Close())
		}
	})
	return err
}

// Subscribe subscribes to the pub/sub channel Prefix+topic; see subscribe.
func (b *Broker) Subscribe(topic string) error { return b.subscribe(b.opt.Prefix+topic, true) }

// Unsubscribe unsubscribes from the pub/sub channel Prefix+topic; see
// subscribe.
func (b *Broker) Unsubscribe(topic string) error { return b.subscribe(b.opt.Prefix+topic, false) }

// subBatch is the subscription changes that go out together: channel ->
// subscribe (true) or unsubscribe, the last call's. done is closed, and
// err set, once they went out.
type subBatch struct {
	on   map[string]bool
	done chan struct{}
	err  error
}

// subscribe queues a subscription change for the subscribing goroutine,
// which sends all that wait in one SUBSCRIBE and one UNSUBSCRIBE, and
// waits until they went out (at most Timeout). While Redis is known to be
// unreachable it returns ErrUnreachable at once: the change is kept, and
// go-redis subscribes to what it holds when it reconnects.
//
// go-redis's subscriber serialises its calls under one lock, which a call
// into a frozen Redis holds for Timeout (reconnecting, dialing, writing):
// made on the hub's goroutines, one per user connecting or leaving, they
// waited in line, each for up to Timeout, and piled up with the churn.
func (b *Broker) subscribe(ch string, on bool) error {
	b.subMu.Lock()
	if b.subNext == nil {
		b.subNext = &subBatch{on: make(map[string]bool), done: make(chan struct{})}
	}
	batch := b.subNext
	batch.on[ch] = on
	b.subMu.Unlock()
	select {
	case b.subKick <- struct{}{}:
	default:
	}
	if b.down.Load() {
		// No probe here: the subscribing goroutine tries each batch.
		return ErrUnreachable
	}
	t := time.NewTimer(b.opt.Timeout)
	defer t.Stop()
	select {
	case <-batch.done:
		return batch.err
	case <-t.C:
		return b.done(fmt.Errorf("redisbroker: subscribe: %w", context.DeadlineExceeded))
	case <-b.closed:
		return errClosed
	}
}

// subscriber sends the queued subscription changes until Close.
func (b *Broker) subscriber() {
	defer b.wg.Done()
	for {
		select {
		case <-b.subKick:
		case <-b.closed:
			return
		}
		b.subMu.Lock()
		batch := b.subNext
		b.subNext = nil
		b.subMu.Unlock()
		if batch == nil {
			continue
		}
		var on, off []string
		for ch, sub := range batch.on {
			if sub {
				on = append(on, ch)
			} else {
				off = append(off, ch)
			}
		}
		// go-redis records the channels before it writes: whatever the
		// outcome, it (re)subscribes to them when it (re)connects.
		// Unsubscribe with no channel would drop them all.
		ctx, cancel := b.ctx()
		var err error
		if len(on) > 0 {
			err = b.ps.Subscribe(ctx, on...)
		}
		if len(off) > 0 {
			err = errors.Join(err, b.ps.Unsubscribe(ctx, off...))
		}
		cancel()
		batch.err = b.done(err)
		close(batch.done)
	}
}

// drop is shared by the scripts: uid leaves node; when no node is left it
// leaves its channels and goes offline, and drop returns 1.
const drop = `
local function drop(p, node, uid)
  local uk = p .. 'u:' .. uid
  redis.call('HDEL', uk, 'n:' .. node)
  local fields = redis.call('HKEYS', uk)
  for _, f in ipairs(fields) do
    if string.sub(f, 1, 2) == 'n:' then return 0 end
  end
  for _, f in ipairs(fields) do
    if string.sub(f, 1, 2) == 'c:' then redis.call('SREM', p .. 'c:' .. string.sub(f, 3), uid) end
  end
  redis.call('DEL', uk)
  return redis.call('SREM', p .. 'online', uid)
end
local function connect(p, node, uid)
  redis.call('SADD', p .. 'nodes', node)
  redis.call('SADD', p .. 'nu:' .. node, uid)
  redis.call('HSET', p .. 'u:' .. uid, 'n:' .. node, '1')
  return redis.call('SADD', p .. 'online', uid)
end
local p, node = ARGV[1], ARGV[2]
`

var (
	// connect: ARGV[4], when above 0, is the caller's deadline in Redis's
	// clock (ms); past it the script does nothing and returns -1.
	connectScript = redis.NewScript(drop + `
local d = tonumber(ARGV[4])
if d > 0 then
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > d then return -1 end
end
return connect(p, node, ARGV[3])`)

	disconnectScript = redis.NewScript(drop + `
redis.call('SREM', p .. 'nu:' .. node, ARGV[3])
return drop(p, node, ARGV[3])`)

	restoreScript = redis.NewScript(drop + `
local uid = ARGV[3]
local uk = p .. 'u:' .. uid
local first = connect(p, node, uid)
for _, f in ipairs(redis.call('HKEYS', uk)) do
  if string.sub(f, 1, 2) == 'c:' then
    redis.call('HDEL', uk, f)
    redis.call('SREM', p .. 'c:' .. string.sub(f, 3), uid)
  end
end
for i = 4, #ARGV do
  redis.call('HSET', uk, 'c:' .. ARGV[i], '1')
  redis.call('SADD', p .. 'c:' .. ARGV[i], uid)
end
return first`)

	// membership: ARGV[2] is 'join' or 'leave'; -1 when uid is offline.
	membershipScript = redis.NewScript(`
local p, op, uid = ARGV[1], ARGV[2], ARGV[3]
if redis.call('SISMEMBER', p .. 'online', uid) == 0 then return -1 end
local uk = p .. 'u:' .. uid
for i = 4, #ARGV do
  if op == 'join' then
    redis.call('HSET', uk, 'c:' .. ARGV[i], '1')
    redis.call('SADD', p .. 'c:' .. ARGV[i], uid)
  else
    redis.call('HDEL', uk, 'c:' .. ARGV[i])
    redis.call('SREM', p .. 'c:' .. ARGV[i], uid)
  end
end
return 1`)

	heartbeatScript = redis.NewScript(drop + `
local ak = p .. 'alive:' .. node
local lost = 1 - redis.call('EXISTS', ak)
local reaped = 0
if lost == 1 then reaped = redis.call('DEL', p .. 'reaped:' .. node) end
redis.call('SET', ak, '1', 'PX', ARGV[3])
redis.call('SADD', p .. 'nodes', node)
local gone = {}
local reap = ARGV[4] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if tonumber(ARGV[5]) > 0 and now > tonumber(ARGV[5]) then reap = false end
for _, n in ipairs(redis.call('SMEMBERS', p .. 'nodes')) do
  if reap and n ~= node and redis.call('EXISTS', p .. 'alive:' .. n) == 0 then
    for _, uid in ipairs(redis.call('SMEMBERS', p .. 'nu:' .. n)) do
      if drop(p, n, uid) == 1 then table.insert(gone, uid) end
    end
    redis.call('DEL', p .. 'nu:' .. n)
    redis.call('SREM', p .. 'nodes', n)
    redis.call('SET', p .. 'reaped:' .. n, '1', 'PX', 86400000)
  end
end
return {lost, gone, reaped, now}`)
)

func (b *Broker) run(s *redis.Script, args ...any) (any, error) {
	return b.runKeys(s, nil, args...)
}

func uidArg(uid uint64) string { return strconv.FormatUint(uid, 10) }

// Connect marks uid online on this node; first when it was offline.
//
// It is fenced as the heartbeat is: a Connect that reaches Redis after its
// caller gave up (Redis was frozen, the call waited in its socket) does
// nothing. Applied unseen, it would make the hub, which logs the uid in
// once Redis answers, find it online already and log nobody in.
func (b *Broker) Connect(uid uint64) (bool, error) {
	v, err := b.run(connectScript, b.opt.Prefix, b.opt.NodeID, uidArg(uid), b.deadline())
	if err == nil && v == int64(-1) {
		err = errFenced
	}
	return v == int64(1), err
}

// errFenced is the error of a call that reached Redis after its deadline
// (its caller had given up already).
var errFenced = errors.New("redisbroker: call reached Redis after its deadline, not applied")

// deadline is the deadline of a call sent now, in Redis's clock as the
// last heartbeat measured it (ms); 0 before one did.
func (b *Broker) deadline() int64 {
	if !b.known.Load() {
		return 0
	}
	return time.Now().Add(b.opt.Timeout).UnixMilli() + b.skew.Load()
}

// Disconnect marks uid offline on this node; last when it is now offline.
func (b *Broker) Disconnect(uid uint64) (bool, error) {
	v, err := b.run(disconnectScript, b.opt.Prefix, b.opt.NodeID, uidArg(uid))
	return v == int64(1), err
}

// Restore marks uid online here with exactly channelIds.
func (b *Broker) Restore(uid uint64, channelIds []string) (first bool, err error) {
	args := []any{b.opt.Prefix, b.opt.NodeID, uidArg(uid)}
	for _, id := range channelIds {
		args = append(args, id)
	}
	v, err := b.run(restoreScript, args...)
	return v == int64(1), err
}

func (b *Broker) membership(op string, uid uint64, channelIds []string) error {
	args := []any{b.opt.Prefix, op, uidArg(uid)}
	for _, id := range channelIds {
		args = append(args, id)
	}
	v, err := b.run(membershipScript, args...)
	if err == nil && v == int64(-1) {
		return chart.ErrUserOffline
	}
	return err
}

// Join adds uid to channels; chart.ErrUserOffline if it is offline.
func (b *Broker) Join(uid uint64, channelIds []string) error {
	return b.membership("join", uid, channelIds)
}

// Leave removes uid from channels; chart.ErrUserOffline if it is offline.
func (b *Broker) Leave(uid uint64, channelIds []string) error {
	return b.membership("leave", uid, channelIds)
}

// Channels returns uid's channels.
func (b *Broker) Channels(uid uint64) ([]string, error) {
	if err := b.allow(); err != nil {
		return nil, err
	}
	ctx, cancel := b.ctx()
	defer cancel()
	fields, err := b.rdb.HKeys(ctx, b.opt.Prefix+"u:"+uidArg(uid)).Result()
	if err := b.done(err); err != nil {
		return nil, err
	}
	var ids []string
	for _, f := range fields {
		if id, ok := strings.CutPrefix(f, "c:"); ok {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

func parseUids(list []string, err error) ([]uint64, error) {
	if err != nil {
		return nil, err
	}
	ids := make([]uint64, 0, len(list))
	for _, s := range list {
		if uid, err := strconv.ParseUint(s, 10, 64); err == nil {
			ids = append(ids, uid)
		}
	}
	return ids, nil
}

// Members returns the uids in channelId.
func (b *Broker) Members(channelId string) ([]uint64, error) {
	return b.uids(b.opt.Prefix + "c:" + channelId)
}

// Online returns every online uid.
func (b *Broker) Online() ([]uint64, error) {
	return b.uids(b.opt.Prefix + "online")
}

// IsOnline reports whether uid is online on some node.
func (b *Broker) IsOnline(uid uint64) (bool, error) {
	if err := b.allow(); err != nil {
		return false, err
	}
	ctx, cancel := b.ctx()
	defer cancel()
	ok, err := b.rdb.SIsMember(ctx, b.opt.Prefix+"online", uidArg(uid)).Result()
	return ok, b.done(err)
}

// IsOnlineBatch reports for each uid whether it is online on some node, in
// one round trip (SMISMEMBER: Redis 6.2 or later).
func (b *Broker) IsOnlineBatch(uids []uint64) ([]bool, error) {
	if len(uids) == 0 {
		return nil, nil
	}
	if err := b.allow(); err != nil {
		return nil, err
	}
	ctx, cancel := b.ctx()
	defer cancel()
	members := make([]any, len(uids))
	for i, uid := range uids {
		members[i] = uidArg(uid)
	}
	online, err := b.rdb.SMIsMember(ctx, b.opt.Prefix+"online", members...).Result()
	return online, b.done(err)
}

// NodeUids returns the uids online on this node.
func (b *Broker) NodeUids() ([]uint64, error) {
	return b.uids(b.opt.Prefix + "nu:" + b.opt.NodeID)
}

// uids reads a set of uids.
func (b *Broker) uids(key string) ([]uint64, error) {
	if err := b.allow(); err != nil {
		return nil, err
	}
	ctx, cancel := b.ctx()
	defer cancel()
	list, err := b.rdb.SMembers(ctx, key).Result()
	return parseUids(list, b.done(err))
}

// Heartbeat refreshes the node's TTL and reaps dead nodes.
func (b *Broker) Heartbeat(reap bool) (gone []uint64, lost, reaped bool, err error) {
	r := 0
	if reap {
		r = 1
	}
	// The fence: a heartbeat that reaches Redis after its caller gave up
	// (Redis was frozen, the call waited in its socket) must not reap,
	// since nobody would see the users it took offline. The deadline is
	// the caller's, in Redis's clock.
	sent := time.Now()
	deadline := b.deadline()
	v, err := b.run(heartbeatScript, b.opt.Prefix, b.opt.NodeID, b.opt.TTL.Milliseconds(), r, deadline)
	if err != nil {
		return nil, false, false, err
	}
	res, ok := v.([]any)
	if !ok || len(res) != 4 {
		return nil, false, false, fmt.Errorf("redisbroker: unexpected heartbeat reply %v", v)
	}
	if now, ok := res[3].(int64); ok {
		mid := sent.Add(time.Since(sent) / 2).UnixMilli()
		b.skew.Store(now - mid)
		b.known.Store(true)
	}
	lost, reaped = res[0] == int64(1), res[2] == int64(1)
	list, _ := res[1].([]any)
	for _, x := range list {
		if s, ok := x.(string); ok {
			if uid, err := strconv.ParseUint(s, 10, 64); err == nil {
				gone = append(gone, uid)
			}
		}
	}
	return gone, lost, reaped, nil
}

// Package natsbroker is a chart.Broker, chart.Presence and chart.Streams on NATS:
// messages travel over core NATS subjects, presence lives in a JetStream
// key-value bucket updated
// with compare-and-swap, and each node's liveness is a key in a second
// bucket whose entries expire after the node TTL unless its heartbeat
// rewrites them. The server must run with JetStream (nats-server -js).
//
//	b, err := natsbroker.Connect("nats://127.0.0.1:4222", natsbroker.Options{})
//	hub := chart.New(chart.Config{Broker: b})
//
// Each hub needs its own Broker.
//
// Subjects: PREFIX.TOPIC, the hub's topic (c:CHANNEL, u:UID) in unpadded
// base64url, so that it is one token whatever characters it holds. Bucket
// Options.Bucket holds u.UID (a JSON record of the uid's nodes and
// channels), c.CHANNEL.UID (member index, the channel id in unpadded
// base64url), nu.NODE.UID (the node's uids), node.NODE (known nodes) and
// reaped.NODE (the claim of a dead node's reap, see reap.go);
// bucket Options.Bucket+"_alive" holds one key per live node. The chart
// streams are the JetStream stream Options.Bucket+"_streams", subjects
// PREFIX.s.NAME (see streams.go); acknowledgements are keys a.NAME.UID of
// the presence bucket. The buckets and the stream are in memory unless
// Options.FileStorage.
package natsbroker

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	mrand "math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/wuyan94zl/chart"
)

// Options configure a Broker; zero fields take their defaults.
type Options struct {
	// Prefix starts every subject. Default "chart".
	Prefix string
	// Bucket names the presence bucket; the liveness bucket is
	// Bucket+"_alive". Default "chart_presence". Clusters sharing one NATS
	// server need different prefixes and buckets.
	Bucket string
	// TTL is how long the node stays alive in presence without heartbeat;
	// it heartbeats every TTL/3. Default chart.DefaultNodeTTL.
	TTL time.Duration
	// Timeout bounds each call. Default 5 s (a loaded broker is slow, not
	// down; calls made while one hangs fail fast anyway, see
	// chart.Config.BrokerWait). With Connect it also bounds each write to
	// the server (the connection is dropped and made again when the server
	// takes nothing for that long) and each reconnect attempt (between 1 s
	// and 2 s): the client holds its lock meanwhile, and with it every
	// publish. Subscribe and Unsubscribe wait at most 100 ms.
	Timeout time.Duration
	// FileStorage keeps the buckets on disk. By default they are in
	// memory: presence is re-published by every node after a server
	// restart anyway. The storage of an existing bucket cannot change:
	// delete the buckets to switch. With one replica, appends to the
	// streams are slower on disk: one entry per stream per round trip
	// (see streams.go).
	FileStorage bool
	// Replicas of the buckets and of the stream in a NATS cluster, so that
	// presence and history survive the loss of a server. Default: as many
	// as the servers the client knows of (the ones it was given and those
	// the cluster announced), at most 3; fewer when JetStream cannot place
	// that many (a server is down at startup). 1 on a single server.
	Replicas int
	// NodeID names the node; default a random id.
	NodeID string
	// StreamSize is how many entries each chart stream (a channel's, a
	// user's inbox) keeps. Default 1000.
	StreamSize int
	// StreamTTL is how long the streams keep an entry. Default 24 h.
	StreamTTL time.Duration
	// MaxBytes bounds the bytes the JetStream stream holding every chart
	// stream keeps (its MaxBytes, with the oldest entries discarded
	// first, whatever their subject): a stream that lost its oldest
	// entries reads as incomplete, one that lost them all starts again
	// under a new epoch. Default DefaultMaxBytes; negative: no bound.
	MaxBytes int64
}

// Broker is a chart.Broker on NATS. Create it with New or Connect.
type Broker struct {
	nc    *nats.Conn
	owned bool
	js    jetstream.JetStream
	opt   Options

	mu          sync.Mutex
	kv          jetstream.KeyValue // presence
	alive       jetstream.KeyValue // liveness, with TTL
	ids         jetstream.KeyValue // clients' message ids, with idTTL (streams.go)
	stream      jetstream.Stream   // the chart streams
	atomicBatch bool               // the stream takes atomic batches (append.go)
	expiring    atomic.Bool        // the presence bucket's deletions leave markers that expire (remove)
	maxAtomic   int                // messages an atomic batch may hold
	sub         *subscriptions     // subs.go
	node        chart.Node
	msgs        chan *nats.Msg
	closed      chan struct{}
	wg          sync.WaitGroup
	onceEnd     sync.Once

	// Reaping (reap.go): one heartbeat reaps at a time, and attempts are
	// its writes and reports not read back yet.
	reapMu   sync.Mutex
	attempts map[string]*attempt

	// conn is the context of the calls made on the current connection
	// (Connect only): cancelled when it drops.
	conn    context.Context
	endConn context.CancelFunc
	// down: the connection dropped and is not back (Connect only; see
	// connected).
	down atomic.Bool

	// Appends (append.go).
	tails       tails
	replies     *replies
	batchPrefix string
	batches     atomic.Uint64
}

var (
	_ chart.Broker   = (*Broker)(nil)
	_ chart.Presence = (*Broker)(nil)
)

// errDisconnected fails presence calls at once while NATS reconnects,
// instead of waiting for their timeout.
var errDisconnected = errors.New("natsbroker: not connected")

// New returns a Broker using nc, which stays the caller's to close. nc
// should reconnect forever (nats.MaxReconnects(-1)). Unlike one made by
// Connect, such a Broker learns that nc dropped only from nc itself, whose
// lock the client holds while it reconnects: its calls may wait for that
// (see subs.go), and Connect's bounds on the client's writes and
// reconnect attempts are nc's options to set.
func New(nc *nats.Conn, opt Options) (*Broker, error) {
	return newBroker(nc, opt, false)
}

// newBroker is New; owned: the Broker owns nc and its handlers (connect),
// which tell it when the connection drops and comes back.
func newBroker(nc *nats.Conn, opt Options, owned bool) (*Broker, error) {
	if opt.Prefix == "" {
		opt.Prefix = "chart"
	}
	if opt.Bucket == "" {
		opt.Bucket = "chart_presence"
	}
	if opt.TTL <= 0 {
		opt.TTL = chart.DefaultNodeTTL
	}
	if opt.Timeout <= 0 {
		opt.Timeout = defaultTimeout
	}
	auto := opt.Replicas <= 0
	if auto {
		opt.Replicas = min(3, max(1, len(nc.Servers())))
	}
	if opt.StreamSize <= 0 {
		opt.StreamSize = 1000
	}
	if opt.StreamTTL <= 0 {
		opt.StreamTTL = 24 * time.Hour
	}
	if opt.MaxBytes == 0 {
		opt.MaxBytes = DefaultMaxBytes
	}
	if opt.NodeID == "" {
		var b [8]byte
		rand.Read(b[:])
		opt.NodeID = hex.EncodeToString(b[:])
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	b := &Broker{nc: nc, owned: owned, js: js, opt: opt, sub: newSubscriptions(),
		msgs: make(chan *nats.Msg, 1<<16), closed: make(chan struct{}),
		maxAtomic: maxAtomic, batchPrefix: newEpoch() + ".", attempts: make(map[string]*attempt)}
	// Creating replicated buckets waits for their groups to form: longer
	// than one call.
	ctx, cancel := context.WithTimeout(context.Background(), max(10*time.Second, opt.Timeout))
	defer cancel()
	for {
		err = b.ensureBuckets(ctx)
		if err == nil || !auto || b.opt.Replicas == 1 || ctx.Err() != nil {
			break
		}
		b.opt.Replicas-- // JetStream could not place that many
	}
	if err != nil {
		return nil, err
	}
	if b.replies, err = newReplies(nc); err != nil {
		return nil, err
	}
	b.wg.Add(1)
	go b.subscriber()
	return b, nil
}

// Connect connects to the NATS server at url and returns a Broker that
// owns the connection, which reconnects forever.
func Connect(url string, opt Options) (*Broker, error) {
	return connect(url, opt)
}

// defaultTimeout is Options.Timeout's default.
const defaultTimeout = 5 * time.Second

// connect is Connect with more options for the connection (tests).
func connect(url string, opt Options, more ...nats.Option) (*Broker, error) {
	// The handlers may run before New returns (a reconnect while it
	// creates the buckets).
	var ptr atomic.Pointer[Broker]
	timeout := cmp.Or(max(opt.Timeout, 0), defaultTimeout)
	nc, err := nats.Connect(url, append([]nats.Option{
		nats.MaxReconnects(-1),
		// A write that the server does not take (it stopped reading: a
		// frozen process, its socket buffers full) is given up after the
		// call timeout, and the connection with it, rather than after the
		// client's default of a minute: the client holds its lock while it
		// writes, so every call on the connection (publishes, the pings
		// that detect a dead server) would wait as long.
		nats.FlusherTimeout(timeout),
		nats.ReconnectOnFlusherError(),
		// The client holds its lock as well while it dials and waits for
		// the server's greeting at each reconnect attempt: a server that
		// accepts connections but does not answer (frozen) holds every
		// call for that long: the call timeout, between 1 s and the
		// client's default of 2 s.
		nats.Timeout(min(max(timeout, time.Second), nats.DefaultTimeout)),
		// A connection that stopped answering (a blackholed network) is
		// given up after two unanswered pings, 4 to 6 s, rather than the
		// client's default of minutes: its calls fail at once then.
		nats.PingInterval(2 * time.Second),
		nats.ReconnectWait(20 * time.Millisecond), // back within ~50 ms of the server
		nats.ReconnectJitter(10*time.Millisecond, 10*time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if b := ptr.Load(); b != nil {
				b.dropped()
				b.lost(err)
			}
		}),
		nats.ReconnectHandler(func(*nats.Conn) {
			if b := ptr.Load(); b != nil {
				b.reconnected()
			}
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if b := ptr.Load(); b != nil {
				b.lost(err)
			}
		})}, more...)...)
	if err != nil {
		return nil, err
	}
	b, err := newBroker(nc, opt, true)
	if err != nil {
		nc.Close()
		return nil, err
	}
	b.dropped()         // from now on calls end with the connection
	b.down.Store(false) // which is up: no drop told yet
	ptr.Store(b)
	return b, nil
}

func (b *Broker) lost(err error) {
	if err == nil {
		err = nats.ErrDisconnected
	}
	b.mu.Lock()
	n := b.node
	b.mu.Unlock()
	if n != nil {
		n.BrokerError(fmt.Errorf("nats: %w", err))
	}
}

// reconnected makes sure, on another goroutine, that the buckets and the
// stream exist (a server restarted without persistence lost them: every
// call would fail on them until the next heartbeat made them again), then
// tells the node that the connection is back.
func (b *Broker) reconnected() {
	b.down.Store(false)
	b.mu.Lock()
	if b.node == nil {
		b.mu.Unlock()
		return
	}
	b.wg.Add(1)
	b.mu.Unlock()
	go func() {
		defer b.wg.Done()
		ctx, cancel := b.ctx()
		b.ensureBuckets(ctx) // failing: the heartbeat tries again, and reports it
		cancel()
		b.resumed()
		if b.opt.FileStorage {
			b.sweepSoon()
		}
	}()
}

// sweepSoon sweeps (see sweep) once the node's own re-publishing after the
// reconnect has had its turn: after a random one to three seconds, with
// few calls at once, as every node sweeps. A sweep that fails is tried
// again twice, five seconds apart; only the last failure is reported (a
// broker error: the calls wait for the next good heartbeat).
func (b *Broker) sweepSoon() {
	wait := time.Second + time.Duration(mrand.Int64N(int64(2*time.Second)))
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		select {
		case <-b.closed:
			return
		case <-time.After(wait):
		}
		b.mu.Lock()
		parent := b.conn // ends when the connection drops, and at Close
		b.mu.Unlock()
		if parent == nil {
			return
		}
		ctx, cancel := context.WithTimeout(parent, sweepTimeout)
		err = b.sweep(ctx)
		cancel()
		if err == nil || parent.Err() != nil {
			return // done, or the connection dropped: the next reconnect sweeps
		}
		wait = 5 * time.Second
	}
	b.lost(fmt.Errorf("sweeping member keys: %w", err))
}

// resumed tells the node that the connection is back, with its
// subscriptions (the client re-creates them): what was published while it
// was away is read from the streams.
func (b *Broker) resumed() {
	b.mu.Lock()
	n := b.node
	b.mu.Unlock()
	if n != nil {
		n.Resumed()
	}
}

// storage is the buckets' storage type.
func (o Options) storage() jetstream.StorageType {
	if o.FileStorage {
		return jetstream.FileStorage
	}
	return jetstream.MemoryStorage
}

// ensureBuckets creates the buckets, or finds them.
func (b *Broker) ensureBuckets(ctx context.Context) error {
	st := b.opt.storage()
	cfg := jetstream.KeyValueConfig{
		Bucket: b.opt.Bucket, History: 1, Storage: st, Replicas: b.opt.Replicas,
		LimitMarkerTTL: markerTTL,
	}
	kv, err := b.js.CreateOrUpdateKeyValue(ctx, cfg)
	expiring := err == nil
	if err != nil {
		// A server before 2.11 (ErrLimitMarkerTTLNotSupported), or one
		// that would not change the bucket: markers stay (see remove).
		cfg.LimitMarkerTTL = 0
		kv, err = b.js.CreateOrUpdateKeyValue(ctx, cfg)
	}
	if err != nil {
		return err
	}
	b.expiring.Store(expiring)
	alive, err := b.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: b.opt.Bucket + "_alive", History: 1, TTL: b.opt.TTL, Storage: st, Replicas: b.opt.Replicas,
	})
	if err != nil {
		return err
	}
	ids, err := b.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: b.opt.Bucket + "_ids", History: 1, TTL: idTTL, Storage: st, Replicas: b.opt.Replicas,
	})
	if err != nil {
		return err
	}
	b.mu.Lock()
	b.kv, b.alive, b.ids = kv, alive, ids
	b.mu.Unlock()
	return b.ensureStream(ctx)
}

// markerTTL is how long a key deleted from the presence bucket leaves
// its marker. The listings (Online, Members, NodeUids) walk every marker
// of their keys: kept for good, as a plain Delete leaves them, they made
// the listings slower with every uid that ever connected (4,000 gone:
// 55 ms, past the hub's BrokerWait). Nothing here reads a plain marker:
// a marker and no key read alike (not found).
const markerTTL = time.Second

// remove deletes key from the presence bucket (opts: its expected
// revision) with a marker that expires after markerTTL, or, on a server
// without per-message TTLs, a plain delete marker.
func (b *Broker) remove(ctx context.Context, kv jetstream.KeyValue, key string, opts ...jetstream.KVDeleteOpt) error {
	if b.expiring.Load() {
		return kv.Purge(ctx, key, append(opts, jetstream.PurgeTTL(markerTTL))...)
	}
	return kv.Delete(ctx, key, opts...)
}

func (b *Broker) buckets() (kv, alive jetstream.KeyValue) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.kv, b.alive
}

// NodeID returns the node's id.
func (b *Broker) NodeID() string { return b.opt.NodeID }

// HeartbeatInterval is a third of the TTL.
func (b *Broker) HeartbeatInterval() time.Duration { return b.opt.TTL / 3 }

// ctx bounds a call by Options.Timeout, and, with a Broker made by
// Connect, by the connection it starts on: a request sent before the
// connection dropped gets no answer on the next one, so that its call
// fails at once instead of holding the node's broker calls (see
// chart.Config.BrokerWait) for the whole Timeout.
func (b *Broker) ctx() (context.Context, context.CancelFunc) {
	b.mu.Lock()
	parent := b.conn
	b.mu.Unlock()
	if parent == nil {
		parent = context.Background()
	}
	return context.WithTimeout(parent, b.opt.Timeout)
}

// plainCtx bounds a call by Options.Timeout only: appends, whose timeout
// tells the hub "maybe stored" (a call ended by a dropped connection
// would read as not stored).
func (b *Broker) plainCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), b.opt.Timeout)
}

// dropped ends the calls made on the connection that just dropped, and
// makes the calls made until it is back fail at once.
func (b *Broker) dropped() {
	b.down.Store(true)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.endConn != nil {
		b.endConn()
	}
	b.conn, b.endConn = context.WithCancel(context.Background())
}

// connected reports whether the connection is up. A Broker made by
// Connect knows it from the connection's handlers, without taking the
// client's lock, which the client holds for seconds at a time while it
// reconnects to a server that does not answer (see subs.go).
func (b *Broker) connected() bool {
	if b.owned {
		return !b.down.Load()
	}
	return b.nc.IsConnected()
}

// token encodes s as one subject token (and key token): unpadded
// base64url has no '.', '*', '>' or white space.
func token(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

// subject is a topic's subject.
func (b *Broker) subject(topic string) string { return b.opt.Prefix + "." + token(topic) }

func uidStr(uid uint64) string { return strconv.FormatUint(uid, 10) }

// Attach starts the goroutine that hands received messages to n.
func (b *Broker) Attach(n chart.Node) error {
	b.mu.Lock()
	b.node = n
	b.mu.Unlock()
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			select {
			case <-b.closed:
				return
			case m := <-b.msgs:
				n.Receive(m.Data)
			}
		}
	}()
	return nil
}

// Close unsubscribes, stops the receiving goroutine, and closes the
// connection when Connect made it.
func (b *Broker) Close() error {
	b.onceEnd.Do(func() {
		b.mu.Lock()
		b.node = nil
		if b.endConn != nil {
			b.endConn()
		}
		b.mu.Unlock()
		close(b.closed)
		b.wg.Wait()
		b.unsubscribeAll()
		b.replies.sub.Unsubscribe()
		if b.owned {
			b.nc.Close()
		}
	})
	return nil
}

// Publish publishes data on the topic's subject. While NATS reconnects,
// messages wait in the client's bounded reconnect buffer.
func (b *Broker) Publish(topic string, data []byte) error {
	return b.nc.Publish(b.subject(topic), data)
}

// Subscribe subscribes to the topic's subject; see subscribe.
func (b *Broker) Subscribe(topic string) error { return b.subscribe(b.subject(topic), true) }

// Unsubscribe unsubscribes from the topic's subject; see subscribe.
func (b *Broker) Unsubscribe(topic string) error { return b.subscribe(b.subject(topic), false) }

// record is the presence of one uid: the nodes it is connected to and the
// channels it joined. Pending are the reaps that took it offline and are
// not reported yet (see reap.go): they stay in its key, a delete marker's
// body while it is offline, until the reaper has reported them.
type record struct {
	Nodes    []string `json:"n"`
	Channels []string `json:"c,omitempty"`
	Pending  []trace  `json:"p,omitempty"`
}

func (r *record) clone() *record {
	if r == nil {
		return nil
	}
	return &record{Nodes: slices.Clone(r.Nodes), Channels: slices.Clone(r.Channels), Pending: slices.Clone(r.Pending)}
}

func conflict(err error) bool {
	var api *jetstream.APIError
	return errors.As(err, &api) && (api.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		api.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// update applies fn to uid's record with compare-and-swap, retrying on
// conflict. fn gets nil when uid is offline, and returns the new record
// (nil: offline). The reaps pending in the key stay there. It returns the
// records before and after.
func (b *Broker) update(ctx context.Context, uid uint64, fn func(r *record) (*record, error)) (before, after *record, err error) {
	if !b.connected() {
		return nil, nil, errDisconnected
	}
	for {
		st, err := b.readUid(ctx, uid, false)
		if err != nil {
			return nil, nil, err
		}
		before = st.rec
		after, err = fn(before.clone())
		if err != nil {
			return before, nil, err
		}
		if after == nil && before == nil {
			return nil, nil, nil
		}
		err = b.writeUid(ctx, uid, after, st.pending, st.rev)
		if conflict(err) {
			continue
		}
		return before, after, err
	}
}

func addAll(list []string, xs ...string) []string {
	for _, x := range xs {
		if !slices.Contains(list, x) {
			list = append(list, x)
		}
	}
	return list
}

func removeAll(list []string, xs ...string) []string {
	return slices.DeleteFunc(list, func(s string) bool { return slices.Contains(xs, s) })
}

func (b *Broker) memberKey(ch string, uid uint64) string {
	return "c." + token(ch) + "." + uidStr(uid)
}

// members puts or deletes the member index keys.
func (b *Broker) members(ctx context.Context, uid uint64, chans []string, on bool) error {
	kv, _ := b.buckets()
	var errs []error
	for _, ch := range chans {
		var err error
		if on {
			_, err = kv.Put(ctx, b.memberKey(ch, uid), nil)
		} else {
			err = b.remove(ctx, kv, b.memberKey(ch, uid))
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Connect marks uid online on this node; first when it was offline.
//
// The node's key for uid (nu.NODE.UID, which NodeUids lists) is written
// before uid's record names the node, and Disconnect deletes it after the
// record no longer does: a write that reaches NATS after its call gave up
// (sent just before the server froze, read after it thawed, when the hub
// had taken the call for failed) cannot leave the record naming this node
// without the key, so the hub's re-publishing after the outage, which
// disconnects the uids that NodeUids lists and the node no longer holds,
// repairs it.
func (b *Broker) Connect(uid uint64) (bool, error) {
	ctx, cancel := b.ctx()
	defer cancel()
	if err := b.nodeKey(ctx, uid); err != nil {
		return false, err
	}
	before, _, err := b.update(ctx, uid, func(r *record) (*record, error) {
		if r == nil {
			r = &record{}
		}
		r.Nodes = addAll(r.Nodes, b.opt.NodeID)
		return r, nil
	})
	if err != nil {
		return false, err
	}
	return before == nil, nil
}

// nodeKey writes this node's key for uid (see Connect).
func (b *Broker) nodeKey(ctx context.Context, uid uint64) error {
	if !b.connected() {
		return errDisconnected
	}
	kv, _ := b.buckets()
	_, err := kv.Put(ctx, "nu."+b.opt.NodeID+"."+uidStr(uid), nil)
	return err
}

// drop removes this node from uid's record, and its key for uid; last
// when uid went offline.
//
// A Disconnect whose answer was lost (a timeout, a dropped connection)
// may still have taken uid offline, or done part of what follows; the hub
// calls it again once NATS answers (when NodeUids still lists uid here),
// or asks IsOnline (when it does not), and either must tell that uid went
// offline, or its LogoutServer never runs. So the write that takes uid
// offline leaves a leave trace in the key (the delete marker's body,
// carried over by a later Connect anywhere, as reap traces are), and the
// rest goes in this order: the member keys the trace names, this node's
// key, the trace. Cut anywhere, either this node's key is still there and
// the retry reads its own trace back (reports last and finishes), or only
// the trace is left, and the uid is offline.
func (b *Broker) drop(ctx context.Context, uid uint64) (last bool, err error) {
	self := b.opt.NodeID
	if !b.connected() {
		return false, errDisconnected
	}
	for {
		st, err := b.readUid(ctx, uid, true) // not older than what this node wrote
		if err != nil {
			return false, err
		}
		if st.rec == nil || !slices.Contains(st.rec.Nodes, self) {
			// Not here: gone already, by an earlier call of this node
			// if its trace says so.
			if i := slices.IndexFunc(st.pending, b.ownLeave); i >= 0 {
				if st.rec != nil {
					// Online again elsewhere since: its channels' keys
					// are that connection's now.
					return false, b.left(ctx, uid, st.pending[i], false)
				}
				return true, b.left(ctx, uid, st.pending[i], true)
			}
			// Nothing to take offline. A Connect of this node's whose
			// write is still on its way (its call gave up) must not land
			// after this and name this node for good: the key's revision
			// moves on, so that its compare-and-swap fails.
			err = b.fence(ctx, uid, st)
			if conflict(err) {
				continue // it moved: read it again
			}
			if err != nil {
				return false, err
			}
			return false, b.dropNodeKey(ctx, uid)
		}
		after := st.rec.clone()
		after.Nodes = removeAll(after.Nodes, self)
		pending := st.pending
		var tr trace
		if len(after.Nodes) == 0 {
			tr = trace{Node: self, Gen: leaveGen + newEpoch(), Channels: st.rec.Channels}
			after, pending = nil, append(slices.DeleteFunc(slices.Clone(pending), b.ownLeave), tr)
		}
		err = b.writeUid(ctx, uid, after, pending, st.rev)
		if conflict(err) {
			continue
		}
		if err != nil {
			return false, err
		}
		cut()
		if after != nil {
			return false, b.dropNodeKey(ctx, uid)
		}
		return true, b.left(ctx, uid, tr, true)
	}
}

// fence writes uid's key as it is (st), so that its revision moves on: an
// offline uid's with a delete marker that is kept (one that expired would
// let a write expecting no key through again).
func (b *Broker) fence(ctx context.Context, uid uint64, st uidState) error {
	if st.rec != nil || len(st.pending) > 0 {
		return b.writeUid(ctx, uid, st.rec.clone(), st.pending, st.rev)
	}
	kv, _ := b.buckets()
	return kv.Delete(ctx, "u."+uidStr(uid), jetstream.LastRevision(st.rev))
}

// leaveGen begins the generation of a leave trace (see drop).
const leaveGen = "leave-"

// ownLeave reports whether t is a leave trace of this node's.
func (b *Broker) ownLeave(t trace) bool {
	return t.Node == b.opt.NodeID && strings.HasPrefix(t.Gen, leaveGen)
}

// cutHook, when set (tests), runs after each write of a Disconnect (see
// drop): the one that took its uid offline, the member keys', the node
// key's.
var cutHook func()

func cut() {
	if cutHook != nil {
		cutHook()
	}
}

// dropNodeKey removes this node's key for uid.
func (b *Broker) dropNodeKey(ctx context.Context, uid uint64) error {
	kv, _ := b.buckets()
	return b.remove(ctx, kv, "nu."+b.opt.NodeID+"."+uidStr(uid))
}

// left finishes the Disconnect that took uid offline with trace tr (see
// drop): the member keys of the channels uid had (members), this node's
// key, then the trace.
func (b *Broker) left(ctx context.Context, uid uint64, tr trace, members bool) error {
	if members {
		if err := b.members(ctx, uid, tr.Channels, false); err != nil {
			return err
		}
		cut()
	}
	if err := b.dropNodeKey(ctx, uid); err != nil {
		return err
	}
	cut()
	for {
		st, err := b.readUid(ctx, uid, true) // not older than what this node wrote
		if err != nil {
			return err
		}
		i := slices.IndexFunc(st.pending, tr.same)
		if i < 0 {
			return nil
		}
		pending := slices.Delete(slices.Clone(st.pending), i, i+1)
		err = b.writeUid(ctx, uid, st.rec.clone(), pending, st.rev)
		if !conflict(err) {
			return err
		}
	}
}

// Disconnect marks uid offline on this node; last when it is now offline.
func (b *Broker) Disconnect(uid uint64) (bool, error) {
	ctx, cancel := b.ctx()
	defer cancel()
	return b.drop(ctx, uid)
}

// Restore marks uid online here with exactly channelIds; the node's key
// first, as in Connect.
func (b *Broker) Restore(uid uint64, channelIds []string) (first bool, err error) {
	ctx, cancel := b.ctx()
	defer cancel()
	if err := b.nodeKey(ctx, uid); err != nil {
		return false, err
	}
	before, _, err := b.update(ctx, uid, func(r *record) (*record, error) {
		if r == nil {
			r = &record{}
		}
		r.Nodes = addAll(r.Nodes, b.opt.NodeID)
		r.Channels = addAll(nil, channelIds...)
		return r, nil
	})
	if err != nil {
		return false, err
	}
	first = before == nil || len(before.Nodes) == 0
	if before != nil {
		if err := b.members(ctx, uid, removeAll(before.Channels, channelIds...), false); err != nil {
			return first, err
		}
	}
	return first, b.members(ctx, uid, channelIds, true)
}

func (b *Broker) membership(uid uint64, channelIds []string, on bool) error {
	ctx, cancel := b.ctx()
	defer cancel()
	_, _, err := b.update(ctx, uid, func(r *record) (*record, error) {
		if r == nil {
			return nil, chart.ErrUserOffline
		}
		if on {
			r.Channels = addAll(r.Channels, channelIds...)
		} else {
			r.Channels = removeAll(r.Channels, channelIds...)
		}
		return r, nil
	})
	if err != nil {
		return err
	}
	if joinHook != nil && on {
		joinHook()
	}
	if err := b.members(ctx, uid, channelIds, on); err != nil || !on {
		return err
	}
	// A Disconnect (or Leave) that wrote uid's record after this call did
	// and removed the member keys before this call wrote them: the keys
	// must go again, or uid stays listed as a member for good.
	return b.prune(ctx, uid, channelIds)
}

// prune removes uid's member keys of those of chans that its record does
// not list, then puts back those that a Join listed meanwhile (its own
// check may have come before the removal).
func (b *Broker) prune(ctx context.Context, uid uint64, chans []string) error {
	unlisted := func(want bool) ([]string, error) {
		st, err := b.readUid(ctx, uid, true)
		if err != nil {
			return nil, err
		}
		var out []string
		for _, ch := range chans {
			if (st.rec != nil && slices.Contains(st.rec.Channels, ch)) == want {
				out = append(out, ch)
			}
		}
		return out, nil
	}
	gone, err := unlisted(false)
	if err != nil || len(gone) == 0 {
		return err
	}
	if err := b.members(ctx, uid, gone, false); err != nil {
		return err
	}
	chans = gone
	back, err := unlisted(true)
	if err != nil {
		return err
	}
	return b.members(ctx, uid, back, true)
}

// sweepTimeout bounds a sweep (see sweep).
const sweepTimeout = 30 * time.Second

// sweep prunes every member key (see prune). A server with file storage
// can bring back, as it restarts after being killed, keys that were
// removed with a marker that had expired (nats-server 2.15,
// nats-io/nats-server#8505): a uid that left would stay listed as a
// member for good. The broker sweeps after every reconnect when it uses
// file storage.
func (b *Broker) sweep(ctx context.Context) error {
	kv, _ := b.buckets()
	keys, err := b.keys(ctx, kv, "c.*.*")
	if err != nil {
		return err
	}
	byUid := make(map[uint64][]string)
	for _, k := range keys {
		parts := strings.Split(k, ".")
		if len(parts) != 3 {
			continue
		}
		ch, err1 := base64.RawURLEncoding.DecodeString(parts[1])
		uid, err2 := strconv.ParseUint(parts[2], 10, 64)
		if err1 == nil && err2 == nil {
			byUid[uid] = append(byUid[uid], string(ch))
		}
	}
	uids := slices.Collect(maps.Keys(byUid))
	return parallelN(len(uids), sweepParallel, func(i int) error { return b.prune(ctx, uids[i], byUid[uids[i]]) })
}

// sweepParallel bounds a sweep's calls in flight at once.
const sweepParallel = 4

// joinHook, when set (tests), runs in Join between the write of uid's
// record and those of the member keys.
var joinHook func()

// Join adds uid to channels; chart.ErrUserOffline if it is offline.
func (b *Broker) Join(uid uint64, channelIds []string) error {
	return b.membership(uid, channelIds, true)
}

// Leave removes uid from channels; chart.ErrUserOffline if it is offline.
func (b *Broker) Leave(uid uint64, channelIds []string) error {
	return b.membership(uid, channelIds, false)
}

func (b *Broker) get(ctx context.Context, uid uint64) (*record, error) {
	if !b.connected() {
		return nil, errDisconnected
	}
	kv, _ := b.buckets()
	e, err := kv.Get(ctx, "u."+uidStr(uid))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	r := new(record)
	return r, json.Unmarshal(e.Value(), r)
}

// Channels returns uid's channels.
func (b *Broker) Channels(uid uint64) ([]string, error) {
	ctx, cancel := b.ctx()
	defer cancel()
	r, err := b.get(ctx, uid)
	if r == nil || err != nil {
		return nil, err
	}
	return r.Channels, nil
}

// IsOnline reports whether uid is online on some node.
func (b *Broker) IsOnline(uid uint64) (bool, error) {
	ctx, cancel := b.ctx()
	defer cancel()
	r, err := b.get(ctx, uid)
	return r != nil, err
}

// IsOnlineBatch reports for each uid whether it is online on some node,
// asking for up to batchParallel uids at once.
func (b *Broker) IsOnlineBatch(uids []uint64) ([]bool, error) {
	online := make([]bool, len(uids))
	err := parallel(len(uids), func(i int) (err error) {
		online[i], err = b.IsOnline(uids[i])
		return err
	})
	if err != nil {
		return nil, err
	}
	return online, nil
}

// batchParallel bounds the calls of a batch (IsOnlineBatch, AckBatch) in
// flight at once.
const batchParallel = 64

// parallel runs f(0), ..., f(n-1), up to batchParallel at once, and
// returns the first error.
func parallel(n int, f func(i int) error) error { return parallelN(n, batchParallel, f) }

// parallelN is parallel with up to most calls at once.
func parallelN(n, most int, f func(i int) error) error {
	var (
		mu    sync.Mutex
		first error
		wg    sync.WaitGroup
		slots = make(chan struct{}, most)
	)
	for i := 0; i < n; i++ {
		slots <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-slots; wg.Done() }()
			if err := f(i); err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return first
}

// keys lists the keys under filter (a subject filter on key names). It
// scans the bucket's stream with batched direct gets, which any replica
// answers, and skips deleted keys: no consumer to create (the stream's
// leader, which may be away for seconds after its server died), and every
// request bounded by ctx.
func (b *Broker) keys(ctx context.Context, kv jetstream.KeyValue, filter string) ([]string, error) {
	if !b.connected() {
		return nil, errDisconnected
	}
	prefix := "$KV." + kv.Bucket() + "."
	inbox := b.nc.NewRespInbox()
	sub, err := b.nc.SubscribeSync(inbox)
	if err != nil {
		return nil, err
	}
	defer sub.Unsubscribe()
	var keys []string
	for seq := uint64(1); ; {
		req, _ := json.Marshal(map[string]any{"seq": seq, "next_by_subj": prefix + filter, "batch": keysBatch})
		err := b.nc.PublishRequest(jetstream.DefaultAPIPrefix+"DIRECT.GET.KV_"+kv.Bucket(), inbox, req)
		if err != nil {
			return nil, err
		}
		for {
			m, err := sub.NextMsgWithContext(ctx)
			if err != nil {
				return nil, err
			}
			switch s := status(m); s {
			case "":
				if m.Header.Get(kvOperation) == "" {
					keys = append(keys, strings.TrimPrefix(m.Header.Get(jetstream.SubjectHeader), prefix))
				}
				continue
			case "404": // nothing (more) under filter
				return keys, nil
			case "204": // end of the batch
			default:
				return nil, errors.New("natsbroker: direct get: " + s + " " + m.Header.Get("Description"))
			}
			pending, _ := strconv.ParseUint(m.Header.Get("Nats-Num-Pending"), 10, 64)
			lastSeq, err := strconv.ParseUint(m.Header.Get("Nats-Last-Sequence"), 10, 64)
			if pending == 0 || err != nil || lastSeq < seq {
				return keys, nil
			}
			seq = lastSeq + 1
			break
		}
	}
}

// keysBatch is how many entries a direct get of keys returns at once.
const keysBatch = 1000

// lastUids parses the last token of each key as a uid.
func lastUids(keys []string, err error) ([]uint64, error) {
	ids := make([]uint64, 0, len(keys))
	for _, k := range keys {
		if uid, err := strconv.ParseUint(k[strings.LastIndexByte(k, '.')+1:], 10, 64); err == nil {
			ids = append(ids, uid)
		}
	}
	return ids, err
}

// Members returns the uids in channelId.
func (b *Broker) Members(channelId string) ([]uint64, error) {
	ctx, cancel := b.ctx()
	defer cancel()
	kv, _ := b.buckets()
	return lastUids(b.keys(ctx, kv, "c."+token(channelId)+".*"))
}

// Online returns every online uid.
func (b *Broker) Online() ([]uint64, error) {
	ctx, cancel := b.ctx()
	defer cancel()
	kv, _ := b.buckets()
	return lastUids(b.keys(ctx, kv, "u.*"))
}

// NodeUids returns the uids online on this node.
func (b *Broker) NodeUids() ([]uint64, error) {
	ctx, cancel := b.ctx()
	defer cancel()
	kv, _ := b.buckets()
	return lastUids(b.keys(ctx, kv, "nu."+b.opt.NodeID+".*"))
}

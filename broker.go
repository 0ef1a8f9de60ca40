package chart

import (
	"time"
)

// Broker carries messages between the hubs (nodes) of a cluster: plain
// publish/subscribe on topics that the hub names. Set it in Config.Broker;
// each hub needs its own Broker value, all of them connected to the same
// backend. What a cluster promises is told in the README's "Scaling out"
// section; this comment is the contract for implementations.
//
// Implementations: MemoryBus (several hubs in one process, for tests), and
// the sub-modules github.com/wuyan94zl/chart/redisbroker and
// github.com/wuyan94zl/chart/natsbroker. Each also implements Presence.
//
// Topics are strings of at most a few hundred bytes of valid UTF-8, with
// any characters in them; a broker maps them onto its own namespace (a key
// prefix, an encoded subject). The hub serialises the Subscribe and
// Unsubscribe calls of one topic and makes none with a lock held.
//
// Every method may be called concurrently, and may fail while the backend
// is unreachable: the hub then goes on serving its local connections,
// reports the failure as ErrBroker, and re-publishes its presence once a
// heartbeat succeeds again.
type Broker interface {
	// NodeID names this node uniquely in the cluster.
	NodeID() string
	// Attach is called once by New: from then on the broker hands every
	// message of the subscribed topics to n.Receive, in the order each
	// publisher published them, and reports failures the hub cannot see
	// (a lost connection) to n.BrokerError.
	Attach(n Node) error
	// Publish sends data to every node subscribed to topic, this one
	// included if it is. It must not block on a slow backend for longer
	// than a network round trip, and must not keep data after returning
	// unless it copied it.
	Publish(topic string, data []byte) error
	// Subscribe starts receiving topic's messages. It records the interest
	// even when the network call fails, and the broker resubscribes by
	// itself after reconnecting.
	Subscribe(topic string) error
	// Unsubscribe stops receiving topic's messages.
	Unsubscribe(topic string) error
	// Close releases the broker's connections and goroutines. It does not
	// remove the node's presence: that expires with its TTL (an abrupt
	// stop), or is gone already after Hub.Shutdown logged every user out.
	Close() error
}

// Presence is the cluster-wide record of online uids: on which nodes each
// is connected and which channels it joined. A node is alive while it
// heartbeats within the presence's TTL. Every method is atomic on the
// backend (a Lua script, a compare-and-swap). Methods taking a slice must
// not keep it after returning.
//
// The hub uses its Broker's Presence when the Broker implements it (every
// broker shipped does), or else its own registry: a single node is its own
// presence.
type Presence interface {
	// Connect marks uid online on this node. first reports that uid was
	// offline on every live node before: this node runs LoginServer.
	Connect(uid uint64) (first bool, err error)
	// Disconnect marks uid offline on this node. last reports that uid is
	// now offline on every node: its memberships are dropped, and this node
	// runs LogoutServer.
	Disconnect(uid uint64) (last bool, err error)
	// Restore marks uid online on this node with exactly the channels
	// given; the hub calls it to re-publish its presence after an outage.
	Restore(uid uint64, channelIds []string) (first bool, err error)
	// Join adds uid to the channels. It fails with ErrUserOffline when uid
	// is online nowhere.
	Join(uid uint64, channelIds []string) error
	// Leave removes uid from the channels. It fails with ErrUserOffline
	// when uid is online nowhere.
	Leave(uid uint64, channelIds []string) error
	// Channels returns the channels of uid, in any order.
	Channels(uid uint64) ([]string, error)
	// Members returns the uids in channelId, in any order.
	Members(channelId string) ([]uint64, error)
	// Online returns every online uid, in any order.
	Online() ([]uint64, error)
	// IsOnline reports whether uid is online on some node.
	IsOnline(uid uint64) (bool, error)
	// NodeUids returns the uids online on this node, in any order. After
	// an outage the hub disconnects those it no longer holds.
	NodeUids() ([]uint64, error)
	// Heartbeat refreshes this node's TTL and reaps the nodes whose TTL
	// expired: their uids are marked offline there. gone lists the uids
	// that thereby went offline everywhere, each reported by exactly one
	// node in the cluster, which runs their LogoutServer. lost reports that
	// this node's own record had expired or vanished (an outage longer
	// than the TTL, a restarted backend): the hub then re-publishes its
	// presence with Restore. reaped reports, with lost, that another node
	// reaped this one (and ran LogoutServer for the uids only here): the
	// reaper leaves a mark for it. The hub then runs LoginServer for the
	// uids its Restore finds offline everywhere. With reap false Heartbeat
	// only refreshes this node's TTL: the hub asks so for a TTL after an
	// outage it saw, so that every node has had a full TTL to heartbeat
	// again before any is reaped. A Heartbeat that fails part way through
	// reaping returns, with its error, the uids it did take offline, so
	// that their LogoutServer still runs.
	Heartbeat(reap bool) (gone []uint64, lost, reaped bool, err error)
	// HeartbeatInterval is how often the hub calls Heartbeat, well below
	// the TTL; zero or negative: never.
	HeartbeatInterval() time.Duration
}

// Streams keeps the recent messages of every channel and every user's
// inbox for the whole cluster, so that a client recovers what it missed on
// whichever node it reconnects to. The hub uses its Broker's Streams when
// the Broker implements it (MemoryBus does), or else keeps each node's own
// streams in memory (Config.HistorySize and the fields after it).
//
// A stream is named "c:" + channel id or "u:" + uid. Its offsets grow by
// one per entry; its epoch changes when its history was lost (the backend
// restarted empty, entries were appended while it was unreachable). The
// implementation bounds what it keeps; data passed to Append must not be
// kept by reference.
type Streams interface {
	// Append adds data to stream and returns its offset and the stream's
	// epoch.
	Append(stream string, data []byte) (offset uint64, epoch string, err error)
	// Read returns the entries with offsets above after, oldest first, at
	// most limit of them (0: all kept; the newest when cut), the stream's
	// epoch, whether none above after is missing, and the newest offset.
	Read(stream string, after uint64, limit int) (entries []StreamEntry, epoch string, complete bool, last uint64, err error)
	// Ack records that uid has received stream up to offset, when epoch
	// is the stream's; Acked returns the offset and the stream's epoch.
	Ack(stream string, uid uint64, epoch string, offset uint64) error
	Acked(stream string, uid uint64) (offset uint64, epoch string, err error)
	// Reset drops what stream keeps, so that its next Append starts a new
	// epoch. The hub calls it for the streams it could not append to while
	// the backend was unreachable and cannot append again what failed (an
	// inbox; more than it keeps): their history has a hole, and clients
	// must learn recovered:false rather than trust it.
	Reset(stream string) error
	// Claim records, for about two minutes, that uid sends a message with
	// the client's id, so that a retry on any node is not delivered again.
	// fresh reports that the id was new; otherwise done says whether the
	// earlier send was settled, and offset and epoch how.
	Claim(uid uint64, id string) (fresh, done bool, offset uint64, epoch string, err error)
	// Settle records how a claimed send was acknowledged (ok), or forgets
	// the claim when the send was refused, so that a retry is tried again.
	Settle(uid uint64, id string, ok bool, offset uint64, epoch string) error
}

// BatchStreams is implemented by Streams that append many entries in one
// round trip to the backend (redisbroker, natsbroker and MemoryBus do).
// With it the hub pipelines its appends: the messages that concurrent
// publishers (and a business-code loop calling Publish) send while an
// append is on its way go to the broker together, in the next batch.
type BatchStreams interface {
	Streams
	// AppendBatch appends each entry's Data to its Stream and sets its
	// Offset and Epoch, or its Err. Entries of one stream get increasing
	// offsets in the order given. It must not keep the Data by reference.
	AppendBatch(batch []StreamAppend)
}

// StreamAppend is one entry of an AppendBatch: what to append, and what
// became of it.
type StreamAppend struct {
	Stream string
	Data   []byte

	Offset uint64
	Epoch  string
	Err    error
}

// BatchPresence is implemented by Presence that answers IsOnline for many
// uids in one round trip (redisbroker, natsbroker and MemoryBus do). With
// it, the lookups that concurrent senders of direct messages make while
// one is on its way go to the broker together.
type BatchPresence interface {
	// IsOnlineBatch reports, for each uid, whether it is online on some
	// node: online[i] is uids[i]'s answer.
	IsOnlineBatch(uids []uint64) (online []bool, err error)
}

// BatchAcks is implemented by Streams that record many acknowledgements
// in one round trip (redisbroker, natsbroker and MemoryBus do). Without it
// the hub calls Ack once for each stream and uid. Either way the calls are
// made off the connections' goroutines, and the acknowledgements that
// arrive while a call is on its way are merged: only the newest position
// of each stream and uid goes out.
type BatchAcks interface {
	// AckBatch records each acknowledgement as Ack would. It returns the
	// first error; the others are still attempted.
	AckBatch(acks []StreamAck) error
}

// StreamAck is one acknowledgement of an AckBatch: uid has received Stream
// up to Offset, when Epoch ("" for any) is the stream's.
type StreamAck struct {
	Stream string
	Uid    uint64
	Epoch  string
	Offset uint64
}

// StreamEntry is one entry of a stream.
type StreamEntry struct {
	Offset uint64
	Data   []byte
	// Time is when the backend appended the entry, by its clock, to the
	// millisecond or better; zero when the backend does not tell. The hub
	// uses it to find what was appended after a connection opened while
	// the backend was unreachable.
	Time time.Time
}

// Node is the hub side of a Broker, given to Broker.Attach.
type Node interface {
	// Receive takes one message from a subscribed topic. It does not
	// block, and keeps data (shared with local connections' queues): the
	// broker must not modify it afterwards.
	Receive(data []byte)
	// BrokerError reports a broker failure the hub did not see itself,
	// such as a lost connection; it goes to ErrorLogServer as ErrBroker.
	BrokerError(err error)
	// Resumed tells the hub that the broker delivers again after its
	// subscriptions were lost (a reconnect): messages published meanwhile
	// may have been missed, and the hub reads them from the streams
	// (Streams) of the topics it follows. It does not block.
	Resumed()
}

// DefaultNodeTTL is the time after which brokers consider a node that
// stopped heartbeating dead, unless configured otherwise. Nodes heartbeat
// every third of it.
const DefaultNodeTTL = 7500 * time.Millisecond

package chart

import (
	"time"
)

// Broker connects hubs running in different processes into one cluster, so
// that users connected to different nodes chat as if they shared one.
// Set it in Config.Broker; each hub (node) needs its own Broker value, all
// of them connected to the same backend. Without a Broker a hub serves a
// single node and makes no broker call at all.
//
// Implementations: the in-process MemoryBus in this package (several hubs
// in one process, for tests), and the sub-modules
// github.com/wuyan94zl/chart/redisbroker and
// github.com/wuyan94zl/chart/natsbroker.
//
// Messages. The hub delivers to its own connections first and publishes an
// opaque envelope (the WebSocket frame, encoded once, plus routing data) to
// the broker for the other nodes. A node subscribes to a channel's topic
// only while it has a local member of that channel, and to a user's topic
// only while that user has a connection on it. The hub serialises the
// subscribe and unsubscribe calls of one topic, and never calls them with a
// lock held. Subscribe must record the interest even when the network call
// fails, and the broker must resubscribe by itself after reconnecting.
// Every message received on a subscribed topic is handed to Node.Receive,
// in the order it was published per publisher; Receive must not block, and
// the data passed to it must not be modified afterwards.
//
// Presence. The Presence methods keep the cluster-wide view of which uids
// are online, on which nodes, and in which channels. Each must be atomic
// on the broker side (a Lua script, a compare-and-swap); see Presence.
//
// Every method may be called concurrently, and may fail while the backend
// is unreachable: the hub then goes on serving its local connections,
// reports the failure to ErrorLogServer as ErrBroker, and re-publishes its
// presence once a heartbeat succeeds again.
type Broker interface {
	// NodeID names this node uniquely in the cluster.
	NodeID() string
	// Attach is called once by New: from then on the broker hands every
	// message of the topics subscribed to n.Receive, and reports lost
	// connections to n.BrokerError.
	Attach(n Node) error
	// PublishChannel sends data to the nodes subscribed to channelId.
	PublishChannel(channelId string, data []byte) error
	// PublishUser sends data to the nodes subscribed to uid.
	PublishUser(uid uint64, data []byte) error
	// SubscribeChannel starts receiving the messages of channelId.
	SubscribeChannel(channelId string) error
	// UnsubscribeChannel stops receiving the messages of channelId.
	UnsubscribeChannel(channelId string) error
	// SubscribeUser starts receiving the messages of uid.
	SubscribeUser(uid uint64) error
	// UnsubscribeUser stops receiving the messages of uid.
	UnsubscribeUser(uid uint64) error
	Presence
	// HeartbeatInterval is how often the hub calls Presence.Heartbeat; it
	// must be well below the time after which the broker considers a silent
	// node dead (its TTL).
	HeartbeatInterval() time.Duration
	// Close releases the broker's connections and goroutines. It does not
	// remove the node's presence: that expires with its TTL (an abrupt
	// stop), or is gone already after Hub.Shutdown logged every user out.
	Close() error
}

// Presence is the cluster-wide record of online uids, kept by a Broker.
// Each uid is online on a set of nodes and is a member of a set of
// channels; a node is alive while it heartbeats within the broker's TTL.
// Every method is atomic on the broker side.
type Presence interface {
	// Connect marks uid online on this node. first reports that uid was
	// offline on every live node before: that node runs LoginServer.
	Connect(uid uint64) (first bool, err error)
	// Disconnect marks uid offline on this node. last reports that uid is
	// now offline on every node: its memberships are dropped, and this node
	// runs LogoutServer.
	Disconnect(uid uint64) (last bool, err error)
	// Restore marks uid online on this node with exactly the channels
	// given; the hub calls it to re-publish its presence after an outage.
	Restore(uid uint64, channelIds []string) error
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
	// presence with Restore.
	Heartbeat() (gone []uint64, lost bool, err error)
}

// Node is the hub side of a Broker, given to Broker.Attach.
type Node interface {
	// Receive takes one message from a subscribed topic. It does not
	// block, and keeps data (shared with local connections' queues).
	Receive(data []byte)
	// BrokerError reports a broker failure the hub did not see itself,
	// such as a lost connection; it goes to ErrorLogServer as ErrBroker.
	BrokerError(err error)
}

// Package chart turns any net/http server into a WebSocket chat service.
//
// Business code calls NewServer inside an HTTP handler with the uid it has
// authenticated, implements the four callbacks of Handler, and moves users
// between channels with JoinChannelIds and UnJoinChannelIds:
//
//	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
//		uid := authenticate(r) // your code
//		chart.NewServer(w, r, uid, &handler{})
//	})
//
//	func (h *handler) LoginServer(uid uint64) {
//		chart.JoinChannelIds(uid, "lobby")
//	}
//
// Browsers connect with the plain WebSocket API and send one JSON object per
// text frame, to a channel or to a user:
//
//	{"channel_id": "lobby", "content": "hello", "type": 3}
//	{"to_user_id": 42, "content": "hi", "type": 3}
//
// and receive one Message per text frame, or an error frame:
//
//	{"channel_id":"lobby","user_id":7,"type":3,"content":"hello","send_time":"2026-11-25 21:07:00"}
//	{"error":"not_joined","message":"chart: uid 7: channel \"x\": channel not joined","channel_id":"x"}
//
// The package-level functions are wrappers over DefaultHub, as
// http.HandleFunc is over http.DefaultServeMux; New creates independent
// hubs with their own Config.
//
// # Users, connections and channels
//
// A uid may hold several connections (tabs, devices). Channel membership
// belongs to the uid: all its connections receive its channels' messages,
// and membership ends when its last connection closes. LoginServer runs
// once when the uid's first connection is ready to receive, LogoutServer
// once after its last connection closed.
//
// # Concurrency
//
// The rules the implementation keeps, which callers may rely on:
//
//   - Exactly one goroutine writes to each connection: its writer, which
//     sends messages, pings, pongs and close frames. It runs only while the
//     connection has something queued. On Linux, over a plain socket, the
//     reader too runs only while the client's frames are being read: an
//     idle connection waits in a poller that a few goroutines share (an
//     epoll set each), which only starts its reader, so it costs no
//     goroutine; elsewhere, and over TLS, it costs one, its reader. (The
//     one exception to the single writer is inside gorilla/websocket, which
//     reads those other connections: on a protocol violation by the client
//     its reader writes a close frame itself as the connection dies; the
//     socket's write lock keeps frames whole.)
//   - Hub state lives in sharded maps behind mutexes; there is no central
//     goroutine, so the hub cannot block behind one. Publishing never
//     blocks on a connection: each has a bounded queue, and one that
//     cannot keep up is handled by Config.SlowConsumer. With a Broker that
//     keeps the streams, appends go through a pipeline of 8 shards, each
//     with a goroutine only while it has appends to send (pipeline.go); a
//     publisher waits only when its shard's bounded queue is full.
//   - No lock is held during network I/O (broker calls included) or while
//     a callback runs, so a callback may call any function of this package
//     without deadlock.
//   - A message is encoded into its WebSocket frame once per fan-out; every
//     recipient's queue shares the same bytes, and with a Broker the other
//     nodes queue those same bytes too.
//   - Each connection receives a stream's messages (a channel's, a user's
//     inbox) in the order of their offsets, on one node and across nodes
//     (where the broker assigns them: a node holds a message briefly until
//     the ones before it arrived).
//   - One node and many share one path: the hub reaches presence and the
//     other nodes only through interfaces (Presence, and an internal link
//     to its peers), which on a single node are its own registry and
//     nobody. Without a Broker it makes no broker call and runs no
//     goroutine of its own (timers aside: pings, and while it has
//     connections a pause watchdog); with one it runs a heartbeat, plus the
//     broker's own goroutines. Broker calls made for callers fail fast when
//     the broker is down or frozen (Config.BrokerWait).
//
// See Handler for the goroutine each callback runs on.
//
// # Cluster
//
// Config.Broker joins hubs in different processes into one cluster (the
// sub-modules redisbroker and natsbroker; MemoryBus for several hubs in one
// process), and every function then behaves as on one node: messages reach
// users connected anywhere, membership calls work on any node, presence
// queries answer for the cluster, and LoginServer and LogoutServer mean a
// uid's first and last connection anywhere. A node delivers to its own
// connections first, then hands the frame, encoded once, to the other
// nodes. How it works, what it promises and what it does not (broker
// outages, node failure, timings) is told once, in the README's "Scaling
// out" section: https://github.com/wuyan94zl/chart#scaling-out. Broker and
// Presence document the contract for implementations.
//
// # Safety
//
// Every limit has a safe default (see Config): inbound message size, the
// time to send one message and the memory all unfinished messages hold,
// send queue length, inbound message and byte rates per uid, connections
// per uid (and per IP when asked), heartbeats and write deadlines, and an
// origin check that refuses cross-site browser connections. Error frames
// and log lines quote client input only in short. Panics in callbacks are
// recovered and reported to ErrorLogServer. Shutdown closes a hub
// gracefully.
//
// # Application control
//
// Config.Authenticate makes a Hub an http.Handler. Optional Handler
// interfaces (ConnectHandler, DisconnectHandler, MessageFilter) see each
// *Conn and each client message before delivery; Disconnect and
// Conn.SetExpiry end connections with close codes clients can act on
// (CloseDisconnected, CloseExpired, ...). With JoinHandler (and
// LeaveHandler) clients may ask to join and leave channels themselves,
// {"join":"room"}, each request decided by the application.
//
// # Presence events
//
// The channels Config.PresenceChannels names tell their members who is in
// them: a member gets the member list when it joins or connects, then the
// uids that joined and left, gathered over Config.PresenceWindow so that a
// mass reconnect costs each member a frame or two per window. The lists
// converge to ChannelUserIds, on one node and across nodes. A
// PresenceHandler hears of the same changes, once in the cluster. Presence
// frames are transient: no history keeps them.
package chart

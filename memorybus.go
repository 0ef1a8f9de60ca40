package chart

import (
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// MemoryBus is an in-process broker backend: every Broker made by its
// Broker method is one node of the same cluster, so several hubs in one
// process behave as separate nodes would. It needs nothing external and is
// mainly for tests; it delivers synchronously, in publish order.
type MemoryBus struct {
	// TTL is how long a node may go without heartbeat before the others
	// reap it. Set it before the first Broker call; default
	// DefaultNodeTTL.
	TTL time.Duration
	// StreamSize is how many messages each channel's stream keeps (the
	// inboxes keep the default Config.InboxSize, 1000, for the default
	// Config.InboxTTL). Set it before the first Broker call; default the
	// default Config.HistorySize (100), for the default HistoryTTL.
	StreamSize int

	mu        sync.Mutex
	seq       int
	down      bool
	attached  map[*memoryBroker]Node
	subs      map[string]map[*memoryBroker]struct{} // topic: subscribed nodes
	alive     map[string]time.Time                  // node id: last heartbeat
	users     map[uint64]*memUser
	members   map[string]map[uint64]struct{}
	nodeUsers map[string]map[uint64]struct{}
	reaped    map[string]bool // nodes reaped by another, until they return
	streams   *history        // the cluster's streams: made by the first Broker call
	frozen    chan struct{}   // closed to thaw; nil: not frozen
	waiting   int             // calls waiting for the thaw
	ids       sends           // the cluster's client message ids

	failNodeUids atomic.Int32 // tests: the next NodeUids calls that fail
}

type memUser struct {
	nodes map[string]struct{}
	chans map[string]struct{}
}

// ErrBusDown is returned by MemoryBus brokers while SetDown(true) holds.
var ErrBusDown = errors.New("memory bus down")

// NewMemoryBus returns an empty in-process bus.
func NewMemoryBus() *MemoryBus {
	return &MemoryBus{
		attached:  make(map[*memoryBroker]Node),
		subs:      make(map[string]map[*memoryBroker]struct{}),
		alive:     make(map[string]time.Time),
		users:     make(map[uint64]*memUser),
		members:   make(map[string]map[uint64]struct{}),
		nodeUsers: make(map[string]map[uint64]struct{}),
	}
}

func (b *MemoryBus) newStreams() *history {
	cfg := Config{HistorySize: b.StreamSize}.withDefaults()
	return newHistory(&cfg)
}

// Broker returns a new node of the bus, for one hub's Config.Broker. It
// implements Presence and Streams too.
func (b *MemoryBus) Broker() Broker {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seq++
	if b.streams == nil {
		b.streams = b.newStreams()
	}
	return &memoryBroker{bus: b, id: "mem-" + strconv.Itoa(b.seq)}
}

// SetDown simulates an outage of the backend: while down every call fails
// with ErrBusDown and nothing is delivered. Going down also forgets all
// presence, as a restarted server without persistence would; subscriptions
// are kept, as clients resubscribe after reconnecting. Attached nodes are
// told through Node.BrokerError, and Node.Resumed when it is back.
func (b *MemoryBus) SetDown(down bool) {
	b.mu.Lock()
	was := b.down
	b.down = down
	var nodes []Node
	if down != was {
		for _, n := range b.attached {
			nodes = append(nodes, n)
		}
	}
	if down && !was {
		b.streams = b.newStreams() // a restart without persistence: new epochs
		clear(b.alive)
		clear(b.users)
		clear(b.members)
		clear(b.nodeUsers)
		clear(b.reaped)
	}
	b.mu.Unlock()
	for _, n := range nodes {
		if down {
			n.BrokerError(ErrBusDown)
		} else {
			n.Resumed()
		}
	}
}

// Freeze simulates a backend that stops answering (a stopped process, a
// network that drops everything): while frozen, every call of every node
// waits, without timeout, until Freeze(false), except Publish, which fails
// at once (the message is dropped), as the brokers shipped queue messages
// without waiting.
func (b *MemoryBus) Freeze(frozen bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case frozen && b.frozen == nil:
		b.frozen = make(chan struct{})
	case !frozen && b.frozen != nil:
		close(b.frozen)
		b.frozen = nil
	}
}

// Waiting returns the number of calls waiting for a frozen bus.
func (b *MemoryBus) Waiting() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.waiting
}

func (b *MemoryBus) ttl() time.Duration {
	if b.TTL > 0 {
		return b.TTL
	}
	return DefaultNodeTTL
}

var _ Broker = (*memoryBroker)(nil)

type memoryBroker struct {
	bus *MemoryBus
	id  string
	cut bool // guarded by bus.mu
}

// Cut simulates a network partition between one node (a Broker of this
// bus) and the backend: while cut, its calls fail with ErrBusDown and it
// receives nothing, while the other nodes go on. Its presence stays, and
// expires with the TTL if the cut lasts longer. Ending the cut calls the
// node's Node.Resumed.
func (b *MemoryBus) Cut(node Broker, cut bool) {
	m := node.(*memoryBroker)
	b.mu.Lock()
	was := m.cut
	m.cut = cut
	n := b.attached[m]
	b.mu.Unlock()
	switch {
	case n == nil || cut == was:
	case cut:
		n.BrokerError(ErrBusDown)
	default:
		n.Resumed()
	}
}

func (m *memoryBroker) NodeID() string { return m.id }

// HeartbeatInterval is a third of the bus's TTL.
func (m *memoryBroker) HeartbeatInterval() time.Duration { return m.bus.ttl() / 3 }

func (m *memoryBroker) Attach(n Node) error {
	m.bus.mu.Lock()
	m.bus.attached[m] = n
	m.bus.mu.Unlock()
	return nil
}

func (m *memoryBroker) Close() error {
	b := m.bus
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.attached, m)
	for t, set := range b.subs {
		if delete(set, m); len(set) == 0 {
			delete(b.subs, t)
		}
	}
	return nil
}

// lock locks the bus and fails while it is down; while it is frozen it
// waits.
func (m *memoryBroker) lock() error {
	m.bus.mu.Lock()
	for m.bus.frozen != nil {
		thaw := m.bus.frozen
		m.bus.waiting++
		m.bus.mu.Unlock()
		<-thaw
		m.bus.mu.Lock()
		m.bus.waiting--
	}
	if m.bus.down || m.cut {
		m.bus.mu.Unlock()
		return ErrBusDown
	}
	return nil
}

// Publish hands data to every node subscribed to topic, synchronously, in
// the caller's goroutine.
func (m *memoryBroker) Publish(topic string, data []byte) error {
	m.bus.mu.Lock()
	frozen := m.bus.frozen != nil
	m.bus.mu.Unlock()
	if frozen {
		return ErrBusDown // dropped, as by a broker client whose buffers are full
	}
	if err := m.lock(); err != nil {
		return err
	}
	set := m.bus.subs[topic]
	nodes := make([]Node, 0, len(set))
	for s := range set {
		if n := m.bus.attached[s]; n != nil && !s.cut {
			nodes = append(nodes, n)
		}
	}
	m.bus.mu.Unlock()
	for _, n := range nodes {
		n.Receive(data)
	}
	return nil
}

// Subscribe records the interest even while the bus is down, as a broker
// that resubscribes after reconnecting would.
func (m *memoryBroker) Subscribe(topic string) error { return m.subscribe(topic, true) }

// Unsubscribe forgets the interest, even while the bus is down.
func (m *memoryBroker) Unsubscribe(topic string) error { return m.subscribe(topic, false) }

func (m *memoryBroker) subscribe(topic string, on bool) error {
	b := m.bus
	b.mu.Lock()
	defer b.mu.Unlock()
	set := b.subs[topic]
	if on {
		if set == nil {
			set = make(map[*memoryBroker]struct{})
			b.subs[topic] = set
		}
		set[m] = struct{}{}
	} else if set != nil {
		if delete(set, m); len(set) == 0 {
			delete(b.subs, topic)
		}
	}
	if b.down || m.cut {
		return ErrBusDown
	}
	return nil
}

func (m *memoryBroker) Connect(uid uint64) (bool, error) {
	if err := m.lock(); err != nil {
		return false, err
	}
	defer m.bus.mu.Unlock()
	return m.bus.connect(m.id, uid), nil
}

func (b *MemoryBus) connect(node string, uid uint64) (first bool) {
	u := b.users[uid]
	if u == nil {
		u = &memUser{nodes: make(map[string]struct{}), chans: make(map[string]struct{})}
		b.users[uid] = u
		first = true
	}
	u.nodes[node] = struct{}{}
	set := b.nodeUsers[node]
	if set == nil {
		set = make(map[uint64]struct{})
		b.nodeUsers[node] = set
	}
	set[uid] = struct{}{}
	return first
}

func (m *memoryBroker) Disconnect(uid uint64) (bool, error) {
	if err := m.lock(); err != nil {
		return false, err
	}
	defer m.bus.mu.Unlock()
	delete(m.bus.nodeUsers[m.id], uid)
	return m.bus.disconnect(m.id, uid), nil
}

func (b *MemoryBus) disconnect(node string, uid uint64) (last bool) {
	u := b.users[uid]
	if u == nil {
		return false
	}
	delete(u.nodes, node)
	if len(u.nodes) > 0 {
		return false
	}
	for id := range u.chans {
		b.member(id, uid, false)
	}
	delete(b.users, uid)
	return true
}

func (b *MemoryBus) member(id string, uid uint64, on bool) {
	set := b.members[id]
	if on {
		if set == nil {
			set = make(map[uint64]struct{})
			b.members[id] = set
		}
		set[uid] = struct{}{}
	} else if set != nil {
		if delete(set, uid); len(set) == 0 {
			delete(b.members, id)
		}
	}
}

func (m *memoryBroker) Restore(uid uint64, channelIds []string) (first bool, err error) {
	if err := m.lock(); err != nil {
		return false, err
	}
	defer m.bus.mu.Unlock()
	first = m.bus.connect(m.id, uid)
	u := m.bus.users[uid]
	for id := range u.chans {
		m.bus.member(id, uid, false)
	}
	clear(u.chans)
	for _, id := range channelIds {
		u.chans[id] = struct{}{}
		m.bus.member(id, uid, true)
	}
	return first, nil
}

func (m *memoryBroker) Join(uid uint64, channelIds []string) error {
	return m.membership(uid, channelIds, true)
}

func (m *memoryBroker) Leave(uid uint64, channelIds []string) error {
	return m.membership(uid, channelIds, false)
}

func (m *memoryBroker) membership(uid uint64, channelIds []string, on bool) error {
	if err := m.lock(); err != nil {
		return err
	}
	defer m.bus.mu.Unlock()
	u := m.bus.users[uid]
	if u == nil {
		return ErrUserOffline
	}
	for _, id := range channelIds {
		if on {
			u.chans[id] = struct{}{}
		} else {
			delete(u.chans, id)
		}
		m.bus.member(id, uid, on)
	}
	return nil
}

func (m *memoryBroker) Channels(uid uint64) ([]string, error) {
	if err := m.lock(); err != nil {
		return nil, err
	}
	defer m.bus.mu.Unlock()
	var ids []string
	if u := m.bus.users[uid]; u != nil {
		for id := range u.chans {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

func (m *memoryBroker) Members(channelId string) ([]uint64, error) {
	if err := m.lock(); err != nil {
		return nil, err
	}
	defer m.bus.mu.Unlock()
	var ids []uint64
	for uid := range m.bus.members[channelId] {
		ids = append(ids, uid)
	}
	return ids, nil
}

func (m *memoryBroker) Online() ([]uint64, error) {
	if err := m.lock(); err != nil {
		return nil, err
	}
	defer m.bus.mu.Unlock()
	ids := make([]uint64, 0, len(m.bus.users))
	for uid := range m.bus.users {
		ids = append(ids, uid)
	}
	return ids, nil
}

func (m *memoryBroker) IsOnline(uid uint64) (bool, error) {
	if err := m.lock(); err != nil {
		return false, err
	}
	defer m.bus.mu.Unlock()
	return m.bus.users[uid] != nil, nil
}

// IsOnlineBatch answers IsOnline for each uid.
func (m *memoryBroker) IsOnlineBatch(uids []uint64) ([]bool, error) {
	online := make([]bool, len(uids))
	for i, uid := range uids {
		ok, err := m.IsOnline(uid)
		if err != nil {
			return nil, err
		}
		online[i] = ok
	}
	return online, nil
}

func (m *memoryBroker) NodeUids() ([]uint64, error) {
	for n := m.bus.failNodeUids.Load(); n > 0; n = m.bus.failNodeUids.Load() {
		if m.bus.failNodeUids.CompareAndSwap(n, n-1) {
			return nil, ErrBusDown
		}
	}
	if err := m.lock(); err != nil {
		return nil, err
	}
	defer m.bus.mu.Unlock()
	var ids []uint64
	for uid := range m.bus.nodeUsers[m.id] {
		ids = append(ids, uid)
	}
	return ids, nil
}

func (m *memoryBroker) Heartbeat(reap bool) (gone []uint64, lost, reaped bool, err error) {
	if err := m.lock(); err != nil {
		return nil, false, false, err
	}
	b := m.bus
	defer b.mu.Unlock()
	now := time.Now()
	_, ok := b.alive[m.id]
	lost = !ok
	if lost && b.reaped[m.id] {
		reaped = true
		delete(b.reaped, m.id)
	}
	b.alive[m.id] = now
	for node, seen := range b.alive {
		if !reap || now.Sub(seen) <= b.ttl() {
			continue
		}
		for uid := range b.nodeUsers[node] {
			if b.disconnect(node, uid) {
				gone = append(gone, uid)
			}
		}
		delete(b.nodeUsers, node)
		delete(b.alive, node)
		if b.reaped == nil {
			b.reaped = make(map[string]bool)
		}
		b.reaped[node] = true
	}
	return gone, lost, reaped, nil
}

var _ BatchStreams = (*memoryBroker)(nil)

// topicOf parses a stream name.
func topicOf(stream string) (topic, bool) {
	if len(stream) < 3 {
		return topic{}, false
	}
	switch stream[:2] {
	case "c:":
		return topic{ch: stream[2:]}, true
	case "u:":
		uid, err := strconv.ParseUint(stream[2:], 10, 64)
		return topic{uid: uid}, err == nil
	}
	return topic{}, false
}

// streamsOf returns the bus's streams, or fails while it is down.
func (m *memoryBroker) streamsOf(stream string) (*history, topic, error) {
	t, ok := topicOf(stream)
	if !ok {
		return nil, t, errors.New("memory bus: bad stream name " + strconv.Quote(stream))
	}
	if err := m.lock(); err != nil {
		return nil, t, err
	}
	st := m.bus.streams
	m.bus.mu.Unlock()
	return st, t, nil
}

// Append adds data to the cluster's stream.
func (m *memoryBroker) Append(stream string, data []byte) (uint64, string, error) {
	st, t, err := m.streamsOf(stream)
	if err != nil {
		return 0, "", err
	}
	off, epoch := st.append(t, data)
	return off, epoch, nil
}

// AppendBatch appends each entry in turn.
func (m *memoryBroker) AppendBatch(batch []StreamAppend) {
	for i := range batch {
		a := &batch[i]
		a.Offset, a.Epoch, a.Err = m.Append(a.Stream, a.Data)
	}
}

// Read returns the stream's entries above after.
func (m *memoryBroker) Read(stream string, after uint64, limit int) ([]StreamEntry, string, bool, uint64, error) {
	st, t, err := m.streamsOf(stream)
	if err != nil {
		return nil, "", false, 0, err
	}
	es, epoch, complete, last := st.read(t, after, limit)
	out := make([]StreamEntry, len(es))
	for i, e := range es {
		out[i] = StreamEntry{Offset: e.off, Data: e.data, Time: time.Unix(0, e.at)}
	}
	return out, epoch, complete, last, nil
}

// Ack records uid's position in the stream.
func (m *memoryBroker) Ack(stream string, uid uint64, epoch string, offset uint64) error {
	st, t, err := m.streamsOf(stream)
	if err == nil {
		st.ackStream(t, uid, epoch, offset)
	}
	return err
}

// AckBatch records each acknowledgement in turn.
func (m *memoryBroker) AckBatch(acks []StreamAck) error {
	var first error
	for _, a := range acks {
		if err := m.Ack(a.Stream, a.Uid, a.Epoch, a.Offset); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Acked returns uid's position in the stream.
func (m *memoryBroker) Acked(stream string, uid uint64) (uint64, string, error) {
	st, t, err := m.streamsOf(stream)
	if err != nil {
		return 0, "", err
	}
	off, epoch := st.acked(t, uid)
	return off, epoch, nil
}

// Reset drops the stream: its next append starts a new epoch.
func (m *memoryBroker) Reset(stream string) error {
	st, t, err := m.streamsOf(stream)
	if err == nil {
		st.reset(t)
	}
	return err
}

// Claim records uid's message id for the cluster.
func (m *memoryBroker) Claim(uid uint64, id string) (fresh, done bool, offset uint64, epoch string, err error) {
	if err := m.lock(); err != nil {
		return false, false, 0, "", err
	}
	m.bus.mu.Unlock()
	prev, _ := m.bus.ids.claim(uid, id)
	if prev == nil {
		return true, false, 0, "", nil
	}
	return false, prev.done, prev.offset, prev.epoch, nil
}

// Settle records how a claimed send ended.
func (m *memoryBroker) Settle(uid uint64, id string, ok bool, offset uint64, epoch string) error {
	if err := m.lock(); err != nil {
		return err
	}
	m.bus.mu.Unlock()
	m.bus.ids.settle(uid, id, ok, offset, epoch)
	return nil
}

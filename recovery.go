package chart

import (
	"bytes"
	"cmp"
	"slices"
	"strconv"
	"sync"
	"time"
)

// The chart.v1 protocol: recovery after a reconnect, acknowledgements,
// sends acknowledged once, and a heartbeat clients can see.
//
// A client that offers the subprotocol ProtocolV1 sends, as its first
// frame, a hello with the positions it has reached (the last offset and
// the epoch of each channel, and of its inbox). Until the hello is handled
// the hub holds the connection's live messages; then it sends what the
// client missed from history, a welcome saying per stream whether that was
// complete, and the held live messages beyond what history gave, so that
// nothing is lost or doubled at the seam. A hello that does not come
// within HelloTimeout counts as one without positions.
//
// A connection without chart.v1 gets, at its start, the messages of its
// user's inbox that no connection of the user has written yet; each inbox
// message counts as acknowledged once written to its socket.

// ProtocolV1 is the WebSocket subprotocol of clients that recover what
// they missed (see README, "Delivery"). Every hub accepts it.
const ProtocolV1 = "chart.v1"

// position is a place in a stream, as a client reports and learns it.
type position struct {
	Epoch     string `json:"epoch"`
	Offset    uint64 `json:"offset"`
	Recovered *bool  `json:"recovered,omitempty"` // in the welcome
}

// positions is a hello's, an acknowledgement's or a welcome's body.
type positions struct {
	Channels map[string]position `json:"channels,omitempty"`
	Inbox    *position           `json:"inbox,omitempty"`
}

// start launches the read goroutine of a registered connection. It runs
// as a step of the uid's queue, so that the connection's first frame is
// read after its uid's LoginServer, and after a LogoutServer of an earlier
// connection still running. A connection without chart.v1 recovers its
// inbox here; a chart.v1 one waits for its hello, within HelloTimeout.
func (c *Conn) start() {
	if !c.v1 {
		c.recover(nil)
	} else if c.hub.cfg.HelloTimeout > 0 {
		c.mu.Lock()
		c.helloTimer = time.AfterFunc(c.hub.cfg.HelloTimeout, func() { c.recover(&positions{}) })
		c.mu.Unlock()
	}
	if c.ws == nil {
		c.startPolled()
		return
	}
	go c.readLoop()
}

// replay is what recovery sends for one stream.
type replay struct {
	t      topic
	frames [][]byte
	offs   []uint64
	live   bool     // nothing replayed: live messages only
	acked  bool     // replayed from what the user acknowledged, not from the client's position
	pos    position // where the client is after the replay
	last   uint64   // the stream's newest offset when it was read
	empty  bool     // the read found the stream empty (not failing)
	failed bool     // the read failed
}

// recover sends a connection what it missed, then its held live messages
// beyond that, once. hello is nil for a connection without chart.v1.
//
// Only the first call recovers (the hello, the hello timer, or a message
// before the hello, whichever comes first); no lock is held while it reads
// the streams, which may be the broker's (network I/O). Messages delivered
// meanwhile wait in the hold.
func (c *Conn) recover(hello *positions) {
	if !c.recovering.CompareAndSwap(false, true) {
		return
	}
	c.mu.Lock()
	done := c.hold == nil
	if c.helloTimer != nil {
		c.helloTimer.Stop()
	}
	c.mu.Unlock()
	if done {
		return
	}
	replays := c.replays(hello)
	// A stream this node begins to follow for this connection starts
	// where the read found it: a live message published before the read
	// and arriving after a later one (from another node) then goes out
	// in its place, not after it.
	for _, r := range replays {
		switch {
		case r.empty:
			c.hub.seq.startEmpty(r.t)
		case r.failed:
			c.hub.seq.startLost(r.t)
		default:
			c.hub.seq.startAt(r.t, r.pos.Epoch, r.last)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	inOrder(c.hold)
	last := make(map[topic]uint64, len(replays))
	for i := range replays {
		r := &replays[i]
		for k, f := range r.frames {
			c.pushLocked(f, r.t, r.offs[k])
		}
		switch {
		case r.acked && len(r.offs) > 0:
			// From another device's acknowledgement: a held message is
			// live for this client unless the replay gave it.
			last[r.t] = r.offs[len(r.offs)-1]
			continue
		case !r.live && !r.acked:
			last[r.t] = r.pos.Offset // the client had or was replayed up to here
			continue
		case !r.live:
			continue
		}
		// The client gets the held messages of a live-only stream: its
		// position is just before the first of them.
		for _, m := range c.hold {
			if m.t == r.t && m.off != 0 && m.off <= r.pos.Offset {
				r.pos.Offset = m.off - 1
				break
			}
		}
	}
	if hello != nil {
		c.pushLocked(encodeWelcome(replays), topic{}, 0)
	}
	for _, m := range c.hold {
		if m.off == 0 || m.off > last[m.t] {
			c.pushLocked(m.f, m.t, m.off)
		}
	}
	c.hold = nil
	// A message appended before the replay read it but delivered after
	// this must not come twice either (enqueueAt): remember how far each
	// stream was replayed, for the streams that replayed anything.
	for _, r := range replays {
		if len(r.offs) > 0 {
			if c.replayed == nil {
				c.replayed = make(map[topic]uint64)
			}
			c.replayed[r.t] = r.offs[len(r.offs)-1]
		}
	}
}

// replays reads history for the streams the connection recovers: its
// user's channels now, from the client's positions, and its inbox, from
// the client's position or else from what the user acknowledged. What is
// replayed is bounded by half a send queue, in messages and in bytes, so
// that a recovery cannot overflow the queue (and close the connection as a
// slow consumer, again at every reconnect): the inbox takes its oldest
// messages up to that, the channels share what is left, and a stream cut
// short or left out is recovered: false.
func (c *Conn) replays(hello *positions) []replay {
	hub := c.hub
	b := budget{n: hub.cfg.SendQueueLen / 2, bytes: hub.cfg.SendQueueBytes / 2}
	// The inbox first: direct messages waiting for the user must not lose
	// to busy channels. From the client's position when it is of the
	// current epoch, else from what the user acknowledged; a client whose
	// position is of another epoch (a restart) is told recovered: false.
	inbox := topic{uid: c.uid}
	var p position
	p.Offset, p.Epoch = hub.streams.acked(inbox, c.uid)
	fromAcked, stale := true, false
	if hello != nil && hello.Inbox != nil {
		if hello.Inbox.Epoch == p.Epoch || hello.Inbox.Epoch == "" && hello.Inbox.Offset == 0 {
			p, fromAcked = *hello.Inbox, false
		} else {
			stale = true
		}
	}
	r := hub.replay(inbox, p, p.Epoch != "" || !fromAcked, &b, true)
	r.acked = fromAcked && !r.live
	if stale {
		f := false
		r.pos.Recovered = &f
	}
	out := []replay{r}
	if hello != nil {
		chans, _ := hub.localChannels(c.uid)
		for _, id := range chans {
			p, ok := hello.Channels[id]
			out = append(out, hub.replay(topic{ch: id}, p, ok, &b, false))
		}
	}
	return out
}

// budget is what a recovery may still replay.
type budget struct{ n, bytes int }

// take reports how many of entries fit in b, oldest first, and takes them.
func (b *budget) take(entries []entry) int {
	k := 0
	for _, e := range entries {
		size := len(e.data) + 64
		if b.n < 1 || b.bytes < size {
			break
		}
		b.n--
		b.bytes -= size
		k++
	}
	return k
}

// replay reads stream t after position p (when known), within b. A stream
// that does not fit gets live messages only, or with partial its oldest
// messages up to b; either way it is not recovered.
func (h *Hub) replay(t topic, p position, known bool, b *budget, partial bool) replay {
	r := replay{t: t}
	limit := 0
	if !known {
		limit = 1 // only the stream's position is wanted
	}
	entries, epoch, complete, last := h.streams.read(t, p.Offset, limit)
	r.empty = epoch == "" && complete && p.Offset == 0
	r.failed = epoch == "" && !complete
	if r.failed {
		// The broker fails: where the stream stands, and what the client
		// missed, cannot be read now. The client keeps the position it
		// sent (a later connection recovers from there), not recovered;
		// an empty one would tell it the stream has no history.
		r.live = true
		if known {
			r.pos.Epoch, r.pos.Offset = p.Epoch, p.Offset
		}
		r.pos.Recovered = new(bool)
		return r
	}
	// A client that saw the stream empty (epoch "", offset 0) missed all
	// of it, from its start. Whether the stream was empty all along or
	// lost messages since (a restart, an eviction) cannot be told: what it
	// has now is replayed, as not recovered.
	empty := known && p.Epoch == "" && p.Offset == 0
	recovered := false
	switch {
	case empty && epoch == "":
		// Still empty: nothing missed.
		r.live, r.pos.Offset, recovered = true, 0, true
	case empty:
		p.Epoch, complete = epoch, false
		fallthrough
	default:
		if !known || epoch == "" || p.Epoch != epoch || p.Offset > last {
			// Live only: the position is unknown, of another epoch, or
			// past the end. The client learns where the stream is.
			r.live, r.pos.Offset = true, last
			break
		}
		snapshot := *b
		k := b.take(entries)
		if k < len(entries) && !partial {
			*b = snapshot // too far behind: live only
			r.live, r.pos.Offset = true, last
			break
		}
		recovered = complete && k == len(entries)
		r.pos.Offset = p.Offset
		for _, e := range entries[:k] {
			r.frames = append(r.frames, framePrefix(e.data, e.off, epoch))
			r.offs = append(r.offs, e.off)
			r.pos.Offset = e.off
		}
		if k == 0 && len(entries) > 0 {
			r.live, r.pos.Offset = true, last
		}
	}
	r.pos.Epoch, r.last = epoch, last
	r.pos.Recovered = &recovered
	return r
}

// inOrder puts each stream's messages in hold in offset order, keeping
// the places the stream's messages take among the others': messages that
// crossed on their way (from two nodes) while the connection recovered go
// out in order. Offsets compare within an epoch only: where a stream's
// messages change epoch (it was reset), they keep the order they came
// in, as the sequencer gave it.
func inOrder(hold []held) {
	idx := make(map[topic][]int)
	for i, m := range hold {
		if m.off != 0 {
			idx[m.t] = append(idx[m.t], i)
		}
	}
	var ms []held
	for _, is := range idx {
		for len(is) > 1 {
			run, epoch := 1, frameEpoch(hold[is[0]].f)
			for run < len(is) && bytes.Equal(frameEpoch(hold[is[run]].f), epoch) {
				run++
			}
			ms = ms[:0]
			for _, i := range is[:run] {
				ms = append(ms, hold[i])
			}
			slices.SortStableFunc(ms, func(a, b held) int { return cmp.Compare(a.off, b.off) })
			for k, i := range is[:run] {
				hold[i] = ms[k]
			}
			is = is[run:]
		}
	}
}

// frameEpoch returns the epoch of a message frame with a position: its
// JSON ends with it (appendPosition), and no string in it can hold the
// unescaped quotes before it.
func frameEpoch(f []byte) []byte {
	const key = `,"epoch":"`
	i := bytes.LastIndex(f, []byte(key))
	if i < 0 {
		return nil
	}
	e := f[i+len(key):]
	if j := bytes.IndexByte(e, '"'); j >= 0 {
		return e[:j]
	}
	return nil
}

// encodeWelcome is the frame that ends a chart.v1 recovery:
//
//	{"welcome":{"channels":{"lobby":{"epoch":"e","offset":57,"recovered":true}},"inbox":{...}}}
func encodeWelcome(replays []replay) []byte {
	b := []byte(`{"welcome":{"channels":{`)
	n := 0
	var inbox *position
	for i := range replays {
		r := &replays[i]
		if r.t.ch == "" {
			inbox = &r.pos
			continue
		}
		if n > 0 {
			b = append(b, ',')
		}
		n++
		b = appendString(b, r.t.ch)
		b = append(b, ':')
		b = appendPos(b, r.pos)
	}
	b = append(b, '}')
	if inbox != nil {
		b = append(b, `,"inbox":`...)
		b = appendPos(b, *inbox)
	}
	return frame(opText, append(b, "}}"...))
}

func appendPos(b []byte, p position) []byte {
	b = append(b, `{"epoch":`...)
	b = appendString(b, p.Epoch)
	b = append(b, `,"offset":`...)
	b = strconv.AppendUint(b, p.Offset, 10)
	b = append(b, `,"recovered":`...)
	b = strconv.AppendBool(b, p.Recovered != nil && *p.Recovered)
	return append(b, '}')
}

// acknowledge records a chart.v1 client's acknowledgement: the positions
// up to which it has its inbox and channels.
func (c *Conn) acknowledge(a *positions) {
	if a.Inbox != nil && a.Inbox.Epoch != "" {
		c.ack(topic{uid: c.uid}, *a.Inbox)
	}
	if len(a.Channels) == 0 {
		return
	}
	chans, _ := c.hub.localChannels(c.uid)
	for _, id := range chans { // only channels the user is in
		if p, ok := a.Channels[id]; ok && p.Epoch != "" {
			c.ack(topic{ch: id}, p)
		}
	}
}

// ack records the connection's acknowledgement of stream t, unless it
// acknowledged as much already: repeated acks cost no store (broker) call.
// Only the reader calls it.
func (c *Conn) ack(t topic, p position) {
	if last, ok := c.acked[t]; ok && last.Epoch == p.Epoch && last.Offset >= p.Offset {
		return
	}
	if c.acked == nil {
		c.acked = make(map[topic]position)
	}
	c.acked[t] = position{Epoch: p.Epoch, Offset: p.Offset}
	c.hub.streams.ackStream(t, c.uid, p.Epoch, p.Offset)
}

// Acked returns the offset up to which uid acknowledged a channel (a
// chart.v1 client's acknowledgement) and the channel's epoch: with
// History, enough to show unread counts. 0 and "" when nothing is known.
func (h *Hub) Acked(uid uint64, channelId string) (offset uint64, epoch string) {
	return h.streams.acked(topic{ch: channelId}, uid)
}

// InboxAcked is Acked for uid's inbox.
func (h *Hub) InboxAcked(uid uint64) (offset uint64, epoch string) {
	return h.streams.acked(topic{uid: uid}, uid)
}

// sends remembers the ids of chart.v1 clients' messages for dedupWindow,
// so that a retried send is acknowledged again instead of delivered twice.
type sends struct {
	shards [shardCount]sendShard
}

type sendShard struct {
	mu     sync.Mutex
	ids    map[sendKey]*sent
	perUid map[uint64]int // ids remembered per uid
	fifo   []sendKey      // in the order claimed, for expiry (ids dropped before stay until they reach the front)
	_      [64]byte
}

type sendKey struct {
	uid uint64
	id  string
}

// sent is what a send was acknowledged with; done is false while it is
// being sent.
type sent struct {
	at     int64
	done   bool
	offset uint64
	epoch  string
}

// dedupWindow is how long a client's message id is remembered.
const dedupWindow = 2 * time.Minute

// maxIdLen bounds a client's message id.
const maxIdLen = 64

// maxSendsPerShard bounds the ids remembered: 64 shards of it, about 25
// MiB at most. maxSendsPerUid bounds one uid's share of its shard, so that
// a sender cannot push another user's ids out alone.
const (
	maxSendsPerShard = 1024
	maxSendsPerUid   = 128
)

// claim returns the earlier send of (uid, id), or records this one.
func (ss *sends) claim(uid uint64, id string) (prev *sent, fresh *sent) {
	sh := &ss.shards[(uid*0x9E3779B97F4A7C15)>>58]
	now := time.Now().UnixNano()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	// Expired ids go, and ids dropped before (nil here) leave the queue.
	for len(sh.fifo) > 0 {
		k := sh.fifo[0]
		if s := sh.ids[k]; s != nil && now-s.at < int64(dedupWindow) {
			break
		}
		sh.drop(k)
		sh.fifo = sh.fifo[1:]
	}
	k := sendKey{uid, id}
	if s := sh.ids[k]; s != nil {
		c := *s
		return &c, nil
	}
	if sh.perUid[uid] >= maxSendsPerUid { // this uid's oldest goes
		for _, old := range sh.fifo {
			if old.uid == uid && sh.ids[old] != nil {
				sh.drop(old)
				break
			}
		}
	}
	for len(sh.ids) >= maxSendsPerShard { // bounded memory, whatever the senders
		sh.drop(sh.fifo[0])
		sh.fifo = sh.fifo[1:]
	}
	if sh.ids == nil {
		sh.ids = make(map[sendKey]*sent)
		sh.perUid = make(map[uint64]int)
	}
	s := &sent{at: now}
	sh.ids[k] = s
	sh.perUid[uid]++
	sh.fifo = append(sh.fifo, k)
	return nil, s
}

// drop forgets k, if it is still remembered. The caller holds sh.mu.
func (sh *sendShard) drop(k sendKey) {
	if _, ok := sh.ids[k]; !ok {
		return
	}
	delete(sh.ids, k)
	if sh.perUid[k.uid]--; sh.perUid[k.uid] <= 0 {
		delete(sh.perUid, k.uid)
	}
}

// dedup remembers the ids of clients' messages: this node's sends, or the
// broker's (brokerIds, cluster.go) when it keeps streams.
type dedup interface {
	claim(uid uint64, id string) (prev *sent, fresh *sent)
	finish(uid uint64, id string, s *sent, ok bool, offset uint64, epoch string)
}

// settle is finish by key, for a claim made elsewhere (MemoryBus).
func (ss *sends) settle(uid uint64, id string, ok bool, offset uint64, epoch string) {
	sh := &ss.shards[(uid*0x9E3779B97F4A7C15)>>58]
	sh.mu.Lock()
	s := sh.ids[sendKey{uid, id}]
	sh.mu.Unlock()
	if s != nil {
		ss.finish(uid, id, s, ok, offset, epoch)
	}
}

// finish records how a claimed send was acknowledged; a refused send is
// forgotten, so that a retry is tried again.
func (ss *sends) finish(uid uint64, id string, s *sent, ok bool, offset uint64, epoch string) {
	sh := &ss.shards[(uid*0x9E3779B97F4A7C15)>>58]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if !ok {
		delete(sh.ids, sendKey{uid, id})
		return
	}
	s.done, s.offset, s.epoch = true, offset, epoch
}

// encodeAck acknowledges a chart.v1 client's message:
//
//	{"ack":{"id":"c1-7","offset":42,"epoch":"e"}}
func encodeAck(id string, offset uint64, epoch string) []byte {
	b := append([]byte(`{"ack":{"id":`), appendString(nil, id)...)
	if offset != 0 {
		b = append(b, `,"offset":`...)
		b = strconv.AppendUint(b, offset, 10)
		b = append(b, `,"epoch":`...)
		b = appendString(b, epoch)
	}
	return frame(opText, append(b, "}}"...))
}

// encodePong answers a chart.v1 client's {"ping":n}: browsers cannot see
// WebSocket pings, so a client detects a dead connection by these.
func encodePong(n uint64) []byte {
	return frame(opText, append(strconv.AppendUint([]byte(`{"pong":`), n, 10), '}'))
}

package chart

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// store is what the hub asks of the streams: its own (*history) on one
// node, or the Broker's Streams (brokerStreams, cluster.go).
type store interface {
	append(t topic, data []byte) (offset uint64, epoch string)
	// appendThen appends data to t, then calls deliver with the position
	// (under the stream's ordering lock when the store has one: no
	// network I/O there), then share, with no lock held, when the other
	// nodes are to be sent the message: at once, or later on another
	// goroutine when the store pipelines its appends and the caller does
	// not wait (they see data, or a copy; calls for one stream keep their
	// order).
	appendThen(t topic, data []byte, wait bool, deliver, share func(data []byte, off uint64, epoch string))
	read(t topic, after uint64, limit int) (entries []entry, epoch string, complete bool, last uint64)
	ackStream(t topic, uid uint64, epoch string, offset uint64)
	acked(t topic, uid uint64) (offset uint64, epoch string)
	keepsInboxes() bool
	// shared reports that offsets are the cluster's: a node receiving a
	// message from another takes its position as it is.
	shared() bool
	// order returns the lock that keeps stream t's deliveries in offset
	// order on this node, held from the append to the last queue; nil
	// when there is none.
	order(t topic) *sync.Mutex
}

func (hs *history) shared() bool { return false }

// order is one of the history's stripes of ordering locks. Only the
// in-memory append and the (non-blocking) queueing run under it.
func (hs *history) order(t topic) *sync.Mutex {
	if hs == nil {
		return nil
	}
	x := t.uid
	if t.ch != "" {
		x = uint64(fnv(t.ch))
	}
	return &hs.orders[((x^hs.seed)*0x9E3779B97F4A7C15)>>56]
}

// History: every channel and every user's inbox (its direct messages) is a
// stream of recent messages, each at an offset that grows by one per
// message, under an epoch that changes when the stream's history was lost.
// A single node keeps its streams here, in memory, bounded in count and
// age per stream and in bytes for all of them.
//
// What a stream stores is a message's JSON without its position (see
// appendPrefix): framing it with an offset and an epoch is cheap, for live
// delivery and for reading history alike.

// history is a node's streams, sharded by name.
type history struct {
	shards   [historyShards]historyShard
	size     int   // entries per channel stream
	ttl      int64 // nanoseconds per channel entry
	inbox    int   // entries per inbox stream
	inboxTTL int64
	maxBytes int64 // per shard
	base     string
	seed     uint64 // random: which shard a stream is in cannot be aimed at
	epochs   atomic.Uint64
	orders   [256]sync.Mutex // see order
}

// historyShards splits the streams: fewer than the registry's shards, so
// that each shard's part of MaxHistoryBytes stays large.
const historyShards = 16

type historyShard struct {
	mu      sync.Mutex
	streams map[topic]*stream
	fifo    []entryRef // every entry kept, in the order appended: the byte cap drops the oldest
	live    int        // entries kept
	bytes   int64
	capped  bool // the byte cap deleted a stream: a stream not found may have been one
	_       [64]byte
}

// stream is one stream's kept entries, oldest first.
type stream struct {
	name    topic
	epoch   string
	last    uint64 // offset of the newest entry ever appended
	entries []entry
	acks    map[uint64]uint64 // uid: the offset it acknowledged
}

type entry struct {
	off  uint64
	at   int64 // unix nanoseconds
	data []byte
}

type entryRef struct {
	s   *stream
	off uint64
}

// streamOverhead and entryOverhead are what a stream and an entry cost
// beyond the entries' data (structs, map and FIFO slots), counted against
// the byte cap so that many small streams and entries are bounded too.
const (
	streamOverhead = 320
	entryOverhead  = 96
)

// entrySize is what an entry with data counts against the byte cap: the
// memory its copy of data takes (its capacity: the allocator's size
// class, up to a quarter more than its length) and the overhead.
func entrySize(data []byte) int { return cap(data) + entryOverhead }

func newHistory(cfg *Config) *history {
	if cfg.HistorySize < 0 && cfg.InboxSize < 0 {
		return nil
	}
	var b [14]byte
	rand.Read(b[:])
	return &history{
		size: cfg.HistorySize, ttl: int64(cfg.HistoryTTL), inbox: cfg.InboxSize, inboxTTL: int64(cfg.InboxTTL),
		maxBytes: max(cfg.MaxHistoryBytes/historyShards, 1), base: hex.EncodeToString(b[:6]),
		seed: binary.LittleEndian.Uint64(b[6:]),
	}
}

func (hs *history) shard(t topic) *historyShard {
	x := t.uid
	if t.ch != "" {
		x = uint64(fnv(t.ch))
	}
	return &hs.shards[((x^hs.seed)*0x9E3779B97F4A7C15)>>60]
}

// limits returns a stream's count and age limits; count < 0: not kept.
func (hs *history) limits(t topic) (size int, ttl int64) {
	if t.ch == "" {
		return hs.inbox, hs.inboxTTL
	}
	return hs.size, hs.ttl
}

// append adds data (not kept by the caller afterwards) to the stream and
// returns its offset and the stream's epoch; 0 and "" when such streams
// keep no history.
func (hs *history) append(name topic, data []byte) (uint64, string) {
	if hs == nil {
		return 0, ""
	}
	size, ttl := hs.limits(name)
	if size < 0 {
		return 0, ""
	}
	sh := hs.shard(name)
	now := time.Now().UnixNano()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.streams == nil {
		sh.streams = make(map[topic]*stream)
	}
	st := sh.streams[name]
	if st == nil {
		st = &stream{name: name, epoch: hs.base + "-" + strconv.FormatUint(hs.epochs.Add(1), 36)}
		sh.streams[name] = st
		sh.bytes += streamOverhead
	}
	st.last++
	st.entries = append(st.entries, entry{off: st.last, at: now, data: append([]byte(nil), data...)})
	sh.fifo = append(sh.fifo, entryRef{st, st.last})
	sh.live++
	sh.bytes += int64(entrySize(st.entries[len(st.entries)-1].data))
	sh.expire(st, size, cutoff(now, ttl))
	hs.trim(sh, st)
	return st.last, st.epoch
}

// appendThen appends and delivers under the stream's ordering lock, so
// that what deliver queues reaches connections in offset order; share runs
// after it.
func (hs *history) appendThen(t topic, data []byte, _ bool, deliver, share func(data []byte, off uint64, epoch string)) {
	mu := hs.order(t)
	if mu != nil {
		mu.Lock()
	}
	off, epoch := hs.append(t, data)
	deliver(data, off, epoch)
	if mu != nil {
		mu.Unlock()
	}
	share(data, off, epoch)
}

// cutoff is the oldest time an entry with ttl may have; ttl <= 0: any.
func cutoff(now, ttl int64) int64 {
	if ttl <= 0 {
		return math.MinInt64
	}
	return now - ttl
}

// expire drops st's entries beyond size and older than cutoff.
func (sh *historyShard) expire(st *stream, size int, cutoff int64) {
	n := 0
	for n < len(st.entries) && (len(st.entries)-n > size || st.entries[n].at < cutoff) {
		sh.bytes -= int64(entrySize(st.entries[n].data))
		n++
	}
	if n > 0 {
		clear(st.entries[:n])
		st.entries = st.entries[n:]
		sh.live -= n
	}
}

// trim keeps the shard under its byte cap by dropping the oldest entries
// and the streams they leave empty (but appending, the stream being
// appended to), and compacts the FIFO once most of it refers to entries
// gone already.
func (hs *history) trim(sh *historyShard, appending *stream) {
	for len(sh.fifo) > 0 && sh.bytes > hs.maxBytes {
		ref := sh.fifo[0]
		sh.fifo[0] = entryRef{}
		sh.fifo = sh.fifo[1:]
		st := ref.s
		if len(st.entries) > 0 && st.entries[0].off == ref.off {
			sh.bytes -= int64(entrySize(st.entries[0].data))
			st.entries[0] = entry{}
			st.entries = st.entries[1:]
			sh.live--
		}
		if len(st.entries) == 0 && st != appending && sh.streams[st.name] == st {
			delete(sh.streams, st.name)
			sh.bytes -= streamOverhead
			sh.capped = true
		}
	}
	if len(sh.fifo) > 64 && len(sh.fifo) > 2*sh.live {
		sh.compact(appending)
	}
}

// compact rebuilds the FIFO from the entries still kept, and deletes the
// streams that have none.
func (sh *historyShard) compact(appending *stream) {
	fifo := make([]entryRef, 0, sh.live)
	for _, ref := range sh.fifo {
		if st := ref.s; len(st.entries) > 0 && st.entries[0].off <= ref.off {
			fifo = append(fifo, ref)
		}
	}
	sh.fifo = fifo
	for name, st := range sh.streams {
		if len(st.entries) == 0 && st != appending {
			delete(sh.streams, name)
			sh.bytes -= streamOverhead
		}
	}
}

// read returns the stream's entries with offsets above after, oldest
// first, at most limit (the newest ones when there are more), its epoch,
// whether nothing above after is missing (evicted), and the offset of its
// newest entry.
func (hs *history) read(name topic, after uint64, limit int) (entries []entry, epoch string, complete bool, last uint64) {
	if hs == nil {
		return nil, "", after == 0, 0
	}
	size, ttl := hs.limits(name)
	if size < 0 {
		return nil, "", after == 0, 0
	}
	sh := hs.shard(name)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	st := sh.streams[name]
	if st == nil {
		// Never appended to, aged out, or deleted by the byte cap: only
		// the last means that something within retention is missing, and
		// once the cap deleted streams here it cannot be told apart.
		return nil, "", after == 0 && !sh.capped, 0
	}
	sh.expire(st, size, cutoff(time.Now().UnixNano(), ttl))
	i := len(st.entries)
	for i > 0 && st.entries[i-1].off > after {
		i--
	}
	kept := st.entries[i:]
	complete = after >= st.last || (len(kept) > 0 && kept[0].off == after+1)
	if limit > 0 && len(kept) > limit {
		kept = kept[len(kept)-limit:]
		complete = false
	}
	return append([]entry(nil), kept...), st.epoch, complete, st.last
}

// reset drops stream t: its next append starts a new epoch.
func (hs *history) reset(t topic) {
	if hs == nil {
		return
	}
	sh := hs.shard(t)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if st := sh.streams[t]; st != nil {
		for _, e := range st.entries {
			sh.bytes -= int64(entrySize(e.data))
		}
		sh.live -= len(st.entries)
		st.entries = nil // the FIFO's refs to it are dead now
		delete(sh.streams, t)
		sh.bytes -= streamOverhead
	}
}

// keepsInboxes reports whether users' inboxes keep direct messages.
func (hs *history) keepsInboxes() bool { return hs != nil && hs.inbox >= 0 }

// ackStream records that uid has received stream t up to off, if epoch is
// the stream's ("": whatever it is) and off is within it.
func (hs *history) ackStream(t topic, uid uint64, epoch string, off uint64) {
	if hs == nil {
		return
	}
	sh := hs.shard(t)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	st := sh.streams[t]
	if st == nil || (epoch != "" && epoch != st.epoch) || off > st.last || off <= st.acks[uid] {
		return
	}
	if st.acks == nil {
		st.acks = make(map[uint64]uint64)
	}
	st.acks[uid] = off
}

// acked returns the offset uid acknowledged in stream t and the stream's
// epoch (0 and "" when there is no such stream).
func (hs *history) acked(t topic, uid uint64) (uint64, string) {
	if hs == nil {
		return 0, ""
	}
	sh := hs.shard(t)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if st := sh.streams[t]; st != nil {
		return st.acks[uid], st.epoch
	}
	return 0, ""
}

// History returns the most recent messages of a channel with offsets
// above after, oldest first, at most limit of them (0: all kept), each
// with its Offset and Epoch: to render a channel on page load (after 0),
// or to fill a gap. complete is false when messages above after are no
// longer kept (HistorySize, HistoryTTL, MaxHistoryBytes; or another
// epoch began) or limit cut them: load those from your own store. An
// after from another epoch than the messages' means nothing. It returns
// ErrInvalidChannel for a bad channel id.
func (h *Hub) History(channelId string, after uint64, limit int) (msgs []Message, complete bool, err error) {
	if !h.validChannel(channelId) {
		return nil, false, newError(ErrInvalidChannel, 0, channelId, nil)
	}
	msgs, complete = h.readStream(topic{ch: channelId}, after, limit)
	return msgs, complete, nil
}

// InboxHistory is History for uid's inbox: the direct messages it sent
// and received, each at its place in uid's inbox.
func (h *Hub) InboxHistory(uid uint64, after uint64, limit int) (msgs []Message, complete bool) {
	return h.readStream(topic{uid: uid}, after, limit)
}

// readStream decodes a stream's entries into Messages.
func (h *Hub) readStream(t topic, after uint64, limit int) ([]Message, bool) {
	entries, epoch, complete, _ := h.streams.read(t, after, limit)
	msgs := make([]Message, 0, len(entries))
	var buf []byte
	for _, e := range entries {
		var m Message
		buf = append(append(buf[:0], e.data...), '}') // e.data is the stream's: never append to it
		if json.Unmarshal(buf, &m) != nil {
			continue // cannot happen: the hub wrote it
		}
		m.Offset, m.Epoch = e.off, epoch
		msgs = append(msgs, m)
	}
	return msgs, complete
}

package redisbroker

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/wuyan94zl/chart"
)

// Streams: the cluster's channel and inbox streams (chart.Streams) live in
// Redis, three keys per stream, each updated only by the Lua scripts below
// so that every call is atomic:
//
//	PREFIX sm:STREAM  hash: epoch (random, made with the stream), last (newest offset)
//	PREFIX se:STREAM  list of the kept entries, oldest first, each "OFFSET:UNIXMS:DATA"
//	PREFIX sa:STREAM  hash: uid -> acknowledged offset
//	PREFIX sb:TOKEN   an append batch's result, for 2 x Options.Timeout
//	PREFIX streams:bytes  hash: STREAM -> bytes its entries hold, + 1024 for its keys
//	PREFIX streams:age    sorted set: STREAM by its last append (Unix ms)
//	PREFIX streams:total  the bytes all streams' entries hold
//
// The hub appends in batches (chart.BatchStreams): one script call, one
// round trip, appends a batch's entries to their streams. go-redis sends a
// command again when its connection failed after it was written; the
// batch's random token then finds the first run's result, so that a batch
// is never appended twice.
//
// STREAM is the hub's stream name ("c:" + channel id or "u:" + uid). The
// kinds come first (sm:, se:, sa:), so that no stream's keys collide with
// another's, whatever its channel id, nor with the presence keys.
//
// An append keeps at most Options.StreamSize entries per stream and drops
// those older than Options.StreamTTL, and sets that TTL on all three keys:
// a stream nobody appended to for StreamTTL vanishes, and the next append
// creates it again under a new epoch (so do a FLUSHDB, a restart without
// persistence, or an eviction of its sm: key), which tells clients their
// positions there mean nothing (recovered: false). One size and TTL serve
// channels and inboxes alike (the hub's own defaults, without a Broker
// that keeps streams, are 100 entries / 10 min per channel and 1000 / 24 h
// per inbox).

// Stream defaults: Options.StreamSize, Options.StreamTTL and
// Options.MaxBytes.
const (
	DefaultStreamSize = 1000
	DefaultStreamTTL  = 24 * time.Hour
	DefaultMaxBytes   = 256 << 20
)

var _ chart.BatchStreams = (*Broker)(nil)

// streamHead parses an entry's "OFFSET:UNIXMS:" head. Shared by the scripts.
const streamHead = `
local function head(s)
  local i = string.find(s, ':', 1, true)
  local j = string.find(s, ':', i + 1, true)
  return tonumber(string.sub(s, 1, i - 1)), tonumber(string.sub(s, i + 1, j - 1))
end
local function nowms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
`

var (
	// append: KEYS token, sizes, by-age, total, then sm, se, sa of each
	// entry; ARGV size, ttl ms, new epoch, token ttl ms, max bytes (0:
	// none), key prefix, then each entry's stream name and data. Returns
	// {offset, epoch} of each entry, flat. The result is kept under the
	// batch's token for a while, so that a batch the client retries (the
	// reply was lost with the connection) is not appended twice.
	//
	// The byte cap: sizes (hash: stream -> bytes of its kept entries, plus
	// 1024 for the stream's keys) and total count what the streams hold; by-age (sorted set: stream -> last
	// append, ms) finds the streams appended to longest ago. Streams whose
	// keys expired (no append for ttl) leave sizes and by-age a few per
	// batch; while total is over max bytes, the stream appended to longest
	// ago is deleted whole (its next append starts a new epoch).
	appendScript = redis.NewScript(streamHead + `
local kept = redis.call('GET', KEYS[1])
if kept and kept ~= '' then return cjson.decode(kept) end
-- Redis checks maxmemory at a script's first write only, and only for a
-- command that may grow memory (a DEL or HDEL first would let every
-- later write through): this SET comes first.
redis.call('SET', KEYS[1], '', 'PX', ARGV[4])
local sizes, byage, total = KEYS[2], KEYS[3], KEYS[4]
local size, ttl, maxb, prefix = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[5]), ARGV[6]
local now = nowms()
local cut = now - ttl
local delta = 0
local function forget(name)
  delta = delta - tonumber(redis.call('HGET', sizes, name) or '0')
  redis.call('HDEL', sizes, name)
  redis.call('ZREM', byage, name)
end
for _, name in ipairs(redis.call('ZRANGEBYSCORE', byage, '-inf', cut, 'LIMIT', 0, 8)) do
  forget(name)
end
local out, touched = {}, {}
for i = 0, (#KEYS - 4) / 3 - 1 do
  local m, e, a = KEYS[5 + 3 * i], KEYS[6 + 3 * i], KEYS[7 + 3 * i]
  local name = ARGV[7 + 2 * i]
  local epoch = redis.call('HGET', m, 'epoch')
  local grew = 0
  if not epoch then
    epoch = ARGV[3]
    redis.call('DEL', m, e, a)
    forget(name)
    redis.call('HSET', m, 'epoch', epoch)
    grew = 1024
  end
  local off = redis.call('HINCRBY', m, 'last', 1)
  local entry = string.format('%d:%d:', off, now) .. ARGV[8 + 2 * i]
  grew = grew + #entry
  local n = redis.call('RPUSH', e, entry)
  while n > size do
    grew = grew - #redis.call('LPOP', e)
    n = n - 1
  end
  while true do
    local h = redis.call('LINDEX', e, 0)
    if not h then break end
    local _, at = head(h)
    if at >= cut then break end
    grew = grew - #redis.call('LPOP', e)
  end
  redis.call('HINCRBY', sizes, name, grew)
  delta = delta + grew
  touched[name] = {m, e, a}
  out[#out + 1] = off
  out[#out + 1] = epoch
end
for name, k in pairs(touched) do
  redis.call('PEXPIRE', k[1], ttl)
  redis.call('PEXPIRE', k[2], ttl)
  redis.call('PEXPIRE', k[3], ttl)
  redis.call('ZADD', byage, now, name)
end
local t = redis.call('INCRBY', total, delta)
if t < 0 then
  redis.call('SET', total, 0)
  t = 0
end
while maxb > 0 and t > maxb do
  local oldest = redis.call('ZRANGE', byage, 0, 0)
  if #oldest == 0 or touched[oldest[1]] then break end
  local name = oldest[1]
  local b = tonumber(redis.call('HGET', sizes, name) or '0')
  redis.call('HDEL', sizes, name)
  redis.call('ZREM', byage, name)
  redis.call('DEL', prefix .. 'sm:' .. name, prefix .. 'se:' .. name, prefix .. 'sa:' .. name)
  t = redis.call('DECRBY', total, b)
end
redis.call('SET', KEYS[1], cjson.encode(out), 'PX', ARGV[4])
return out`)

	// read: KEYS sm, se; ARGV after, limit (0: all), ttl ms.
	// Returns {} for no stream, else {epoch, complete (0/1), last, entries...}.
	readScript = redis.NewScript(streamHead + `
local m, e = KEYS[1], KEYS[2]
local after, limit, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local meta = redis.call('HMGET', m, 'epoch', 'last')
if not meta[1] then return {} end
local last = tonumber(meta[2] or '0')
local out = {meta[1], 0, string.format('%d', last)}
if after >= last then
  out[2] = 1
  return out
end
local n = redis.call('LLEN', e)
if n == 0 then return out end
local first = head(redis.call('LINDEX', e, 0))
local start = 0
if after + 1 > first then start = after + 1 - first end
local cutByLimit = false
if limit > 0 and n - start > limit then
  start = n - limit
  cutByLimit = true
end
local list = redis.call('LRANGE', e, start, -1)
local cut = nowms() - ttl
local i = 1
while i <= #list do
  local _, at = head(list[i])
  if at >= cut then break end
  i = i + 1
end
if i <= #list then
  local o = head(list[i])
  if o == after + 1 and not cutByLimit then out[2] = 1 end
end
for k = i, #list do out[#out + 1] = list[k] end
return out`)

	// ack: KEYS sm, sa per acknowledgement; ARGV epoch ('' : any), uid,
	// offset per acknowledgement. Only forward, only within the stream's
	// epoch and offsets. Returns how many moved.
	ackScript = redis.NewScript(`
local n = 0
for i = 1, #KEYS / 2 do
  local m, a = KEYS[2*i-1], KEYS[2*i]
  local epoch, uid, off = ARGV[3*i-2], ARGV[3*i-1], tonumber(ARGV[3*i])
  local meta = redis.call('HMGET', m, 'epoch', 'last')
  if meta[1] and (epoch == '' or epoch == meta[1]) and off <= tonumber(meta[2] or '0')
     and off > tonumber(redis.call('HGET', a, uid) or '0') then
    redis.call('HSET', a, uid, ARGV[3*i])
    local ttl = redis.call('PTTL', m)
    if ttl > 0 then redis.call('PEXPIRE', a, ttl) end
    n = n + 1
  end
end
return n`)

	// acked: KEYS sm, sa; ARGV uid. Returns {} for no stream, else {epoch, offset}.
	ackedScript = redis.NewScript(`
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then return {} end
return {epoch, redis.call('HGET', KEYS[2], ARGV[1]) or '0'}`)
)

// streamKeys returns a stream's keys: meta, entries, acks.
func (b *Broker) streamKeys(stream string) ([]string, error) {
	if len(stream) < 3 || (!strings.HasPrefix(stream, "c:") && !strings.HasPrefix(stream, "u:")) {
		return nil, errors.New("redisbroker: bad stream name " + strconv.Quote(stream))
	}
	p := b.opt.Prefix
	return []string{p + "sm:" + stream, p + "se:" + stream, p + "sa:" + stream}, nil
}

// runKeys runs a script on keys, with the broker's fail-fast and timeout.
func (b *Broker) runKeys(s *redis.Script, keys []string, args ...any) (any, error) {
	if err := b.allow(); err != nil {
		return nil, err
	}
	ctx, cancel := b.ctx()
	defer cancel()
	v, err := s.Run(ctx, b.rdb, keys, args...).Result()
	return v, b.done(err)
}

func newEpoch() string {
	var x [8]byte
	rand.Read(x[:])
	return hex.EncodeToString(x[:])
}

func badReply(what string, v any) error {
	return fmt.Errorf("redisbroker: unexpected %s reply %v", what, v)
}

// Append adds data to stream and returns its offset and epoch.
func (b *Broker) Append(stream string, data []byte) (uint64, string, error) {
	batch := []chart.StreamAppend{{Stream: stream, Data: data}}
	b.AppendBatch(batch)
	return batch[0].Offset, batch[0].Epoch, batch[0].Err
}

// AppendBatch appends every entry in one script call, one round trip:
// atomic, entries of one stream at consecutive offsets in the order given.
// An entry with a bad stream name fails alone.
func (b *Broker) AppendBatch(batch []chart.StreamAppend) {
	keys, args, idx := b.appendCall(newEpoch(), batch)
	if len(idx) == 0 {
		return
	}
	v, err := b.runKeys(appendScript, keys, args...)
	res, ok := v.([]any)
	if err == nil && (!ok || len(res) != 2*len(idx)) {
		err = badReply("append", v)
	}
	for k, i := range idx {
		a := &batch[i]
		if err != nil {
			a.Err = err
			continue
		}
		off, ok1 := res[2*k].(int64)
		epoch, ok2 := res[2*k+1].(string)
		if !ok1 || !ok2 || off <= 0 {
			a.Err = badReply("append", v)
			continue
		}
		a.Offset, a.Epoch = uint64(off), epoch
	}
}

// appendCall returns the append script's keys and arguments for batch,
// under the batch's token, and the indexes of the entries it appends
// (those with a good stream name); it sets the others' Err.
func (b *Broker) appendCall(token string, batch []chart.StreamAppend) (keys []string, args []any, idx []int) {
	p := b.opt.Prefix
	keys = []string{p + "sb:" + token, p + "streams:bytes", p + "streams:age", p + "streams:total"}
	args = []any{b.opt.StreamSize, b.opt.StreamTTL.Milliseconds(), token, (2 * b.opt.Timeout).Milliseconds(), max(b.opt.MaxBytes, 0), p}
	idx = make([]int, 0, len(batch))
	for i := range batch {
		a := &batch[i]
		a.Offset, a.Epoch, a.Err = 0, "", nil
		k, err := b.streamKeys(a.Stream)
		if err != nil {
			a.Err = err
			continue
		}
		keys = append(keys, k...)
		args = append(args, a.Stream, a.Data)
		idx = append(idx, i)
	}
	return keys, args, idx
}

// Read returns stream's entries with offsets above after, oldest first, at
// most limit of them (0: all kept; the newest when cut), the stream's
// epoch, whether none above after is missing, and the newest offset.
func (b *Broker) Read(stream string, after uint64, limit int) ([]chart.StreamEntry, string, bool, uint64, error) {
	keys, err := b.streamKeys(stream)
	if err != nil {
		return nil, "", false, 0, err
	}
	v, err := b.runKeys(readScript, keys[:2], strconv.FormatUint(after, 10), max(limit, 0), b.opt.StreamTTL.Milliseconds())
	if err != nil {
		return nil, "", false, 0, err
	}
	res, ok := v.([]any)
	if !ok {
		return nil, "", false, 0, badReply("read", v)
	}
	if len(res) == 0 {
		return nil, "", after == 0, 0, nil
	}
	if len(res) < 3 {
		return nil, "", false, 0, badReply("read", v)
	}
	epoch, ok1 := res[0].(string)
	complete, ok2 := res[1].(int64)
	lastS, ok3 := res[2].(string)
	last, err := strconv.ParseUint(lastS, 10, 64)
	if !ok1 || !ok2 || !ok3 || err != nil {
		return nil, "", false, 0, badReply("read", v)
	}
	entries := make([]chart.StreamEntry, 0, len(res)-3)
	for _, x := range res[3:] {
		s, ok := x.(string)
		if !ok {
			return nil, "", false, 0, badReply("read", v)
		}
		offS, rest, ok1 := strings.Cut(s, ":")
		msS, data, ok2 := strings.Cut(rest, ":")
		off, err1 := strconv.ParseUint(offS, 10, 64)
		ms, err2 := strconv.ParseInt(msS, 10, 64)
		if !ok1 || !ok2 || err1 != nil || err2 != nil {
			return nil, "", false, 0, badReply("read", v)
		}
		entries = append(entries, chart.StreamEntry{Offset: off, Data: []byte(data), Time: time.UnixMilli(ms)})
	}
	return entries, epoch, complete == 1, last, nil
}

// Ack records that uid has received stream up to offset, when epoch is the
// stream's ("": whatever it is), offset is within the stream and above
// what uid acknowledged before; otherwise it does nothing.
func (b *Broker) Ack(stream string, uid uint64, epoch string, offset uint64) error {
	keys, err := b.streamKeys(stream)
	if err != nil {
		return err
	}
	_, err = b.runKeys(ackScript, []string{keys[0], keys[2]}, epoch, uidArg(uid), strconv.FormatUint(offset, 10))
	return err
}

// AckBatch records every acknowledgement in one script call, one round
// trip. An acknowledgement with a bad stream name fails alone: its error
// is returned after the others are recorded.
func (b *Broker) AckBatch(acks []chart.StreamAck) error {
	keys := make([]string, 0, 2*len(acks))
	args := make([]any, 0, 3*len(acks))
	var bad error
	for _, a := range acks {
		k, err := b.streamKeys(a.Stream)
		if err != nil {
			bad = err
			continue
		}
		keys = append(keys, k[0], k[2])
		args = append(args, a.Epoch, uidArg(a.Uid), strconv.FormatUint(a.Offset, 10))
	}
	if len(keys) > 0 {
		if _, err := b.runKeys(ackScript, keys, args...); err != nil {
			return err
		}
	}
	return bad
}

// Acked returns the offset uid acknowledged in stream and the stream's
// epoch; 0 and "" when there is no such stream.
func (b *Broker) Acked(stream string, uid uint64) (uint64, string, error) {
	keys, err := b.streamKeys(stream)
	if err != nil {
		return 0, "", err
	}
	v, err := b.runKeys(ackedScript, []string{keys[0], keys[2]}, uidArg(uid))
	if err != nil {
		return 0, "", err
	}
	res, ok := v.([]any)
	if !ok {
		return 0, "", badReply("acked", v)
	}
	if len(res) == 0 {
		return 0, "", nil
	}
	if len(res) != 2 {
		return 0, "", badReply("acked", v)
	}
	epoch, ok1 := res[0].(string)
	offS, ok2 := res[1].(string)
	off, err := strconv.ParseUint(offS, 10, 64)
	if !ok1 || !ok2 || err != nil {
		return 0, "", badReply("acked", v)
	}
	return off, epoch, nil
}

// Reset drops the stream's keys: its next Append starts a new epoch.
func (b *Broker) Reset(stream string) error {
	keys, err := b.streamKeys(stream)
	if err != nil {
		return err
	}
	if err := b.allow(); err != nil {
		return err
	}
	ctx, cancel := b.ctx()
	defer cancel()
	return b.done(b.rdb.Del(ctx, keys...).Err())
}

// idTTL is how long a client's message id is remembered (chart.Streams).
const idTTL = 2 * time.Minute

func (b *Broker) idKey(uid uint64, id string) string {
	return b.opt.Prefix + "id:" + strconv.FormatUint(uid, 10) + ":" + id
}

// Claim records uid's message id for the cluster: SET NX with a TTL.
func (b *Broker) Claim(uid uint64, id string) (fresh, done bool, offset uint64, epoch string, err error) {
	if err := b.allow(); err != nil {
		return false, false, 0, "", err
	}
	ctx, cancel := b.ctx()
	defer cancel()
	key := b.idKey(uid, id)
	ok, err := b.rdb.SetNX(ctx, key, "p", idTTL).Result()
	if b.done(err) != nil || ok {
		return ok, false, 0, "", err
	}
	v, err := b.rdb.Get(ctx, key).Result()
	if errors.Is(err, redis.Nil) {
		return true, false, 0, "", nil // expired between the two calls
	}
	if b.done(err) != nil {
		return false, false, 0, "", err
	}
	// "p" while being sent, "d:OFFSET:EPOCH" once settled.
	parts := strings.SplitN(v, ":", 3)
	if len(parts) != 3 || parts[0] != "d" {
		return false, false, 0, "", nil
	}
	off, _ := strconv.ParseUint(parts[1], 10, 64)
	return false, true, off, parts[2], nil
}

// Settle records how a claimed send ended, or forgets a refused one.
func (b *Broker) Settle(uid uint64, id string, ok bool, offset uint64, epoch string) error {
	if err := b.allow(); err != nil {
		return err
	}
	ctx, cancel := b.ctx()
	defer cancel()
	key := b.idKey(uid, id)
	if !ok {
		return b.done(b.rdb.Del(ctx, key).Err())
	}
	v := "d:" + strconv.FormatUint(offset, 10) + ":" + epoch
	return b.done(b.rdb.SetXX(ctx, key, v, idTTL).Err())
}

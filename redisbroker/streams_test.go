package redisbroker

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/wuyan94zl/chart"
)

// streamBroker dials srv with a fresh prefix; no Attach: Streams need none.
func streamBroker(t *testing.T, srv *redisServer, opt Options) *Broker {
	t.Helper()
	if opt.Prefix == "" {
		opt.Prefix = "st" + strings.ReplaceAll(t.Name(), "/", ".") + ":"
	}
	b, err := Dial(srv.url(), opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func mustAppend(t *testing.T, b *Broker, stream, data string) (uint64, string) {
	t.Helper()
	off, epoch, err := b.Append(stream, []byte(data))
	if err != nil {
		t.Fatalf("Append(%q): %v", stream, err)
	}
	return off, epoch
}

type readResult struct {
	entries  []chart.StreamEntry
	epoch    string
	complete bool
	last     uint64
}

func mustRead(t *testing.T, b *Broker, stream string, after uint64, limit int) readResult {
	t.Helper()
	es, epoch, complete, last, err := b.Read(stream, after, limit)
	if err != nil {
		t.Fatalf("Read(%q, %d, %d): %v", stream, after, limit, err)
	}
	return readResult{es, epoch, complete, last}
}

// wantEntries checks the entries' offsets and that each data is "mOFFSET".
func wantEntries(t *testing.T, r readResult, offs ...uint64) {
	t.Helper()
	if len(r.entries) != len(offs) {
		t.Fatalf("read %d entries %v, want offsets %v", len(r.entries), r.entries, offs)
	}
	for i, e := range r.entries {
		if e.Offset != offs[i] || string(e.Data) != fmt.Sprintf("m%d", offs[i]) {
			t.Fatalf("entry %d: %d %q, want %d %q", i, e.Offset, e.Data, offs[i], fmt.Sprintf("m%d", offs[i]))
		}
	}
}

func TestStreamOffsets(t *testing.T) {
	srv := startRedis(t)
	b := streamBroker(t, srv, Options{})
	other := streamBroker(t, srv, Options{Prefix: b.opt.Prefix}) // another node, same cluster

	r := mustRead(t, b, "c:room", 0, 0)
	if len(r.entries) != 0 || r.epoch != "" || !r.complete || r.last != 0 {
		t.Fatalf("read of a missing stream: %+v", r)
	}
	if r := mustRead(t, b, "c:room", 3, 0); r.complete {
		t.Fatalf("read above 3 of a missing stream is complete: %+v", r)
	}

	var epoch string
	for i := uint64(1); i <= 5; i++ {
		n := b
		if i%2 == 0 {
			n = other
		}
		off, e := mustAppend(t, n, "c:room", fmt.Sprintf("m%d", i))
		if off != i {
			t.Fatalf("append %d: offset %d", i, off)
		}
		if i == 1 {
			epoch = e
		} else if e != epoch {
			t.Fatalf("append %d: epoch %q, want %q", i, e, epoch)
		}
	}
	if epoch == "" {
		t.Fatal("empty epoch")
	}
	r = mustRead(t, other, "c:room", 0, 0)
	wantEntries(t, r, 1, 2, 3, 4, 5)
	if r.epoch != epoch || !r.complete || r.last != 5 {
		t.Fatalf("read: %+v", r)
	}
	r = mustRead(t, b, "c:room", 3, 0)
	wantEntries(t, r, 4, 5)
	if !r.complete || r.last != 5 {
		t.Fatalf("read above 3: %+v", r)
	}
	r = mustRead(t, b, "c:room", 5, 0)
	wantEntries(t, r)
	if !r.complete || r.last != 5 || r.epoch != epoch {
		t.Fatalf("read above the last: %+v", r)
	}
	// limit: the newest, and not complete when it cut.
	r = mustRead(t, b, "c:room", 0, 2)
	wantEntries(t, r, 4, 5)
	if r.complete {
		t.Fatalf("read cut by limit is complete: %+v", r)
	}
	r = mustRead(t, b, "c:room", 3, 2)
	wantEntries(t, r, 4, 5)
	if !r.complete {
		t.Fatalf("read within limit not complete: %+v", r)
	}

	// Streams are apart: other names, inboxes, odd channel ids, binary data.
	odd := []string{"c:room:x", "c:sm:c:room", "c:é 房间 *>", "u:7", "c:" + strings.Repeat("x", 300)}
	for _, s := range odd {
		if off, e := mustAppend(t, b, s, "m1"); off != 1 || e == epoch {
			t.Fatalf("append to %q: %d %q", s, off, e)
		}
	}
	bin := "a:b\x00\xff:c"
	if off, _ := mustAppend(t, b, "u:7", bin); off != 2 {
		t.Fatalf("second append to u:7: %d", off)
	}
	if r := mustRead(t, b, "u:7", 1, 0); len(r.entries) != 1 || string(r.entries[0].Data) != bin {
		t.Fatalf("binary data: %+v", r)
	}
	wantEntries(t, mustRead(t, b, "c:room", 4, 0), 5)
	for _, s := range []string{"", "x", "c:", "room", "s:x"} {
		if _, _, err := b.Append(s, nil); err == nil {
			t.Fatalf("Append(%q) succeeded", s)
		}
	}
	// Data is copied, not kept.
	buf := []byte("m6")
	mustAppendBytes(t, b, "c:room", buf)
	copy(buf, "xx")
	wantEntries(t, mustRead(t, b, "c:room", 5, 0), 6)
}

func mustAppendBytes(t *testing.T, b *Broker, stream string, data []byte) {
	t.Helper()
	if _, _, err := b.Append(stream, data); err != nil {
		t.Fatal(err)
	}
}

// TestStreamEpoch: a stream whose keys vanished starts again at offset 1
// under a new epoch; acks of the old epoch are gone and are refused.
func TestStreamEpoch(t *testing.T) {
	srv := startRedis(t)
	b := streamBroker(t, srv, Options{})
	rdb := redis.NewClient(&redis.Options{Addr: strings.TrimPrefix(srv.url(), "redis://")})
	defer rdb.Close()
	ctx := context.Background()

	mustAppend(t, b, "c:a", "m1")
	_, e1 := mustAppend(t, b, "c:a", "m2")
	if err := b.Ack("c:a", 5, e1, 2); err != nil {
		t.Fatal(err)
	}
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if off, e, err := b.Acked("c:a", 5); err != nil || off != 0 || e != "" {
		t.Fatalf("Acked after FLUSHDB: %d %q %v", off, e, err)
	}
	off, e2 := mustAppend(t, b, "c:a", "m1")
	if off != 1 || e2 == e1 || e2 == "" {
		t.Fatalf("append after FLUSHDB: %d %q (old epoch %q)", off, e2, e1)
	}
	if r := mustRead(t, b, "c:a", 0, 0); r.epoch != e2 || r.last != 1 || !r.complete {
		t.Fatalf("read after FLUSHDB: %+v", r)
	}
	if err := b.Ack("c:a", 5, e1, 1); err != nil {
		t.Fatal(err)
	}
	if off, e, _ := b.Acked("c:a", 5); off != 0 || e != e2 {
		t.Fatalf("ack of the old epoch recorded: %d %q", off, e)
	}

	// Only the meta key vanishes (an eviction): the stream starts again
	// clean, its old entries and acks dropped.
	mustAppend(t, b, "c:a", "m2")
	if err := b.Ack("c:a", 5, e2, 2); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Del(ctx, b.opt.Prefix+"sm:c:a").Err(); err != nil {
		t.Fatal(err)
	}
	off, e3 := mustAppend(t, b, "c:a", "m1")
	if off != 1 || e3 == e2 {
		t.Fatalf("append after DEL: %d %q", off, e3)
	}
	r := mustRead(t, b, "c:a", 0, 0)
	wantEntries(t, r, 1)
	if a, _, _ := b.Acked("c:a", 5); a != 0 {
		t.Fatalf("ack survived the stream: %d", a)
	}

	// Every key has the stream TTL.
	for _, k := range []string{"sm:", "se:", "sa:"} {
		if k == "sa:" {
			if err := b.Ack("c:a", 5, "", 1); err != nil {
				t.Fatal(err)
			}
		}
		ttl, err := rdb.PTTL(ctx, b.opt.Prefix+k+"c:a").Result()
		if err != nil || ttl <= 23*time.Hour || ttl > DefaultStreamTTL {
			t.Fatalf("TTL of %s: %v %v", k, ttl, err)
		}
	}
}

// TestStreamTrim: a stream keeps StreamSize entries and none older than
// StreamTTL; a read above an offset no longer kept is not complete; the
// keys expire StreamTTL after the last append and the stream comes back
// under a new epoch.
func TestStreamTrim(t *testing.T) {
	srv := startRedis(t)
	b := streamBroker(t, srv, Options{StreamSize: 3})
	for i := 1; i <= 5; i++ {
		mustAppend(t, b, "u:1", fmt.Sprintf("m%d", i))
	}
	r := mustRead(t, b, "u:1", 0, 0)
	wantEntries(t, r, 3, 4, 5)
	if r.complete || r.last != 5 {
		t.Fatalf("read above 0 after trimming: %+v", r)
	}
	if r := mustRead(t, b, "u:1", 1, 0); r.complete {
		t.Fatalf("read above 1 (2 trimmed) is complete: %+v", r)
	}
	r = mustRead(t, b, "u:1", 2, 0)
	wantEntries(t, r, 3, 4, 5)
	if !r.complete {
		t.Fatalf("read above 2 not complete: %+v", r)
	}
	r = mustRead(t, b, "u:1", 1, 2)
	wantEntries(t, r, 4, 5)
	if r.complete {
		t.Fatalf("read with limit: %+v", r)
	}

	// Age: entries older than StreamTTL are not read, nor kept.
	ttl := 800 * time.Millisecond
	a := streamBroker(t, srv, Options{Prefix: b.opt.Prefix + "age:", StreamTTL: ttl})
	mustAppend(t, a, "c:x", "m1")
	time.Sleep(ttl / 2)
	_, epoch := mustAppend(t, a, "c:x", "m2")
	time.Sleep(ttl/2 + 100*time.Millisecond) // m1 is now older than ttl, m2 not
	r = mustRead(t, a, "c:x", 0, 0)
	wantEntries(t, r, 2)
	if r.complete || r.epoch != epoch || r.last != 2 {
		t.Fatalf("read after m1 aged: %+v", r)
	}
	if r := mustRead(t, a, "c:x", 1, 0); !r.complete {
		t.Fatalf("read above 1 after m1 aged: %+v", r)
	}
	mustAppend(t, a, "c:x", "m3")
	rdb := redis.NewClient(&redis.Options{Addr: strings.TrimPrefix(srv.url(), "redis://")})
	defer rdb.Close()
	if n, err := rdb.LLen(context.Background(), a.opt.Prefix+"se:c:x").Result(); err != nil || n != 2 {
		t.Fatalf("entries kept after m1 aged: %d %v", n, err)
	}
	time.Sleep(ttl + 100*time.Millisecond) // the keys expire
	if r := mustRead(t, a, "c:x", 3, 0); r.epoch != "" || r.last != 0 || r.complete {
		t.Fatalf("read after expiry: %+v", r)
	}
	if off, e := mustAppend(t, a, "c:x", "m1"); off != 1 || e == epoch {
		t.Fatalf("append after expiry: %d %q", off, e)
	}
}

// TestStreamAcks: acks go only forward, within the stream's offsets and
// epoch ("" : any); they are per uid and per stream.
func TestStreamAcks(t *testing.T) {
	srv := startRedis(t)
	b := streamBroker(t, srv, Options{})
	if err := b.Ack("c:a", 1, "", 1); err != nil {
		t.Fatal(err)
	}
	if off, e, err := b.Acked("c:a", 1); err != nil || off != 0 || e != "" {
		t.Fatalf("Acked of a missing stream: %d %q %v", off, e, err)
	}
	var epoch string
	for i := 1; i <= 5; i++ {
		_, epoch = mustAppend(t, b, "c:a", fmt.Sprintf("m%d", i))
	}
	mustAppend(t, b, "c:b", "m1")
	want := func(uid, off uint64) {
		t.Helper()
		got, e, err := b.Acked("c:a", uid)
		if err != nil || got != off || e != epoch {
			t.Fatalf("Acked(c:a, %d): %d %q %v, want %d %q", uid, got, e, err, off, epoch)
		}
	}
	want(1, 0)
	steps := []struct {
		epoch string
		off   uint64
		want  uint64
	}{
		{epoch, 3, 3},
		{epoch, 2, 3},   // backwards
		{epoch, 3, 3},   // same
		{"other", 4, 3}, // another epoch
		{epoch, 6, 3},   // beyond the last
		{"", 4, 4},      // any epoch
		{epoch, 5, 5},   // the last
		{epoch, 1 << 62, 5},
	}
	for _, s := range steps {
		if err := b.Ack("c:a", 1, s.epoch, s.off); err != nil {
			t.Fatal(err)
		}
		want(1, s.want)
	}
	want(2, 0)
	if err := b.Ack("c:a", 2, epoch, 1); err != nil {
		t.Fatal(err)
	}
	want(2, 1)
	want(1, 5)
	if off, _, _ := b.Acked("c:b", 1); off != 0 {
		t.Fatalf("ack leaked to c:b: %d", off)
	}
	if err := b.Ack("x", 1, "", 1); err == nil {
		t.Fatal("Ack on a bad stream name succeeded")
	}
}

// TestStreamsUnreachable: calls fail fast while Redis is away.
func TestStreamsUnreachable(t *testing.T) {
	srv := startRedis(t)
	b := streamBroker(t, srv, Options{Timeout: time.Second})
	mustAppend(t, b, "c:a", "m1")
	srv.stop()
	if _, _, err := b.Append("c:a", []byte("m2")); err == nil {
		t.Fatal("Append succeeded with Redis down")
	}
	start := time.Now()
	if _, _, _, _, err := b.Read("c:a", 0, 0); err != ErrUnreachable {
		t.Fatalf("Read while down: %v, want ErrUnreachable", err)
	}
	if d := time.Since(start); d > 50*time.Millisecond {
		t.Fatalf("Read while down took %v", d)
	}
	srv.start()
	time.Sleep(probeEvery + 10*time.Millisecond)
	// The restarted server is empty: a new epoch.
	if off, _, err := b.Append("c:a", []byte("m1")); err != nil || off != 1 {
		t.Fatalf("Append after restart: %d %v", off, err)
	}
}

// TestStreamReset: Reset drops a stream; its next append starts a new
// epoch at offset 1, and old acknowledgements count for nothing.
func TestStreamReset(t *testing.T) {
	srv := startRedis(t)
	b := streamBroker(t, srv, Options{})
	mustAppend(t, b, "c:r", "m1")
	_, e1 := mustAppend(t, b, "c:r", "m2")
	if err := b.Ack("c:r", 5, e1, 2); err != nil {
		t.Fatal(err)
	}
	if err := b.Reset("c:r"); err != nil {
		t.Fatal(err)
	}
	off, e2 := mustAppend(t, b, "c:r", "m3")
	if off != 1 || e2 == e1 {
		t.Fatalf("after Reset: offset %d epoch %q (before %q)", off, e2, e1)
	}
	if off, _, err := b.Acked("c:r", 5); err != nil || off != 0 {
		t.Fatalf("Acked after Reset = %d, %v", off, err)
	}
}

// TestAppendRetriedOnce: a batch sent again under the same token (go-redis
// retries a command whose connection failed after it was written) is not
// appended twice: the second run returns the first's offsets.
func TestAppendRetriedOnce(t *testing.T) {
	srv := startRedis(t)
	b := streamBroker(t, srv, Options{})
	keys, args, _ := b.appendCall("token1", []chart.StreamAppend{{Stream: "c:retry", Data: []byte("m1")}})
	first, err := b.runKeys(appendScript, keys, args...)
	if err != nil {
		t.Fatal(err)
	}
	again, err := b.runKeys(appendScript, keys, args...)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(first) != "[1 token1]" || fmt.Sprint(again) != fmt.Sprint(first) {
		t.Fatalf("first run %v, retry %v; want [1 token1] twice (the token is a new stream's epoch)", first, again)
	}
	r := mustRead(t, b, "c:retry", 0, 0)
	wantEntries(t, r, 1)
	if off, _ := mustAppend(t, b, "c:retry", "m2"); off != 2 {
		t.Fatalf("next append at offset %d, want 2", off)
	}
}

// streamBytes reads what the byte cap counts (streams:total and the sum
// of streams:bytes) and what the lists of b's streams really hold.
func streamBytes(t *testing.T, b *Broker) (total, counted, held int64, streams int) {
	t.Helper()
	ctx := context.Background()
	p := b.opt.Prefix
	total, _ = b.rdb.Get(ctx, p+"streams:total").Int64()
	sizes, err := b.rdb.HGetAll(ctx, p+"streams:bytes").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range sizes {
		var n int64
		fmt.Sscan(v, &n)
		counted += n
	}
	keys, err := b.rdb.Keys(ctx, p+"se:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		es, err := b.rdb.LRange(ctx, k, 0, -1).Result()
		if err != nil {
			t.Fatal(err)
		}
		held += 1024 // a stream's keys
		for _, e := range es {
			held += int64(len(e))
		}
	}
	return total, counted, held, len(keys)
}

// TestMaxBytes: appends to many inboxes (direct messages to random uids)
// stay within Options.MaxBytes: the streams appended to longest ago are
// deleted whole, the newest keep everything, the count matches what the
// lists hold, and Redis's memory stops growing with the cap. A deleted
// stream starts again under a new epoch.
func TestMaxBytes(t *testing.T) {
	srv := startRedis(t)
	const maxBytes = 64 << 10
	b := streamBroker(t, srv, Options{MaxBytes: maxBytes})
	ctx := context.Background()
	used := func() int64 {
		info, err := b.rdb.Info(ctx, "memory").Result()
		if err != nil {
			t.Fatal(err)
		}
		var n int64
		for _, line := range strings.Split(info, "\r\n") {
			if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
				fmt.Sscan(v, &n)
			}
		}
		return n
	}
	_, firstEpoch := mustAppend(t, b, "u:0", "m1")
	before := used()
	payload := strings.Repeat("x", 100)
	const uids = 20000
	batch := make([]chart.StreamAppend, 0, 256)
	for uid := 1; uid <= uids; uid++ {
		batch = append(batch, chart.StreamAppend{Stream: fmt.Sprintf("u:%d", uid), Data: []byte(payload)})
		if len(batch) == cap(batch) || uid == uids {
			b.AppendBatch(batch)
			for _, a := range batch {
				if a.Err != nil || a.Offset != 1 {
					t.Fatalf("%s: offset %d, %v", a.Stream, a.Offset, a.Err)
				}
			}
			batch = batch[:0]
		}
	}
	// The batches' results (sb:TOKEN, kept 2 x Timeout for retries) are
	// not streams: they expire in seconds. Count without them.
	tokens, _ := b.rdb.Keys(ctx, b.opt.Prefix+"sb:*").Result()
	b.rdb.Del(ctx, tokens...)
	grew := used() - before
	total, counted, held, streams := streamBytes(t, b)
	t.Logf("%d inboxes appended: %d kept, %d bytes counted, Redis used_memory grew %d KiB (cap %d KiB)", uids, streams, total, grew>>10, maxBytes>>10)
	if total > maxBytes || total != counted || total != held {
		t.Fatalf("total %d, sizes sum %d, lists hold %d; want equal and <= %d", total, counted, held, maxBytes)
	}
	if streams < 45 || streams > 60 { // 1 KiB + ~120 bytes a stream
		t.Fatalf("%d streams kept, want about %d", streams, maxBytes/1144)
	}
	if grew > 512<<10 { // without the cap: about 14 MiB

		t.Fatalf("Redis memory grew %d KiB for a %d KiB cap", grew>>10, maxBytes>>10)
	}
	if r := mustRead(t, b, fmt.Sprintf("u:%d", uids), 0, 0); len(r.entries) != 1 || !r.complete {
		t.Fatalf("the newest inbox: %d entries, complete %v", len(r.entries), r.complete)
	}
	if r := mustRead(t, b, "u:0", 0, 0); r.epoch != "" || len(r.entries) != 0 {
		t.Fatalf("the oldest inbox: epoch %q, %d entries; want deleted", r.epoch, len(r.entries))
	}
	if off, epoch := mustAppend(t, b, "u:0", "m1"); off != 1 || epoch == firstEpoch {
		t.Fatalf("append to a deleted stream: offset %d epoch %q (was %q); want 1 under a new epoch", off, epoch, firstEpoch)
	}
}

// TestMaxBytesExpired: a stream whose keys expired (no append for
// StreamTTL) stops counting at a later append, so that expired streams
// neither hold the cap nor grow the index.
func TestMaxBytesExpired(t *testing.T) {
	srv := startRedis(t)
	b := streamBroker(t, srv, Options{StreamTTL: 100 * time.Millisecond})
	ctx := context.Background()
	mustAppend(t, b, "c:old", "m1")
	deadline := time.Now().Add(10 * time.Second)
	for b.rdb.Exists(ctx, b.opt.Prefix+"sm:c:old").Val() == 1 {
		if time.Now().After(deadline) {
			t.Fatal("c:old did not expire")
		}
		time.Sleep(20 * time.Millisecond) // waiting for Redis to expire the key
	}
	mustAppend(t, b, "c:new", "m1")
	total, counted, held, _ := streamBytes(t, b)
	names, _ := b.rdb.ZRange(ctx, b.opt.Prefix+"streams:age", 0, -1).Result()
	if total != held || counted != held || len(names) != 1 || names[0] != "c:new" {
		t.Fatalf("total %d, sizes %d, held %d, index %v; want c:new's bytes and [c:new]", total, counted, held, names)
	}
}

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
	keys, err := b.streamKeys("c:retry")
	if err != nil {
		t.Fatal(err)
	}
	keys = append([]string{b.opt.Prefix + "sb:token1"}, keys...)
	args := []any{b.opt.StreamSize, b.opt.StreamTTL.Milliseconds(), "epoch1", int64(10000), []byte("m1")}
	first, err := b.runKeys(appendScript, keys, args...)
	if err != nil {
		t.Fatal(err)
	}
	again, err := b.runKeys(appendScript, keys, args...)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(first) != "[1 epoch1]" || fmt.Sprint(again) != fmt.Sprint(first) {
		t.Fatalf("first run %v, retry %v; want [1 epoch1] twice", first, again)
	}
	r := mustRead(t, b, "c:retry", 0, 0)
	wantEntries(t, r, 1)
	if off, _ := mustAppend(t, b, "c:retry", "m2"); off != 2 {
		t.Fatalf("next append at offset %d, want 2", off)
	}
}

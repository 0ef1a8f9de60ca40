package natsbroker

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/wuyan94zl/chart"
)

// appendModes are the two ways AppendBatch publishes: a subject's entries
// as one atomic batch (a memory stream), or one entry per subject per
// round trip (a file stream of one replica, or a server without atomic
// batches).
var appendModes = []struct {
	name   string
	file   bool
	atomic bool
}{{"atomic", false, true}, {"plain", true, false}}

// forModes runs f once per append mode, with options for it.
func forModes(t *testing.T, name string, f func(t *testing.T, opt Options, atomic bool)) {
	for _, m := range appendModes {
		t.Run(m.name, func(t *testing.T) {
			p := name + "_" + m.name
			f(t, Options{Prefix: p, Bucket: p, FileStorage: m.file}, m.atomic)
		})
	}
}

func checkMode(t *testing.T, b *Broker, atomic bool) {
	t.Helper()
	if got, _ := b.atomicBatches(); got != atomic {
		t.Fatalf("atomic batches: %v, want %v", got, atomic)
	}
}

// batchOf makes a batch of entries to streams[i], with data "STREAM/i".
func batchOf(streams ...string) []chart.StreamAppend {
	batch := make([]chart.StreamAppend, len(streams))
	for i, s := range streams {
		batch[i] = chart.StreamAppend{Stream: s, Data: []byte(fmt.Sprintf("%s/%d", s, i))}
	}
	return batch
}

// appended checks that every entry of batch was appended, and returns the
// epoch of each stream.
func appended(t *testing.T, batch []chart.StreamAppend) map[string]string {
	t.Helper()
	epochs := map[string]string{}
	for i, a := range batch {
		if a.Err != nil || a.Offset == 0 || a.Epoch == "" {
			t.Fatalf("entry %d (%s): offset %d, epoch %q, %v", i, a.Stream, a.Offset, a.Epoch, a.Err)
		}
		if e, ok := epochs[a.Stream]; ok && e != a.Epoch {
			t.Fatalf("entry %d (%s): epoch %q, another entry of the batch %q", i, a.Stream, a.Epoch, e)
		}
		epochs[a.Stream] = a.Epoch
	}
	return epochs
}

// readAll reads the whole stream and checks it is complete, at epoch,
// with the entries want (data) at offsets 1.. in order.
func readAll(t *testing.T, b *Broker, stream, epoch string, want []string) {
	t.Helper()
	es, e, complete, last, err := b.Read(stream, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if e != epoch || !complete || last != uint64(len(want)) || len(es) != len(want) {
		t.Fatalf("Read(%s): %d entries, epoch %q complete %v last %d; want %d entries, epoch %q, complete",
			stream, len(es), e, complete, last, len(want), epoch)
	}
	for i, x := range es {
		if x.Offset != uint64(i+1) || string(x.Data) != want[i] {
			t.Fatalf("Read(%s) entry %d: %d %q, want %d %q", stream, i, x.Offset, x.Data, i+1, want[i])
		}
	}
}

// TestAppendBatchOrder: one batch appends to several streams; the entries
// of each stream get consecutive offsets in the order given, after what
// the stream had, under its epoch; a second batch goes on from there; Read
// returns exactly the entries appended; the batch's data is not kept.
func TestAppendBatchOrder(t *testing.T) {
	srv := startNATS(t)
	forModes(t, "order", func(t *testing.T, opt Options, atomic bool) {
		b := connectStreams(t, srv.url(), opt)
		checkMode(t, b, atomic)
		first := appendN(t, b, "c:a", 2) // m0, m1
		want := map[string][]string{"c:a": {"m0", "m1"}}
		var epochs map[string]string
		for round := 0; round < 2; round++ {
			batch := batchOf("c:a", "u:1", "c:a", "c:b", "u:1", "c:a", "c:a", "u:\u4e2d *>")
			next := map[string]uint64{}
			for s, w := range want {
				next[s] = uint64(len(w))
			}
			b.AppendBatch(batch)
			got := appended(t, batch)
			if round == 0 {
				epochs = got
				if got["c:a"] != first {
					t.Fatalf("c:a: epoch %q, before the batch %q", got["c:a"], first)
				}
			} else if !maps.Equal(got, epochs) {
				t.Fatalf("epochs %v, after the first batch %v", got, epochs)
			}
			for _, a := range batch {
				next[a.Stream]++
				if a.Offset != next[a.Stream] {
					t.Fatalf("round %d: %s got offset %d, want %d", round, a.Stream, a.Offset, next[a.Stream])
				}
				want[a.Stream] = append(want[a.Stream], string(a.Data))
				copy(a.Data, "XXXX") // the broker must not keep it
			}
		}
		for s, w := range want {
			readAll(t, b, s, epochs[s], w)
		}
	})
}

// TestAppendBatchTwoBrokers: two brokers (two nodes), four batches at a
// time each, append to the same streams: each stream's offsets are 1..n,
// each once, under one epoch; each batch's entries of a stream are in its
// order; Read returns every entry at its offset.
func TestAppendBatchTwoBrokers(t *testing.T) {
	srv := startNATS(t)
	forModes(t, "two", func(t *testing.T, opt Options, atomic bool) {
		brokers := []*Broker{connectStreams(t, srv.url(), opt), connectStreams(t, srv.url(), opt)}
		checkMode(t, brokers[0], atomic)
		concurrentBatches(t, brokers)
	})
}

// TestAppendBatchCluster: TestAppendBatchTwoBrokers on three clustered
// servers, the stream with three replicas, the brokers on different
// servers.
func TestAppendBatchCluster(t *testing.T) {
	brokers := clusterBrokers(t)
	for _, b := range brokers {
		checkMode(t, b, true)
	}
	concurrentBatches(t, brokers)
}

// concurrentBatches appends batches from four goroutines on each broker to
// the same streams, and checks that each stream's offsets are 1..n, each
// once, under one epoch, that each batch's entries of a stream are in its
// order, and that Read returns every entry at its offset.
func concurrentBatches(t *testing.T, brokers []*Broker) {
	t.Helper()
	const rounds = 8
	var mu sync.Mutex
	data := map[string]map[uint64]string{}
	epochs := map[string]map[string]bool{}
	var wg sync.WaitGroup
	for bi, b := range brokers {
		for g := 0; g < 4; g++ {
			wg.Go(func() {
				for r := 0; r < rounds; r++ {
					batch := batchOf("c:x", "c:y", "c:x", fmt.Sprintf("u:%d", g), "c:x", "c:y")
					for i := range batch {
						batch[i].Data = fmt.Appendf(batch[i].Data, "/%d/%d/%d", bi, g, r)
					}
					b.AppendBatch(batch)
					mu.Lock()
					last := map[string]uint64{}
					for _, a := range batch {
						if a.Err != nil {
							t.Error(a.Err)
							continue
						}
						if a.Offset <= last[a.Stream] {
							t.Errorf("%s: offset %d after %d in one batch", a.Stream, a.Offset, last[a.Stream])
						}
						last[a.Stream] = a.Offset
						if data[a.Stream] == nil {
							data[a.Stream], epochs[a.Stream] = map[uint64]string{}, map[string]bool{}
						}
						if d, dup := data[a.Stream][a.Offset]; dup {
							t.Errorf("%s: offset %d given to %q and %q", a.Stream, a.Offset, d, a.Data)
						}
						data[a.Stream][a.Offset] = string(a.Data)
						epochs[a.Stream][a.Epoch] = true
					}
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for s, offs := range data {
		if len(epochs[s]) != 1 {
			t.Fatalf("%s: epochs %v, want one", s, epochs[s])
		}
		want := make([]string, len(offs))
		for off, d := range offs {
			if off == 0 || off > uint64(len(offs)) {
				t.Fatalf("%s: offset %d among %d entries", s, off, len(offs))
			}
			want[off-1] = d
		}
		for e := range epochs[s] {
			readAll(t, brokers[len(brokers)-1], s, e, want)
		}
	}
	if n, want := len(data["c:x"]), len(brokers)*4*rounds*3; n != want {
		t.Fatalf("c:x has %d entries, want %d", n, want)
	}
}

// TestAppendBatchStreamLost: a node's cached tails do not survive the
// JetStream stream: deleted and created again by another node, which
// appended as many entries to the subject as before, the stream goes on in
// the new epoch; deleted again, this node's next batch starts new epochs
// at offset 1. A Reset by another node starts a new epoch as well.
func TestAppendBatchStreamLost(t *testing.T) {
	srv := startNATS(t)
	forModes(t, "lost", func(t *testing.T, opt Options, atomic bool) {
		b := connectStreams(t, srv.url(), opt)
		other := connectStreams(t, srv.url(), opt)
		checkMode(t, b, atomic)
		batch := batchOf("c:d", "c:d", "c:d", "c:e")
		b.AppendBatch(batch) // cached: c:d at offset 3
		old := appended(t, batch)
		deleteStream := func() {
			t.Helper()
			if err := b.js.DeleteStream(context.Background(), opt.Bucket+"_streams"); err != nil {
				t.Fatal(err)
			}
		}

		deleteStream()
		batch = batchOf("c:d", "c:d", "c:d")
		other.AppendBatch(batch)
		e := appended(t, batch)["c:d"]
		if e == old["c:d"] || batch[0].Offset != 1 {
			t.Fatalf("after the stream was deleted: offset %d epoch %q (before: %q)", batch[0].Offset, e, old["c:d"])
		}
		batch = batchOf("c:d", "c:e")
		b.AppendBatch(batch)
		got := appended(t, batch)
		if batch[0].Offset != 4 || got["c:d"] != e {
			t.Fatalf("c:d after another node's appends: offset %d epoch %q, want 4 %q", batch[0].Offset, got["c:d"], e)
		}
		if batch[1].Offset != 1 || got["c:e"] == old["c:e"] {
			t.Fatalf("c:e after the stream was deleted: offset %d epoch %q (before: %q)", batch[1].Offset, got["c:e"], old["c:e"])
		}
		readAll(t, other, "c:d", e, []string{"c:d/0", "c:d/1", "c:d/2", "c:d/0"})

		deleteStream()
		batch = batchOf("c:d", "c:d")
		b.AppendBatch(batch)
		if got := appended(t, batch); batch[0].Offset != 1 || batch[1].Offset != 2 || got["c:d"] == e {
			t.Fatalf("after the stream was deleted again: offsets %d %d epoch %q (before: %q)", batch[0].Offset, batch[1].Offset, got["c:d"], e)
		}
		e = batch[0].Epoch

		if err := other.Reset("c:d"); err != nil {
			t.Fatal(err)
		}
		batch = batchOf("c:d", "c:d")
		b.AppendBatch(batch)
		if got := appended(t, batch); batch[0].Offset != 1 || got["c:d"] == e {
			t.Fatalf("after a Reset: offset %d epoch %q (before: %q)", batch[0].Offset, got["c:d"], e)
		}
		readAll(t, other, "c:d", batch[0].Epoch, []string{"c:d/0", "c:d/1"})
	})
}

// TestAppendBatchLimits: a batch of more entries than StreamSize keeps the
// newest StreamSize; Read tells what is missing.
func TestAppendBatchLimits(t *testing.T) {
	srv := startNATS(t)
	forModes(t, "blimits", func(t *testing.T, opt Options, atomic bool) {
		opt.StreamSize = 5
		b := connectStreams(t, srv.url(), opt)
		batch := batchOf("c:l", "c:l", "c:l", "c:l", "c:l", "c:l", "c:l", "c:l", "c:m")
		b.AppendBatch(batch)
		epoch := appended(t, batch)["c:l"]
		for _, c := range []struct {
			after    uint64
			limit    int
			want     []uint64
			complete bool
		}{
			{0, 0, []uint64{4, 5, 6, 7, 8}, false},
			{3, 0, []uint64{4, 5, 6, 7, 8}, true},
			{6, 0, []uint64{7, 8}, true},
			{0, 2, []uint64{7, 8}, false},
		} {
			es, e, complete, last, err := b.Read("c:l", c.after, c.limit)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(offsets(es), c.want) || complete != c.complete || e != epoch || last != 8 {
				t.Errorf("Read(%d, %d): %v complete %v epoch %q last %d; want %v complete %v epoch %q last 8",
					c.after, c.limit, offsets(es), complete, e, last, c.want, c.complete, epoch)
			}
			for _, x := range es {
				if want := fmt.Sprintf("c:l/%d", x.Offset-1); string(x.Data) != want {
					t.Errorf("entry %d: %q, want %q", x.Offset, x.Data, want)
				}
			}
		}
	})
}

// TestAppendBatchErrors: an entry that cannot be appended fails with the
// rest of its stream in the batch, one with a bad stream name alone; the
// other streams are appended. Empty entries are entries. After Close,
// appends fail at once.
func TestAppendBatchErrors(t *testing.T) {
	srv := startNATS(t)
	forModes(t, "errors", func(t *testing.T, opt Options, atomic bool) {
		b := connectStreams(t, srv.url(), opt)
		other := connectStreams(t, srv.url(), opt)
		big := make([]byte, b.nc.MaxPayload()+1)
		batch := []chart.StreamAppend{
			{Stream: "c:ok", Data: []byte("a")},
			{Stream: "c:big", Data: big},
			{Stream: "c:big", Data: []byte("small")},
			{Stream: "bad", Data: []byte("no")},
			{Stream: "c:ok", Data: nil},
			{Stream: "u:", Data: []byte("no")},
		}
		b.AppendBatch(batch)
		if batch[0].Err != nil || batch[0].Offset != 1 || batch[4].Err != nil || batch[4].Offset != 2 {
			t.Fatalf("c:ok: %+v, %+v", batch[0], batch[4])
		}
		for _, a := range []chart.StreamAppend{batch[3], batch[5]} {
			if a.Err == nil || a.Offset != 0 {
				t.Fatalf("a bad stream name: %+v", a)
			}
		}
		for _, a := range batch[1:3] {
			if !errors.Is(a.Err, nats.ErrMaxPayload) || a.Offset != 0 {
				t.Fatalf("c:big: offset %d, %v; want %v", a.Offset, a.Err, nats.ErrMaxPayload)
			}
		}
		// other reads c:ok's tail, an empty entry.
		if off, e, err := other.Append("c:ok", []byte("c")); err != nil || off != 3 || e != batch[0].Epoch {
			t.Fatalf("after an empty entry: %d %q %v", off, e, err)
		}
		readAll(t, b, "c:ok", batch[0].Epoch, []string{"a", "", "c"})
		if off, _, err := b.Append("c:big", []byte("small")); err != nil || off != 1 {
			t.Fatalf("c:big after the failure: %d %v", off, err)
		}
		b.AppendBatch(nil) // nothing to do

		// After Close, on a connection that stays open.
		nc, err := nats.Connect(srv.url())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		closed, err := New(nc, opt)
		if err != nil {
			t.Fatal(err)
		}
		closed.Close()
		if _, _, err := closed.Append("c:ok", []byte("d")); !errors.Is(err, errClosed) {
			t.Fatalf("Append after Close: %v", err)
		}
	})
}

// TestTailsBound: the cache of tails holds at most maxTails subjects.
func TestTailsBound(t *testing.T) {
	var c tails
	for i := 0; i < maxTails+10; i++ {
		c.put(strings.Repeat("s", 3)+fmt.Sprint(i), tail{seq: uint64(i + 1)})
	}
	if n := len(c.m); n != maxTails {
		t.Fatalf("%d tails cached", n)
	}
	if got, ok := c.get(fmt.Sprint("sss", maxTails+9)); !ok || got.seq != maxTails+10 {
		t.Fatalf("the newest tail: %v %v", got, ok)
	}
}

// TestAppendBatchAtomicTurnedOff: a stream whose atomic batches were
// turned off (by an operator, or a node of an older version updating it)
// refuses them; the broker then appends one entry per round trip.
func TestAppendBatchAtomicTurnedOff(t *testing.T) {
	srv := startNATS(t)
	b := connectStreams(t, srv.url(), Options{Prefix: "off", Bucket: "off"})
	checkMode(t, b, true)
	cfg := b.jsStream().CachedInfo().Config
	cfg.AllowAtomicPublish = false
	if _, err := b.js.UpdateStream(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	batch := batchOf("c:o", "c:o", "c:o", "c:p")
	b.AppendBatch(batch)
	e := appended(t, batch)["c:o"]
	checkMode(t, b, false)
	readAll(t, b, "c:o", e, []string{"c:o/0", "c:o/1", "c:o/2"})
}

// TestAppendBatchNoAnswer: a publish the server does not answer (here a
// subscriber that is not the stream takes it) fails with
// context.DeadlineExceeded, which the hub takes as maybe stored, after
// Options.Timeout; it is not sent again.
func TestAppendBatchNoAnswer(t *testing.T) {
	srv := startNATS(t)
	opt := Options{Prefix: "mute", Bucket: "mute", Timeout: 300 * time.Millisecond}
	b := connectStreams(t, srv.url(), opt)
	if _, _, err := b.Append("c:t", []byte("cached")); err != nil {
		t.Fatal(err)
	}
	if err := b.js.DeleteStream(context.Background(), "mute_streams"); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(srv.url())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	sub, err := nc.SubscribeSync("mute.s.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	batch := batchOf("c:t", "c:t")
	b.AppendBatch(batch)
	if took := time.Since(start); took < opt.Timeout {
		t.Fatalf("failed after %v, before the timeout", took)
	}
	for _, a := range batch {
		if !errors.Is(a.Err, context.DeadlineExceeded) || a.Offset != 0 {
			t.Fatalf("%+v, want context.DeadlineExceeded", a)
		}
	}
	if err := b.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil { // what b published is in sub by now
		t.Fatal(err)
	}
	var got []string
	for {
		m, err := sub.NextMsg(0)
		if err != nil {
			break
		}
		got = append(got, string(m.Data))
	}
	if !slices.Equal(got, []string{"c:t/0", "c:t/1"}) {
		t.Fatalf("published %q, want each entry once", got)
	}
}

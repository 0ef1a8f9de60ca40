package natsbroker

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/wuyan94zl/chart"
)

func connectStreams(t testing.TB, url string, opt Options) *Broker {
	t.Helper()
	b, err := Connect(url, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func appendN(t *testing.T, b *Broker, stream string, n int) (epoch string) {
	t.Helper()
	for i := 0; i < n; i++ {
		_, e, err := b.Append(stream, []byte("m"+strconv.Itoa(i)))
		if err != nil {
			t.Fatal(err)
		}
		epoch = e
	}
	return epoch
}

func offsets(es []chart.StreamEntry) []uint64 {
	var offs []uint64
	for _, e := range es {
		offs = append(offs, e.Offset)
	}
	return offs
}

// TestStreamsConcurrentAppend: appends from two brokers, several at a time
// each, get the offsets 1..n once each under one epoch, and Read returns
// every entry at its offset, in order.
func TestStreamsConcurrentAppend(t *testing.T) {
	srv := startNATS(t)
	opt := Options{Prefix: "conc", Bucket: "conc"}
	concurrentAppends(t, connectStreams(t, srv.url(), opt), connectStreams(t, srv.url(), opt))
}

// TestStreamsCluster: TestStreamsConcurrentAppend on three clustered
// servers, the stream with three replicas, the brokers on different
// servers (Read's consumer may be on a replica that lags behind).
func TestStreamsCluster(t *testing.T) {
	concurrentAppends(t, clusterBrokers(t)...)
}

// clusterBrokers starts three clustered servers and returns two brokers of
// one cluster on different servers (each prefers its own, then the
// third), their streams with three replicas.
func clusterBrokers(t *testing.T) []*Broker {
	t.Helper()
	servers := startNATSCluster(t, 3)
	var brokers []*Broker
	for i := range 2 {
		urls := []string{servers[i].url(), servers[2].url(), servers[1-i].url()}
		nc, err := nats.Connect(strings.Join(urls, ","), nats.DontRandomize())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		b, err := New(nc, Options{Prefix: "cl", Bucket: "cl"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		if b.opt.Replicas != 3 {
			t.Fatalf("replicas %d, want 3", b.opt.Replicas)
		}
		brokers = append(brokers, b)
	}
	return brokers
}

func concurrentAppends(t *testing.T, brokers ...*Broker) {
	t.Helper()
	const stream, per = "c:a.b *>\u4e2d", 40
	var mu sync.Mutex
	data := map[uint64]string{}
	epochs := map[string]bool{}
	var wg sync.WaitGroup
	for bi, b := range brokers {
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < per/4; i++ {
					d := fmt.Sprintf("%d/%d/%d", bi, g, i)
					off, epoch, err := b.Append(stream, []byte(d))
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					if _, dup := data[off]; dup {
						t.Errorf("offset %d twice", off)
					}
					data[off] = d
					epochs[epoch] = true
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	if len(epochs) != 1 {
		t.Fatalf("epochs %v, want one", epochs)
	}
	n := uint64(len(brokers) * per)
	for _, b := range brokers {
		es, epoch, complete, last, err := b.Read(stream, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if !epochs[epoch] || !complete || last != n || uint64(len(es)) != n {
			t.Fatalf("Read: %d entries, epoch %q, complete %v, last %d", len(es), epoch, complete, last)
		}
		for i, e := range es {
			if e.Offset != uint64(i+1) || string(e.Data) != data[e.Offset] {
				t.Fatalf("entry %d: %d %q, want %d %q", i, e.Offset, e.Data, i+1, data[uint64(i+1)])
			}
		}
	}
}

// TestStreamsEpoch: a stream whose history was lost (the JetStream stream
// deleted) starts again at offset 1 under a new epoch, and the
// acknowledgements of the old epoch count for nothing.
func TestStreamsEpoch(t *testing.T) {
	srv := startNATS(t)
	b := connectStreams(t, srv.url(), Options{Prefix: "epoch", Bucket: "epoch"})
	other := connectStreams(t, srv.url(), Options{Prefix: "epoch", Bucket: "epoch"})
	old := appendN(t, b, "u:7", 3)
	if err := b.Ack("u:7", 1, old, 2); err != nil {
		t.Fatal(err)
	}
	if err := b.js.DeleteStream(context.Background(), "epoch_streams"); err != nil {
		t.Fatal(err)
	}
	es, epoch, complete, last, err := other.Read("u:7", 2, 0)
	if err != nil || len(es) != 0 || epoch != "" || complete || last != 0 {
		t.Fatalf("Read after delete: %v %q %v %d %v", es, epoch, complete, last, err)
	}
	if off, epoch, err := other.Acked("u:7", 1); err != nil || off != 0 || epoch != "" {
		t.Fatalf("Acked after delete: %d %q %v", off, epoch, err)
	}
	off, epoch, err := other.Append("u:7", []byte("new"))
	if err != nil || off != 1 || epoch == old || epoch == "" {
		t.Fatalf("Append after delete: %d %q %v (old epoch %q)", off, epoch, err, old)
	}
	if off, e, err := b.Acked("u:7", 1); err != nil || off != 0 || e != epoch {
		t.Fatalf("Acked in the new epoch: %d %q %v", off, e, err)
	}
	if err := b.Ack("u:7", 1, old, 1); err != nil {
		t.Fatal(err)
	}
	if off, _, _ := b.Acked("u:7", 1); off != 0 {
		t.Fatalf("an ack of the old epoch counted: %d", off)
	}
	if off, e, err := b.Append("u:7", []byte("next")); err != nil || off != 2 || e != epoch {
		t.Fatalf("next Append: %d %q %v", off, e, err)
	}
}

// TestStreamsRestart: a memory-storage server restarting loses the
// streams: new epochs.
func TestStreamsRestart(t *testing.T) {
	srv := startNATS(t)
	b := connectStreams(t, srv.url(), Options{Prefix: "restart", Bucket: "restart", Timeout: 2 * time.Second})
	old := appendN(t, b, "c:x", 2)
	srv.stop()
	srv.start()
	var off uint64
	var epoch string
	deadline := time.Now().Add(5 * time.Second)
	for {
		var err error
		if off, epoch, err = b.Append("c:x", []byte("after")); err == nil || time.Now().After(deadline) {
			if err != nil {
				t.Fatal(err)
			}
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if off != 1 || epoch == old {
		t.Fatalf("after a restart: offset %d, epoch %q (old %q)", off, epoch, old)
	}
}

// TestStreamsLimits: a stream keeps its newest StreamSize entries, for
// StreamTTL; complete tells whether entries above after were dropped or
// cut by limit.
func TestStreamsLimits(t *testing.T) {
	srv := startNATS(t)
	b := connectStreams(t, srv.url(), Options{Prefix: "limits", Bucket: "limits", StreamSize: 5})
	epoch := appendN(t, b, "c:l", 8)
	appendN(t, b, "c:other", 3)
	for _, c := range []struct {
		after    uint64
		limit    int
		want     []uint64
		complete bool
	}{
		{0, 0, []uint64{4, 5, 6, 7, 8}, false},
		{2, 0, []uint64{4, 5, 6, 7, 8}, false},
		{3, 0, []uint64{4, 5, 6, 7, 8}, true},
		{5, 0, []uint64{6, 7, 8}, true},
		{7, 0, []uint64{8}, true},
		{8, 0, nil, true},
		{20, 0, nil, true},
		{0, 2, []uint64{7, 8}, false},
		{6, 2, []uint64{7, 8}, true},
		{5, 2, []uint64{7, 8}, false},
		{3, 1, []uint64{8}, false},
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
			if want := "m" + strconv.Itoa(int(x.Offset)-1); string(x.Data) != want {
				t.Errorf("entry %d: %q, want %q", x.Offset, x.Data, want)
			}
		}
	}
	if es, e, complete, last, err := b.Read("c:none", 0, 0); err != nil || es != nil || e != "" || !complete || last != 0 {
		t.Errorf("Read of an empty stream: %v %q %v %d %v", es, e, complete, last, err)
	}
	if _, _, complete, _, _ := b.Read("c:none", 1, 0); complete {
		t.Error("Read(1) of an empty stream: complete")
	}

	// More entries than one fetch.
	big := connectStreams(t, srv.url(), Options{Prefix: "big", Bucket: "big"})
	appendN(t, big, "c:big", 3*readBatch)
	for _, limit := range []int{0, 10} {
		es, _, complete, last, err := big.Read("c:big", 5, limit)
		want := 3*readBatch - 5
		if limit > 0 {
			want = limit
		}
		if err != nil || len(es) != want || es[len(es)-1].Offset != last || last != 3*readBatch || complete != (limit == 0) {
			t.Errorf("Read(5, %d) of %d entries: %d entries, complete %v, last %d, %v", limit, 3*readBatch, len(es), complete, last, err)
		}
	}

	// Age: the oldest entries go first; once all are gone, a new epoch.
	aged := connectStreams(t, srv.url(), Options{Prefix: "aged", Bucket: "aged", StreamTTL: time.Second})
	first := appendN(t, aged, "c:a", 1)
	time.Sleep(600 * time.Millisecond)
	appendN(t, aged, "c:a", 1)
	waitFor(t, "entry 1 aged out", func() bool {
		es, _, _, _, _ := aged.Read("c:a", 0, 0)
		return slices.Equal(offsets(es), []uint64{2})
	})
	if _, _, complete, last, _ := aged.Read("c:a", 0, 0); complete || last != 2 {
		t.Errorf("after entry 1 aged out: complete %v, last %d", complete, last)
	}
	waitFor(t, "entry 2 aged out", func() bool {
		_, e, _, _, _ := aged.Read("c:a", 0, 0)
		return e == ""
	})
	if off, e, err := aged.Append("c:a", []byte("x")); err != nil || off != 1 || e == first {
		t.Errorf("Append after every entry aged out: %d %q %v (old epoch %q)", off, e, err, first)
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestStreamsAcks: acknowledgements move only forward, only within the
// stream's epoch ("" meaning whatever it is) and its offsets, per uid and
// stream, and are seen by every node.
func TestStreamsAcks(t *testing.T) {
	srv := startNATS(t)
	b := connectStreams(t, srv.url(), Options{Prefix: "acks", Bucket: "acks"})
	other := connectStreams(t, srv.url(), Options{Prefix: "acks", Bucket: "acks"})
	if err := b.Ack("c:none", 1, "", 1); err != nil {
		t.Fatal(err)
	}
	if off, e, err := b.Acked("c:none", 1); err != nil || off != 0 || e != "" {
		t.Fatalf("Acked of an empty stream: %d %q %v", off, e, err)
	}
	epoch := appendN(t, b, "c:r", 5)
	appendN(t, b, "c:s", 5) // another stream, another epoch
	acked := func(br *Broker, stream string, uid uint64, want uint64) {
		t.Helper()
		off, e, err := br.Acked(stream, uid)
		if err != nil || off != want || e != epoch {
			t.Fatalf("Acked(%s, %d): %d %q %v; want %d %q", stream, uid, off, e, err, want, epoch)
		}
	}
	acked(b, "c:r", 1, 0)
	for _, a := range []struct {
		epoch string
		off   uint64
		want  uint64
	}{
		{epoch, 3, 3},
		{epoch, 2, 3},   // backwards
		{"other", 4, 3}, // another epoch
		{epoch, 6, 3},   // beyond the stream
		{"", 4, 4},      // any epoch
		{epoch, 5, 5},
	} {
		if err := b.Ack("c:r", 1, a.epoch, a.off); err != nil {
			t.Fatal(err)
		}
		acked(other, "c:r", 1, a.want)
	}
	acked(b, "c:r", 2, 0)
	if off, e, err := b.Acked("c:s", 1); err != nil || off != 0 || e == "" || e == epoch {
		t.Fatalf("Acked(c:s, 1): %d %q %v", off, e, err)
	}
	if err := other.Ack("c:s", 2, epoch, 1); err != nil { // c:s has its own epoch
		t.Fatal(err)
	}
	if off, _, _ := b.Acked("c:s", 2); off != 0 {
		t.Fatalf("an ack with c:r's epoch counted in c:s: %d", off)
	}

	// Concurrent acks from two nodes end at the highest.
	var wg sync.WaitGroup
	for i, br := range []*Broker{b, other} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for off := uint64(1); off <= 5; off++ {
				if err := br.Ack("c:r", 3, "", off+uint64(i)-1); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	acked(b, "c:r", 3, 5)
}

// TestStreamsStorage: the streams' JetStream stream follows the options.
func TestStreamsStorage(t *testing.T) {
	srv := startNATS(t)
	for _, c := range []struct {
		opt  Options
		want jetstream.StreamConfig
	}{
		{Options{Prefix: "s1", Bucket: "s1"}, jetstream.StreamConfig{Storage: jetstream.MemoryStorage, MaxMsgsPerSubject: 1000, MaxAge: 24 * time.Hour}},
		{Options{Prefix: "s2", Bucket: "s2", FileStorage: true, StreamSize: 7, StreamTTL: time.Minute},
			jetstream.StreamConfig{Storage: jetstream.FileStorage, MaxMsgsPerSubject: 7, MaxAge: time.Minute}},
	} {
		b := connectStreams(t, srv.url(), c.opt)
		s, err := b.js.Stream(context.Background(), c.opt.Bucket+"_streams")
		if err != nil {
			t.Fatal(err)
		}
		got := s.CachedInfo().Config
		if got.Storage != c.want.Storage || got.MaxMsgsPerSubject != c.want.MaxMsgsPerSubject || got.MaxAge != c.want.MaxAge {
			t.Errorf("%s: storage %v, per subject %d, age %v; want %v %d %v", c.opt.Bucket,
				got.Storage, got.MaxMsgsPerSubject, got.MaxAge, c.want.Storage, c.want.MaxMsgsPerSubject, c.want.MaxAge)
		}
	}
}

// TestStreamsReset: Reset purges a stream; its next append starts a new
// epoch at offset 1, and old acknowledgements count for nothing.
func TestStreamsReset(t *testing.T) {
	srv := startNATS(t)
	b := connectStreams(t, srv.url(), Options{Prefix: "reset", Bucket: "reset"})
	old := appendN(t, b, "c:r", 2)
	if err := b.Ack("c:r", 5, old, 2); err != nil {
		t.Fatal(err)
	}
	if err := b.Reset("c:r"); err != nil {
		t.Fatal(err)
	}
	off, epoch, err := b.Append("c:r", []byte("m3"))
	if err != nil || off != 1 || epoch == old {
		t.Fatalf("after Reset: offset %d epoch %q (before %q), %v", off, epoch, old, err)
	}
	if off, _, err := b.Acked("c:r", 5); err != nil || off != 0 {
		t.Fatalf("Acked after Reset = %d, %v", off, err)
	}
}

// TestMaxBytes: appends to many inboxes (direct messages to random uids)
// keep the JetStream stream within Options.MaxBytes: the oldest entries
// go, the newest stay; a stream that lost all its entries starts again
// under a new epoch.
func TestMaxBytes(t *testing.T) {
	srv := startNATS(t)
	const maxBytes = 64 << 10
	b := connectStreams(t, srv.url(), Options{Prefix: "maxbytes", Bucket: "maxbytes", MaxBytes: maxBytes})
	var epochs [3]string
	for i := range 3 {
		_, epochs[i], _ = b.Append("c:old", []byte(fmt.Sprintf("m%d", i+1)))
	}
	_, first, err := b.Append("u:0", []byte("m1"))
	if err != nil || epochs[0] == "" || epochs[2] != epochs[0] {
		t.Fatalf("appends: %v, epochs %q", err, epochs)
	}
	payload := bytes.Repeat([]byte("x"), 100)
	const uids = 2000
	batch := make([]chart.StreamAppend, 0, 256)
	for uid := 1; uid <= uids; uid++ {
		batch = append(batch, chart.StreamAppend{Stream: fmt.Sprintf("u:%d", uid), Data: payload})
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
	info, err := b.jsStream().Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d inboxes appended: the stream keeps %d messages, %d bytes (cap %d)", uids, info.State.Msgs, info.State.Bytes, maxBytes)
	if info.State.Bytes > maxBytes || info.State.Msgs < 100 {
		t.Fatalf("the stream holds %d bytes in %d messages; want at most %d bytes", info.State.Bytes, info.State.Msgs, maxBytes)
	}
	es, _, complete, _, err := b.Read(fmt.Sprintf("u:%d", uids), 0, 0)
	if err != nil || len(es) != 1 || !complete {
		t.Fatalf("the newest inbox: %d entries, complete %v, %v", len(es), complete, err)
	}
	off, epoch, err := b.Append("u:0", []byte("m1"))
	if err != nil || off != 1 || epoch == first {
		t.Fatalf("append to a discarded stream: offset %d epoch %q (was %q), %v; want 1 under a new epoch", off, epoch, first, err)
	}
	// c:old: its three entries are gone; a fourth starts a new epoch.
	off, epoch, err = b.Append("c:old", []byte("m4"))
	if err != nil || epoch == epochs[0] || off != 1 {
		t.Fatalf("c:old after the flood: offset %d epoch %q, %v", off, epoch, err)
	}
}

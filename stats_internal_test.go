package chart

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestLatencyBuckets: an observation goes to the first bucket whose bound
// it does not exceed (Prometheus' le), past the last to +Inf; Stats gives
// the buckets cumulative.
func TestLatencyBuckets(t *testing.T) {
	h := New(Config{PingInterval: -1})
	defer h.Close()
	now := int64(100 * time.Second)
	var stamps []int64
	for _, d := range []time.Duration{0, 100 * time.Microsecond, 100*time.Microsecond + 1, time.Millisecond,
		3 * time.Millisecond, 10 * time.Second, 10*time.Second + 1, time.Minute, -time.Second} {
		stamps = append(stamps, now-int64(d))
	}
	h.stats.shards[5].observeAt(now, stamps[:4])
	h.stats.shards[63].observeAt(now, append([]int64{0}, stamps[4:]...)) // 0: a control frame
	d := h.Stats().Delivery
	// 0, 100µs and -1s (a clock step: 0) in the first bucket; 100µs+1 in
	// 250µs; 1ms in 1ms; 3ms in 5ms; 10s in 10s; the rest in +Inf.
	want := map[time.Duration]uint64{100 * time.Microsecond: 3, 250 * time.Microsecond: 4, 500 * time.Microsecond: 4,
		time.Millisecond: 5, 2500 * time.Microsecond: 5, 5 * time.Millisecond: 6, 10 * time.Second: 7}
	last := uint64(0)
	for i, b := range d.Buckets {
		if b.Le != time.Duration(latencyBounds[i]) {
			t.Fatalf("bucket %d bound %v", i, b.Le)
		}
		if w, ok := want[b.Le]; ok {
			last = w
		}
		if b.Count != last {
			t.Fatalf("bucket le=%v: %d, want %d (%+v)", b.Le, b.Count, last, d.Buckets)
		}
	}
	if d.Count != 9 {
		t.Fatalf("count %d, want 9", d.Count)
	}
	wantSum := (100*time.Microsecond + 100*time.Microsecond + 1 + time.Millisecond + 3*time.Millisecond +
		10*time.Second + 10*time.Second + 1 + time.Minute).Seconds()
	if d.Sum != wantSum {
		t.Fatalf("sum %v, want %v", d.Sum, wantSum)
	}
}

// TestStamps: message frames carry their accepted time past their length;
// every other frame has none.
func TestStamps(t *testing.T) {
	prefix := appendPrefix(nil, &Message{ChannelId: "c", Content: "hi"})
	f := stampedFrame(prefix, 7, "e", 12345)
	if got := frameStamp(f); got != 12345 {
		t.Fatalf("stamp %d", got)
	}
	if string(f) != string(framePrefix(prefix, 7, "e")) {
		t.Fatalf("stamped frame %q differs from %q", f, framePrefix(prefix, 7, "e"))
	}
	for _, f := range [][]byte{framePrefix(prefix, 7, "e"), pingFrame, frame(opPong, []byte("x")), closeFrame(1000, ""),
		encodeError(ErrNotJoined, "c", 0, ""), encodeAck("id", 1, "e"), encodePong(3), encode(&Message{Content: "x"}),
		encodeWelcome(nil)} {
		if got := frameStamp(f); got != 0 {
			t.Fatalf("frame %q has stamp %d", f, got)
		}
	}
	if monotime() <= 0 {
		t.Fatal("monotime not positive")
	}
}

// TestQueueStats: a stalled client's queue, as Stats counts it, is what
// the connection holds: with SlowConsumerDropOldest and 8 places, 8 frames
// of the last messages; once the client reads, nothing.
func TestQueueStats(t *testing.T) {
	r := newRecorder()
	s := startServer(t, Config{SlowConsumer: SlowConsumerDropOldest, SendQueueLen: 8, WriteWait: time.Minute,
		HistorySize: -1, PingInterval: -1}, r)
	c := s.login(t, r, 1) // read only after the publishing
	s.hub.JoinChannelIds(1, "room")
	pad := strings.Repeat("d", 16<<10)
	const n = 2000 // 32 MB: more than the socket buffers hold
	var last Message
	for i := 0; i < n; i++ {
		last = Message{ChannelId: "room", Content: strconv.Itoa(i) + " " + pad, SendTime: now()}
		s.hub.Publish("room", last)
	}
	// The oracle: what the connections hold, as Stats used to add up.
	held, size := 0, 0
	for _, conn := range s.hub.allConns() {
		conn.mu.Lock()
		if conn.queue != nil {
			held += len(conn.queue.frames)
			size += conn.qbytes
		}
		conn.mu.Unlock()
	}
	frameLen := len(encode(&last)) // the last 8 have 4-digit numbers: all this long
	st := s.hub.Stats()
	if held != 8 || size != 8*frameLen {
		t.Fatalf("the connection holds %d frames of %d bytes, want 8 of %d", held, size, 8*frameLen)
	}
	if st.QueuedMessages != 8 || st.QueuedBytes != int64(8*frameLen) || st.MaxQueueDepth != 8 || st.Dropped == 0 {
		t.Fatalf("stats %+v: want 8 messages of %d bytes queued, longest 8, drops", st, 8*frameLen)
	}
	c.ws.SetReadDeadline(time.Now().Add(wait))
	for {
		var m Message
		if err := c.ws.ReadJSON(&m); err != nil {
			t.Fatal(err)
		}
		if m.Content == last.Content {
			break
		}
	}
	// The writer took the last message from the queue before writing it.
	if st := s.hub.Stats(); st.QueuedMessages != 0 || st.QueuedBytes != 0 || st.MaxQueueDepth != 0 {
		t.Fatalf("stats %+v: want empty queues", st)
	}
}

// TestDepthClasses: the longest queue is found in its power-of-two class
// as queues grow, shrink by drops and empty.
func TestDepthClasses(t *testing.T) {
	h := New(Config{PingInterval: -1})
	defer h.Close()
	s := &h.stats.shards[3]
	for n := 1; n <= 100; n++ {
		s.queued(n, 10)
	}
	for n := 1; n <= 5; n++ {
		h.stats.shards[9].queued(n, 1)
	}
	if st := h.Stats(); st.MaxQueueDepth != 64 || st.QueuedMessages != 105 || st.QueuedBytes != 1005 {
		t.Fatalf("stats %+v", st)
	}
	s.unqueued(100, 70, 700) // 30 left: class 16
	if st := h.Stats(); st.MaxQueueDepth != 16 || st.QueuedMessages != 35 || st.QueuedBytes != 305 {
		t.Fatalf("stats %+v", st)
	}
	s.unqueued(30, 30, 300)
	if st := h.Stats(); st.MaxQueueDepth != 4 || st.QueuedMessages != 5 {
		t.Fatalf("stats %+v", st)
	}
	h.stats.shards[9].unqueued(5, 5, 5)
	if st := h.Stats(); st.MaxQueueDepth != 0 || st.QueuedMessages != 0 || st.QueuedBytes != 0 {
		t.Fatalf("stats %+v", st)
	}
	for _, s := range []*statShard{s, &h.stats.shards[9]} {
		for k := range s.reached {
			if s.reached[k].Load() != s.fell[k].Load() {
				t.Fatalf("class %d: %d reached, %d fell", k, s.reached[k].Load(), s.fell[k].Load())
			}
		}
	}
}

// BenchmarkDeliveryCounters is what the counters cost one delivery in the
// worst case, a fan-out to one connection whose writer writes it alone:
// the frame tallied and the tally added, the frame taken, its stamp read,
// the clock read, its latency observed.
func BenchmarkDeliveryCounters(b *testing.B) {
	h := New(Config{PingInterval: -1})
	defer h.Close()
	c := &Conn{hub: h, uid: 7}
	f := stampedFrame([]byte(`{"content":"x"`), 0, "", monotime())
	stamps := make([]int64, 0, 1)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		var tally queueTally
		tally.queued(c, 1, len(f))
		tally.flush()
		c.stat().unqueued(1, 1, len(f))
		stamps = append(stamps[:0], frameStamp(f))
		c.stat().observe(stamps)
	}
}

// TestRefusalCodes: Refusals has a field for every code a client can be
// sent, and counts each error under the code its client sees.
func TestRefusalCodes(t *testing.T) {
	if refusalCodes[refusedIndex] != "refused" {
		t.Fatalf("refusedIndex is %q", refusalCodes[refusedIndex])
	}
	errs := []error{badMessage(1, "x"), Refuse("read_only", "no")}
	for _, c := range errorCodes {
		errs = append(errs, &Error{Kind: c.kind, Uid: 1})
	}
	for _, err := range errs {
		want := errorCode(err)
		if want == "read_only" {
			want = "refused"
		}
		if got := refusalCode(refusalIndex(err)); got != want {
			t.Errorf("%v counted as %s, its client sees %s", err, got, want)
		}
	}
	var r Refusals
	for i, p := range r.fields() {
		*p = uint64(i + 1)
	}
	i := 0
	r.Each(func(code string, n uint64) {
		if code != refusalCodes[i] || n != uint64(i+1) {
			t.Errorf("Each: %s=%d at %d", code, n, i)
		}
		i++
	})
}

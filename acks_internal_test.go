package chart

import (
	"strconv"
	"sync"
	"testing"
	"time"
)

// gatedAcks passes batches of acknowledgements to the broker's, each once
// the test lets it through, and shows the test each batch as it comes.
type gatedAcks struct {
	b       BatchAcks
	batches chan []StreamAck
	gate    chan struct{}
}

func (g gatedAcks) AckBatch(acks []StreamAck) error {
	g.batches <- append([]StreamAck(nil), acks...)
	<-g.gate
	return g.b.AckBatch(acks)
}

// ackQueueOn returns an ack queue to bus's streams through gated batches,
// its flushers tracked by wg, and failures reported to t.
func ackQueueOn(t *testing.T, bus *MemoryBus, wg *sync.WaitGroup) (*ackQueue, gatedAcks, Streams) {
	st := bus.Broker().(Streams)
	g := gatedAcks{b: st.(BatchAcks), batches: make(chan []StreamAck, 16), gate: make(chan struct{})}
	spawn := func(f func()) bool { wg.Add(1); go func() { defer wg.Done(); f() }(); return true }
	return newAckQueue(st, g, spawn, func(err error) { t.Errorf("ack failed: %v", err) }), g, st
}

func nextBatch(t *testing.T, g gatedAcks) []StreamAck {
	t.Helper()
	select {
	case b := <-g.batches:
		return b
	case <-time.After(wait):
		t.Fatal("no batch of acknowledgements")
		return nil
	}
}

// TestAckQueueMerges: while a batch of acknowledgements is on its way, the
// next ones of a stream and uid replace each other: the next batch has
// one per stream and uid, the newest (a backward one does not win), and
// the broker ends with it.
func TestAckQueueMerges(t *testing.T) {
	bus := NewMemoryBus()
	var wg sync.WaitGroup
	defer wg.Wait()
	q, g, st := ackQueueOn(t, bus, &wg)
	for i := 0; i < 1000; i++ {
		if _, _, err := st.Append("c:x", []byte("m"+strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	x := topic{ch: "x"}
	q.put(x, 1, "", 1)
	if b := nextBatch(t, g); len(b) != 1 || b[0] != (StreamAck{Stream: "c:x", Uid: 1, Offset: 1}) {
		t.Fatalf("first batch %+v, want uid 1 at 1", b)
	}
	for off := uint64(2); off <= 1000; off++ {
		q.put(x, 1, "", off)
	}
	q.put(x, 1, "", 500)
	for off := uint64(1); off <= 5; off++ {
		q.put(x, 9, "", off) // uid 9: on uid 1's shard (uids 8 apart)
	}
	g.gate <- struct{}{}
	b := nextBatch(t, g)
	got := map[uint64]uint64{}
	for _, a := range b {
		got[a.Uid] = a.Offset
	}
	if len(b) != 2 || got[1] != 1000 || got[9] != 5 {
		t.Fatalf("second batch %+v, want uid 1 at 1000 and uid 9 at 5", b)
	}
	g.gate <- struct{}{}
	wg.Wait()
	for uid, want := range map[uint64]uint64{1: 1000, 9: 5} {
		if off, _, err := st.Acked("c:x", uid); err != nil || off != want {
			t.Errorf("uid %d acknowledged %d (%v), want %d", uid, off, err, want)
		}
	}
}

// TestAckQueueSettle: reading an acknowledgement (acked) first sends the
// one queued and waits for the batch on its way, so that it reads what
// this node acknowledged.
func TestAckQueueSettle(t *testing.T) {
	bus := NewMemoryBus()
	var wg sync.WaitGroup
	defer wg.Wait()
	q, g, st := ackQueueOn(t, bus, &wg)
	for i := 0; i < 3; i++ {
		st.Append("u:7", []byte("d"))
	}
	inbox := topic{uid: 7}
	q.put(inbox, 7, "", 2)
	nextBatch(t, g) // on its way, held at the gate
	settled := make(chan struct{})
	go func() { q.settle(inbox, 7); close(settled) }()
	go func() { g.gate <- struct{}{} }()
	<-settled
	if off, _, _ := st.Acked("u:7", 7); off != 2 {
		t.Fatalf("after settle: acknowledged %d, want 2 (the batch on its way)", off)
	}

	q.put(inbox, 7, "", 3) // a new flusher takes it: let it through
	go func() { g.gate <- struct{}{} }()
	nextBatch(t, g)
	q.settle(inbox, 7)
	if off, _, _ := st.Acked("u:7", 7); off != 3 {
		t.Fatalf("after settle: acknowledged %d, want 3", off)
	}
}

// TestInboxAckedAcrossNodes: a plain connection's inbox messages count as
// acknowledged once written; with a broker, the acknowledgement reaches
// the broker from the queue and every node reads it.
func TestInboxAckedAcrossNodes(t *testing.T) {
	bus := NewMemoryBus()
	rec := newRecorder()
	a := startServer(t, Config{Broker: bus.Broker()}, rec)
	b := startServer(t, Config{Broker: bus.Broker()}, rec)
	c := a.dial(t, 1)
	const n = 50
	for i := 1; i <= n; i++ {
		if err := b.hub.SendMessageToUid(2, 1, "m"+strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i <= n; i++ {
		want(t, c, i)
	}
	deadline := time.Now().Add(wait)
	for {
		off, epoch := b.hub.InboxAcked(1)
		if off == n && epoch != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node B reads uid 1's inbox acknowledged at %d %q, want %d", off, epoch, n)
		}
		time.Sleep(5 * time.Millisecond) // polling the broker
	}
	if off, _ := a.hub.InboxAcked(1); off != n {
		t.Fatalf("node A reads %d, want %d", off, n)
	}
}

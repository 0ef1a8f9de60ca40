package chart

import (
	"context"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"
)

// gatedLookups passes batches of presence lookups to the broker's, each
// once the test lets it through, and shows the test each batch.
type gatedLookups struct {
	p       BatchPresence
	batches chan []uint64
	gate    chan struct{}
}

func (g gatedLookups) IsOnlineBatch(uids []uint64) ([]bool, error) {
	g.batches <- append([]uint64(nil), uids...)
	<-g.gate
	return g.p.IsOnlineBatch(uids)
}

// TestLookupsBatched: the presence lookups made while one batch is on its
// way go to the broker together, in the next batch, and each caller gets
// its own uid's answer.
func TestLookupsBatched(t *testing.T) {
	bus := NewMemoryBus()
	h := New(Config{Broker: bus.Broker()})
	defer h.Shutdown(context.Background())
	other := bus.Broker().(Presence)
	for uid := uint64(1); uid <= 50; uid += 2 {
		if _, err := other.Connect(uid); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	g := gatedLookups{p: other.(BatchPresence), batches: make(chan []uint64, 4), gate: make(chan struct{})}
	spawn := func(f func()) bool { wg.Add(1); go func() { defer wg.Done(); f() }(); return true }
	q := newLookupQueue(g, h.presence.(guardedPresence).g, spawn)

	first := make(chan bool)
	go func() { ok, _ := q.isOnline(1); first <- ok }()
	if b := <-g.batches; len(b) != 1 || b[0] != 1 {
		t.Fatalf("first batch %v, want [1]", b)
	}
	type answer struct {
		uid    uint64
		online bool
		err    error
	}
	answers := make(chan answer, 50)
	for uid := uint64(1); uid <= 50; uid++ {
		go func() { ok, err := q.isOnline(uid); answers <- answer{uid, ok, err} }()
	}
	deadline := time.Now().Add(wait)
	for {
		q.mu.Lock()
		n := len(q.queue)
		q.mu.Unlock()
		if n == 50 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d lookups queued, want 50", n)
		}
		runtime.Gosched()
	}
	g.gate <- struct{}{}
	if !<-first {
		t.Fatal("uid 1: offline, want online")
	}
	b := <-g.batches
	slices.Sort(b)
	if len(b) != 50 || b[0] != 1 || b[49] != 50 {
		t.Fatalf("second batch has %d uids (%v), want the 50 queued", len(b), b)
	}
	g.gate <- struct{}{}
	for range 50 {
		a := <-answers
		if a.err != nil || a.online != (a.uid%2 == 1) {
			t.Errorf("uid %d: online %v, %v; want %v", a.uid, a.online, a.err, a.uid%2 == 1)
		}
	}
}

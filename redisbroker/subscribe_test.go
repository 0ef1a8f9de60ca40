package redisbroker

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"
	"github.com/wuyan94zl/chart"
	"github.com/wuyan94zl/chart/charttest"
)

// msgNode is a chart.Node that keeps what it receives.
type msgNode struct{ msgs chan string }

func (n *msgNode) Receive(data []byte) { n.msgs <- string(data) }
func (*msgNode) BrokerError(error)     {}
func (*msgNode) Resumed()              {}

// TestSubscribeWhileFrozen: with Redis frozen (SIGSTOP), the subscription
// changes that hubs make as users come and go do not each wait the
// broker's Timeout behind go-redis's subscriber lock: once a call has
// failed, the others return at once (ErrUnreachable), their interest
// kept. A frozen Redis with users churning piled up one goroutine per
// change, each holding its uid's events for Timeout (5 s by default).
// After the thaw the subscriptions are what the last calls asked for.
func TestSubscribeWhileFrozen(t *testing.T) {
	srv := startRedis(t)
	const timeout = 300 * time.Millisecond
	b := mustDial(t, srv, Options{Prefix: "s:", Timeout: timeout})
	n := &msgNode{msgs: make(chan string, 1000)}
	if err := b.Attach(n); err != nil {
		t.Fatal(err)
	}
	before := []string{"kept"}
	for i := range 100 {
		before = append(before, fmt.Sprintf("g%d", i))
	}
	for _, topic := range before {
		if err := b.Subscribe(topic); err != nil {
			t.Fatal(err)
		}
	}
	thaw := freeze(t, srv)
	// The first call finds Redis frozen, within Timeout (a write into
	// the socket may still succeed: then the next one finds out).
	deadline := time.Now().Add(5 * time.Second)
	for i := 0; ; i++ {
		start := time.Now()
		err := b.Unsubscribe(fmt.Sprintf("probe%d", i))
		if took := time.Since(start); took > timeout+200*time.Millisecond {
			t.Fatalf("Unsubscribe into a frozen Redis took %v, want within Timeout %v", took, timeout)
		}
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Unsubscribe into a frozen Redis kept succeeding")
		}
	}
	// Then many changes at once, as a churn of users makes them: the
	// g topics go, u topics come.
	const calls = 200
	var wg sync.WaitGroup
	took := make([]time.Duration, calls)
	errs := make([]error, calls)
	for i := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			if i < 100 {
				errs[i] = b.Unsubscribe(fmt.Sprintf("g%d", i))
			} else {
				errs[i] = b.Subscribe(fmt.Sprintf("u%d", i))
			}
			took[i] = time.Since(start)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if !errors.Is(err, ErrUnreachable) {
			t.Errorf("change %d with Redis frozen: %v, want ErrUnreachable", i, err)
		}
	}
	slices.Sort(took)
	if worst := took[calls-1]; worst > 50*time.Millisecond {
		t.Fatalf("%d subscription changes with Redis frozen and known to be: median %v, slowest %v; want each within 50 ms",
			calls, took[calls/2], worst)
	}
	c := thaw()
	// The subscriptions asked for while frozen are in place once one
	// asked for after the thaw went out (the broker takes Redis for
	// unreachable until a call succeeds): a message on each u topic and
	// on kept arrives, none on the g topics. Redis delivers in order, so
	// the last message, on after, comes last.
	for deadline := time.Now().Add(5 * time.Second); b.Subscribe("after") != nil; {
		if time.Now().After(deadline) {
			t.Fatal("Subscribe still failing 5 s after the thaw")
		}
		time.Sleep(10 * time.Millisecond) // polling the broker's state, with a deadline
	}
	var want []string
	for _, topic := range append(before, u(100, 200)...) {
		publish(t, c, "s:"+topic, topic)
		if topic[0] != 'g' {
			want = append(want, topic)
		}
	}
	publish(t, c, "s:after", "after")
	want = append(want, "after")
	var got []string
	for len(got) == 0 || got[len(got)-1] != "after" {
		select {
		case m := <-n.msgs:
			got = append(got, m)
		case <-time.After(5 * time.Second):
			t.Fatalf("after the thaw received %q, then nothing for 5 s", got)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("after the thaw received\n%q\nwant\n%q", got, want)
	}
}

// u returns the topics "u<i>" for i in [from, to).
func u(from, to int) []string {
	var s []string
	for i := from; i < to; i++ {
		s = append(s, fmt.Sprintf("u%d", i))
	}
	return s
}

// publish publishes data on the pub/sub channel ch.
func publish(t *testing.T, c *redis.Client, ch, data string) {
	t.Helper()
	if err := c.Publish(context.Background(), ch, data).Err(); err != nil {
		t.Fatal(err)
	}
}

// TestFreezeChurnBounded: users connecting and leaving a hub while Redis
// is frozen do not pile up goroutines: once the broker knows Redis is
// frozen (its first call's Timeout), each uid's login and logout steps
// (Connect, Subscribe, Disconnect, Unsubscribe) fail at once instead of
// waiting Timeout each in line for go-redis's subscriber lock (a review
// counted 21k goroutines and 206 MB after 30 s of such churn; here, before
// the fix, 5k after 2 s and growing).
func TestFreezeChurnBounded(t *testing.T) {
	srv := startRedis(t)
	const timeout = 300 * time.Millisecond
	// A long prefix fills the socket buffers towards the frozen Redis
	// after a few hundred subscription changes instead of a hundred
	// thousand: until they are full, writes into a frozen Redis succeed.
	b := mustDial(t, srv, Options{Timeout: timeout, Prefix: strings.Repeat("p", 8<<10)})
	rec := charttest.NewRecorder()
	s := charttest.Start(t, chart.Config{Broker: b, Handler: rec}, rec)
	base := runtime.NumGoroutine()
	thaw := freeze(t, srv)
	frozen := time.Now()
	// Users come and go for two seconds, 20 at a time, while the
	// goroutines are counted every 50 ms.
	var (
		wg    sync.WaitGroup
		conns atomic.Int64
		done  = make(chan struct{})
	)
	end := frozen.Add(2 * time.Second)
	for w := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(end); i++ {
				ws, _, err := websocket.DefaultDialer.Dial(fmt.Sprintf("%s?id=%d", s.URL, 1000+w*100000+i), nil)
				if err != nil {
					t.Error(err)
					return
				}
				conns.Add(1)
				ws.Close()
			}
		}()
	}
	go func() { wg.Wait(); close(done) }()
	var counts []int
	steady := 0 // the most goroutines counted once the freeze was known
	for tick := time.NewTicker(50 * time.Millisecond); ; {
		select {
		case <-tick.C:
			g := runtime.NumGoroutine() - base
			counts = append(counts, g)
			if time.Since(frozen) > 3*timeout {
				steady = max(steady, g)
			}
			continue
		case <-done:
			tick.Stop()
		}
		break
	}
	t.Logf("%d connections in 2 s with Redis frozen; goroutines above the %d before, every 50 ms: %v", conns.Load(), base, counts)
	if steady > 200 {
		t.Errorf("%d connections in 2 s with Redis frozen: from %v after the freeze on, goroutines rose to %d above the %d before (want at most 200)",
			conns.Load(), 3*timeout, steady, base)
	}
	thaw()
	charttest.Eventually(t, "goroutines back near their count before the freeze", func() bool {
		return runtime.NumGoroutine() < base+50
	})
}

package natsbroker

import (
	"github.com/gorilla/websocket"
	"github.com/wuyan94zl/chart"
	"github.com/wuyan94zl/chart/charttest"
	"sync/atomic"

	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// freezeFor is how long the churn tests keep nats-server frozen: past
// the client's stale-connection detection (two unanswered pings 2 s
// apart), so that the freeze covers both a connection the client still
// takes for alive and one it is reconnecting.
const freezeFor = 7 * time.Second

// callTimes records how long calls took.
type callTimes struct {
	mu    sync.Mutex
	n     int
	worst time.Duration
	over  []string // calls over the bound
	bound time.Duration
}

func (c *callTimes) timed(name string, f func() error) error {
	start := time.Now()
	err := f()
	d := time.Since(start)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	c.worst = max(c.worst, d)
	if d > c.bound {
		c.over = append(c.over, fmt.Sprintf("%s took %v (%v)", name, d.Round(time.Millisecond), err))
	}
	return err
}

// snapshot returns how many calls were timed, the slowest, and those
// over the bound.
func (c *callTimes) snapshot() (n int, worst time.Duration, over []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n, c.worst, slices.Clone(c.over)
}

// goroutines samples runtime.NumGoroutine every 10 ms until stop is
// closed, and sends the highest count seen.
func goroutines(stop <-chan struct{}) <-chan int {
	out := make(chan int, 1)
	go func() {
		most := 0
		for {
			most = max(most, runtime.NumGoroutine())
			select {
			case <-stop:
				out <- most
				return
			case <-time.After(10 * time.Millisecond): // sampling over time
			}
		}
	}()
	return out
}

// backTo waits until runtime.NumGoroutine is at most n, for d at most,
// and returns the last count.
func backTo(n int, d time.Duration) int {
	deadline := time.Now().Add(d)
	for {
		g := runtime.NumGoroutine()
		if g <= n || time.Now().After(deadline) {
			return g
		}
		time.Sleep(10 * time.Millisecond) // polling a count that has no event
	}
}

// TestFrozenSubscribeBounded: nats-server frozen (SIGSTOP) for freezeFor
// while 64 goroutines subscribe and unsubscribe topics of 300 bytes, a
// new topic each time (3 of 4 unsubscribed again at once, the fourth
// kept), as fast as the calls return: every call returns within
// Options.Timeout (plus a margin for a loaded -race build); the goroutine
// count stays the callers' plus a few, and is back to what it was before
// once the server is thawed; and then each topic kept subscribed, and
// none of the others, gets a message published on it.
func TestFrozenSubscribeBounded(t *testing.T) {
	srv := startNATSProc(t, false)
	const timeout = time.Second
	b, err := Connect(srv.url(), Options{Prefix: "churn", Bucket: "churn", Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	got := &recvNode{ch: make(chan string, 1<<16)}
	b.Attach(got)
	pad := strings.Repeat("x", 300)
	topic := func(i int) string { return "u:" + strconv.Itoa(i) + ":" + pad }
	if err := b.Subscribe(topic(-1)); err != nil { // the connection is up
		t.Fatal(err)
	}
	base := runtime.NumGoroutine()

	const callers = 64
	times := &callTimes{bound: timeout + 250*time.Millisecond}
	// A publish may wait for a write the server does not take (given up
	// after the timeout) and then for a reconnect attempt (as long).
	pubTimes := &callTimes{bound: 2*timeout + 250*time.Millisecond}
	var mu sync.Mutex
	var kept, dropped []int
	srv.freeze(t)
	frozen := time.Now()
	stop := make(chan struct{})
	most := goroutines(stop)
	var wg sync.WaitGroup
	// A publisher fills the connection's socket buffers (the server reads
	// nothing), as a hub's traffic would: the client's writes then block.
	fill := make([]byte, 32<<10)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for time.Since(frozen) < freezeFor {
			pubTimes.timed("Publish", func() error { return b.Publish("c:fill", fill) })
		}
	}()
	for w := 0; w < callers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; time.Since(frozen) < freezeFor; k++ {
				i := w + k*callers
				times.timed("Subscribe", func() error { return b.Subscribe(topic(i)) })
				mu.Lock()
				if k%4 == 0 {
					kept = append(kept, i)
				} else {
					dropped = append(dropped, i)
				}
				mu.Unlock()
				if k%4 != 0 {
					times.timed("Unsubscribe", func() error { return b.Unsubscribe(topic(i)) })
				}
				time.Sleep(time.Millisecond) // pacing the callers, who fail at once while NATS is down

			}
		}()
	}
	wg.Wait()
	close(stop)
	high := <-most
	srv.thaw(t)
	thawed := time.Now()
	after := backTo(base+5, 10*time.Second)
	t.Logf("frozen %v: %d publishes of 32 KiB, the slowest %v (bound %v)", freezeFor, pubTimes.n, pubTimes.worst.Round(time.Millisecond), pubTimes.bound)
	if len(pubTimes.over) > 0 {
		t.Errorf("%d of %d publishes over %v while NATS was frozen:\n  %s", len(pubTimes.over), pubTimes.n, pubTimes.bound, strings.Join(firstN(pubTimes.over, 10), "\n  "))
	}
	t.Logf("frozen %v: %d calls, the slowest %v (bound %v), %d over; goroutines %d before, at most %d while frozen (%d callers), %d %v after the thaw; %d topics kept, %d dropped",
		freezeFor, times.n, times.worst.Round(time.Millisecond), times.bound, len(times.over), base, high, callers, after, time.Since(thawed).Round(time.Millisecond), len(kept), len(dropped))
	if len(times.over) > 0 {
		t.Errorf("%d of %d calls over %v while NATS was frozen:\n  %s", len(times.over), times.n, times.bound, strings.Join(firstN(times.over, 10), "\n  "))
	}
	if high > base+callers+20 {
		t.Errorf("%d goroutines while NATS was frozen, want at most %d before + %d callers + 20", high, base, callers)
	}
	if after > base+5 {
		t.Errorf("%d goroutines 10 s after the thaw, want at most %d (before) + 5", after, base)
	}

	// Once a Subscribe succeeds again, the broker has applied every
	// change asked before it and the server has them: a message on every
	// topic reaches exactly the kept ones.
	deadline := time.Now().Add(10 * time.Second)
	for b.Subscribe(topic(-1)) != nil {
		if time.Now().After(deadline) {
			t.Fatal("Subscribe still fails 10 s after the thaw")
		}
		time.Sleep(10 * time.Millisecond) // polling the broker's reconnection
	}
	t.Logf("subscriptions in place %v after the thaw", time.Since(thawed).Round(time.Millisecond))
	pub, err := nats.Connect(srv.url())
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	slices.Sort(kept)
	all := append(slices.Clone(kept), dropped...)
	slices.Sort(all)
	// In chunks, each followed by a marker on the probe topic and read up
	// to it, so that the node's buffers (64 Ki messages) never overflow.
	var recv []int
	for start := 0; start < len(all); start += 10000 {
		for _, i := range all[start:min(start+10000, len(all))] {
			if err := pub.Publish(b.subject(topic(i)), []byte(strconv.Itoa(i))); err != nil {
				t.Fatal(err)
			}
		}
		mark := "mark " + strconv.Itoa(start)
		if err := pub.Publish(b.subject(topic(-1)), []byte(mark)); err != nil {
			t.Fatal(err)
		}
		for {
			var m string
			select {
			case m = <-got.ch:
			case <-time.After(10 * time.Second):
				t.Fatalf("%q not received 10 s after it was published; got %d messages", mark, len(recv))
			}
			if m == mark {
				break
			}
			i, _ := strconv.Atoi(m)
			recv = append(recv, i)
		}
	}
	if !slices.Equal(recv, kept) {
		t.Errorf("after the thaw, messages on %d topics (%d kept subscribed, %d unsubscribed) reached the node on %d: missing %v, unsubscribed but received %v",
			len(all), len(kept), len(dropped), len(recv), diff(kept, recv), diff(recv, kept))
	}
}

// diff returns the elements of a not in b, at most 10.
func diff(a, b []int) []int {
	in := make(map[int]bool, len(b))
	for _, x := range b {
		in[x] = true
	}
	var d []int
	for _, x := range a {
		if !in[x] {
			d = append(d, x)
		}
	}
	if len(d) > 10 {
		d = d[:10]
	}
	return d
}

// firstN returns the first n of s, and how many more there are.
func firstN(s []string, n int) []string {
	if len(s) > n {
		return append(s[:n:n], fmt.Sprintf("... %d more", len(s)-n))
	}
	return s
}

// timedBroker is a Broker whose Subscribe and Unsubscribe calls, the
// hub's, are timed.
type timedBroker struct {
	*Broker
	times *callTimes
}

func (tb timedBroker) Subscribe(topic string) error {
	return tb.times.timed("Subscribe", func() error { return tb.Broker.Subscribe(topic) })
}

func (tb timedBroker) Unsubscribe(topic string) error {
	return tb.times.timed("Unsubscribe", func() error { return tb.Broker.Unsubscribe(topic) })
}

// TestFrozenChurnBounded: nats-server frozen (SIGSTOP) for freezeFor
// while 300 WebSocket clients connect to node A and close again as fast
// as they can, each time as a new uid, and then each connects once more
// and stays. Every Subscribe and Unsubscribe the hub makes returns within
// Options.Timeout (plus a margin); the goroutine count stays bounded by
// the clients (it does not grow with the uids churned); after the thaw
// node B's direct message to each of the 300 uids still connected reaches
// it on node A (A subscribed to exactly those: nothing else arrives), and
// once they close the goroutines are back to what they were before.
func TestFrozenChurnBounded(t *testing.T) {
	srv := startNATSProc(t, false)
	const timeout = time.Second
	opt := Options{Prefix: "hubchurn", Bucket: "hubchurn", Timeout: timeout, TTL: 1200 * time.Millisecond}
	ba, err := Connect(srv.url(), opt)
	if err != nil {
		t.Fatal(err)
	}
	bb, err := Connect(srv.url(), opt)
	if err != nil {
		t.Fatal(err)
	}
	times := &callTimes{bound: timeout + 250*time.Millisecond}
	rec := charttest.NewRecorder()
	a := charttest.Start(t, chart.Config{Broker: timedBroker{ba, times}, RateLimit: -1, Handler: rec}, rec)
	b := charttest.Start(t, chart.Config{Broker: bb, RateLimit: -1, Handler: rec}, rec)
	c0 := a.Login(t, rec, 1) // the hubs are up
	c0.Close()
	base := backTo(0, 0) // the count now: nothing to wait for

	const clients = 300
	type final struct {
		ws  *websocket.Conn
		uid uint64
	}
	var churned atomic.Int64
	finals := make([]final, clients)
	errs := make(chan error, clients)
	srv.freeze(t)
	frozen := time.Now()
	stop := make(chan struct{})
	most := goroutines(stop)
	var wg sync.WaitGroup
	for k := 0; k < clients; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := websocket.Dialer{HandshakeTimeout: charttest.Wait}
			for n := 0; ; n++ {
				uid := uint64(1000 + k + n*clients)
				ws, _, err := d.Dial(a.URL+"?id="+strconv.FormatUint(uid, 10), nil)
				if err != nil {
					errs <- fmt.Errorf("uid %d dials node A: %v", uid, err)
					return
				}
				if time.Since(frozen) >= freezeFor {
					finals[k] = final{ws, uid} // this one stays
					return
				}
				ws.Close()
				churned.Add(1)
			}
		}()
	}
	wg.Wait()
	close(stop)
	high := <-most
	srv.thaw(t)
	thawed := time.Now()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	n, worst, over := times.snapshot()
	t.Logf("frozen %v: %d uids connected and closed by %d clients, %d hub (un)subscriptions, the slowest %v (bound %v), %d over; goroutines %d before, at most %d while frozen",
		freezeFor, churned.Load(), clients, n, worst.Round(time.Millisecond), times.bound, len(over), base, high)
	if len(over) > 0 {
		t.Errorf("%d of %d hub (un)subscriptions over %v while NATS was frozen:\n  %s", len(over), n, times.bound, strings.Join(firstN(over, 10), "\n  "))
	}
	// Each client holds one connection at a time; the server side of a
	// connection is a few goroutines (its reader, writer and HTTP
	// connection, the login/logout steps while they run).
	if bound := base + 8*clients; high > bound {
		t.Errorf("%d goroutines while NATS was frozen, want at most %d (%d before + 8 for each of the %d clients)", high, bound, base, clients)
	}

	// After the thaw, node B's direct message to each uid connected
	// reaches it, once: node A subscribed to those uids' topics.
	conns := make([]*charttest.Client, clients)
	for k, f := range finals {
		conns[k] = a.Attach(t, f.ws, f.uid)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, c := range conns {
		for b.Hub.SendMessageToUid(7, c.Uid, "to "+strconv.FormatUint(c.Uid, 10)) != nil {
			if time.Now().After(deadline) {
				t.Fatalf("node B's direct message to uid %d refused 10 s after the thaw", c.Uid)
			}
			time.Sleep(10 * time.Millisecond) // polling the nodes' recovery
		}
	}
	t.Logf("node B's messages to the %d uids accepted %v after the thaw", clients, time.Since(thawed).Round(time.Millisecond))
	for _, c := range conns {
		c.WantContent("to " + strconv.FormatUint(c.Uid, 10))
	}
	// A last message each: nothing came between (no other uid's message,
	// no second copy).
	for _, c := range conns {
		if err := b.Hub.SendMessageToUid(7, c.Uid, "end"); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range conns {
		for {
			m := c.NextMsg()
			if m.Content == "end" {
				break
			}
			if strings.HasPrefix(m.Content, "to ") {
				t.Errorf("uid %d got %q again or another's", c.Uid, m.Content)
			}
		}
	}
	for _, c := range conns {
		c.Close()
	}
	if after := backTo(base+10, 10*time.Second); after > base+10 {
		t.Errorf("%d goroutines once the clients closed, want at most %d (before) + 10", after, base)
	}
}

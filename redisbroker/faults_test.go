package redisbroker

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/wuyan94zl/chart"
	"github.com/wuyan94zl/chart/charttest"
)

// faultTTL is the nodes' TTL in the fault suite: short, so that outages
// longer than it take a couple of seconds, and long enough (heartbeat
// every 300 ms) that a -race build on a busy machine does not miss it.
const faultTTL = 900 * time.Millisecond

// TestFaults runs charttest.Faults against real redis-server processes:
// one without persistence (a restart loses presence) and one with an
// append-only file fsynced at every write (a restart keeps it), killed
// with SIGKILL and restarted on the same port and directory, and frozen
// with SIGSTOP and thawed with SIGCONT.
func TestFaults(t *testing.T) {
	for _, aof := range []bool{false, true} {
		name := "Plain"
		if aof {
			name = "AOF"
		}
		t.Run(name, func(t *testing.T) {
			dir := ""
			if aof {
				dir = t.TempDir()
			}
			srv := startRedisIn(t, dir)
			f := faults(srv)
			f.Persistent = aof
			if aof {
				// Only the restarts differ with persistence.
				f.Only = []string{"OutageShort", "OutageLong"}
			}
			f.Run(t)
		})
	}
}

// faults is the Faults of srv.
func faults(srv *redisServer) charttest.Faults {
	var seq atomic.Int64
	addr := fmt.Sprintf("127.0.0.1:%d", srv.port)
	return charttest.Faults{
		Addr: addr,
		NewCluster: func(t *testing.T) func(string) chart.Broker {
			prefix := fmt.Sprintf("faults%d:", seq.Add(1))
			return func(addr string) chart.Broker {
				b, err := Dial("redis://"+addr, Options{Prefix: prefix, TTL: faultTTL, Timeout: time.Second})
				if err != nil {
					t.Fatal(err)
				}
				return b
			}
		},
		Kill: func(t *testing.T) func() {
			srv.stop() // SIGKILL
			return func() {
				srv.t = t
				srv.start() // returns once a PING is answered
			}
		},
		Freeze: func(t *testing.T) func() {
			if err := srv.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			frozen := true
			t.Cleanup(func() {
				if frozen {
					srv.cmd.Process.Signal(syscall.SIGCONT)
				}
			})
			return func() {
				srv.cmd.Process.Signal(syscall.SIGCONT)
				frozen = false
				c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
				defer c.Close()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if err := c.Ping(ctx).Err(); err != nil {
					t.Fatalf("redis-server does not answer after SIGCONT: %v", err)
				}
			}
		},
	}
}

// TestTimeoutBoundsFrozenCall: a call into a frozen Redis (SIGSTOP) fails
// within Options.Timeout, not go-redis's own read timeout (5 s): the one
// call the hub lets through to a stuck broker waits that long.
func TestTimeoutBoundsFrozenCall(t *testing.T) {
	srv := startRedis(t)
	const timeout = 300 * time.Millisecond
	b, err := Dial(srv.url(), Options{Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.IsOnline(1); err != nil {
		t.Fatal(err)
	}
	if err := srv.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer srv.cmd.Process.Signal(syscall.SIGCONT)
	for _, call := range []struct {
		name string
		f    func() error
	}{
		{"IsOnline", func() error { _, err := b.IsOnline(1); return err }},
		{"Connect", func() error { _, err := b.Connect(1); return err }},
		{"Append", func() error { _, _, err := b.Append("c:x", []byte("x")); return err }},
	} {
		b.down.Store(false) // each call reaches Redis
		start := time.Now()
		err := call.f()
		took := time.Since(start)
		if err == nil {
			t.Fatalf("%s on a frozen Redis succeeded", call.name)
		}
		if took > timeout+200*time.Millisecond {
			t.Errorf("%s on a frozen Redis failed after %v, want within Timeout %v (+200 ms): %v", call.name, took, timeout, err)
		}
	}
}

// TestDownCallsFailAtOnce: with Redis killed, every call fails within
// 100 ms, the probes let through every 100 ms included (each dials once:
// go-redis's default of 5 dials 100 ms apart held each probe for about
// 0.4 s, and the hub's API call that made it).
func TestDownCallsFailAtOnce(t *testing.T) {
	srv := startRedis(t)
	b, err := Dial(srv.url(), Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.IsOnline(1); err != nil {
		t.Fatal(err)
	}
	srv.stop()
	var worst time.Duration
	calls, failed := 0, 0
	for end := time.Now().Add(500 * time.Millisecond); time.Now().Before(end); calls++ {
		start := time.Now()
		_, err := b.IsOnline(1)
		took := time.Since(start)
		worst = max(worst, took)
		if err == nil {
			t.Fatal("IsOnline succeeded with Redis killed")
		}
		if took > 100*time.Millisecond {
			failed++
		}
		time.Sleep(10 * time.Millisecond) // pacing the calls, across several probes
	}
	if failed > 0 {
		t.Fatalf("%d of %d calls to a killed Redis took over 100 ms, the slowest %v", failed, calls, worst)
	}
	t.Logf("%d calls, the slowest %v", calls, worst)
}

// TestReachedAtOnceAfterLongOutage: after more failed publishes than
// go-redis's pipeline pool size (its dial circuit breaker then stops
// dialing and tries again once a second in the background), messages
// published once Redis is back go out at once, not up to a second later
// (lost meanwhile).
func TestReachedAtOnceAfterLongOutage(t *testing.T) {
	srv := startRedis(t)
	b := mustDial(t, srv, Options{Prefix: "p:", Timeout: time.Second})
	n := &errNode{errs: make(chan error, 1000)}
	if err := b.Attach(n); err != nil {
		t.Fatal(err)
	}
	srv.stop()
	for i := 0; i < 30; i++ { // the pipeline pool holds 10
		b.down.Store(false) // past the broker's own gate
		if err := b.Publish("t", []byte("lost")); err != nil {
			t.Fatal(err)
		}
		if err := charttest.Recv(t, n.errs, "the publish's failure"); err == nil {
			t.Fatal("nil error")
		}
	}
	srv.start() // returns once a PING on a fresh client is answered
	back := time.Now()
	sub := redis.NewClient(&redis.Options{Addr: strings.TrimPrefix(srv.url(), "redis://")})
	defer sub.Close()
	ps := sub.Subscribe(context.Background(), "p:t")
	defer ps.Close()
	if _, err := ps.Receive(context.Background()); err != nil { // subscribed
		t.Fatal(err)
	}
	subscribed := time.Since(back)
	for i := 0; ; i++ {
		b.down.Store(false)
		b.Publish("t", []byte(strconv.Itoa(i)))
		if m, err := ps.ReceiveTimeout(context.Background(), 5*time.Millisecond); err == nil {
			if msg, ok := m.(*redis.Message); ok {
				took := time.Since(back)
				t.Logf("subscribed %v, message %s received %v after Redis was back", subscribed, msg.Payload, took)
				if took > subscribed+100*time.Millisecond {
					t.Fatalf("first message received %v after Redis was back (subscribed after %v), want within 100 ms", took, subscribed)
				}
				return
			}
		}
		if time.Since(back) > 3*time.Second {
			t.Fatalf("no message through %v after Redis was back", time.Since(back))
		}
	}
}

// errNode is a chart.Node that keeps the broker errors.
type errNode struct{ errs chan error }

func (*errNode) Receive([]byte)          {}
func (n *errNode) BrokerError(err error) { n.errs <- err }
func (*errNode) Resumed()                {}

// TestPublishWhileThoughtDown: a publish made while the broker still
// holds Redis for unreachable (its last call failed a moment ago) but
// Redis is back goes out: the node learns that Redis is back only after
// it is, and the message was dropped (ErrUnreachable) meanwhile.
func TestPublishWhileThoughtDown(t *testing.T) {
	srv := startRedis(t)
	b := mustDial(t, srv, Options{Prefix: "p:", Timeout: time.Second})
	n := &errNode{errs: make(chan error, 1000)}
	if err := b.Attach(n); err != nil {
		t.Fatal(err)
	}
	sub := redis.NewClient(&redis.Options{Addr: strings.TrimPrefix(srv.url(), "redis://")})
	defer sub.Close()
	ps := sub.Subscribe(context.Background(), "p:t")
	defer ps.Close()
	if _, err := ps.Receive(context.Background()); err != nil { // subscribed
		t.Fatal(err)
	}
	// A call failed a moment ago; Redis answers again.
	b.down.Store(true)
	b.lastTry.Store(time.Now().UnixNano())
	if err := b.Publish("t", []byte("after")); err != nil {
		t.Fatalf("Publish while Redis is thought down: %v", err)
	}
	m, err := ps.ReceiveTimeout(context.Background(), charttest.Wait)
	if msg, ok := m.(*redis.Message); err != nil || !ok || msg.Payload != "after" {
		t.Fatalf("subscriber got %v, %v; want the message", m, err)
	}
}

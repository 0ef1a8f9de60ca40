package redisbroker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/wuyan94zl/chart"
	"github.com/wuyan94zl/chart/charttest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// redisServer is a real redis-server on a free port, started by the test.
type redisServer struct {
	t    *testing.T
	port int
	cmd  *exec.Cmd
	done chan struct{}
	// aof, when set, is the directory where the server keeps an
	// append-only file (appendfsync always), the same across restarts.
	aof string
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func startRedis(t *testing.T) *redisServer {
	t.Helper()
	return startRedisIn(t, "")
}

// startRedisIn is startRedis keeping an append-only file in dir, unless
// dir is empty.
func startRedisIn(t *testing.T, dir string) *redisServer {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("redis-server is not installed; .ci/run installs it (apt-get install redis-server)")
		}
		t.Skip("redis-server is not installed: apt-get install redis-server to run the Redis broker tests")
	}
	r := &redisServer{t: t, port: freePort(t), aof: dir}
	r.start()
	t.Cleanup(r.stop)
	return r
}

func (r *redisServer) url() string { return fmt.Sprintf("redis://127.0.0.1:%d", r.port) }

func (r *redisServer) start() {
	t := r.t
	t.Helper()
	args := []string{"--port", strconv.Itoa(r.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"}
	if r.aof != "" {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always", "--dir", r.aof)
	}
	r.cmd = exec.Command("redis-server", args...)
	r.done = make(chan struct{})
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func(cmd *exec.Cmd, done chan struct{}) {
		cmd.Wait()
		close(done)
	}(r.cmd, r.done)
	c := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", r.port), MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for c.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			t.Fatal("redis-server did not start")
		}
		time.Sleep(10 * time.Millisecond) // polling a starting process: no event to wait for
	}
}

func (r *redisServer) stop() {
	if r.cmd == nil {
		return
	}
	r.cmd.Process.Kill()
	<-r.done
	r.cmd = nil
}

func TestRedisBroker(t *testing.T) {
	srv := startRedis(t)
	var seq atomic.Int64
	charttest.Suite{
		NewCluster: func(t *testing.T) func() chart.Broker {
			prefix := fmt.Sprintf("test%d:", seq.Add(1))
			return func() chart.Broker {
				b, err := Dial(srv.url(), Options{Prefix: prefix, TTL: 600 * time.Millisecond, Timeout: time.Second})
				if err != nil {
					t.Fatal(err)
				}
				return b
			}
		},
		Outage: func(t *testing.T) func() {
			srv.stop()
			return srv.start
		},
	}.Run(t)
}

// TestPublishQueueBounded: when messages are published faster than they
// are sent (here nothing sends: the broker is not attached), the queue
// stops at publishQueue and further publishes fail, after waiting
// publishWait for room, with ErrPublishQueueFull instead of buffering
// without bound.
func TestPublishQueueBounded(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer rdb.Close()
	b := New(rdb, Options{})
	for i := 0; i < publishQueue; i++ {
		if err := b.Publish("c:room", []byte("x")); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	start := time.Now()
	if err := b.Publish("u:7", []byte("x")); !errors.Is(err, ErrPublishQueueFull) {
		t.Fatalf("publish past the queue: %v, want ErrPublishQueueFull", err)
	}
	if waited := time.Since(start); waited < publishWait {
		t.Fatalf("publish past the queue failed after %v, want a wait of %v for room", waited, publishWait)
	}
	if len(b.pubq) != publishQueue {
		t.Fatalf("queue holds %d, want %d", len(b.pubq), publishQueue)
	}
}

// TestPublishCopies: the queue keeps a copy, so the caller may reuse its
// buffer once Publish returns; the channel is Prefix+topic.
func TestPublishCopies(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer rdb.Close()
	b := New(rdb, Options{Prefix: "p:"})
	buf := []byte("abc")
	if err := b.Publish("c:a b.*>", buf); err != nil {
		t.Fatal(err)
	}
	copy(buf, "xyz")
	m := <-b.pubq
	if m.topic != "p:c:a b.*>" || string(m.data) != "abc" {
		t.Fatalf("queued %q %q, want %q %q", m.topic, m.data, "p:c:a b.*>", "abc")
	}
}

// TestDialUnreachable: Dial checks the server, and fails soon when nothing
// listens at the address.
func TestDialUnreachable(t *testing.T) {
	url := fmt.Sprintf("redis://127.0.0.1:%d", freePort(t))
	start := time.Now()
	b, err := Dial(url, Options{})
	if err == nil {
		b.Close()
		t.Fatal("Dial succeeded with no server listening")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Dial took %v to fail", d)
	}
	t.Log(err)
}

// mustDial dials srv's Redis, closing the broker at the end of the test.
func mustDial(t *testing.T, srv *redisServer, opt Options) *Broker {
	t.Helper()
	b, err := Dial(srv.url(), opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// freeze stops srv (SIGSTOP) until thaw, or the end of the test. thaw
// resumes it and returns a client on a fresh connection whose PING was
// answered: Redis has run what waited in its sockets before.
func freeze(t *testing.T, srv *redisServer) (thaw func() *redis.Client) {
	t.Helper()
	if err := srv.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	cont := func() { once.Do(func() { srv.cmd.Process.Signal(syscall.SIGCONT) }) }
	t.Cleanup(cont)
	return func() *redis.Client {
		cont()
		c := redis.NewClient(&redis.Options{Addr: strings.TrimPrefix(srv.url(), "redis://")})
		t.Cleanup(func() { c.Close() })
		if err := c.Ping(context.Background()).Err(); err != nil {
			t.Fatal(err)
		}
		return c
	}
}

// TestHeartbeatFenced: a heartbeat that waited in a frozen Redis (SIGSTOP)
// until after its caller timed out does not reap when Redis runs it: the
// users it would take offline would be seen by nobody. The next heartbeat
// reaps, and its caller gets them.
func TestHeartbeatFenced(t *testing.T) {
	srv := startRedis(t)
	opt := Options{TTL: 300 * time.Millisecond, Timeout: 200 * time.Millisecond}
	a, b := mustDial(t, srv, opt), mustDial(t, srv, opt)
	if _, _, _, err := a.Heartbeat(false); err != nil { // a measures its skew
		t.Fatal(err)
	}
	if _, _, _, err := b.Heartbeat(false); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Connect(7); err != nil {
		t.Fatal(err)
	}
	// b stops heartbeating; Redis freezes; a's heartbeat times out.
	thaw := freeze(t, srv)
	if _, _, _, err := a.Heartbeat(true); err == nil {
		t.Fatal("heartbeat to a frozen Redis succeeded")
	}
	// By the time Redis runs it, b's TTL has passed.
	time.Sleep(2 * opt.TTL) // Redis is stopped: there is no event to wait for
	c := thaw()
	ctx := context.Background()
	if online, err := c.SIsMember(ctx, "chart:online", "7").Result(); err != nil || !online {
		t.Fatalf("uid 7 online = %v, %v after the timed-out heartbeat: it reaped unseen", online, err)
	}
	gone, _, _, err := a.Heartbeat(true)
	if err != nil || len(gone) != 1 || gone[0] != 7 {
		t.Fatalf("next heartbeat: gone %v, err %v; want [7]", gone, err)
	}
}

// TestConnectFenced: a Connect that waited in a frozen Redis (SIGSTOP)
// until after its caller timed out does nothing when Redis runs it: the
// hub took it as failed, and will log the uid in when Redis answers, which
// it would not do if it found the uid online already.
func TestConnectFenced(t *testing.T) {
	srv := startRedis(t)
	opt := Options{TTL: 300 * time.Millisecond, Timeout: 200 * time.Millisecond}
	a := mustDial(t, srv, opt)
	if _, _, _, err := a.Heartbeat(false); err != nil { // a measures its skew
		t.Fatal(err)
	}
	if _, err := a.Connect(6); err != nil { // Redis has the script
		t.Fatal(err)
	}
	thaw := freeze(t, srv)
	if _, err := a.Connect(7); err == nil {
		t.Fatal("Connect to a frozen Redis succeeded")
	}
	time.Sleep(2 * opt.Timeout) // Redis is stopped: there is no event to wait for
	c := thaw()
	ctx := context.Background()
	if online, err := c.SIsMember(ctx, "chart:online", "7").Result(); err != nil || online {
		t.Fatalf("uid 7 online = %v, %v after the timed-out Connect: it applied unseen", online, err)
	}
	if first, err := a.Connect(7); err != nil || !first {
		t.Fatalf("Connect after the thaw = %v, %v; want first", first, err)
	}
}

// TestDirectRefusedWhenNotAppended: Redis refuses writes (out of memory)
// but answers reads, so the recipient is found online on the other node
// while its inbox cannot be appended to. The direct message reaches
// nobody, and the sender is told so (broker_failed) instead of seeing its
// echo; once Redis takes writes again, the next message goes through and
// is the first the recipient gets.
func TestDirectRefusedWhenNotAppended(t *testing.T) {
	srv := startRedis(t)
	rec := charttest.NewRecorder()
	opt := Options{TTL: time.Minute} // no heartbeat (a write) during the test
	node := func() *charttest.Server {
		b, err := Dial(srv.url(), opt)
		if err != nil {
			t.Fatal(err)
		}
		return charttest.Start(t, chart.Config{Broker: b}, rec)
	}
	a, b := node(), node()
	c1 := a.Login(t, rec, 1)
	c2 := b.Login(t, rec, 2)
	ctl := redis.NewClient(&redis.Options{Addr: strings.TrimPrefix(srv.url(), "redis://")})
	defer ctl.Close()
	ctx := context.Background()
	if err := ctl.ConfigSet(ctx, "maxmemory", "1").Err(); err != nil {
		t.Fatal(err)
	}
	c1.SendToUser(2, "lost?")
	f := c1.NextErr("broker_failed")
	if f.ToUserId != 2 {
		t.Fatalf("error frame %+v, want one naming to_user_id 2", f)
	}
	rec.WantErr(t, chart.ErrBroker)
	if err := ctl.ConfigSet(ctx, "maxmemory", "0").Err(); err != nil {
		t.Fatal(err)
	}
	// The node refuses at once until it sees Redis answer again (failfast).
	charttest.Eventually(t, "node A sees uid 2 online", func() bool { return a.Hub.IsOnline(2) })
	c1.SendToUser(2, "after")
	if m := c1.NextMsg(); m.Content != "after" {
		t.Fatalf("sender got %+v, want its echo of \"after\"", m)
	}
	if m := c2.NextMsg(); m.Content != "after" || m.Offset == 0 {
		t.Fatalf("recipient's first message %+v, want \"after\" with its offset", m)
	}
}

package redisbroker

import (
	"context"
	"fmt"
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

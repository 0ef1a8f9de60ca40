package natsbroker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/wuyan94zl/chart"
	"github.com/wuyan94zl/chart/charttest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// The nats-server binary the process tests built goes once the leak
	// check is done.
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		removeBinary()
		os.Exit(code)
	}))
}

// natsServer is an embedded nats-server with JetStream, which the test can
// stop and start again on the same port.
type natsServer struct {
	t    testing.TB
	opts server.Options
	s    *server.Server
}

func startNATS(t testing.TB) *natsServer {
	t.Helper()
	n := &natsServer{t: t, opts: server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		NoLog: true, NoSigs: true,
	}}
	n.start()
	n.opts.Port = n.s.Addr().(*net.TCPAddr).Port
	t.Cleanup(n.stop)
	return n
}

func (n *natsServer) start() {
	n.t.Helper()
	if err := n.tryStart(10 * time.Second); err != nil {
		n.t.Fatal(err)
	}
}

// tryStart starts the server and waits at most d until it listens.
func (n *natsServer) tryStart(d time.Duration) error {
	opts := n.opts // the server keeps and changes its options
	s, err := server.NewServer(&opts)
	if err != nil {
		return err
	}
	s.Start()
	if !s.ReadyForConnections(d) {
		s.Shutdown()
		s.WaitForShutdown()
		return errors.New("nats-server did not start")
	}
	n.s = s
	return nil
}

func (n *natsServer) stop() {
	if n.s == nil {
		return
	}
	n.s.Shutdown()
	n.s.WaitForShutdown()
	n.s = nil
}

func (n *natsServer) url() string { return n.s.ClientURL() }

func TestNATSBroker(t *testing.T) {
	srv := startNATS(t)
	url := srv.url()
	var seq atomic.Int64
	charttest.Suite{
		NewCluster: func(t *testing.T) func() chart.Broker {
			k := seq.Add(1)
			opt := Options{
				Prefix:  fmt.Sprintf("test%d", k),
				Bucket:  fmt.Sprintf("test%d", k),
				TTL:     600 * time.Millisecond,
				Timeout: time.Second,
			}
			return func() chart.Broker {
				b, err := Connect(url, opt)
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

// TestStorage: the buckets and the streams are in memory unless Options.FileStorage.
func TestStorage(t *testing.T) {
	srv := startNATS(t)
	for _, c := range []struct {
		file bool
		want jetstream.StorageType
	}{{false, jetstream.MemoryStorage}, {true, jetstream.FileStorage}} {
		bucket := fmt.Sprintf("storage_%v", c.file)
		b, err := Connect(srv.url(), Options{Prefix: bucket, Bucket: bucket, FileStorage: c.file})
		if err != nil {
			t.Fatal(err)
		}
		s, err := b.js.Stream(context.Background(), bucket+"_streams")
		if err != nil {
			t.Fatal(err)
		}
		if got := s.CachedInfo().Config.Storage; got != c.want {
			t.Errorf("FileStorage %v: stream has %v, want %v", c.file, got, c.want)
		}
		for _, name := range []string{bucket, bucket + "_alive", bucket + "_ids"} {
			kv, err := b.js.KeyValue(context.Background(), name)
			if err != nil {
				t.Fatal(err)
			}
			st, err := kv.Status(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if got := st.(*jetstream.KeyValueBucketStatus).StreamInfo().Config.Storage; got != c.want {
				t.Errorf("FileStorage %v: bucket %s has %v, want %v", c.file, name, got, c.want)
			}
		}
		b.Close()
	}
}

// TestTopics: topics with any characters reach the nodes subscribed to
// exactly that topic, and are kept apart by the prefix.
func TestTopics(t *testing.T) {
	srv := startNATS(t)
	topics := []string{"c:a.b", "c:*", "c:>", "c:a b", "c:\u00e9\u4e2d", "u:42"}
	connect := func(prefix string, n chart.Node) *Broker {
		b, err := Connect(srv.url(), Options{Prefix: prefix, Bucket: prefix})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		b.Attach(n)
		return b
	}
	got := &recvNode{ch: make(chan string, 16)}
	sub, other := connect("chart", got), connect("other", got)
	pub := connect("chart", &recvNode{ch: make(chan string, 16)})
	for _, tp := range topics {
		if err := sub.Subscribe(tp); err != nil {
			t.Fatal(err)
		}
		if err := other.Subscribe(tp); err != nil {
			t.Fatal(err)
		}
	}
	if err := sub.Unsubscribe("u:42"); err != nil {
		t.Fatal(err)
	}
	for _, tp := range append([]string{"c:a"}, topics...) {
		if err := pub.Publish(tp, []byte(tp)); err != nil {
			t.Fatal(err)
		}
	}
	for _, tp := range topics[:len(topics)-1] {
		if m := charttest.Recv(t, got.ch, tp); m != tp {
			t.Fatalf("got %q, want %q", m, tp)
		}
	}
	if err := pub.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := sub.nc.Flush(); err != nil { // what the server sent sub is in by now
		t.Fatal(err)
	}
	select {
	case m := <-got.ch:
		t.Fatalf("got %q after the last subscribed topic", m)
	case <-time.After(50 * time.Millisecond):
	}
}

// recvNode is a chart.Node that forwards what it receives.
type recvNode struct{ ch chan string }

func (n *recvNode) Receive(data []byte) { n.ch <- string(data) }
func (n *recvNode) BrokerError(error)   {}
func (n *recvNode) Resumed()            {}

package natsbroker

import (
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/wuyan94zl/chart"
	"github.com/wuyan94zl/chart/charttest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// natsServer is an embedded nats-server with JetStream, which the test can
// stop and start again on the same port.
type natsServer struct {
	t    *testing.T
	opts server.Options
	s    *server.Server
}

func startNATS(t *testing.T) *natsServer {
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
	opts := n.opts // the server keeps and changes its options
	s, err := server.NewServer(&opts)
	if err != nil {
		n.t.Fatal(err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		n.t.Fatal("nats-server did not start")
	}
	n.s = s
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

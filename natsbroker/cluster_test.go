package natsbroker

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/wuyan94zl/chart"
	"github.com/wuyan94zl/chart/charttest"
)

// startNATSCluster starts n embedded nats-servers with JetStream, clustered,
// and waits until JetStream answers. The route ports are picked free
// beforehand; one taken meanwhile by another process makes a server fail
// to listen, and the cluster is started again on new ports.
func startNATSCluster(t *testing.T, n int) []*natsServer {
	t.Helper()
	var servers []*natsServer
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if servers, err = tryNATSCluster(t, n); err == nil {
			break
		}
		t.Logf("starting the cluster: %v; again on other ports", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range servers {
		t.Cleanup(s.stop)
	}
	nc, err := nats.Connect(servers[0].url())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	charttest.Eventually(t, "JetStream clustered", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := js.AccountInfo(ctx)
		return err == nil
	})
	return servers
}

func tryNATSCluster(t *testing.T, n int) ([]*natsServer, error) {
	ports := make([]int, n)
	var routes []string
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ports[i] = l.Addr().(*net.TCPAddr).Port
		l.Close()
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", ports[i]))
	}
	servers := make([]*natsServer, n)
	for i := range servers {
		s := &natsServer{t: t, opts: server.Options{
			ServerName: fmt.Sprintf("s%d", i+1), Host: "127.0.0.1", Port: -1,
			JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true,
			Cluster: server.ClusterOpts{Name: "chart", Host: "127.0.0.1", Port: ports[i]},
			Routes:  server.RoutesFromStr(strings.Join(routes, ",")),
		}}
		if err := s.tryStart(5 * time.Second); err != nil {
			for _, started := range servers[:i] {
				started.stop()
			}
			return nil, fmt.Errorf("server %d (route port %d): %w", i+1, ports[i], err)
		}
		s.opts.Port = s.s.Addr().(*net.TCPAddr).Port
		servers[i] = s
	}
	return servers, nil
}

// TestNATSClusterLosesAServer: three clustered nats-servers; node A's
// connection is to server 1, node B's to server 2. The buckets and the
// stream get 3 replicas by default. The server leading the presence bucket
// dies: the nodes on it reconnect to another, uid 1 (on A) stays online in
// presence as B sees it (but for moments shorter than a heartbeat
// interval), no LogoutServer runs, and messages go on across the nodes.
func TestNATSClusterLosesAServer(t *testing.T) {
	servers := startNATSCluster(t, 3)
	urls := func(first int) string {
		var u []string
		for i := range servers {
			u = append(u, servers[(first+i)%len(servers)].url())
		}
		return strings.Join(u, ",")
	}
	var brokers []*Broker
	node := func(first int) chart.Broker {
		nc, err := nats.Connect(urls(first), nats.DontRandomize(), nats.MaxReconnects(-1),
			nats.ReconnectWait(20*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		b, err := New(nc, Options{TTL: 3 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		brokers = append(brokers, b)
		return b
	}
	rec := charttest.NewRecorder()
	a := charttest.Start(t, chart.Config{Broker: node(0), RateLimit: -1, Handler: rec}, rec)
	b := charttest.Start(t, chart.Config{Broker: node(1), RateLimit: -1, Handler: rec}, rec)
	for _, br := range brokers {
		if br.opt.Replicas != 3 {
			t.Fatalf("replicas %d, want 3 on a cluster of 3", br.opt.Replicas)
		}
	}
	c1 := a.Login(t, rec, 1)
	c2 := b.Login(t, rec, 2)
	a.Hub.JoinChannelIds(1, "room")
	b.Hub.JoinChannelIds(2, "room")
	charttest.AwaitRoute(t, a, "room", c1, c2)
	charttest.AwaitRoute(t, b, "room", c1, c2)

	// The server that leads the presence bucket dies (with one replica,
	// presence would die with it).
	info, err := brokers[0].js.Stream(context.Background(), "KV_"+brokers[0].opt.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	leader := info.CachedInfo().Cluster.Leader
	for _, s := range servers {
		if s.opts.ServerName == leader {
			s.stop()
		}
	}
	// The nodes are back on other servers once messages cross again.
	charttest.AwaitRoute(t, a, "room", c1, c2)
	charttest.AwaitRoute(t, b, "room", c1, c2)
	// Presence outlives the server: for two TTLs, B sees uid 1 online,
	// but for moments shorter than a heartbeat interval while the
	// buckets elect new leaders (B's calls fail then, and it answers with
	// its own users).
	killed := time.Now()
	deadline := killed.Add(2 * 3 * time.Second)
	var wrong time.Time
	for time.Now().Before(deadline) {
		got := b.Hub.OnlineUserIds()
		switch right := slices.Equal(got, []uint64{1, 2}); {
		case !right && wrong.IsZero():
			wrong = time.Now()
		case !right && time.Since(wrong) > brokers[1].HeartbeatInterval():
			t.Fatalf("node B has seen %v online for %v", got, time.Since(wrong))
		case right && !wrong.IsZero():
			t.Logf("node B saw uid 1 offline from %v to %v after the kill", wrong.Sub(killed), time.Since(killed))
			wrong = time.Time{}
		}
		time.Sleep(10 * time.Millisecond) // sampling presence over time
	}
	if !wrong.IsZero() {
		t.Fatalf("node B sees uid 1 offline at the end")
	}
	select {
	case uid := <-rec.Logouts:
		t.Fatalf("LogoutServer(%d) while it was connected", uid)
	default:
	}
	c2.SendTo("room", "after")
	c1.WantContent("after")
}

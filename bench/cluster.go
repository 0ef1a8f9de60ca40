package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"
)

// The -cluster mode measures chart on one node against two nodes sharing a
// broker, with the same clients and payloads as the rest of the suite:
//
//   - single: one chart server process, no broker (the baseline);
//   - redis, nats: two chart server processes (node A, node B) with
//     redisbroker or natsbroker, and a fresh broker process per measurement.
//
// Connection i goes to node i%2, so every channel and room has half its
// members on each node; business-code publishes go to node A. Workloads:
// fan-out (chart.Publish on node A to one channel, half the subscribers on
// node B), rooms (clients send into rooms of 10, 5 members per node) and
// direct (clients send direct messages to a partner on the other node).
// Half of all deliveries cross the broker.

// wlDirect is the cluster workload of direct messages between partners.
const wlDirect = "direct"

// clusterLabel names a setup in results and the report.
var clusterLabel = map[string]string{"single": "single", "redis": "redis", "nats": "nats"}

// setClusterDefaults configures cfg for -cluster; flags given explicitly
// override these defaults afterwards (or here, for -workloads and
// -rooms-rate, whose defaults belong to the main suite).
func setClusterDefaults(cfg *config, setups string) {
	cfg.mode = "cluster"
	cfg.setups = splitList(setups)
	cfg.workloads = []string{wlFanout, wlRooms, wlDirect}
	cfg.fanoutSubs, cfg.fanoutDuration, cfg.repeat = []int{1000}, 3*time.Second, 3
	cfg.roomsConns, cfg.roomsRates, cfg.roomsDuration = 1000, []float64{5, 20}, 5*time.Second
	cfg.quietBudget, cfg.pprof = 2*time.Minute, false
	flag.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "workloads":
			cfg.workloads = splitList(f.Value.String())
		case "rooms-rate":
			cfg.roomsRates = floats(f.Value.String())
		}
	})
	for _, s := range cfg.setups {
		if _, ok := clusterLabel[s]; !ok {
			fmt.Fprintf(os.Stderr, "unknown setup %q (want single, redis, nats)\n", s)
			os.Exit(2)
		}
	}
}

// clusterMain runs the -cluster mode and returns the exit status: 1 if a
// measurement failed or lost a message.
func clusterMain(cfg *config) int {
	rep := runCluster(cfg)
	if err := writeClusterReport(cfg, rep); err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		return 1
	}
	logf("wrote %s", cfg.doc)
	if n := rep.failures(""); n > 0 {
		logf("%d measurement(s) failed or lost messages (see the notes in %s)", n, cfg.doc)
		if cfg.strict {
			return 1
		}
	}
	return 0
}

// runCluster runs every selected workload on every selected setup; setups
// alternate within a workload so that slow drift of the machine affects
// them alike.
func runCluster(cfg *config) *report {
	rep := newReport(cfg)
	rep.Params = map[string]any{
		"setups": cfg.setups, "nodes_per_cluster": 2, "fanout_subscribers": cfg.fanoutSubs,
		"fanout_payload_bytes": cfg.sizes, "fanout_seconds_per_phase": cfg.fanoutDuration.Seconds(),
		"fanout_window": cfg.window, "fanout_repeats": cfg.repeat, "rooms_connections": cfg.roomsConns,
		"room_size": roomSize, "msgs_per_user_per_sec": cfg.roomsRates, "rooms_payload_bytes": cfg.roomsSize,
		"rooms_seconds": cfg.roomsDuration.Seconds(), "redis_server": redisVersion(), "nats_server": natsVersion(),
	}
	b0, t0 := machineBusy(), time.Now()
	idle := time.NewTimer(time.Second) // measuring the background load, not synchronising
	<-idle.C
	rep.BackgroundCPU = (machineBusy() - b0).Seconds() / time.Since(t0).Seconds()
	start := time.Now()
	for _, wl := range cfg.workloads {
		for _, setup := range cfg.setups {
			switch wl {
			case wlFanout:
				for _, subs := range cfg.fanoutSubs {
					rep.Fanout = append(rep.Fanout, clusterFanout(cfg, setup, subs)...)
				}
			case wlRooms, wlDirect:
				for _, rate := range cfg.roomsRates {
					rep.Rooms = append(rep.Rooms, clusterRooms(cfg, setup, wl == wlDirect, rate))
				}
			default:
				logf("unknown cluster workload %q skipped", wl)
			}
		}
	}
	rep.Seconds = time.Since(start).Seconds()
	rep.QuietWaited = cfg.quietWaited.Seconds()
	return rep
}

// testbed is the server side of one cluster measurement: the server
// processes and, for two nodes, their broker.
type testbed struct {
	set    serverSet
	addrs  []string // WebSocket address of each node
	broker *brokerProc
}

// startTestbed starts the servers of setup for workload: one plain chart
// server, or a broker and two chart-cluster nodes.
func startTestbed(setup, workload string) (*testbed, error) {
	if setup == "single" {
		srv, err := startServer("chart", workload)
		if err != nil {
			return nil, err
		}
		return &testbed{set: single(srv), addrs: []string{srv.addr}}, nil
	}
	br, err := startBroker(setup)
	if err != nil {
		return nil, err
	}
	tb := &testbed{broker: br, set: serverSet{broker: br.pid}}
	for range 2 {
		srv, err := startServer("chart-cluster", workload, "BENCH_BROKER="+br.url)
		if err != nil {
			tb.stop()
			return nil, err
		}
		tb.set.procs = append(tb.set.procs, srv)
		tb.addrs = append(tb.addrs, srv.addr)
	}
	return tb, nil
}

// stop kills the nodes, then the broker. It is idempotent.
func (tb *testbed) stop() {
	for _, p := range tb.set.procs {
		p.stop()
	}
	if tb.broker != nil {
		tb.broker.stop()
		tb.broker = nil
	}
}

// clusterFanout measures the fan-out to subs subscribers on setup.
func clusterFanout(cfg *config, setup string, subs int) []fanoutResult {
	label := clusterLabel[setup]
	tb, err := startTestbed(setup, wlFanout)
	if err != nil {
		logf("fanout %-12s error: %v", label, err)
		return failFanout(cfg, label, subs, err)
	}
	defer tb.stop()
	s := newFanoutSink(subs)
	clients, err := connectAll(tb.addrs, findLib("chart"), subs, cfg.dialConcurrency, func(int) []string { return []string{"room"} }, s)
	if err != nil {
		return failFanout(cfg, label, subs, err)
	}
	defer func() { tb.stop(); closeAll(clients) }()
	res, _ := fanoutSizes(cfg, label, tb.set, s, clients)
	return res
}

// clusterRooms measures the rooms workload (rooms of roomSize) or, with
// direct, the direct workload (pairs: uid 2k+1 and 2k+2, on different
// nodes, send each other direct messages) on setup at rate messages per
// second per user.
func clusterRooms(cfg *config, setup string, direct bool, rate float64) roomsResult {
	n, group, kind := cfg.roomsConns, roomSize, wlRooms
	if direct {
		group, kind = 2, wlDirect
	}
	r := roomsResult{Lib: clusterLabel[setup], Kind: kind, Conns: n, Rooms: n / group, PerUserRate: rate, Size: cfg.roomsSize}
	tb, err := startTestbed(setup, wlRooms)
	if err != nil {
		r.Err = err.Error()
		logf("%-6s %-12s error: %v", kind, r.Lib, err)
		return r
	}
	defer tb.stop()
	s := &roomsSink{n: int64(n), group: int64(group), warmDone: make(chan struct{}), hist: new(histogram)}
	room := func(i int) []string { return []string{"room-" + strconv.Itoa(i/group)} }
	clients, err := connectAll(tb.addrs, findLib("chart"), n, cfg.dialConcurrency, room, s)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	defer func() { tb.stop(); closeAll(clients) }()
	send := func(c *client, p []byte) error { return c.publish(c.chans[0], p) }
	if direct {
		// Connection i (uid i+1) and its partner i^1 are on different nodes.
		send = func(c *client, p []byte) error { return sendDirect(c, int64(c.idx^1)+1, p) }
	}
	return roomsPhase(cfg, r, tb.set, clients, s, send)
}

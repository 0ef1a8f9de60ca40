package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wuyan94zl/chart"
)

// TestMain lets the test binary act as the server (and NATS) subprocess,
// so the smoke tests run the real driver against real server processes.
func TestMain(m *testing.M) {
	roleMain()
	os.Exit(m.Run())
}

func TestPayloadRoundTrip(t *testing.T) {
	p := appendPayload(nil, kindFanout, 42, 1234567890123, 7, 100)
	if len(p) != 100 {
		t.Fatalf("len = %d, want 100", len(p))
	}
	frame := append([]byte(`{"push":{"channel":"room","pub":{"data":"`), p...)
	frame = append(frame, `"}}}`+"\n"+`{"push":{"channel":"room","pub":{"data":"`...)
	frame = appendPayload(frame, kindFanout, 43, 5, 0, 10)
	frame = append(frame, `"}}}`...)
	h, rest, ok := nextPayload(frame)
	if !ok || h.kind != kindFanout || h.seq != 42 || h.ts != 1234567890123 || h.sender != 7 {
		t.Fatalf("first payload = %+v, %v", h, ok)
	}
	h, rest, ok = nextPayload(rest)
	if !ok || h.seq != 43 || h.ts != 5 || h.sender != 0 {
		t.Fatalf("second payload = %+v, %v", h, ok)
	}
	if _, _, ok = nextPayload(rest); ok {
		t.Fatal("found a third payload")
	}
	// A short payload keeps its header whole.
	if p := appendPayload(nil, kindProbe, 1, 2, 3, 4); string(p) != "@@P1,2,3;" {
		t.Fatalf("short payload = %q", p)
	}
	// Broken markers are skipped.
	if _, _, ok := nextPayload([]byte("@@F12,x@@F")); ok {
		t.Fatal("parsed a broken payload")
	}
}

func TestHistogramQuantiles(t *testing.T) {
	h := new(histogram)
	for i := 1; i <= 1000; i++ {
		h.record(i, int64(i)*int64(time.Microsecond))
	}
	n, q := h.quantiles(0.5, 0.99, 1)
	if n != 1000 {
		t.Fatalf("count = %d", n)
	}
	for i, want := range []time.Duration{500 * time.Microsecond, 990 * time.Microsecond, 1000 * time.Microsecond} {
		if d := float64(q[i]-want) / float64(want); d < -0.04 || d > 0.04 {
			t.Errorf("quantile %d = %v, want %v ±4%%", i, q[i], want)
		}
	}
	for v := int64(0); v < 1<<20; v = v*3/2 + 1 {
		if b := bucketOf(v); bucketValue(b) < v/2 || bucketValue(b) > v*2+1 {
			t.Fatalf("bucket of %d represents %d", v, bucketValue(b))
		}
	}
}

// TestLatencyQuantile checks the interpolation in chart's delivery
// histogram buckets and the difference of two histograms.
func TestLatencyQuantile(t *testing.T) {
	var before, after chart.Latency
	le := time.Duration(100 * time.Microsecond)
	for k := range after.Buckets {
		after.Buckets[k].Le, before.Buckets[k].Le = le, le
		if k%3 == 0 {
			le = le * 5 / 2 // 100 µs, 250 µs, 500 µs, 1 ms, ...
		} else {
			le *= 2
		}
	}
	// 100 observations: 50 in (100 µs, 250 µs], 50 in (250 µs, 500 µs],
	// after 10 in (0, 100 µs] that the difference removes.
	for k := range after.Buckets {
		switch {
		case k == 0:
			after.Buckets[k].Count, before.Buckets[k].Count = 10, 10
		case k == 1:
			after.Buckets[k].Count, before.Buckets[k].Count = 60, 10
		default:
			after.Buckets[k].Count, before.Buckets[k].Count = 110, 10
		}
	}
	after.Count, before.Count = 110, 10
	d := latencyDiff(after, before)
	if d.Count != 100 {
		t.Fatalf("count %d", d.Count)
	}
	for q, want := range map[float64]time.Duration{0.5: 250 * time.Microsecond, 0.25: 175 * time.Microsecond, 0.99: 495 * time.Microsecond, 1: 500 * time.Microsecond} {
		if got := latencyQuantile(d, q); got != want {
			t.Errorf("quantile %g = %v, want %v", q, got, want)
		}
	}
	if got := latencyQuantile(chart.Latency{}, 0.5); got != 0 {
		t.Errorf("empty quantile %v", got)
	}
}

// TestFixedAfterFanout checks that the fixed-rate fan-out runs after the
// saturated one that sets its rates.
func TestFixedAfterFanout(t *testing.T) {
	for in, want := range map[string]string{
		"fanout-fixed,rooms,fanout": "rooms,fanout,fanout-fixed",
		"fanout,rooms,fanout-fixed": "fanout,rooms,fanout-fixed",
		"fanout-fixed,storm":        "fanout-fixed,storm",
	} {
		if got := strings.Join(fixedAfterFanout(splitList(in)), ","); got != want {
			t.Errorf("%s: %s, want %s", in, got, want)
		}
	}
}

// TestWSConn checks the raw client against gorilla's server: fragmented
// messages, pings and masked client frames.
func TestWSConn(t *testing.T) {
	up := websocket.Upgrader{WriteBufferSize: 64}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		// Pongs are handled inside ReadMessage; the handler reports them.
		c.SetPongHandler(func(s string) error {
			return c.WriteMessage(websocket.TextMessage, []byte("pong:"+s))
		})
		// A message larger than the write buffer is sent in fragments.
		big := strings.Repeat("abcdefgh", 100)
		_ = c.WriteMessage(websocket.TextMessage, []byte(big))
		_ = c.WriteControl(websocket.PingMessage, []byte("hi"), time.Now().Add(time.Second))
		for {
			_, msg, err := c.ReadMessage()
			if err != nil {
				return // the client closed
			}
			_ = c.WriteMessage(websocket.TextMessage, append([]byte("echo:"), msg...))
		}
	}))
	defer srv.Close()
	ws, err := dialWS(strings.TrimPrefix(srv.URL, "http://"), "/x", 512, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	msg, err := ws.readMessage()
	if err != nil || string(msg) != strings.Repeat("abcdefgh", 100) {
		t.Fatalf("big message: %v, %d bytes", err, len(msg))
	}
	long := bytes.Repeat([]byte("z"), 300) // needs the 16-bit length form
	if err := ws.writeText(long); err != nil {
		t.Fatal(err)
	}
	// The client answered the ping after sending long, so the echo comes
	// first, then the server's report of the pong.
	if msg, err = ws.readMessage(); err != nil || string(msg) != "echo:"+string(long) {
		t.Fatalf("echo: %v %q", err, msg)
	}
	if msg, err = ws.readMessage(); err != nil || string(msg) != "pong:hi" {
		t.Fatalf("pong: %v %q", err, msg)
	}
}

func TestCentrifugePing(t *testing.T) {
	for in, want := range map[string]bool{
		"{}": true, "{}\n{\"push\":{}}": true, "{\"id\":1}\n{}": true, "{\"a\":{}}": false, "{\"a\":{}}\n{\"b\":1}": false,
	} {
		if got := centrifugeProto.isPing([]byte(in)); got != want {
			t.Errorf("isPing(%q) = %v", in, got)
		}
	}
}

// TestSmoke runs every workload for every peer at a tiny scale through the
// real driver and server subprocesses, and checks that nothing is lost and
// that the report is written.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts server processes")
	}
	dir := t.TempDir()
	cfg := &config{
		mode: "test", workloads: []string{wlFixed, wlFanout, wlRooms, wlStorm, wlHistory}, sizes: []int{100, 1024},
		fanoutSubs: []int{20, 50}, fanoutDuration: 200 * time.Millisecond, window: 16, repeat: 1,
		roomsConns: 50, roomsRates: []float64{5}, roomsSize: 100, roomsDuration: 300 * time.Millisecond,
		stormConns: 50, stormConcurrency: 8, stormSequential: 10, dialConcurrency: 16,
		// An 8 MiB history cap (512 KiB per shard) keeps about 13,000
		// direct messages to offline users: the flood passes it 6 times.
		histChannels: 10, histUsers: 300, histFlood: 80000, histCap: 8 << 20,
		fixedFraction: 0.5, fixedDuration: 300 * time.Millisecond,
		outDir: dir, doc: filepath.Join(dir, "bench.md"), svg: filepath.Join(dir, "fanout.svg"),
	}
	cfg.libs = append(cfg.libs, libOrder...)
	cfg.workloads = fixedAfterFanout(cfg.workloads)
	rep := run(cfg)
	for _, f := range rep.Fanout {
		if f.Err != "" || f.Lost != 0 || f.Published == 0 {
			t.Errorf("fanout %s subs=%d size=%d: published %d lost %d: %s", f.Lib, f.Subs, f.Size, f.Published, f.Lost, f.Err)
		}
	}
	if len(rep.Fanout) != len(libOrder)*4 {
		t.Errorf("%d fan-out results, want %d", len(rep.Fanout), len(libOrder)*4)
	}
	// The fixed rate of a configuration is half the slowest peer's
	// saturated rate, the same for every peer.
	if len(rep.Fixed) != len(libOrder)*4 {
		t.Errorf("%d fixed-rate results, want %d", len(rep.Fixed), len(libOrder)*4)
	}
	for _, f := range rep.Fixed {
		slowest := 0.0
		for _, g := range rep.Fanout {
			if g.Subs == f.Subs && g.Size == f.Size && (slowest == 0 || g.Rate < slowest) {
				slowest = g.Rate
			}
		}
		if f.Err != "" || f.Lost != 0 || f.Published == 0 || f.P50us <= 0 || f.Offered != slowest/2 {
			t.Errorf("fixed %s subs=%d size=%d: offered %.0f (slowest saturated %.0f), published %d lost %d: %s", f.Lib, f.Subs, f.Size, f.Offered, slowest, f.Published, f.Lost, f.Err)
		}
		// The hub counts a delivery once its write returned, and the
		// driver reads the count once the clients have every message: the
		// last few may be received before they are counted.
		counted := func(h *hubStage, n int64) bool {
			return h != nil && h.Count <= uint64(n) && h.Count+uint64(n/100)+2 >= uint64(n) && h.MeanUs > 0
		}
		if hub := counted(f.Hub, f.Deliveries); hub != (f.Lib == "chart") {
			t.Errorf("fixed %s subs=%d size=%d: hub stage %+v for %d deliveries", f.Lib, f.Subs, f.Size, f.Hub, f.Deliveries)
		}
	}
	for _, f := range rep.Fanout {
		if (f.Hub != nil) != (f.Lib == "chart") {
			t.Errorf("fanout %s: hub stage %+v", f.Lib, f.Hub)
		}
	}
	for _, r := range rep.Rooms {
		if r.Err != "" || r.Lost != 0 || r.Sent == 0 {
			t.Errorf("rooms %s: sent %d lost %d: %s", r.Lib, r.Sent, r.Lost, r.Err)
		}
		if (r.Hub != nil && r.Hub.Count > 0) != (r.Lib == "chart") {
			t.Errorf("rooms %s: hub stage %+v", r.Lib, r.Hub)
		}
	}
	for _, s := range rep.Storm {
		if s.Err != "" || s.Failed != 0 || s.P50us <= 0 || s.SeqP50us <= 0 {
			t.Errorf("storm %s: failed %d p50 %.0f: %s", s.Lib, s.Failed, s.P50us, s.Err)
		}
	}
	var chans, inboxes int
	for _, h := range rep.History {
		if h.Channels > 0 {
			chans++
			if h.ChannelError != "" || h.ChannelKept != 10*100 || h.HeapPerMessage <= 0 {
				t.Errorf("history %s: kept %d channel messages, %.0f B each: %s", h.Lib, h.ChannelKept, h.HeapPerMessage, h.ChannelError)
			}
		}
		if h.Users > 0 {
			inboxes++
			var last floodPoint
			if len(h.Flood) > 0 {
				last = h.Flood[len(h.Flood)-1]
			}
			if h.Err != "" || h.UsersKept != 300 || h.HeapPerUser <= 0 || len(h.Flood) != 4 || !h.Bounded || last.Kept <= 0 || last.Kept >= last.Sent/2 {
				t.Errorf("history %s: kept %d of 300, %.0f B each, flood %+v, bounded %v: %s", h.Lib, h.UsersKept, h.HeapPerUser, h.Flood, h.Bounded, h.Err)
			}
		}
	}
	if chans != 2 || inboxes != 1 {
		t.Errorf("history: %d channel and %d inbox results, want 2 (chart, centrifuge) and 1 (chart)", chans, inboxes)
	}
	if err := writeReport(cfg, rep); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(cfg.doc)
	if err != nil || !bytes.Contains(md, []byte("| fan-out 50 subs, 1 KiB | deliveries/s ↑ |")) || !bytes.Contains(md, []byte("| 80,000 | ")) ||
		!bytes.Contains(md, []byte("## Fan-out at a fixed rate")) || !bytes.Contains(md, []byte("## Where chart's latency goes")) {
		t.Fatalf("report: %v\n%s", err, md)
	}
	svg, err := os.ReadFile(cfg.svg)
	if err != nil || !bytes.HasPrefix(svg, []byte("<svg")) || !bytes.Contains(svg, []byte("</svg>")) {
		t.Fatalf("svg: %v", err)
	}
}

// TestCluster runs the -cluster workloads (fan-out, rooms, direct) at a
// tiny scale on one node and on two nodes over Redis and over NATS, through
// real node and broker processes, and checks that nothing is lost and that
// the report is written. Without redis-server the redis setup is skipped,
// unless CI is set.
func TestCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts server and broker processes")
	}
	dir := t.TempDir()
	cfg := &config{
		mode: "cluster", workloads: []string{wlFanout, wlRooms, wlDirect}, sizes: []int{100},
		fanoutSubs: []int{20}, fanoutDuration: 200 * time.Millisecond, window: 16, repeat: 1,
		roomsConns: 20, roomsRates: []float64{5}, roomsSize: 100, roomsDuration: 300 * time.Millisecond,
		dialConcurrency: 16, outDir: dir, doc: filepath.Join(dir, "cluster.md"),
	}
	all := &report{cfg: cfg}
	for _, setup := range []string{"single", "redis", "nats"} {
		t.Run(setup, func(t *testing.T) {
			if _, err := exec.LookPath("redis-server"); setup == "redis" && err != nil {
				if os.Getenv("CI") != "" {
					t.Fatal("redis-server is not installed; CI must install it (apt-get install -y redis-server)")
				}
				t.Skip("redis-server is not installed: apt-get install -y redis-server to run the Redis cluster benchmark")
			}
			c := *cfg
			c.setups = []string{setup}
			rep := runCluster(&c)
			if len(rep.Fanout) != 1 || len(rep.Rooms) != 2 {
				t.Fatalf("%d fan-out and %d rooms results, want 1 and 2", len(rep.Fanout), len(rep.Rooms))
			}
			for _, f := range rep.Fanout {
				if f.Err != "" || f.Lost != 0 || f.Published == 0 {
					t.Errorf("fanout %s: published %d lost %d: %s", f.Lib, f.Published, f.Lost, f.Err)
				}
			}
			for _, r := range rep.Rooms {
				if r.Err != "" || r.Lost != 0 || r.Sent == 0 || !r.Echo {
					t.Errorf("%s %s: sent %d lost %d echo %v: %s", r.Kind, r.Lib, r.Sent, r.Lost, r.Echo, r.Err)
				}
			}
			all.Fanout = append(all.Fanout, rep.Fanout...)
			all.Rooms = append(all.Rooms, rep.Rooms...)
			cfg.setups = append(cfg.setups, setup)
		})
	}
	if t.Failed() || len(cfg.setups) == 0 {
		return
	}
	if err := writeClusterReport(cfg, all); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(cfg.doc)
	if err != nil || !bytes.Contains(md, []byte("| direct 20 conns, 5 msg/s/user | deliveries/s ↑ |")) {
		t.Fatalf("report: %v\n%s", err, md)
	}
}

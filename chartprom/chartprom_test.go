package chartprom_test

import (
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/wuyan94zl/chart"
	"github.com/wuyan94zl/chart/chartprom"
	"github.com/wuyan94zl/chart/charttest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// scrape is a /metrics endpoint's answer, parsed.
type scrape map[string]*dto.MetricFamily

// metrics serves reg at /metrics on a real HTTP server.
func metrics(t *testing.T, reg *prometheus.Registry) func() scrape {
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	t.Cleanup(srv.Close)
	return func() scrape {
		t.Helper()
		res, err := http.Get(srv.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		body, err := io.ReadAll(res.Body)
		if err != nil || res.StatusCode != 200 {
			t.Fatalf("scrape: %d %v", res.StatusCode, err)
		}
		p := expfmt.NewTextParser(model.UTF8Validation)
		mfs, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
		if err != nil {
			t.Fatalf("parse %q: %v", body, err)
		}
		return mfs
	}
}

// value is the value of the sample of name with labels (name=value pairs),
// or, for a histogram, its count; the test fails if there is none.
func (s scrape) value(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	mf := s[name]
	if mf == nil {
		t.Fatalf("no metric %s", name)
	}
next:
	for _, m := range mf.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	t.Fatalf("no sample %s%v", name, labels)
	return 0
}

// pongWaiter dials uid with a pong handler, so that the test can wait
// until everything written to it before a ping was written (and so
// observed: the writer observes a batch before it takes the next).
type pongWaiter struct {
	*charttest.Client
	pongs chan struct{}
}

func dial(t *testing.T, s *charttest.Server, rec *charttest.Recorder, uid uint64) *pongWaiter {
	ws := s.Open(t, uid, nil)
	rec.WantLogin(t, uid)
	p := &pongWaiter{pongs: make(chan struct{}, 1)}
	ws.SetPongHandler(func(string) error { p.pongs <- struct{}{}; return nil })
	p.Client = s.Attach(t, ws, uid)
	return p
}

func (p *pongWaiter) flushed(t *testing.T) {
	t.Helper()
	p.WS.WriteControl(websocket.PingMessage, nil, time.Now().Add(charttest.Wait))
	charttest.Recv(t, p.pongs, "pong")
}

// TestMetrics scrapes a hub with real clients through a real /metrics
// endpoint, lets them chat, floods from one client until it is
// disconnected, closes another, and checks every metric moved by exactly
// what happened.
func TestMetrics(t *testing.T) {
	rec := charttest.NewRecorder()
	s := charttest.Start(t, chart.Config{RateLimit: 1, RateBurst: 8, PingInterval: -1}, rec)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(chartprom.NewCollector(s.Hub))
	get := metrics(t, reg)

	var clients []*pongWaiter
	for uid := uint64(1); uid <= 3; uid++ {
		clients = append(clients, dial(t, s, rec, uid))
		s.Hub.JoinChannelIds(uid, "room")
	}
	abuser := dial(t, s, rec, 4)
	s.Hub.JoinChannelIds(4, "other")

	before := get()
	for name, want := range map[string]float64{"chart_connections": 4, "chart_users_online": 4, "chart_channels": 2,
		"chart_send_queue_bytes": 0, "chart_send_queue_messages": 0} {
		if got := before.value(t, name); got != want {
			t.Fatalf("%s = %v, want %v", name, got, want)
		}
	}

	// 5 messages from a client, 3 from the API, to 3 members each.
	for i := 0; i < 5; i++ {
		clients[0].SendTo("room", "hello "+strconv.Itoa(i))
	}
	for i := 0; i < 3; i++ {
		s.Hub.Publish("room", chart.Message{Content: "notice " + strconv.Itoa(i)})
	}
	for _, c := range clients {
		got := map[string]bool{}
		for i := 0; i < 8; i++ {
			got[c.NextMsg().Content] = true
		}
		for i := 0; i < 5; i++ {
			if !got["hello "+strconv.Itoa(i)] || i < 3 && !got["notice "+strconv.Itoa(i)] {
				t.Fatalf("uid %d got %v", c.Uid, got)
			}
		}
		c.flushed(t)
	}
	// The abuser writes to a channel it is not in: 8 refusals (its burst),
	// then 8 over the rate limit, which close it.
	for i := 0; i < 16; i++ {
		abuser.WS.WriteMessage(websocket.TextMessage, []byte(`{"channel_id":"room","content":"spam"}`))
	}
	if code := abuser.CloseCode(); code != chart.CloseRateLimited {
		t.Fatalf("abuser closed with %d, want %d", code, chart.CloseRateLimited)
	}
	if uid := charttest.Recv(t, rec.Logouts, "the abuser's logout"); uid != 4 {
		t.Fatalf("logout of %d", uid)
	}
	clients[2].Close()
	if uid := charttest.Recv(t, rec.Logouts, "uid 3's logout"); uid != 3 {
		t.Fatalf("logout of %d", uid)
	}

	after := get()
	for _, c := range []struct {
		name   string
		labels []string
		delta  float64
	}{
		{"chart_connections", nil, -2},
		{"chart_users_online", nil, -2},
		{"chart_channels", nil, -1},
		{"chart_messages_received_total", nil, 5},
		{"chart_messages_delivered_total", nil, 24},
		{"chart_delivery_seconds", nil, 24},
		{"chart_messages_refused_total", []string{"code", "not_joined"}, 8},
		{"chart_messages_refused_total", []string{"code", "rate_limited"}, 8},
		{"chart_messages_refused_total", []string{"code", "bad_message"}, 0},
		{"chart_disconnects_total", []string{"reason", "rate_limited"}, 1},
		{"chart_disconnects_total", []string{"reason", "client_closed"}, 1},
		{"chart_disconnects_total", []string{"reason", "slow_consumer"}, 0},
		{"chart_messages_dropped_total", nil, 0},
		{"chart_send_queue_bytes", nil, 0},
		{"chart_send_queue_messages", nil, 0},
		{"chart_send_queue_max_depth", nil, 0},
		{"chart_broker_errors_total", nil, 0},
	} {
		if d := after.value(t, c.name, c.labels...) - before.value(t, c.name, c.labels...); d != c.delta {
			t.Errorf("%s%v moved by %v, want %v", c.name, c.labels, d, c.delta)
		}
	}
	// Every code and reason is there from the start, at 0 or more.
	if n := len(after["chart_messages_refused_total"].GetMetric()); n != 11 {
		t.Errorf("%d codes", n)
	}
	if n := len(after["chart_disconnects_total"].GetMetric()); n != 13 {
		t.Errorf("%d reasons", n)
	}
	// The histogram's buckets: 100 µs to 10 s, cumulative, +Inf = count.
	h := after["chart_delivery_seconds"].GetMetric()[0].GetHistogram()
	b := h.GetBucket()
	if len(b) != chart.NumLatencyBuckets+1 || b[0].GetUpperBound() != 0.0001 || b[len(b)-2].GetUpperBound() != 10 ||
		!math.IsInf(b[len(b)-1].GetUpperBound(), 1) || b[len(b)-1].GetCumulativeCount() != h.GetSampleCount() {
		t.Fatalf("buckets %v", b)
	}
	for i := 1; i < len(b); i++ {
		if b[i].GetCumulativeCount() < b[i-1].GetCumulativeCount() || b[i].GetCumulativeCount() > h.GetSampleCount() {
			t.Fatalf("buckets not cumulative: %v", b)
		}
	}
	if h.GetSampleSum() <= 0 {
		t.Fatalf("sum %v", h.GetSampleSum())
	}
}

// TestOptions: a namespace and constant labels, as two nodes sharing a
// registry would use.
func TestOptions(t *testing.T) {
	a, b := chart.New(chart.Config{}), chart.New(chart.Config{})
	defer a.Close()
	defer b.Close()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(chartprom.New(a, chartprom.Options{Namespace: "chat", ConstLabels: prometheus.Labels{"node": "a"}}))
	reg.MustRegister(chartprom.New(b, chartprom.Options{Namespace: "chat", ConstLabels: prometheus.Labels{"node": "b"}}))
	s := metrics(t, reg)()
	for _, node := range []string{"a", "b"} {
		if v := s.value(t, "chat_connections", "node", node); v != 0 {
			t.Fatalf("node %s: %v connections", node, v)
		}
		if v := s.value(t, "chat_disconnects_total", "node", node, "reason", "pong_timeout"); v != 0 {
			t.Fatalf("node %s: %v", node, v)
		}
	}
	if s["chart_connections"] != nil {
		t.Fatal("default namespace used")
	}
}

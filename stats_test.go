package chart_test

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wuyan94zl/chart"
	"github.com/wuyan94zl/chart/charttest"
)

// endings is a Handler that records why each connection ended
// (DisconnectServer runs after the hub counted it) and refuses messages
// saying "forbidden" with its own code.
type endings struct {
	*charttest.Recorder
	reasons chan error
	onConn  func(*chart.Conn)
}

func newEndings() *endings {
	return &endings{Recorder: charttest.NewRecorder(), reasons: make(chan error, 100)}
}

func (e *endings) DisconnectServer(_ *chart.Conn, reason error) { e.reasons <- reason }

func (e *endings) ConnectServer(c *chart.Conn) error {
	if e.onConn != nil {
		e.onConn(c)
	}
	return nil
}

func (e *endings) FilterMessage(_ *chart.Conn, m *chart.Message) error {
	if m.Content == "forbidden" {
		return chart.Refuse("read_only", "this channel is read-only")
	}
	return nil
}

// codes collects what Refusals.Each gives.
func codes(r chart.Refusals) map[string]uint64 {
	m := map[string]uint64{}
	r.Each(func(code string, n uint64) { m[code] = n })
	return m
}

// TestStatsRefusals: every refused client message is counted under the
// code of the error frame its client got (the application's own codes as
// "refused"), and MessagesRefused is their sum.
func TestStatsRefusals(t *testing.T) {
	h := newEndings()
	s := start(t, chart.Config{InboxSize: -1, RateLimit: 1, RateBurst: 10, MaxMessageSize: 1024}, h)
	c := s.Login(t, h.Recorder, 1)
	s.Hub.JoinChannelIds(1, "room")

	c.Send(`not json`)
	c.NextErr("bad_message")
	c.WS.WriteMessage(websocket.BinaryMessage, []byte(`{}`))
	c.NextErr("bad_message")
	c.SendTo("elsewhere", "x")
	c.NextErr("not_joined")
	c.SendToUser(99, "x")
	c.NextErr("user_offline")
	c.SendTo("room", "forbidden")
	c.NextErr("read_only")
	c.SendTo("room", "fine")
	c.WantContent("fine")

	// uid 2 spends its burst of 10 on messages to a channel it is not in:
	// the 11th is rate limited.
	flood := s.Login(t, h.Recorder, 2)
	for i := 0; i < 11; i++ {
		flood.SendTo("nowhere", strconv.Itoa(i))
	}
	for i := 0; i < 10; i++ {
		flood.NextErr("not_joined")
	}
	flood.NextErr("rate_limited")

	// An oversize message: refused at its header, the connection closed.
	big := s.Login(t, h.Recorder, 3)
	big.SendTo("room", strings.Repeat("x", 2000))
	if code := big.CloseCode(); code != websocket.CloseMessageTooBig {
		t.Fatalf("close code %d, want 1009", code)
	}
	charttest.Recv(t, h.reasons, "the oversize sender's end")

	st := s.Hub.Stats()
	want := chart.Refusals{BadMessage: 2, NotJoined: 11, UserOffline: 1, Refused: 1, RateLimited: 1, TooLarge: 1}
	if st.Refusals != want || st.MessagesRefused != 17 || st.MessagesIn != 1 {
		t.Fatalf("refusals %+v (total %d, in %d), want %+v (total 17, in 1)", st.Refusals, st.MessagesRefused, st.MessagesIn, want)
	}
	wantCodes := map[string]uint64{"bad_message": 2, "not_joined": 11, "user_offline": 1, "refused": 1,
		"rate_limited": 1, "too_large": 1, "invalid_channel": 0, "too_many_channels": 0,
		"hub_closed": 0, "broker_failed": 0, "overloaded": 0}
	if got := codes(st.Refusals); len(got) != len(wantCodes) {
		t.Fatalf("Each gave %v, want %v", got, wantCodes)
	} else {
		for code, n := range wantCodes {
			if got[code] != n {
				t.Fatalf("Each gave %v, want %v", got, wantCodes)
			}
		}
	}
}

// TestStatsDisconnectReasons ends one connection per reason, each on its
// own hub, and checks that exactly that reason was counted, and the
// coarser Disconnects field it belongs to.
func TestStatsDisconnectReasons(t *testing.T) {
	pad := strings.Repeat("p", 16<<10)
	cases := []struct {
		name   string
		cfg    chart.Config
		onConn func(*chart.Conn)
		end    func(t *testing.T, s *charttest.Server, h *endings)
		want   chart.DisconnectReasons
		coarse chart.Disconnects
	}{
		{name: "client_closed", end: func(t *testing.T, s *charttest.Server, h *endings) {
			s.Login(t, h.Recorder, 1).Close()
		}, want: chart.DisconnectReasons{ClientClosed: 1}, coarse: chart.Disconnects{Normal: 1}},
		{name: "shutdown", end: func(t *testing.T, s *charttest.Server, h *endings) {
			c := s.Login(t, h.Recorder, 1)
			ctx, cancel := context.WithTimeout(context.Background(), charttest.Wait)
			defer cancel()
			if err := s.Hub.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			c.WaitClosed()
		}, want: chart.DisconnectReasons{Shutdown: 1}, coarse: chart.Disconnects{Normal: 1}},
		{name: "disconnected", end: func(t *testing.T, s *charttest.Server, h *endings) {
			s.Login(t, h.Recorder, 1)
			if err := s.Hub.Disconnect(1, "banned"); err != nil {
				t.Fatal(err)
			}
		}, want: chart.DisconnectReasons{Disconnected: 1}, coarse: chart.Disconnects{Application: 1}},
		{name: "expired", onConn: func(c *chart.Conn) { c.SetExpiry(time.Now().Add(50 * time.Millisecond)) },
			end: func(t *testing.T, s *charttest.Server, h *endings) {
				if code := s.Login(t, h.Recorder, 1).CloseCode(); code != chart.CloseExpired {
					t.Fatalf("close code %d", code)
				}
			}, want: chart.DisconnectReasons{Expired: 1}, coarse: chart.Disconnects{Application: 1}},
		{name: "replaced", cfg: chart.Config{MaxConnsPerUid: 1}, end: func(t *testing.T, s *charttest.Server, h *endings) {
			old := s.Login(t, h.Recorder, 1)
			s.Dial(t, 1)
			if code := old.CloseCode(); code != chart.CloseReplaced {
				t.Fatalf("close code %d", code)
			}
		}, want: chart.DisconnectReasons{Replaced: 1}, coarse: chart.Disconnects{Application: 1}},
		{name: "slow_consumer", cfg: chart.Config{SendQueueLen: 4}, end: func(t *testing.T, s *charttest.Server, h *endings) {
			s.Open(t, 1, nil) // never read
			h.WantLogin(t, 1)
			s.Hub.JoinChannelIds(1, "room")
			for i := 0; i < 2000 && s.Hub.IsOnline(1); i++ { // 32 MB: more than the socket buffers hold
				s.Hub.Publish("room", chart.Message{Content: pad})
			}
		}, want: chart.DisconnectReasons{SlowConsumer: 1}, coarse: chart.Disconnects{SlowConsumer: 1}},
		{name: "rate_limited", cfg: chart.Config{RateLimit: 1, RateBurst: 2}, end: func(t *testing.T, s *charttest.Server, h *endings) {
			c := s.Login(t, h.Recorder, 1)
			for i := 0; i < 4; i++ {
				c.WS.WriteMessage(websocket.TextMessage, []byte(`{"channel_id":"x","content":"flood"}`))
			}
			if code := c.CloseCode(); code != chart.CloseRateLimited {
				t.Fatalf("close code %d", code)
			}
		}, want: chart.DisconnectReasons{RateLimited: 1}, coarse: chart.Disconnects{RateLimited: 1}},
		{name: "too_large", cfg: chart.Config{MaxMessageSize: 100}, end: func(t *testing.T, s *charttest.Server, h *endings) {
			c := s.Login(t, h.Recorder, 1)
			c.SendTo("room", strings.Repeat("x", 200))
			c.WaitClosed()
		}, want: chart.DisconnectReasons{TooLarge: 1}, coarse: chart.Disconnects{TooLarge: 1}},
		{name: "bad_message", end: func(t *testing.T, s *charttest.Server, h *endings) {
			c := s.Login(t, h.Recorder, 1)
			c.WS.WriteMessage(websocket.TextMessage, []byte("{\"channel_id\":\"a\",\"content\":\"\xff\"}"))
			c.WaitClosed()
		}, want: chart.DisconnectReasons{BadMessage: 1}, coarse: chart.Disconnects{Failed: 1}},
		{name: "message_timeout", cfg: chart.Config{MessageTimeout: 200 * time.Millisecond}, end: func(t *testing.T, s *charttest.Server, h *endings) {
			ws := s.Open(t, 1, nil)
			h.WantLogin(t, 1)
			<-holdPartial(t, ws, 6000) // its pings stop when the server dropped it
		}, want: chart.DisconnectReasons{MessageTimeout: 1}, coarse: chart.Disconnects{Failed: 1}},
		{name: "pong_timeout", cfg: chart.Config{PingInterval: 20 * time.Millisecond, PongWait: 200 * time.Millisecond}, end: func(t *testing.T, s *charttest.Server, h *endings) {
			s.Open(t, 1, nil) // never reads, so never answers a ping
			h.WantLogin(t, 1)
		}, want: chart.DisconnectReasons{PongTimeout: 1}, coarse: chart.Disconnects{Failed: 1}},
		{name: "read_error", end: func(t *testing.T, s *charttest.Server, h *endings) {
			ws := s.Open(t, 1, nil)
			h.WantLogin(t, 1)
			ws.UnderlyingConn().(*net.TCPConn).SetLinger(0)
			ws.UnderlyingConn().Close() // a reset, no close frame
		}, want: chart.DisconnectReasons{ReadError: 1}, coarse: chart.Disconnects{Failed: 1}},
		{name: "write_error", cfg: chart.Config{WriteWait: 200 * time.Millisecond, SendQueueLen: 1 << 20, SendQueueBytes: 1 << 30},
			end: func(t *testing.T, s *charttest.Server, h *endings) {
				s.Open(t, 1, nil) // never read
				h.WantLogin(t, 1)
				s.Hub.JoinChannelIds(1, "room")
				big := strings.Repeat("w", 512<<10)
				for i := 0; i < 64; i++ { // 32 MB: the writer blocks, past WriteWait
					s.Hub.Publish("room", chart.Message{Content: big})
				}
			}, want: chart.DisconnectReasons{WriteError: 1}, coarse: chart.Disconnects{Failed: 1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newEndings()
			h.onConn = tc.onConn
			s := charttest.Start(t, tc.cfg, h)
			tc.end(t, s, h)
			reason := charttest.Recv(t, h.reasons, "DisconnectServer")
			st := s.Hub.Stats()
			if st.DisconnectReasons != tc.want || st.Disconnects != tc.coarse {
				t.Fatalf("reason %v counted as %+v (%+v), want %+v (%+v)", reason, st.DisconnectReasons, st.Disconnects, tc.want, tc.coarse)
			}
			n := 0
			st.DisconnectReasons.Each(func(name string, v uint64) {
				n++
				if v != 0 && name != tc.name {
					t.Errorf("Each: %s = %d, want only %s", name, v, tc.name)
				}
				if name == tc.name && v != 1 {
					t.Errorf("Each: %s = %d, want 1", name, v)
				}
			})
			if n != 13 {
				t.Fatalf("Each gave %d reasons, want 13", n)
			}
		})
	}
}

// TestStatsDelivery: every message written to a connection is one
// observation of the delivery latency, and nothing else is (control
// frames, error frames); once all is written the send queues are empty.
func TestStatsDelivery(t *testing.T) {
	h := newEndings()
	s := start(t, chart.Config{PingInterval: -1}, h)
	const k, n = 3, 20
	var clients []*charttest.Client
	pongs := make([]chan struct{}, k)
	for i := 0; i < k; i++ {
		uid := uint64(i + 1)
		ws := s.Open(t, uid, nil)
		h.WantLogin(t, uid)
		pongs[i] = make(chan struct{}, 1)
		ws.SetPongHandler(func(string) error { pongs[i] <- struct{}{}; return nil })
		clients = append(clients, s.Attach(t, ws, uid))
		s.Hub.JoinChannelIds(uid, "room")
	}
	for i := 0; i < n-1; i++ {
		if err := s.Hub.Publish("room", chart.Message{Content: strconv.Itoa(i)}); err != nil {
			t.Fatal(err)
		}
	}
	clients[0].SendTo("room", "from a client")
	clients[0].SendTo("nowhere", "refused") // an error frame: not observed
	for _, c := range clients {
		for i := 0; i < n-1; i++ {
			c.WantContent(strconv.Itoa(i))
		}
		c.WantContent("from a client")
	}
	clients[0].NextErr("not_joined")
	// A ping's pong is written after every frame before it, and the writer
	// observes a batch before it takes the next: once each client has its
	// pong, all its messages are counted.
	for i, c := range clients {
		c.WS.WriteControl(websocket.PingMessage, nil, time.Now().Add(charttest.Wait))
		charttest.Recv(t, pongs[i], "pong")
	}
	st := s.Hub.Stats()
	d := st.Delivery
	if d.Count != k*n || st.MessagesOut != k*n {
		t.Fatalf("delivery count %d, messages out %d, want %d", d.Count, st.MessagesOut, k*n)
	}
	prev := uint64(0)
	for _, b := range d.Buckets {
		if b.Count < prev || b.Count > d.Count {
			t.Fatalf("buckets not cumulative: %+v", d)
		}
		prev = b.Count
	}
	if d.Buckets[0].Le != 100*time.Microsecond || d.Buckets[chart.NumLatencyBuckets-1].Le != 10*time.Second {
		t.Fatalf("bucket bounds %v .. %v", d.Buckets[0].Le, d.Buckets[chart.NumLatencyBuckets-1].Le)
	}
	if d.Sum <= 0 || d.Sum > float64(d.Count)*10 {
		t.Fatalf("sum %v s for %d observations", d.Sum, d.Count)
	}
	if st.QueuedMessages != 0 || st.QueuedBytes != 0 || st.MaxQueueDepth != 0 {
		t.Fatalf("queues after everything was written: %d messages, %d bytes, longest %d", st.QueuedMessages, st.QueuedBytes, st.MaxQueueDepth)
	}
}

// TestStatsEveryMessageAccounted: messages queued for a client that never
// reads are, once the client has gone (its socket closed with them unread,
// so the server's write fails), either written (Delivery) or dropped: none
// vanishes with the batch whose write failed or with the queue behind it.
func TestStatsEveryMessageAccounted(t *testing.T) {
	h := newEndings()
	s := start(t, chart.Config{PingInterval: -1, SendQueueLen: 4096, SendQueueBytes: 64 << 20}, h)
	ws := s.Open(t, 1, nil) // never read
	h.WantLogin(t, 1)
	s.Hub.JoinChannelIds(1, "room")
	const n = 2000
	big := strings.Repeat("x", 16<<10) // 32 MB in all: more than the sockets buffer, less than the queue
	for i := 0; i < n; i++ {
		if err := s.Hub.Publish("room", chart.Message{Content: big}); err != nil {
			t.Fatal(err)
		}
	}
	ws.UnderlyingConn().Close() // unread data: the server's writes fail
	charttest.Recv(t, h.Logouts, "the connection gone")
	charttest.Eventually(t, "no connection", func() bool { return s.Hub.Stats().Connections == 0 })
	st := s.Hub.Stats()
	if st.MessagesOut != n || st.Delivery.Count+st.Dropped != n {
		t.Fatalf("%d queued, %d written + %d dropped = %d, want %d", st.MessagesOut, st.Delivery.Count, st.Dropped, st.Delivery.Count+st.Dropped, n)
	}
}

package chart_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wuyan94zl/chart"
	"github.com/wuyan94zl/chart/charttest"
)

func TestOversizeFrame(t *testing.T) {
	rec := charttest.NewRecorder()
	s := start(t, chart.Config{MaxMessageSize: 1024}, rec)
	big := s.Login(t, rec, 1)
	other := s.Login(t, rec, 2)
	s.Hub.JoinChannelIds(1, "room")
	s.Hub.JoinChannelIds(2, "room")

	big.Send(`{"channel_id":"room","type":3,"content":"` + strings.Repeat("x", 1024) + `"}`)
	if code := big.CloseCode(); code != websocket.CloseMessageTooBig {
		t.Fatalf("close code %d, want 1009", code)
	}
	err := rec.WantErr(t, chart.ErrMessageTooLarge)
	var ce *chart.Error
	if !errors.As(err, &ce) || ce.Uid != 1 {
		t.Fatalf("error %v does not name uid 1", err)
	}
	if uid := charttest.Recv(t, rec.Logouts, "logout"); uid != 1 {
		t.Fatalf("logout uid %d", uid)
	}
	// Exactly at the limit is fine, and the other user noticed nothing.
	msg := `{"channel_id":"room","type":3,"content":"` + strings.Repeat("y", 1024-43) + `"}`
	if len(msg) != 1024 {
		t.Fatalf("test message is %d bytes", len(msg))
	}
	other.Send(msg)
	if m := other.NextMsg(); len(m.Content) != 1024-43 {
		t.Fatalf("got %d bytes", len(m.Content))
	}
	// Counted when the server has torn the connection down, which may
	// come after the client saw its close frame.
	charttest.Eventually(t, "disconnect counted", func() bool { return s.Hub.Stats().Disconnects.TooLarge == 1 })
}

func TestOrigin(t *testing.T) {
	rec := charttest.NewRecorder()
	s := start(t, chart.Config{AllowedOrigins: []string{"https://app.example.com", "partner.example.org:8443"}}, rec)
	u, err := url.Parse(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	host := u.Host
	for _, tc := range []struct {
		origin string
		ok     bool
	}{
		{"", true}, // no Origin: not a browser
		{"http://" + host, true},
		{"https://app.example.com", true},
		{"http://partner.example.org:8443", true},
		{"https://evil.example.com", false},
		{"http://app.example.com", false}, // scheme differs from the allowed origin
		{"null", false},
		{"http://" + host + ".evil.com", false},
	} {
		hdr := http.Header{}
		if tc.origin != "" {
			hdr.Set("Origin", tc.origin)
		}
		if tc.ok {
			c := s.DialHeader(t, 5, hdr)
			rec.WantLogin(t, 5)
			c.WS.Close()
			charttest.Recv(t, rec.Logouts, "logout")
			continue
		}
		if status := s.DialRefused(t, 5, hdr); status != http.StatusForbidden {
			t.Fatalf("origin %q: HTTP %d, want 403", tc.origin, status)
		}
		rec.WantErr(t, chart.ErrOriginNotAllowed)
	}

	// A custom check replaces the default.
	rec2 := charttest.NewRecorder()
	s2 := start(t, chart.Config{CheckOrigin: func(r *http.Request) bool { return r.Header.Get("Origin") == "null" }}, rec2)
	s2.DialHeader(t, 6, http.Header{"Origin": {"null"}})
	rec2.WantLogin(t, 6)
}

func TestRefusedRequests(t *testing.T) {
	rec := charttest.NewRecorder()
	s := start(t, chart.Config{}, rec)
	// Not a WebSocket request.
	resp, err := http.Get("http" + strings.TrimPrefix(s.URL, "ws") + "?id=1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("plain GET: HTTP %d", resp.StatusCode)
	}
	rec.WantErr(t, chart.ErrUpgrade)
	// uid 0, what the seed's strconv.Atoi yields for a missing id.
	if status := s.DialRefused(t, 0, nil); status != http.StatusBadRequest {
		t.Fatalf("uid 0: HTTP %d", status)
	}
	rec.WantErr(t, chart.ErrInvalidUid)

	// A nil handler is allowed.
	s2 := start(t, chart.Config{}, nil)
	c := s2.Dial(t, 3)
	s2.Hub.Publish("x", chart.Message{})
	c.Send(`{"channel_id":"x","content":"x"}`)
	c.NextErr("not_joined")
}

// lockedBuffer is a log destination safe for concurrent writers.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// panicky panics in the callback named by which.
type panicky struct {
	*charttest.Recorder
	which string
}

func (p *panicky) LoginServer(uid uint64) {
	if p.which == "LoginServer" {
		panic("boom in login")
	}
	p.Recorder.LoginServer(uid)
}

func (p *panicky) LogoutServer(uid uint64) {
	if p.which == "LogoutServer" {
		p.Recorder.LogoutServer(uid)
		panic("boom in logout")
	}
	p.Recorder.LogoutServer(uid)
}

func (p *panicky) SendMessage(m chart.Message) {
	if p.which == "SendMessage" {
		panic("boom in send")
	}
	p.Recorder.SendMessage(m)
}

func (p *panicky) ErrorLogServer(err error) {
	p.Recorder.ErrorLogServer(err)
	if p.which == "ErrorLogServer" {
		panic("boom in error log")
	}
}

func TestPanicsInCallbacks(t *testing.T) {
	for _, which := range []string{"LoginServer", "LogoutServer", "SendMessage", "ErrorLogServer"} {
		t.Run(which, func(t *testing.T) {
			rec := charttest.NewRecorder()
			logs := &lockedBuffer{}
			s := start(t, chart.Config{Logger: slog.New(slog.NewTextHandler(logs, nil))}, &panicky{Recorder: rec, which: which})
			c := s.Dial(t, 1)
			if which == "LoginServer" {
				err := rec.WantErr(t, chart.ErrCallbackPanic)
				if !strings.Contains(err.Error(), "boom in login") || !strings.Contains(err.Error(), "goroutine") {
					t.Fatalf("panic error lacks value or stack: %v", err)
				}
			} else {
				charttest.Recv(t, rec.Logins, "login")
			}
			s.Hub.JoinChannelIds(1, "room")
			c.Send(`{"channel_id":"room","content":"hello","type":3}`)
			if m := c.NextMsg(); m.Content != "hello" {
				t.Fatalf("got %+v", m)
			}
			switch which {
			case "SendMessage":
				rec.WantErr(t, chart.ErrCallbackPanic)
			case "ErrorLogServer":
				c.Send(`oops`)
				c.NextErr("bad_message")
				rec.WantErr(t, chart.ErrBadMessage)
				// The panic in ErrorLogServer itself goes to the logger.
				charttest.Eventually(t, "the panic is logged", func() bool { return strings.Contains(logs.String(), "boom in error log") })
			}
			// The server goes on: another user connects and chats.
			d := s.Dial(t, 2)
			s.Hub.JoinChannelIds(2, "room")
			d.Send(`{"channel_id":"room","content":"still up","type":3}`)
			if m := c.NextMsg(); m.Content != "still up" {
				t.Fatalf("got %+v", m)
			}
			c.Close()
			if which == "LogoutServer" {
				charttest.Recv(t, rec.Logouts, "logout")
				rec.WantErr(t, chart.ErrCallbackPanic)
			}
		})
	}
}

func TestRateLimit(t *testing.T) {
	rec := charttest.NewRecorder()
	s := start(t, chart.Config{RateLimit: 1, RateBurst: 5}, rec)
	c := s.Login(t, rec, 1)
	peer := s.Login(t, rec, 2)
	s.Hub.JoinChannelIds(1, "room")
	s.Hub.JoinChannelIds(2, "room")
	for i := 0; i < 6; i++ {
		c.Send(fmt.Sprintf(`{"channel_id":"room","content":"%d","type":3}`, i))
	}
	for i := 0; i < 5; i++ {
		if m := c.NextMsg(); m.Content != strconv.Itoa(i) {
			t.Fatalf("got %+v, want content %d", m, i)
		}
	}
	c.NextErr("rate_limited")
	rec.WantErr(t, chart.ErrRateLimited)
	// Sustained flooding closes the connection; the peer is unharmed.
	for i := 0; i < 10; i++ {
		c.WS.WriteMessage(websocket.TextMessage, []byte(`{"channel_id":"room","content":"flood","type":3}`))
	}
	if code := c.CloseCode(); code != chart.CloseRateLimited {
		t.Fatalf("close code %d, want %d", code, chart.CloseRateLimited)
	}
	for i := 0; i < 5; i++ {
		if m := peer.NextMsg(); m.Content != strconv.Itoa(i) {
			t.Fatalf("peer got %+v", m)
		}
	}
	charttest.Recv(t, rec.Logouts, "logout")
	if st := s.Hub.Stats(); st.Disconnects.RateLimited != 1 {
		t.Fatalf("stats %+v", st.Disconnects)
	}
	// A client within the limit is fine: no limit at all here.
	s2 := start(t, chart.Config{RateLimit: -1}, rec)
	d := s2.Login(t, rec, 3)
	s2.Hub.JoinChannelIds(3, "room")
	for i := 0; i < 300; i++ {
		d.Send(`{"channel_id":"room","content":"x","type":3}`)
	}
	for i := 0; i < 300; i++ {
		d.NextMsg()
	}
}

func TestPongTimeout(t *testing.T) {
	rec := charttest.NewRecorder()
	s := start(t, chart.Config{PingInterval: 20 * time.Millisecond, PongWait: 200 * time.Millisecond}, rec)
	// A reading gorilla client answers pings and stays connected well past
	// PongWait, while a client that stops reading (and so stops answering)
	// is dropped.
	alive := s.Open(t, 1, nil)
	rec.WantLogin(t, 1)
	pings := make(chan struct{}, 100)
	alive.SetPingHandler(func(data string) error {
		pings <- struct{}{}
		return alive.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(charttest.Wait))
	})
	s.Attach(t, alive, 1) // its reader answers pings until the test ends
	start := time.Now()   // before its read deadline is set
	silent := s.Open(t, 2, nil)
	rec.WantLogin(t, 2)
	if uid := charttest.Recv(t, rec.Logouts, "logout of the silent client"); uid != 2 {
		t.Fatalf("logout of uid %d", uid)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("dropped after %v, before PongWait", d)
	}
	err := rec.WantErr(t, chart.ErrConnection)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("error %v is not a timeout", err)
	}
	for i := 0; i < 3; i++ {
		charttest.Recv(t, pings, "ping")
	}
	if !s.Hub.IsOnline(1) {
		t.Fatal("the client answering pings was dropped")
	}
	_ = silent
}

func TestWriteDeadline(t *testing.T) {
	rec := charttest.NewRecorder()
	// Queues big enough that only the write deadline can end this.
	s := start(t, chart.Config{WriteWait: 100 * time.Millisecond, SendQueueBytes: 1 << 30, SendQueueLen: 1 << 20}, rec)
	s.Open(t, 1, nil) // never reads
	rec.WantLogin(t, 1)
	s.Hub.JoinChannelIds(1, "room")
	payload := strings.Repeat("w", 64<<10)
	for i := 0; s.Hub.IsOnline(1); i++ {
		if i == 10000 { // 640 MB: far beyond any socket buffer
			t.Fatal("a client that never reads is still connected")
		}
		s.Hub.Publish("room", chart.Message{Content: payload})
		select {
		case <-rec.Logouts:
		default:
			continue
		}
		break
	}
	err := rec.WantErr(t, chart.ErrConnection)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("error %v is not a write timeout", err)
	}
}

func TestSlowConsumer(t *testing.T) {
	const (
		readers = 20
		n       = 10000
		ahead   = 64
	)
	rec := charttest.NewRecorder()
	s := start(t, chart.Config{}, rec)
	s.Open(t, 1000, nil) // never reads
	rec.WantLogin(t, 1000)
	s.Hub.JoinChannelIds(1000, "room")
	var progress [readers]atomic.Int64
	moved := make(chan struct{}, 1)
	done := make(chan error, readers)
	for i := 0; i < readers; i++ {
		uid := uint64(i + 1)
		ws := s.Open(t, uid, nil)
		rec.WantLogin(t, uid)
		s.Hub.JoinChannelIds(uid, "room")
		go func(i int, ws *websocket.Conn) {
			// Read into one buffer: the readers allocate nothing, so the
			// heap measured below is the server's.
			buf := make([]byte, 8<<10)
			for j := 0; j < n; j++ {
				ws.SetReadDeadline(time.Now().Add(charttest.Wait))
				_, r, err := ws.NextReader()
				var k int
				if err == nil {
					k, err = io.ReadFull(r, buf)
					if err == io.ErrUnexpectedEOF {
						err = nil
					}
				}
				if err != nil {
					done <- fmt.Errorf("reader %d message %d: %w", i, j, err)
					return
				}
				data := buf[:k]
				// The sequence number leads the content.
				if want := strconv.Itoa(j) + " "; !strings.Contains(string(data), `"content":"`+want) {
					done <- fmt.Errorf("reader %d message %d: got %.60s", i, j, data)
					return
				}
				progress[i].Store(int64(j + 1))
				select {
				case moved <- struct{}{}:
				default:
				}
			}
			done <- nil
		}(i, ws)
	}
	slowest := func() int64 {
		m := int64(n)
		for i := range progress {
			m = min(m, progress[i].Load())
		}
		return m
	}
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var peak uint64
	pad := strings.Repeat("p", 4<<10-8)
	for i := 0; i < n; i++ {
		for int64(i)-slowest() > ahead {
			charttest.Recv(t, moved, "reader progress")
		}
		if err := s.Hub.Publish("room", chart.Message{Type: 3, Content: strconv.Itoa(i) + " " + pad}); err != nil {
			t.Fatal(err)
		}
		if i%500 == 0 {
			// The live heap: what is still referenced after a collection.
			var ms runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapAlloc)
		}
	}
	for i := 0; i < readers; i++ {
		if err := charttest.Recv(t, done, "reader"); err != nil {
			t.Fatal(err)
		}
	}
	if uid := charttest.Recv(t, rec.Logouts, "logout of the stalled client"); uid != 1000 {
		t.Fatalf("logout of uid %d", uid)
	}
	rec.WantErr(t, chart.ErrSlowConsumer)
	// 40 MB went out to the healthy readers; the stalled one may hold back
	// at most its 1 MiB queue, so the heap stays far below that.
	if grown := int64(peak) - int64(before.HeapAlloc); grown > 16<<20 {
		t.Fatalf("live heap grew by %d MiB while serving a stalled client (goroutines %d, stats %+v)", grown>>20, runtime.NumGoroutine(), s.Hub.Stats())
	}
	if st := s.Hub.Stats(); st.Disconnects.SlowConsumer != 1 || st.Connections != readers {
		t.Fatalf("stats %+v", st)
	}
}

func TestDropOldest(t *testing.T) {
	rec := charttest.NewRecorder()
	s := start(t, chart.Config{SlowConsumer: chart.SlowConsumerDropOldest, SendQueueLen: 8, WriteWait: time.Minute}, rec)
	ws := s.Open(t, 1, nil) // read only after the publishing
	rec.WantLogin(t, 1)
	s.Hub.JoinChannelIds(1, "room")
	pad := strings.Repeat("d", 16<<10)
	const n = 2000 // 32 MB: more than the socket buffers hold
	for i := 0; i < n; i++ {
		s.Hub.Publish("room", chart.Message{Content: strconv.Itoa(i) + " " + pad})
	}
	if st := s.Hub.Stats(); st.Dropped == 0 || st.MaxQueueDepth > 8 {
		t.Fatalf("stats %+v: want drops and a queue of at most 8", st)
	}
	// The client is still connected, and what it gets is in order and ends
	// with the newest message.
	c := s.Attach(t, ws, 1)
	last := -1
	for last != n-1 {
		m := c.NextMsg()
		seq, _ := strconv.Atoi(strings.Fields(m.Content)[0])
		if seq <= last {
			t.Fatalf("message %d after %d", seq, last)
		}
		last = seq
	}
	if !s.Hub.IsOnline(1) {
		t.Fatal("client disconnected")
	}
}

func TestChurn(t *testing.T) {
	const cycles = 5000
	h := &countingHandler{}
	s := start(t, chart.Config{}, h)
	baseG := runtime.NumGoroutine()
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	d := websocket.Dialer{HandshakeTimeout: charttest.Wait}
	for i := 0; i < cycles; i++ {
		ws, _, err := d.Dial(s.URL+"?id="+strconv.Itoa(i%50+1), nil)
		if err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		if i%2 == 0 { // half leave cleanly, half just drop the TCP connection
			ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(charttest.Wait))
		}
		ws.Close()
	}
	charttest.Eventually(t, "every connection is gone", func() bool {
		return s.Hub.Stats().Connections == 0 && h.logins.Load() == h.logouts.Load()
	})
	charttest.Eventually(t, "goroutines return to baseline", func() bool { return runtime.NumGoroutine() <= baseG })
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grown := int64(after.HeapAlloc) - int64(before.HeapAlloc); grown > 4<<20 {
		t.Fatalf("heap grew by %d KiB over %d cycles", grown>>10, cycles)
	}
	if st := s.Hub.Stats(); st.Users != 0 || st.Channels != 0 || st.Disconnects.Normal+st.Disconnects.Failed != cycles {
		t.Fatalf("stats after churn %+v", st)
	}
}

// countingHandler counts logins and logouts.
type countingHandler struct {
	logins, logouts atomic.Int64
}

func (h *countingHandler) LoginServer(uint64)        { h.logins.Add(1) }
func (h *countingHandler) LogoutServer(uint64)       { h.logouts.Add(1) }
func (h *countingHandler) SendMessage(chart.Message) {}
func (h *countingHandler) ErrorLogServer(error)      {}

func TestShutdownFlushes(t *testing.T) {
	rec := charttest.NewRecorder()
	hub := chart.New(chart.Config{})
	s := charttest.Serve(t, hub, rec)
	s.Strict = true
	var clients []*charttest.Client
	for uid := uint64(1); uid <= 5; uid++ {
		clients = append(clients, s.Login(t, rec, uid))
		hub.JoinChannelIds(uid, "room")
	}
	const n = 500
	for i := 0; i < n; i++ {
		hub.Publish("room", chart.Message{Content: strconv.Itoa(i)})
	}
	ctx, cancel := context.WithTimeout(context.Background(), charttest.Wait)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- hub.Shutdown(ctx) }()
	for _, c := range clients {
		for i := 0; i < n; i++ {
			if m := c.NextMsg(); m.Content != strconv.Itoa(i) {
				t.Fatalf("uid %d got %+v, want %d", c.Uid, m, i)
			}
		}
		if code := c.CloseCode(); code != websocket.CloseGoingAway {
			t.Fatalf("close code %d, want 1001", code)
		}
	}
	if err := charttest.Recv(t, shut, "Shutdown"); err != nil {
		t.Fatal(err)
	}
	// Every uid was logged out before Shutdown returned.
	if len(rec.Logouts) != 5 {
		t.Fatalf("%d logouts before Shutdown returned", len(rec.Logouts))
	}
	if err := hub.Publish("room", chart.Message{}); !errors.Is(err, chart.ErrHubClosed) {
		t.Fatalf("Publish after Shutdown: %v", err)
	}
	if err := hub.JoinChannelIds(1, "room"); !errors.Is(err, chart.ErrHubClosed) {
		t.Fatalf("Join after Shutdown: %v", err)
	}
	if status := s.DialRefused(t, 1, nil); status != http.StatusServiceUnavailable {
		t.Fatalf("dial after Shutdown: HTTP %d", status)
	}
	rec.WantErr(t, chart.ErrHubClosed)
}

// TestDropOldestBeforeReady: messages published to a connection before it
// is ready (here from LoginServer, before the reader starts and recovery
// releases what waits) follow SlowConsumerDropOldest too: the oldest go,
// the connection stays.
func TestDropOldestBeforeReady(t *testing.T) {
	rec := charttest.NewRecorder()
	var hub *chart.Hub
	rec.OnLogin = func(uid uint64) {
		hub.JoinChannelIds(uid, "room")
		for i := 0; i < 20; i++ {
			hub.Publish("room", chart.Message{Content: strconv.Itoa(i)})
		}
	}
	s := start(t, chart.Config{SlowConsumer: chart.SlowConsumerDropOldest, SendQueueLen: 8}, rec)
	hub = s.Hub
	c := s.Login(t, rec, 1)
	last := -1
	for last != 19 {
		seq, _ := strconv.Atoi(c.NextMsg().Content)
		if seq <= last {
			t.Fatalf("message %d after %d", seq, last)
		}
		last = seq
	}
	if !s.Hub.IsOnline(1) || s.Hub.Stats().Dropped == 0 {
		t.Fatalf("online %v, stats %+v: want the connection kept and drops", s.Hub.IsOnline(1), s.Hub.Stats())
	}
}

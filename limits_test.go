package chart_test

import (
	"bytes"
	"encoding/json"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wuyan94zl/chart"
	"github.com/wuyan94zl/chart/charttest"
)

// The attacks of issue 10, each bounded by a limit with a safe default.

// holdPartial starts a message of n bytes on ws without finishing it, and
// pings every 50 ms until the connection breaks. It returns a channel
// closed when the pinging stopped.
func holdPartial(t *testing.T, ws *websocket.Conn, n int) <-chan struct{} {
	t.Helper()
	w, err := ws.NextWriter(websocket.TextMessage)
	if err != nil {
		t.Fatal(err)
	}
	// A write error means the server closed the connection already (the
	// pending-bytes cap); the pinger below then stops at once.
	w.Write(bytes.Repeat([]byte("x"), n))
	// gorilla has sent the full 4 KiB fragments (FIN unset) and keeps the
	// rest; the message never ends.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(time.Second)) != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	return done
}

// liveHeap is the heap in use after a GC.
func liveHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestPartialMessageHolders: 200 connections that each send 60 KB of a
// message and then only ping are dropped at MessageTimeout, pings
// notwithstanding, and the memory they held is freed; a well-behaved user
// keeps chatting throughout.
func TestPartialMessageHolders(t *testing.T) {
	rec := charttest.NewRecorder()
	// 2 s: on a loaded machine, opening the 200 and sending their 60 KB
	// took longer than 500 ms, and the first were dropped before the last
	// began (CI under load).
	const timeout = 2 * time.Second
	s := start(t, chart.Config{MessageTimeout: timeout}, rec)
	good := s.Login(t, rec, 1)
	s.Hub.JoinChannelIds(1, "room")
	base := liveHeap()
	const n = 200
	// Open them all first: MessageTimeout runs from each one's first
	// fragment, and the 200 must hold at once.
	var wss []*websocket.Conn
	for i := 0; i < n; i++ {
		wss = append(wss, s.Open(t, uint64(100+i), nil))
	}
	var pingers []<-chan struct{}
	began := time.Now()
	for _, ws := range wss {
		pingers = append(pingers, holdPartial(t, ws, 60000))
	}
	charttest.Eventually(t, "partial messages held", func() bool { return s.Hub.Stats().PendingBytes >= n*56<<10 })
	held := s.Hub.Stats().PendingBytes
	good.SendTo("room", "still chatting")
	good.WantContent("still chatting")
	for _, p := range pingers {
		<-p
	}
	if d := time.Since(began); d > timeout+5*time.Second {
		t.Fatalf("holders dropped after %v", d)
	}
	charttest.Eventually(t, "holders gone", func() bool { return s.Hub.Stats().Connections == 1 })
	st := s.Hub.Stats()
	if st.PendingBytes != 0 || st.Disconnects.Failed != n {
		t.Fatalf("after the holders: pending %d bytes, disconnects %+v", st.PendingBytes, st.Disconnects)
	}
	if grew := int64(liveHeap()) - int64(base); grew > 4<<20 {
		t.Fatalf("heap grew by %d bytes after %d holders were dropped (they held %d)", grew, n, held)
	}
	t.Logf("%d holders held %d KiB of pending messages; all dropped within %v", n, held>>10, time.Since(began).Round(time.Millisecond))
	good.SendTo("room", "after")
	good.WantContent("after")
	rec.WantErr(t, chart.ErrMessageTimeout)
}

// TestMaxPendingBytes: connections holding unfinished messages cannot
// together keep more than MaxPendingBytes; past it a message is refused
// with "overloaded" and its rest discarded, and nobody is disconnected for
// it: small messages pass, a large one is refused until the holders are
// gone (MessageTimeout), then passes.
func TestMaxPendingBytes(t *testing.T) {
	rec := charttest.NewRecorder()
	s := start(t, chart.Config{MaxPendingBytes: 1 << 20, MessageTimeout: 2 * time.Second}, rec)
	good := s.Login(t, rec, 1)
	s.Hub.JoinChannelIds(1, "room")
	const n = 40 // 40 x 60 KB = 2.4 MB > 1 MiB
	for i := 0; i < n; i++ {
		holdPartial(t, s.Open(t, uint64(100+i), nil), 60000)
	}
	charttest.Eventually(t, "the holders in", func() bool {
		st := s.Hub.Stats()
		return st.Connections == n+1 && st.PendingBytes >= 1<<20-(60<<10)
	})
	big := strings.Repeat("b", 20000)
	good.SendTo("room", "small")
	good.WantContent("small")
	good.SendTo("room", big)
	good.NextErr("overloaded")
	if st := s.Hub.Stats(); st.PendingBytes > 1<<20 || st.Connections != n+1 {
		t.Fatalf("pending %d bytes (cap %d), %d connections (want all %d)", st.PendingBytes, 1<<20, st.Connections, n+1)
	}
	charttest.Eventually(t, "holders timed out", func() bool { return s.Hub.Stats().Connections == 1 })
	good.SendTo("room", big)
	if m := good.NextMsg(); m.Content != big {
		t.Fatalf("got %.40q", m.Content)
	}
	rec.WantErr(t, chart.ErrOverloaded)
}

// TestPingFlood: pings count against the rate limit; a flood is closed
// with 4029 and not answered beyond the burst.
func TestPingFlood(t *testing.T) {
	rec := charttest.NewRecorder()
	s := start(t, chart.Config{}, rec)
	ws := s.Open(t, 1, nil)
	pongs := 0
	ws.SetPongHandler(func(string) error { pongs++; return nil })
	c := s.Attach(t, ws, 1)
	for i := 0; i < 1000; i++ {
		if ws.WriteControl(websocket.PingMessage, []byte("p"), time.Now().Add(time.Second)) != nil {
			break
		}
	}
	if code := c.CloseCode(); code != chart.CloseRateLimited {
		t.Fatalf("close %d, want %d", code, chart.CloseRateLimited)
	}
	if pongs > chart.DefaultRateBurst+20 {
		t.Fatalf("%d pongs for a flood, want at most the burst (%d) and what refilled", pongs, chart.DefaultRateBurst)
	}
	charttest.Eventually(t, "disconnect counted", func() bool { return s.Hub.Stats().Disconnects.RateLimited == 1 })
	if st := s.Hub.Stats(); st.MessagesRefused != 0 {
		t.Fatalf("MessagesRefused %d: pings are not messages", st.MessagesRefused)
	}
}

// TestReadRate: one sender with four connections, each at the full message
// rate with 60 KB messages (12 MB/s offered), is read at ReadRate in all,
// so a member reading at 2 MB/s is not disconnected and gets the messages.
func TestReadRate(t *testing.T) {
	rec := charttest.NewRecorder()
	s := start(t, chart.Config{}, rec)
	senders := []*charttest.Client{s.Login(t, rec, 1), s.Dial(t, 1), s.Dial(t, 1), s.Dial(t, 1)}
	s.Hub.JoinChannelIds(1, "room")
	member := s.Open(t, 2, nil)
	rec.WantLogin(t, 2)
	s.Hub.JoinChannelIds(2, "room")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, sender := range senders {
		wg.Add(1)
		go send60k(&wg, stop, sender)
	}
	const window = 3 * time.Second

	received, bytesIn := 0, 0
	began := time.Now()
	for time.Since(began) < window {
		member.SetReadDeadline(time.Now().Add(charttest.Wait))
		_, data, err := member.ReadMessage()
		if err != nil {
			t.Fatalf("member disconnected after %d messages: %v", received, err)
		}
		var m chart.Message
		if err := json.Unmarshal(data, &m); err != nil || len(m.Content) != 60000 || m.UserId != 1 {
			t.Fatalf("message %d: %.80s", received, data)
		}
		for _, c := range senders { // the senders' own copies
			c.Next()
		}
		received++
		bytesIn += len(data)
		// Read at 2 MB/s.
		if ahead := time.Duration(bytesIn)*time.Second/(2<<20) - time.Since(began); ahead > 0 {
			time.Sleep(ahead)
		}
	}
	close(stop)
	wg.Wait()
	rate := float64(bytesIn) / time.Since(began).Seconds()
	t.Logf("member read %d messages, %.0f KB/s, in %v", received, rate/1000, time.Since(began).Round(time.Millisecond))
	// ReadRate for the time read, plus its burst, plus a message in flight.
	elapsed := time.Since(began)
	limit := float64(chart.DefaultReadRate)*elapsed.Seconds() + float64(max(chart.DefaultReadRate, chart.DefaultMaxMessageSize)) + 60000
	if float64(bytesIn) > limit {
		t.Fatalf("member got %d bytes in %v; ReadRate allows %.0f", bytesIn, elapsed, limit)
	}
	if st := s.Hub.Stats(); st.Disconnects.SlowConsumer != 0 {
		t.Fatalf("slow consumers: %+v", st.Disconnects)
	}
}

// send60k sends 60 KB messages of '<' at the full message rate until stop.
func send60k(wg *sync.WaitGroup, stop chan struct{}, sender *charttest.Client) {
	defer wg.Done()
	b := []byte(`{"channel_id":"room","type":3,"content":"` + strings.Repeat("<", 60000) + `"}`)
	tick := time.NewTicker(time.Second / chart.DefaultRateLimit)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		sender.WS.SetWriteDeadline(time.Now().Add(time.Second))
		if sender.WS.WriteMessage(websocket.TextMessage, b) != nil {
			return
		}
	}
}

// TestHugeChannelIdErrorFrame: a 60 KiB channel id of '<' gets an error
// frame under 1 KiB, and the reported error is as short.
func TestHugeChannelIdErrorFrame(t *testing.T) {
	rec := charttest.NewRecorder()
	s := start(t, chart.Config{}, rec)
	ws := s.Open(t, 1, nil)
	b := []byte(`{"channel_id":"` + strings.Repeat("<", 60<<10) + `","content":"x"}`)
	if err := ws.WriteMessage(websocket.TextMessage, b); err != nil {
		t.Fatal(err)
	}
	ws.SetReadDeadline(time.Now().Add(charttest.Wait))
	_, frame, err := ws.ReadMessage()
	if err != nil {
		t.Fatal(err)
	}
	if len(frame) >= 1024 || !bytes.Contains(frame, []byte(`"error":"not_joined"`)) {
		t.Fatalf("error frame of %d bytes: %.200s", len(frame), frame)
	}
	if err := rec.WantErr(t, chart.ErrNotJoined); len(err.Error()) >= 1024 {
		t.Fatalf("reported error of %d bytes", len(err.Error()))
	}
}

// TestInvalidUTF8 closes a connection whose text frame is not UTF-8 with
// 1007.
func TestInvalidUTF8(t *testing.T) {
	rec := charttest.NewRecorder()
	s := start(t, chart.Config{}, rec)
	c := s.Login(t, rec, 1)
	s.Hub.JoinChannelIds(1, "a")
	c.WS.WriteMessage(websocket.TextMessage, []byte("{\"channel_id\":\"a\",\"content\":\"\xff\xfe\"}"))
	if code := c.CloseCode(); code != websocket.CloseInvalidFramePayloadData {
		t.Fatalf("close %d, want 1007", code)
	}
	rec.WantErr(t, chart.ErrBadMessage)
}

// TestOversizeHangsUp: after an oversize message the server sends 1009
// and drops the connection at once, without reading on for CloseGrace.
func TestOversizeHangsUp(t *testing.T) {
	rec := charttest.NewRecorder()
	s := start(t, chart.Config{MaxMessageSize: 1024, CloseGrace: time.Minute}, rec)
	ws := s.Open(t, 1, nil)
	ws.SetCloseHandler(func(int, string) error { return nil }) // never answer the close
	ws.WriteMessage(websocket.TextMessage, bytes.Repeat([]byte("x"), 2048))
	ws.SetReadDeadline(time.Now().Add(charttest.Wait))
	_, _, err := ws.ReadMessage()
	if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != websocket.CloseMessageTooBig {
		t.Fatalf("read: %v, want close 1009", err)
	}
	began := time.Now()
	ws.UnderlyingConn().SetReadDeadline(time.Now().Add(charttest.Wait))
	if _, err := ws.UnderlyingConn().Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("socket still open: %v", err)
	}
	if d := time.Since(began); d > 5*time.Second {
		t.Fatalf("socket dropped after %v; CloseGrace is a minute", d)
	}
	rec.WantErr(t, chart.ErrMessageTooLarge)
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// TestOversizeHeader: a frame header announcing more than MaxMessageSize
// is refused at once with 1009, without waiting for the payload.
func TestOversizeHeader(t *testing.T) {
	rec := charttest.NewRecorder()
	s := start(t, chart.Config{}, rec)
	ws := s.Open(t, 1, nil)
	// FIN + text, masked, 64-bit length of 1 MiB, a mask key, no payload.
	hdr := []byte{0x81, 0x80 | 127, 0, 0, 0, 0, 0, 0x10, 0, 0, 1, 2, 3, 4}
	if _, err := ws.UnderlyingConn().Write(hdr); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	ws.SetReadDeadline(time.Now().Add(charttest.Wait))
	_, _, err := ws.ReadMessage()
	if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != websocket.CloseMessageTooBig {
		t.Fatalf("read: %v, want close 1009", err)
	}
	if d := time.Since(began); d > chart.DefaultMessageTimeout/2 {
		t.Fatalf("refused after %v", d)
	}
	rec.WantErr(t, chart.ErrMessageTooLarge)
}

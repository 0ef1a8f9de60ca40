package chart_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wuyan94zl/chart"
	"github.com/wuyan94zl/chart/charttest"
)

// The reader of a connection that waits in the poller (Linux, plain TCP:
// every test server here) reads frames itself. These tests write the
// client's frames by hand on the socket, to control how they arrive.

// clientFrame is a frame as a client sends it: masked.
func clientFrame(op byte, fin bool, payload []byte) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	var f []byte
	switch n := len(payload); {
	case n < 126:
		f = []byte{b0, 0x80 | byte(n)}
	case n <= 0xffff:
		f = []byte{b0, 0x80 | 126, byte(n >> 8), byte(n)}
	default:
		f = []byte{b0, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 0}
		binary.BigEndian.PutUint64(f[2:], uint64(n))
	}
	key := []byte{0x37, 0xfa, 0x21, 0x3d}
	f = append(f, key...)
	for i, c := range payload {
		f = append(f, c^key[i%4])
	}
	return f
}

// openIdle opens n connections, uids 1 to n, waits for their logins and
// then until they hold no goroutine each (fewer than n/10 above base, the
// goroutine count before they were opened).
func openIdle(t *testing.T, s *charttest.Server, rec *charttest.Recorder, n, base int) []*websocket.Conn {
	t.Helper()
	conns := make([]*websocket.Conn, n)
	for i := range conns {
		conns[i] = s.Open(t, uint64(i+1), nil)
		rec.WantLogin(t, uint64(i+1))
	}
	charttest.Eventually(t, "idle connections without goroutines", func() bool {
		return runtime.NumGoroutine()-base < n/10
	})
	return conns
}

func roomMessage(content string) []byte {
	b, _ := json.Marshal(map[string]any{"channel_id": "room", "content": content, "type": 3})
	return b
}

// pollPair serves a hub whose uids 1 (the sender, written to by hand) and
// 2 (a client that reads) are members of "room".
func pollPair(t *testing.T, cfg chart.Config) (s *charttest.Server, rec *charttest.Recorder, sender *websocket.Conn, reader *charttest.Client) {
	rec = charttest.NewRecorder()
	s = start(t, cfg, rec)
	sender = s.Open(t, 1, nil)
	rec.WantLogin(t, 1)
	reader = s.Login(t, rec, 2)
	if err := s.Hub.JoinChannelIds(1, "room"); err != nil {
		t.Fatal(err)
	}
	if err := s.Hub.JoinChannelIds(2, "room"); err != nil {
		t.Fatal(err)
	}
	return s, rec, sender, reader
}

// TestPolledBackToBack: frames that arrive together (two messages, a
// ping, a message in two fragments with a ping between them) are all
// read, in order, though the poller tells of them once; both pings are
// answered (p1's pong, if still queued, replaced by p2's).
func TestPolledBackToBack(t *testing.T) {
	_, rec, sender, reader := pollPair(t, chart.Config{})
	pongs := make(chan string, 4)
	sender.SetPongHandler(func(data string) error { pongs <- data; return nil })
	b := roomMessage("b")
	var burst []byte
	burst = append(burst, clientFrame(0x1, true, roomMessage("a"))...)
	burst = append(burst, clientFrame(0x9, true, []byte("p1"))...)
	burst = append(burst, clientFrame(0x1, false, b[:5])...)
	burst = append(burst, clientFrame(0x9, true, []byte("p2"))...)
	burst = append(burst, clientFrame(0x0, true, b[5:])...)
	burst = append(burst, clientFrame(0x1, true, roomMessage("c"))...)
	if _, err := sender.UnderlyingConn().Write(burst); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"a", "b", "c"} {
		if m := reader.WantContent(want); m.UserId != 1 {
			t.Fatalf("message %q from uid %d", want, m.UserId)
		}
	}
	// The sender, a member too, reads its own messages and the pongs.
	sender.SetReadDeadline(time.Now().Add(charttest.Wait))
	for _, want := range []string{"a", "b", "c"} {
		_, data, err := sender.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		var m chart.Message
		if err := json.Unmarshal(data, &m); err != nil || m.Content != want {
			t.Fatalf("sender got %s (%v), want content %q", data, err, want)
		}
	}
	// p2's pong may answer for p1 too, when p1's was still queued.
	got := charttest.Recv(t, pongs, "pong")
	if got == "p1" {
		got = charttest.Recv(t, pongs, "pong")
	}
	if got != "p2" {
		t.Fatalf("pong %q, want p2 (after p1 or not)", got)
	}
	rec.NoErr(t)
}

// TestPolledFullBuffer: frames that fill the reader's 4 KiB buffer to
// its last byte, and one more behind them, written at once: the poller
// tells of them once (its events are edge-triggered), the first read
// fills the buffer and ends between two frames, and the reader must look
// for the rest in the socket rather than wait for an event that does not
// come.
func TestPolledFullBuffer(t *testing.T) {
	_, rec, sender, reader := pollPair(t, chart.Config{})
	var burst []byte
	for i, content := range []string{"a", "b"} {
		// Two frames of 2,048 bytes: 8 of header and mask, 2,040 of
		// payload, a JSON message padded with spaces.
		m := roomMessage(strings.Repeat(content, 1000+i))
		m = append(m, bytes.Repeat([]byte(" "), 2040-len(m))...)
		burst = append(burst, clientFrame(0x1, true, m)...)
	}
	if len(burst) != 4096 {
		t.Fatalf("burst of %d bytes", len(burst))
	}
	burst = append(burst, clientFrame(0x1, true, roomMessage("c"))...)
	if _, err := sender.UnderlyingConn().Write(burst); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{strings.Repeat("a", 1000), strings.Repeat("b", 1001), "c"} {
		if m := reader.WantContent(want); m.UserId != 1 {
			t.Fatalf("message %.10q from uid %d", want, m.UserId)
		}
	}
	rec.NoErr(t)
}

// TestPolledSplitFrames: frames that arrive a byte at a time (headers
// split, a 16-bit length, fragments), and a message larger than the read
// buffer, are read whole.
func TestPolledSplitFrames(t *testing.T) {
	_, rec, sender, reader := pollPair(t, chart.Config{})
	nc := sender.UnderlyingConn()
	long := roomMessage(strings.Repeat("x", 300)) // a 16-bit length
	var trickle []byte
	trickle = append(trickle, clientFrame(0x1, true, long)...)
	m := roomMessage("fragmented")
	trickle = append(trickle, clientFrame(0x1, false, m[:3])...)
	trickle = append(trickle, clientFrame(0x0, false, m[3:10])...)
	trickle = append(trickle, clientFrame(0x0, true, m[10:])...)
	for i := range trickle {
		if _, err := nc.Write(trickle[i : i+1]); err != nil {
			t.Fatal(err)
		}
	}
	reader.WantContent(strings.Repeat("x", 300))
	reader.WantContent("fragmented")
	big := strings.Repeat("0123456789", 3000) // 30 KB: many reads
	if _, err := nc.Write(clientFrame(0x1, true, roomMessage(big))); err != nil {
		t.Fatal(err)
	}
	reader.WantContent(big)
	rec.NoErr(t)
}

// TestPolledMessageTimeout: a message whose rest never comes is dropped
// at MessageTimeout, while the connection waits for the rest.
func TestPolledMessageTimeout(t *testing.T) {
	_, rec, sender, reader := pollPair(t, chart.Config{MessageTimeout: 300 * time.Millisecond})
	f := clientFrame(0x1, true, roomMessage("never finished"))
	began := time.Now()
	if _, err := sender.UnderlyingConn().Write(f[:len(f)-3]); err != nil {
		t.Fatal(err)
	}
	if uid := charttest.Recv(t, rec.Logouts, "logout"); uid != 1 {
		t.Fatalf("logout of uid %d", uid)
	}
	if d := time.Since(began); d < 300*time.Millisecond {
		t.Fatalf("dropped after %v, before MessageTimeout", d)
	}
	rec.WantErr(t, chart.ErrMessageTimeout)
	reader.Quiet(50 * time.Millisecond)
}

// TestPolledSilentPeer: a client that sends nothing, not a pong (it is
// never pinged here), is dropped after PongWait; one that sent a message
// first gets PongWait from that message on.
func TestPolledSilentPeer(t *testing.T) {
	rec := charttest.NewRecorder()
	s := start(t, chart.Config{PingInterval: time.Hour, PongWait: 300 * time.Millisecond}, rec)
	began := time.Now() // before the read deadline is set
	s.Open(t, 1, nil)
	rec.WantLogin(t, 1)
	if uid := charttest.Recv(t, rec.Logouts, "logout of the silent client"); uid != 1 {
		t.Fatalf("logout of uid %d", uid)
	}
	if d := time.Since(began); d < 300*time.Millisecond {
		t.Fatalf("dropped after %v, before PongWait", d)
	}
	err := rec.WantErr(t, chart.ErrConnection)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("error %v, want a timeout", err)
	}

	talker := s.Open(t, 2, nil)
	rec.WantLogin(t, 2)
	s.Hub.JoinChannelIds(2, "room")
	sent := time.Now()
	if _, err := talker.UnderlyingConn().Write(clientFrame(0x1, true, roomMessage("hi"))); err != nil {
		t.Fatal(err)
	}
	if uid := charttest.Recv(t, rec.Logouts, "logout of the talker"); uid != 2 {
		t.Fatalf("logout of uid %d", uid)
	}
	if d := time.Since(sent); d < 300*time.Millisecond {
		t.Fatalf("dropped %v after its message, before PongWait", d)
	}
}

// TestPolledCloseGrace: a client that does not answer the server's close
// frame is dropped after CloseGrace, though nothing reads it meanwhile.
func TestPolledCloseGrace(t *testing.T) {
	rec := charttest.NewRecorder()
	s := start(t, chart.Config{CloseGrace: 300 * time.Millisecond}, rec)
	ws := s.Open(t, 1, nil)
	rec.WantLogin(t, 1)
	ws.SetCloseHandler(func(int, string) error { return nil }) // never answers
	began := time.Now()
	if err := s.Hub.Disconnect(1, "bye"); err != nil {
		t.Fatal(err)
	}
	ws.SetReadDeadline(time.Now().Add(charttest.Wait))
	_, _, err := ws.ReadMessage()
	if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != chart.CloseDisconnected {
		t.Fatalf("read: %v, want close %d", err, chart.CloseDisconnected)
	}
	if uid := charttest.Recv(t, rec.Logouts, "logout"); uid != 1 {
		t.Fatalf("logout of uid %d", uid)
	}
	if d := time.Since(began); d < 300*time.Millisecond {
		t.Fatalf("dropped after %v, before CloseGrace", d)
	}
	rec.NoErr(t)
}

// TestPolledProtocolErrors: frames gorilla's reader refuses are refused
// the same way, with a close frame 1002.
func TestPolledProtocolErrors(t *testing.T) {
	unmasked := clientFrame(0x1, true, roomMessage("x"))
	unmasked[1] &^= 0x80
	unmasked = append(unmasked[:2], unmasked[6:]...)
	for name, f := range map[string][]byte{
		"unmasked":        unmasked,
		"continuation":    clientFrame(0x0, true, []byte("x")),
		"reserved bit":    append([]byte{0xc1}, clientFrame(0x1, true, []byte("x"))[1:]...),
		"bad opcode":      clientFrame(0x3, true, nil),
		"fragmented ping": clientFrame(0x9, false, nil),
		"bad close code":  clientFrame(0x8, true, []byte{0x03, 0xed}), // 1005
		"data before FIN": append(clientFrame(0x1, false, []byte("{")), clientFrame(0x1, true, []byte("{}"))...),
		"long control":    clientFrame(0xA, true, bytes.Repeat([]byte("x"), 126)),
		"close not UTF-8": clientFrame(0x8, true, []byte{0x03, 0xe8, 0xff}),
	} {
		t.Run(name, func(t *testing.T) {
			rec := charttest.NewRecorder()
			s := start(t, chart.Config{}, rec)
			ws := s.Open(t, 1, nil)
			rec.WantLogin(t, 1)
			if _, err := ws.UnderlyingConn().Write(f); err != nil {
				t.Fatal(err)
			}
			ws.SetReadDeadline(time.Now().Add(charttest.Wait))
			_, _, err := ws.ReadMessage()
			if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != websocket.CloseProtocolError {
				t.Fatalf("read: %v, want close 1002", err)
			}
			charttest.Recv(t, rec.Logouts, "logout")
			rec.WantErr(t, chart.ErrConnection)
		})
	}
}

// TestPolledIdleHoldsNoGoroutine: idle connections wait in the poller,
// without a goroutine each, and read again when a frame comes.
func TestPolledIdleHoldsNoGoroutine(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the poller is Linux's")
	}
	rec := charttest.NewRecorder()
	s := start(t, chart.Config{}, rec)
	base := runtime.NumGoroutine()
	const n = 200
	conns := openIdle(t, s, rec, n, base)
	reader := s.Login(t, rec, 1000)
	s.Hub.JoinChannelIds(1000, "room")
	for i, ws := range conns {
		s.Hub.JoinChannelIds(uint64(i+1), "room")
		if _, err := ws.UnderlyingConn().Write(clientFrame(0x1, true, roomMessage("from "+string(rune('A'+i%26))))); err != nil {
			t.Fatal(err)
		}
		reader.WantContent("from " + string(rune('A'+i%26)))
	}
	rec.NoErr(t)
}

// TestTLSKeepsGoroutineReader: a TLS connection, which the poller cannot
// watch (the TLS layer buffers), is read by gorilla's reader as before.
func TestTLSKeepsGoroutineReader(t *testing.T) {
	rec := charttest.NewRecorder()
	hub := chart.New(chart.Config{})
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		uid := uint64(1)
		if r.URL.Query().Get("id") == "2" {
			uid = 2
		}
		hub.NewServer(w, r, uid, rec)
	}))
	defer srv.Close()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), charttest.Wait)
		defer cancel()
		hub.Shutdown(ctx)
	}()
	d := websocket.Dialer{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	url := "wss" + strings.TrimPrefix(srv.URL, "https")
	a, _, err := d.Dial(url+"?id=1", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	rec.WantLogin(t, 1)
	b, _, err := d.Dial(url+"?id=2", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	rec.WantLogin(t, 2)
	hub.JoinChannelIds(1, "room")
	hub.JoinChannelIds(2, "room")
	if err := a.WriteMessage(websocket.TextMessage, roomMessage("over TLS")); err != nil {
		t.Fatal(err)
	}
	b.SetReadDeadline(time.Now().Add(charttest.Wait))
	_, data, err := b.ReadMessage()
	var m chart.Message
	if err != nil || json.Unmarshal(data, &m) != nil || m.Content != "over TLS" || m.UserId != 1 {
		t.Fatalf("got %s, %v", data, err)
	}
	rec.NoErr(t)
}

// TestNoPongWaitKeepsIdle: with PongWait off, a connection that sent a
// message is not dropped MessageTimeout later (the message's read
// deadline is lifted once it is read).
func TestNoPongWaitKeepsIdle(t *testing.T) {
	_, rec, sender, reader := pollPair(t, chart.Config{PongWait: -1, MessageTimeout: 100 * time.Millisecond})
	nc := sender.UnderlyingConn()
	if _, err := nc.Write(clientFrame(0x1, true, roomMessage("first"))); err != nil {
		t.Fatal(err)
	}
	reader.WantContent("first")
	reader.Quiet(300 * time.Millisecond) // three MessageTimeouts idle
	if _, err := nc.Write(clientFrame(0x1, true, roomMessage("still here"))); err != nil {
		t.Fatal(err)
	}
	reader.WantContent("still here")
	rec.NoErr(t)
}

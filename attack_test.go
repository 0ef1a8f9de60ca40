package chart_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wuyan94zl/chart"
	"github.com/wuyan94zl/chart/charttest"
)

// Attacks on the polled reader (wsread.go, read.go, poll_linux.go) over
// real sockets, with hand-made frames.

// closeCodeOf reads ws until it ends and returns the close code the server
// sent (1006: none, the socket just ended).
func closeCodeOf(t *testing.T, ws *websocket.Conn) int {
	t.Helper()
	ws.SetReadDeadline(time.Now().Add(charttest.Wait))
	for {
		_, _, err := ws.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return ce.Code
		}
		if isTimeout(err) {
			t.Fatalf("connection still open after %v", charttest.Wait)
		}
		return websocket.CloseAbnormalClosure
	}
}

func frameHdr(b0 byte, length uint64) []byte {
	var f []byte
	switch {
	case length < 126:
		f = []byte{b0, 0x80 | byte(length)}
	case length <= 0xffff:
		f = []byte{b0, 0x80 | 126, byte(length >> 8), byte(length)}
	default:
		f = []byte{b0, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 0}
		binary.BigEndian.PutUint64(f[2:], length)
	}
	return append(f, 0x37, 0xfa, 0x21, 0x3d)
}

// TestAttackMalformedFrames: each malformed frame ends the connection with
// the close code gorilla's reader would send.
func TestAttackMalformedFrames(t *testing.T) {
	const limit = 1024
	closeWith := func(code int, text string) []byte {
		return clientFrame(0x8, true, append(binary.BigEndian.AppendUint16(nil, uint16(code)), text...))
	}
	big := bytes.Repeat([]byte("x"), 600)
	cases := []struct {
		name   string
		frames []byte
		code   int
		err    error // the reported error; nil: none
	}{
		{"RSV2", append([]byte{0xa1}, clientFrame(0x1, true, []byte("x"))[1:]...), 1002, chart.ErrConnection},
		{"RSV3", append([]byte{0x91}, clientFrame(0x1, true, []byte("x"))[1:]...), 1002, chart.ErrConnection},
		{"opcode 0x7", clientFrame(0x7, true, nil), 1002, chart.ErrConnection},
		{"opcode 0xB", clientFrame(0xB, true, nil), 1002, chart.ErrConnection},
		{"opcode 0xF unmasked", []byte{0x8f, 0x00}, 1002, chart.ErrConnection},
		// gorilla refuses a negative 64-bit length with ErrReadLimit and no
		// close frame: the socket just ends (1006 for the client).
		{"64-bit length, top bit", frameHdr(0x81, 1<<63), 1006, chart.ErrMessageTooLarge},
		{"64-bit length, all ones", frameHdr(0x81, ^uint64(0)), 1006, chart.ErrMessageTooLarge},
		{"length limit+1", frameHdr(0x81, limit+1), 1009, chart.ErrMessageTooLarge},
		{"fragments to limit+1", append(clientFrame(0x1, false, big), frameHdr(0x80, limit+1-600)...), 1009, chart.ErrMessageTooLarge},
		{"fragmented close", clientFrame(0x8, false, []byte{0x03, 0xe8}), 1002, chart.ErrConnection},
		{"ping 126 bytes, 16-bit length", clientFrame(0x9, true, bytes.Repeat([]byte("p"), 126)), 1002, chart.ErrConnection},
		{"pong with 64-bit length", frameHdr(0x8A, 1<<20), 1002, chart.ErrConnection},
		{"continuation first", clientFrame(0x0, false, []byte("x")), 1002, chart.ErrConnection},
		{"binary inside text", append(clientFrame(0x1, false, []byte("{")), clientFrame(0x2, true, []byte("}"))...), 1002, chart.ErrConnection},
		{"continuation after FIN", append(clientFrame(0x1, true, roomMessage("a")), clientFrame(0x0, true, []byte("x"))...), 1002, chart.ErrConnection},
		{"invalid UTF-8 across fragments", append(clientFrame(0x1, false, []byte("{\"channel_id\":\"room\",\"content\":\"\xc3")), clientFrame(0x0, true, []byte("(\"}"))...), 1007, chart.ErrBadMessage},
		{"close 999", closeWith(999, ""), 1002, chart.ErrConnection},
		{"close 1004", closeWith(1004, ""), 1002, chart.ErrConnection},
		{"close 1005", closeWith(1005, ""), 1002, chart.ErrConnection},
		{"close 1006", closeWith(1006, ""), 1002, chart.ErrConnection},
		{"close 1015", closeWith(1015, ""), 1002, chart.ErrConnection},
		{"close 2999", closeWith(2999, ""), 1002, chart.ErrConnection},
		{"close 5000", closeWith(5000, ""), 1002, chart.ErrConnection},
		{"close 3000", closeWith(3000, "ok"), 3000, nil},
		{"close 4999", closeWith(4999, ""), 4999, nil},
		// RFC 6455 5.5.1 makes a 1-byte close body invalid; gorilla takes it
		// as "no status" and so does the polled reader: answered 1000.
		{"close with 1 byte", clientFrame(0x8, true, []byte{0x03}), 1000, nil},
		{"close, empty", clientFrame(0x8, true, nil), 1000, nil},
	}
	rec := charttest.NewRecorder()
	s := start(t, chart.Config{MaxMessageSize: limit}, rec)
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			uid := uint64(i + 1)
			ws := s.Open(t, uid, nil)
			rec.WantLogin(t, uid)
			if _, err := ws.UnderlyingConn().Write(tc.frames); err != nil {
				t.Fatal(err)
			}
			if code := closeCodeOf(t, ws); code != tc.code {
				t.Errorf("close %d, want %d", code, tc.code)
			}
			if got := charttest.Recv(t, rec.Logouts, "logout"); got != uid {
				t.Fatalf("logout of %d", got)
			}
			if tc.err != nil {
				rec.WantErr(t, tc.err)
			}
			rec.NoErr(t)
		})
	}
}

// TestAttackFragmentsAtTheLimit: a message of exactly MaxMessageSize in
// 1-byte continuation frames, with pings between them, is accepted.
func TestAttackFragmentsAtTheLimit(t *testing.T) {
	msg := roomMessage(strings.Repeat("y", 2000))
	_, rec, sender, reader := pollPair(t, chart.Config{MaxMessageSize: int64(len(msg)), RateLimit: -1})
	var b []byte
	b = append(b, clientFrame(0x1, false, msg[:1])...)
	for i := 1; i < len(msg)-1; i++ {
		b = append(b, clientFrame(0x0, false, msg[i:i+1])...)
		if i%100 == 0 {
			b = append(b, clientFrame(0x9, true, nil)...)
		}
	}
	b = append(b, clientFrame(0x0, true, msg[len(msg)-1:])...)
	began := time.Now()
	if _, err := sender.UnderlyingConn().Write(b); err != nil {
		t.Fatal(err)
	}
	reader.WantContent(strings.Repeat("y", 2000))
	t.Logf("%d one-byte fragments (%d bytes on the wire) read in %v", len(msg), len(b), time.Since(began))
	rec.NoErr(t)
}

// TestAttackSplitEverywhere: a burst of frames (two messages, a ping, a
// fragmented message with a ping inside) written in two writes split at
// every byte boundary is read whole each time, in order.
func TestAttackSplitEverywhere(t *testing.T) {
	_, rec, sender, reader := pollPair(t, chart.Config{RateLimit: -1})
	nc := sender.UnderlyingConn()
	b := roomMessage("third")
	var burst []byte
	burst = append(burst, clientFrame(0x1, true, roomMessage("first"))...)
	burst = append(burst, clientFrame(0x9, true, []byte("p"))...)
	burst = append(burst, clientFrame(0x1, true, roomMessage("second"))...)
	burst = append(burst, clientFrame(0x1, false, b[:7])...)
	burst = append(burst, clientFrame(0x9, true, nil)...)
	burst = append(burst, clientFrame(0x0, true, b[7:])...)
	for k := 1; k < len(burst); k++ {
		if _, err := nc.Write(burst[:k]); err != nil {
			t.Fatal(err)
		}
		if _, err := nc.Write(burst[k:]); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"first", "second", "third"} {
			reader.WantContent(want)
		}
	}
	t.Logf("%d split points", len(burst)-1)
	rec.NoErr(t)
}

// TestAttackPipelinedAfterClose: frames after the client's close frame,
// in the same segment, are not read as messages; the close is answered.
func TestAttackPipelinedAfterClose(t *testing.T) {
	_, rec, sender, reader := pollPair(t, chart.Config{})
	var b []byte
	b = append(b, clientFrame(0x1, true, roomMessage("before"))...)
	b = append(b, clientFrame(0x8, true, []byte{0x03, 0xe8})...)
	b = append(b, clientFrame(0x1, true, roomMessage("after"))...)
	b = append(b, clientFrame(0x9, true, nil)...)
	b = append(b, []byte{0xff, 0xff, 0xff}...) // garbage too
	if _, err := sender.UnderlyingConn().Write(b); err != nil {
		t.Fatal(err)
	}
	reader.WantContent("before")
	if code := closeCodeOf(t, sender); code != 1000 {
		t.Fatalf("close %d, want 1000", code)
	}
	charttest.Recv(t, rec.Logouts, "logout")
	reader.Quiet(100 * time.Millisecond)
	rec.NoErr(t)
}

// TestAttackSlowloris: connections that send one byte of a frame header
// and stall. Each then holds a reader goroutine and a pooled 4 KiB buffer
// (an idle one holds neither), for MessageTimeout at most, not PongWait.
func TestAttackSlowloris(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the poller is Linux's")
	}
	const n = 200
	pongWait := 1500 * time.Millisecond
	rec := charttest.NewRecorder()
	s := start(t, chart.Config{PingInterval: time.Hour, PongWait: pongWait, MessageTimeout: 200 * time.Millisecond}, rec)
	base := runtime.NumGoroutine()
	heap0, stack0 := liveHeap(), stackInuse()
	conns := openIdle(t, s, rec, n, base)
	idleG, idleHeap, idleStack := runtime.NumGoroutine()-base, liveHeap()-heap0, stackInuse()-stack0
	began := time.Now()
	for _, ws := range conns {
		if _, err := ws.UnderlyingConn().Write([]byte{0x81}); err != nil {
			t.Fatal(err)
		}
	}
	charttest.Eventually(t, "a reader per stalled connection", func() bool {
		return runtime.NumGoroutine()-base >= n
	})
	heldG, heldHeap, heldStack := runtime.NumGoroutine()-base, liveHeap()-heap0, stackInuse()-stack0
	t.Logf("%d connections (both ends in this process): idle %d goroutines, %d B heap + %d B stacks; one header byte each: %d goroutines, %d B heap + %d B stacks: %d B more per connection",
		n, idleG, idleHeap, idleStack, heldG, heldHeap, heldStack, (heldHeap+heldStack-idleHeap-idleStack)/n)
	for i := 0; i < n; i++ {
		charttest.Recv(t, rec.Logouts, "logout")
	}
	held := time.Since(began)
	t.Logf("held for %v (PongWait %v, MessageTimeout 200ms)", held, pongWait)
	if held >= pongWait-100*time.Millisecond {
		t.Fatalf("held for %v: PongWait, not MessageTimeout", held)
	}
}

func stackInuse() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.StackInuse
}

// TestAttackThousandAtOnce: many connections sending one message each at
// the same moment are all read; a chatting user's round trip meanwhile is
// measured.
func TestAttackThousandAtOnce(t *testing.T) {
	n := 1000
	if testing.Short() {
		n = 300
	}
	rec := charttest.NewRecorder()
	rec.Logins, rec.Logouts = make(chan uint64, n+10), make(chan uint64, n+10) // every logout recorded, none blocks Shutdown
	s := start(t, chart.Config{RateLimit: -1}, rec)
	reader := s.Login(t, rec, 100000)
	probe := s.Login(t, rec, 100001)
	s.Hub.JoinChannelIds(100001, "probe")
	conns := make([]*websocket.Conn, n)
	for i := range conns {
		conns[i] = s.Open(t, uint64(i+1), nil)
		rec.WantLogin(t, uint64(i+1))
	}
	frame := clientFrame(0x1, true, []byte(`{"to_user_id":100000,"content":"burst"}`))
	start := make(chan struct{})
	var wg sync.WaitGroup
	for _, ws := range conns {
		wg.Add(1)
		go func(ws *websocket.Conn) {
			defer wg.Done()
			<-start
			ws.UnderlyingConn().Write(frame)
		}(ws)
	}
	began := time.Now()
	close(start)
	var worst, total time.Duration
	probes := 0
	for got := 0; got < n; got++ {
		reader.WantContent("burst")
		if got%50 == 0 {
			t0 := time.Now()
			probe.SendTo("probe", "ping")
			probe.WantContent("ping")
			d := time.Since(t0)
			worst, total, probes = max(worst, d), total+d, probes+1
		}
	}
	all := time.Since(began)
	wg.Wait()
	t0 := time.Now()
	probe.SendTo("probe", "ping")
	probe.WantContent("ping")
	t.Logf("%d connections, one message each at once: all read in %v; a chatting user's round trip meanwhile: mean %v, worst %v (idle: %v)",
		n, all, total/time.Duration(probes), worst, time.Since(t0))
	rec.NoErr(t)
}

// TestAttackControlFramesKeepReader: a connection whose client sent a
// ping or a pong (as every client does, answering the server's pings
// every PingInterval) goes back to the poller afterwards: it holds no
// goroutine (and no read buffer) while idle.
func TestAttackControlFramesKeepReader(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the poller is Linux's")
	}
	for _, op := range []byte{0x9, 0xA} {
		name := map[byte]string{0x9: "ping", 0xA: "pong"}[op]
		t.Run(name, func(t *testing.T) {
			const n = 100
			rec := charttest.NewRecorder()
			s := start(t, chart.Config{PingInterval: time.Hour, PongWait: time.Hour}, rec)
			base := runtime.NumGoroutine()
			conns := openIdle(t, s, rec, n, base)
			for _, ws := range conns {
				// A pong, then a ping whose answer tells that both were read.
				f := clientFrame(op, true, []byte("hb"))
				if op == 0xA {
					f = append(f, clientFrame(0x9, true, nil)...)
				}
				if _, err := ws.UnderlyingConn().Write(f); err != nil {
					t.Fatal(err)
				}
			}
			{
				for _, ws := range conns { // the pongs came: the pings were read
					ws.SetPingHandler(nil)
					ws.SetPongHandler(func(string) error { return errors.New("pong") })
					ws.SetReadDeadline(time.Now().Add(charttest.Wait))
					if _, _, err := ws.ReadMessage(); err == nil || err.Error() != "pong" {
						t.Fatalf("read %v, want the pong", err)
					}
				}
			}
			charttest.Eventually(t, "connections back in the poller after a "+name, func() bool {
				return runtime.NumGoroutine()-base < n/10
			})
			rec.NoErr(t)
		})
	}
}

// TestAttackEOFWithoutCloseFrame: a client whose stream ends without a
// close frame (its process died, it half-closed) is not answered with a
// close frame 1006, which RFC 6455 (7.4.1) forbids on the wire, and is not
// counted as having closed (Stats: client_closed is "sent a close frame").
func TestAttackEOFWithoutCloseFrame(t *testing.T) {
	rec := charttest.NewRecorder()
	s := start(t, chart.Config{}, rec)
	for i, name := range []string{"nothing sent", "after a message", "header cut short"} {
		t.Run(name, func(t *testing.T) {
			uid := uint64(i + 1)
			ws := s.Open(t, uid, nil)
			rec.WantLogin(t, uid)
			nc := ws.UnderlyingConn().(*net.TCPConn)
			switch i {
			case 1:
				nc.Write(clientFrame(0x1, true, []byte(`{"to_user_id":99,"content":"x"}`)))
			case 2:
				nc.Write(clientFrame(0x1, true, roomMessage("x"))[:3])
			}
			nc.CloseWrite()
			nc.SetReadDeadline(time.Now().Add(charttest.Wait))
			out, err := io.ReadAll(nc)
			if isTimeout(err) {
				t.Fatal("connection not ended")
			}
			// Skip what the server sent before (an error frame for the
			// message to an offline user).
			for len(out) >= 2 && out[0]&0xf != 0x8 {
				n := int(out[1] & 0x7f)
				if n == 126 {
					n = 2 + int(binary.BigEndian.Uint16(out[2:]))
				}
				out = out[min(len(out), 2+n):]
			}
			if len(out) >= 4 {
				t.Fatalf("server sent a close frame with code %d", binary.BigEndian.Uint16(out[2:]))
			}
			charttest.Recv(t, rec.Logouts, "logout")
			rec.WantErr(t, chart.ErrConnection)
		})
	}
	if n := s.Hub.Stats().DisconnectReasons.ClientClosed; n != 0 {
		t.Fatalf("%d counted as closed by the client", n)
	}
}

// TestAttackCloseWhileReading: connections closed while their readers
// are in the middle of a message (the server closes: Disconnect; or the
// client drops the socket) all end, once each, without a race; no reader
// is left behind (goleak in TestMain).
func TestAttackCloseWhileReading(t *testing.T) {
	const n = 60
	rec := charttest.NewRecorder()
	s := start(t, chart.Config{RateLimit: -1, ReadRate: -1, CloseGrace: 100 * time.Millisecond}, rec)
	conns := make([]*websocket.Conn, n)
	for i := range conns {
		conns[i] = s.Open(t, uint64(i+1), nil)
		rec.WantLogin(t, uint64(i+1))
	}
	payload := []byte(`{"to_user_id":99999,"content":"` + strings.Repeat("z", 20000) + `"}`)
	msg := clientFrame(0x1, true, payload)
	ping := clientFrame(0x9, true, nil)
	var wg sync.WaitGroup
	writing := make(chan struct{}, n)
	for _, ws := range conns {
		wg.Add(1)
		go func(nc net.Conn) {
			defer wg.Done()
			nc.SetWriteDeadline(time.Now().Add(charttest.Wait))
			for first := true; ; first = false {
				// A message in 1 KiB writes with pings between them.
				for off := 0; off < len(msg); off += 1024 {
					if _, err := nc.Write(msg[off:min(off+1024, len(msg))]); err != nil {
						return
					}
					if first && off == 0 {
						writing <- struct{}{}
					}
				}
				if _, err := nc.Write(ping); err != nil {
					return
				}
			}
		}(ws.UnderlyingConn())
	}
	for range conns {
		<-writing
	}
	for i, ws := range conns {
		if i%2 == 0 {
			s.Hub.Disconnect(uint64(i+1), "bye")
		} else {
			ws.UnderlyingConn().Close()
		}
	}
	seen := map[uint64]bool{}
	for range conns {
		uid := charttest.Recv(t, rec.Logouts, "logout")
		if seen[uid] {
			t.Fatalf("uid %d logged out twice", uid)
		}
		seen[uid] = true
	}
	for _, ws := range conns {
		ws.UnderlyingConn().Close() // the writers of the disconnected ones stop
	}
	wg.Wait()
}

// TestAttackPingFloodNoRateLimit: with RateLimit off, a flood of 20000
// pings in one write is read through and answered in order, the last ping
// included, before the close that follows it; a pong the writer had not
// taken yet answers for the pings before (RFC 6455 allows answering the
// most recent only), so the flood never fills the send queue. (Every ping
// got its own pong before: when the writer fell behind, 4,096 pongs
// filled the queue and the client was closed as a slow consumer, 4008.)
func TestAttackPingFloodNoRateLimit(t *testing.T) {
	rec := charttest.NewRecorder()
	s := start(t, chart.Config{RateLimit: -1, ReadRate: -1}, rec)
	ws := s.Open(t, 1, nil)
	rec.WantLogin(t, 1)
	const n = 20000
	var flood []byte
	for i := 0; i < n; i++ {
		flood = append(flood, clientFrame(0x9, true, []byte(strconv.Itoa(i)))...)
	}
	flood = append(flood, clientFrame(0x8, true, []byte{0x03, 0xe8})...)
	last, pongs := -1, 0
	ws.SetPongHandler(func(data string) error {
		i, err := strconv.Atoi(data)
		if err != nil || i <= last || i >= n {
			return errors.New("pong " + data + " after " + strconv.Itoa(last))
		}
		last, pongs = i, pongs+1
		return nil
	})
	began := time.Now()
	written := make(chan error, 1)
	go func() { _, err := ws.UnderlyingConn().Write(flood); written <- err }()
	if code := closeCodeOf(t, ws); code != 1000 || last != n-1 {
		t.Fatalf("close %d after the pong of ping %d, want 1000 after that of %d", code, last, n-1)
	}
	if err := <-written; err != nil {
		t.Fatal(err)
	}
	t.Logf("%d pings (%d bytes) answered in %v by %d pongs", n, len(flood), time.Since(began), pongs)
	charttest.Recv(t, rec.Logouts, "logout")
	rec.NoErr(t)
}

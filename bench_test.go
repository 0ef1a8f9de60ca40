package chart

import (
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// discardConn is a net.Conn that accepts every write, for benchmarks of
// the hub itself without the kernel's network stack.
type discardConn struct {
	net.Conn
	written atomic.Int64
}

func (d *discardConn) Write(p []byte) (int, error) {
	d.written.Add(int64(len(p)))
	return len(p), nil
}
func (d *discardConn) Close() error                     { return nil }
func (d *discardConn) SetWriteDeadline(time.Time) error { return nil }
func (d *discardConn) SetReadDeadline(time.Time) error  { return nil }

// benchHub registers n connections, one per uid, that all joined "room".
func benchHub(b *testing.B, n int) (*Hub, []*Conn) {
	b.Helper()
	return benchHubConfig(b, n, Config{PingInterval: -1})
}

func benchHubConfig(b *testing.B, n int, cfg Config) (*Hub, []*Conn) {
	b.Helper()
	h := New(cfg)
	conns := make([]*Conn, n)
	for i := range conns {
		c := &Conn{hub: h, uid: uint64(i + 1), handler: nopHandler{}, nc: &discardConn{}}
		if _, ok := h.register(c); !ok {
			b.Fatal("register failed")
		}
		h.drainEvents(c.uid)
		conns[i] = c
		if err := h.JoinChannelIds(c.uid, "room"); err != nil {
			b.Fatal(err)
		}
	}
	return h, conns
}

// idle waits until no connection has queued output.
func idle(conns []*Conn) {
	for _, c := range conns {
		for {
			c.mu.Lock()
			busy := c.writing
			c.mu.Unlock()
			if !busy {
				break
			}
			runtime.Gosched()
		}
	}
}

// BenchmarkFanout publishes to channels of 10, 1,000 and 10,000
// connections, with the default history and without.
func BenchmarkFanout(b *testing.B) {
	for _, n := range []int{10, 1000, 10000} {
		for _, size := range []int{100, 1024} {
			for _, history := range []int{0, -1} {
				name := "subs=" + strconv.Itoa(n) + "/bytes=" + strconv.Itoa(size)
				if history < 0 {
					name += "/history=off"
				}
				benchFanout(b, name, n, size, Config{PingInterval: -1, HistorySize: history})
			}
		}
	}
}

// benchFanout publishes to one channel of n connections; one op is one
// publish delivered (written) to all n.
func benchFanout(b *testing.B, name string, n, size int, cfg Config) {
	b.Run(name, func(b *testing.B) {
		h, conns := benchHubConfig(b, n, cfg)
		m := Message{Type: 3, Content: strings.Repeat("x", size)}
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			h.Publish("room", m)
			if i%64 == 63 {
				idle(conns)
			}
		}
		idle(conns)
		b.StopTimer()
		b.ReportMetric(float64(b.N)*float64(n)/b.Elapsed().Seconds(), "deliveries/s")
		if st := h.Stats(); st.MessagesOut != uint64(b.N*n) || st.Dropped != 0 {
			b.Fatalf("stats %+v", st)
		}
	})
}

// BenchmarkJoinLeave joins and leaves a channel shared with 1000 others.
func BenchmarkJoinLeave(b *testing.B) {
	h, _ := benchHub(b, 1000)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		uid := uint64(i%1000 + 1)
		h.UnJoinChannelIds(uid, "room")
		h.JoinChannelIds(uid, "room")
	}
}

// BenchmarkPresence lists the members of a 1000-member channel.
func BenchmarkPresence(b *testing.B) {
	h, _ := benchHub(b, 1000)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if len(h.ChannelUserIds("room")) != 1000 {
			b.Fatal("wrong member count")
		}
	}
}

// BenchmarkDecodeInbound parses a typical client frame.
func BenchmarkDecodeInbound(b *testing.B) {
	data := []byte(`{"channel_id":"lobby","content":"hello there, how are you today?","type":"3"}`)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := decodeInbound(7, data); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHistoryMemory reports what history costs in heap: per direct
// message waiting for an offline user (each in its own inbox), and per
// channel message kept (100 channels of 100).
func BenchmarkHistoryMemory(b *testing.B) {
	content := strings.Repeat("x", 100)
	measure := func(b *testing.B, n int, fill func(h *Hub, i int)) float64 {
		h := New(Config{PingInterval: -1})
		before := liveHeap()
		for i := 0; i < n; i++ {
			fill(h, i)
		}
		grew := liveHeap() - before
		runtime.KeepAlive(h)
		return float64(grew) / float64(n)
	}
	b.Run("offline-dm", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			per := measure(b, 20000, func(h *Hub, i int) { h.SendMessageToUid(1, uint64(i+2), content) })
			b.ReportMetric(per, "B/offline-user")
		}
	})
	b.Run("channel-message", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			per := measure(b, 10000, func(h *Hub, i int) {
				h.Publish("c"+strconv.Itoa(i%100), Message{Content: content})
			})
			b.ReportMetric(per, "B/message")
		}
	})
}

func liveHeap() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

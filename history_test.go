package chart_test

import (
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/wuyan94zl/chart"
	"github.com/wuyan94zl/chart/charttest"
)

// TestPositions: every channel message carries its offset in the channel's
// stream, one more per message; a direct message carries its place in the
// inbox of each user it is delivered to; transient messages carry none.
func TestPositions(t *testing.T) {
	rec := charttest.NewRecorder()
	s := start(t, chart.Config{}, rec)
	a, b := s.Login(t, rec, 1), s.Login(t, rec, 2)
	s.Hub.JoinChannelIds(1, "room")
	s.Hub.JoinChannelIds(2, "room")
	var epoch string
	for i := 1; i <= 3; i++ {
		a.SendTo("room", strconv.Itoa(i))
		for _, c := range []*charttest.Client{a, b} {
			m := c.NextMsg()
			if m.Offset != uint64(i) || m.Epoch == "" || (epoch != "" && m.Epoch != epoch) {
				t.Fatalf("uid %d: message %d at %d/%q (epoch before %q)", c.Uid, i, m.Offset, m.Epoch, epoch)
			}
			epoch = m.Epoch
		}
	}
	s.Hub.Publish("room", chart.Message{Content: "4"})
	if m := b.NextMsg(); m.Offset != 4 || m.Epoch != epoch {
		t.Fatalf("Publish at %d/%q", m.Offset, m.Epoch)
	}
	a.NextMsg()
	a.Send(`{"channel_id":"room","content":"typing","transient":true}`)
	if m := b.NextMsg(); m.Offset != 0 || m.Epoch != "" || !m.Transient {
		t.Fatalf("transient message %+v", m)
	}
	a.NextMsg()
	// Direct messages: b's inbox is empty, a's too; then a's holds one more.
	s.Hub.SendMessageToUid(2, 2, "note to self")
	if m := b.NextMsg(); m.Offset != 1 {
		t.Fatalf("note to self at %d", m.Offset)
	}
	a.SendToUser(2, "hi")
	ma, mb := a.NextMsg(), b.NextMsg()
	if ma.Offset != 1 || mb.Offset != 2 || ma.Epoch == mb.Epoch || ma.Content != "hi" || mb.Content != "hi" {
		t.Fatalf("direct message: sender's copy %d/%q, recipient's %d/%q", ma.Offset, ma.Epoch, mb.Offset, mb.Epoch)
	}
	if m := charttest.Recv(t, rec.Msgs, "SendMessage"); m.Content != "1" || m.Offset != 1 {
		t.Fatalf("SendMessage saw %+v", m)
	}
}

// TestHistory: History returns what a channel keeps, oldest first, and
// says when messages above the asked offset are gone.
func TestHistory(t *testing.T) {
	rec := charttest.NewRecorder()
	s := start(t, chart.Config{HistorySize: 5}, rec)
	c := s.Login(t, rec, 1)
	s.Hub.JoinChannelIds(1, "room")
	for i := 1; i <= 8; i++ {
		c.SendTo("room", "m"+strconv.Itoa(i))
		c.NextMsg()
	}
	msgs, complete, err := s.Hub.History("room", 0, 0)
	if err != nil || complete || contents(msgs) != "m4 m5 m6 m7 m8" || msgs[0].Offset != 4 || msgs[0].UserId != 1 {
		t.Fatalf("History(0) = %q %v %v (%+v)", contents(msgs), complete, err, msgs)
	}
	if msgs, complete, _ := s.Hub.History("room", 5, 0); !complete || contents(msgs) != "m6 m7 m8" {
		t.Fatalf("History(5) = %q %v", contents(msgs), complete)
	}
	if msgs, complete, _ := s.Hub.History("room", 5, 2); complete || contents(msgs) != "m7 m8" {
		t.Fatalf("History(5, 2) = %q %v", contents(msgs), complete)
	}
	if msgs, complete, _ := s.Hub.History("room", 8, 0); !complete || len(msgs) != 0 {
		t.Fatalf("History(8) = %q %v", contents(msgs), complete)
	}
	if _, _, err := s.Hub.History("", 0, 0); err == nil {
		t.Fatal("History of an empty channel id succeeded")
	}
	if msgs, complete := s.Hub.InboxHistory(1, 0, 0); len(msgs) != 0 || !complete {
		t.Fatalf("empty inbox: %v %v", msgs, complete)
	}
}

// TestHistoryTTL: messages older than HistoryTTL are gone.
func TestHistoryTTL(t *testing.T) {
	rec := charttest.NewRecorder()
	s := start(t, chart.Config{HistoryTTL: 50 * time.Millisecond}, rec)
	s.Hub.Publish("news", chart.Message{Content: "old"})
	charttest.Eventually(t, "old message expired", func() bool {
		msgs, complete, _ := s.Hub.History("news", 0, 0)
		return len(msgs) == 0 && !complete
	})
	s.Hub.Publish("news", chart.Message{Content: "new"})
	if msgs, _, _ := s.Hub.History("news", 0, 0); contents(msgs) != "new" || msgs[0].Offset != 2 {
		t.Fatalf("History = %+v", msgs)
	}
}

// TestHistoryMemoryBound: messages to a hundred thousand distinct channels
// and inboxes keep the heap within MaxHistoryBytes (plus the Go runtime's
// overhead), and the newest are the ones kept.
func TestHistoryMemoryBound(t *testing.T) {
	const limit = 4 << 20
	hub := chart.New(chart.Config{MaxHistoryBytes: limit, Logger: quiet})
	defer hub.Close()
	base := heapNow()
	content := string(make([]byte, 200))
	for i := 0; i < 100000; i++ {
		hub.Publish("c"+strconv.Itoa(i), chart.Message{Content: content})
		hub.SendMessageToUid(0, uint64(i+1), content)
	}
	grew := int64(heapNow()) - int64(base)
	t.Logf("200k messages of 200 B to 200k streams: heap +%d KiB (cap %d KiB)", grew>>10, limit>>10)
	if grew > 3*limit {
		t.Fatalf("heap grew by %d bytes, cap %d", grew, limit)
	}
	if msgs, _, _ := hub.History("c99999", 0, 0); len(msgs) != 1 {
		t.Fatalf("newest channel lost: %v", msgs)
	}
	if msgs, complete, _ := hub.History("c0", 0, 0); len(msgs) != 0 || complete {
		t.Fatalf("oldest channel: %v, complete %v; want nothing, and not complete (the cap deleted it)", msgs, complete)
	}
}

func heapNow() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

func contents(msgs []chart.Message) string {
	s := ""
	for i, m := range msgs {
		if i > 0 {
			s += " "
		}
		s += m.Content
	}
	return s
}

// TestOffsetsInOrder: messages published concurrently to one channel reach
// a member in the order of their offsets, one more each time.
func TestOffsetsInOrder(t *testing.T) {
	rec := charttest.NewRecorder()
	s := start(t, chart.Config{RateLimit: -1}, rec)
	c := s.Login(t, rec, 1)
	s.Hub.JoinChannelIds(1, "room")
	const writers, each = 4, 500
	done := make(chan struct{})
	for w := 0; w < writers; w++ {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := 0; i < each; i++ {
				s.Hub.Publish("room", chart.Message{Content: "x"})
			}
		}()
	}
	for w := 0; w < writers; w++ {
		<-done
	}
	for want := uint64(1); want <= writers*each; want++ {
		if m := c.NextMsg(); m.Offset != want {
			t.Fatalf("message at offset %d arrived where %d was due", m.Offset, want)
		}
	}
}

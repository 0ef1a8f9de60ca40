package chart_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wuyan94zl/chart"
	"github.com/wuyan94zl/chart/charttest"
)

// joiner joins every user to "room" at login.
type joiner struct {
	*charttest.Recorder
	hub *chart.Hub
}

func (j *joiner) LoginServer(uid uint64) {
	j.hub.JoinChannelIds(uid, "room")
	j.Recorder.LoginServer(uid)
}

// TestTunnel: a chart.v1 client's connection is cut by a proxy, with a
// reset and as a blackhole, while three senders publish 200 channel
// messages and one sends 20 direct messages, also during the reconnect
// and its recovery. It ends with every message exactly once, each
// sender's in order, and no duplicate frame.
func TestTunnel(t *testing.T) {
	for _, cut := range []string{"reset", "blackhole"} {
		t.Run(cut, func(t *testing.T) { tunnel(t, cut) })
	}
}

func tunnel(t *testing.T, cut string) {
	// History for the whole test: what is beyond it is TestBeyondRetention's.
	hub := chart.New(chart.Config{Logger: quiet, RateLimit: -1, HistorySize: 1000})
	j := &joiner{Recorder: charttest.NewRecorder(), hub: hub}
	s := charttest.Serve(t, hub, j)
	p := charttest.NewProxy(t, strings.TrimPrefix(strings.TrimSuffix(s.URL, "/ws"), "ws://"))
	c := charttest.NewV1Client(t, "ws://"+p.Addr()+"/ws?id=1")
	// A slow client: messages published before its hello are held by the
	// server and also in the history it replays; the seam drops doubles.
	c.HelloDelay = 30 * time.Millisecond
	c.Connect()
	j.WantLogin(t, 1)
	var senders []*charttest.Client
	for uid := uint64(2); uid <= 4; uid++ {
		senders = append(senders, s.Login(t, j.Recorder, uid))
	}
	senders[0].SendTo("room", "start")
	c.WaitFor("start")

	// Send throughout: before the cut, while cut, and while reconnecting.
	done := make(chan struct{})
	var wg sync.WaitGroup
	for i, sn := range senders {
		wg.Add(1)
		go func(i int, sn *charttest.Client) {
			defer wg.Done()
			for k := 0; k < 67; k++ {
				sn.SendTo("room", fmt.Sprintf("s%d-%d", i, k))
				if i == 0 && k < 20 {
					sn.SendToUser(1, fmt.Sprintf("dm-%d", k))
				}
				time.Sleep(3 * time.Millisecond) // a steady pace across the cut
			}
		}(i, sn)
	}
	go func() { wg.Wait(); close(done) }()
	time.Sleep(20 * time.Millisecond) // some messages before the cut
	gone := c.Gone()
	if cut == "reset" {
		p.Reset()
		<-gone
		time.Sleep(50 * time.Millisecond) // the tunnel: messages go on meanwhile
	} else {
		p.Blackhole()
		time.Sleep(100 * time.Millisecond) // messages go into the hole
		p.Restore()
		<-gone
	}
	c.Drop()
	c.Connect() // with a hello, while the senders go on
	<-done
	senders[1].SendTo("room", "end")
	c.WaitFor("end")

	// Each sender's messages exactly once, in order; the 20 DMs too.
	next := map[string]int{}
	for _, m := range c.Messages() {
		var i, k int
		switch {
		case m.ChannelId == "room" && strings.HasPrefix(m.Content, "s") && m.Content != "start":
			fmt.Sscanf(m.Content, "s%d-%d", &i, &k)
			key := fmt.Sprint("s", i)
			if k != next[key] {
				t.Fatalf("sender %d: got message %d after %d (%v cut)", i, k, next[key], cut)
			}
			next[key]++
		case m.ChannelId == "" && strings.HasPrefix(m.Content, "dm-"):
			fmt.Sscanf(m.Content, "dm-%d", &k)
			if k != next["dm"] {
				t.Fatalf("direct message %d after %d", k, next["dm"])
			}
			next["dm"]++
		}
	}
	for i := 0; i < 3; i++ {
		if n := next[fmt.Sprint("s", i)]; n != 67 {
			t.Fatalf("sender %d: %d of 67 messages", i, n)
		}
	}
	if next["dm"] != 20 {
		t.Fatalf("%d of 20 direct messages", next["dm"])
	}
	// No frame came twice: every (stream, offset) once.
	seen := map[string]bool{}
	welcomes := 0
	for _, f := range c.Frames() {
		if w, ok := f["welcome"].(map[string]any); ok {
			welcomes++
			if welcomes == 2 {
				rooms := w["channels"].(map[string]any)["room"].(map[string]any)
				if rooms["recovered"] != true {
					t.Fatalf("second welcome %v: room not recovered", w)
				}
			}
			continue
		}
		off, _ := f["offset"].(float64)
		if off == 0 {
			continue
		}
		key := fmt.Sprint(f["channel_id"], "/", f["epoch"], "/", off)
		if seen[key] {
			t.Fatalf("frame %v came twice", f)
		}
		seen[key] = true
	}
	if welcomes != 2 {
		t.Fatalf("%d welcomes, want 2", welcomes)
	}
}

// TestBeyondRetention: a client that missed more than a channel keeps is
// told recovered: false, with what is kept, never a silent gap; its inbox,
// kept in full, is recovered.
func TestBeyondRetention(t *testing.T) {
	hub := chart.New(chart.Config{Logger: quiet, HistorySize: 5})
	j := &joiner{Recorder: charttest.NewRecorder(), hub: hub}
	s := charttest.Serve(t, hub, j)
	c := charttest.NewV1Client(t, s.URL+"?id=1")
	c.Connect()
	j.WantLogin(t, 1)
	hub.Publish("room", chart.Message{Content: "seen"})
	hub.SendMessageToUid(9, 1, "dm seen")
	c.WaitFor("dm seen")
	c.Drop()
	charttest.Recv(t, j.Logouts, "logout")
	for i := 0; i < 10; i++ {
		hub.Publish("room", chart.Message{Content: fmt.Sprint("missed ", i)})
	}
	hub.SendMessageToUid(9, 1, "dm while away")
	c.Connect()
	c.WaitFor("dm while away")
	c.WaitFor("missed 9")
	wel := c.Welcome()
	room := wel["channels"].(map[string]any)["room"].(map[string]any)
	inbox := wel["inbox"].(map[string]any)
	if room["recovered"] != false || room["offset"] != float64(11) || inbox["recovered"] != true {
		t.Fatalf("welcome %v: want room not recovered at 11, inbox recovered", wel)
	}
	var got []string
	for _, m := range c.Messages()[2:] {
		got = append(got, m.Content)
	}
	if want := "dm while away,missed 5,missed 6,missed 7,missed 8,missed 9"; strings.Join(got, ",") != want { // the inbox first
		t.Fatalf("after the reconnect %q, want the kept tail %q", got, want)
	}
}

// dialV1 opens a chart.v1 connection and sends its hello.
func dialV1(t *testing.T, url string, hello string) *websocket.Conn {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: charttest.Wait, Subprotocols: []string{chart.ProtocolV1}}
	ws, _, err := d.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.Close() })
	ws.WriteMessage(websocket.TextMessage, []byte(hello))
	return ws
}

// nextFrame reads one JSON frame.
func nextFrame(t *testing.T, ws *websocket.Conn) map[string]any {
	t.Helper()
	ws.SetReadDeadline(time.Now().Add(charttest.Wait))
	var f map[string]any
	if err := ws.ReadJSON(&f); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestSendOnce: a message sent three times with one id is delivered once
// and acknowledged three times, with the same position.
func TestSendOnce(t *testing.T) {
	hub := chart.New(chart.Config{Logger: quiet})
	j := &joiner{Recorder: charttest.NewRecorder(), hub: hub}
	s := charttest.Serve(t, hub, j)
	other := s.Login(t, j.Recorder, 2)
	ws := dialV1(t, s.URL+"?id=1", `{"hello":{}}`)
	j.WantLogin(t, 1)
	if f := nextFrame(t, ws); f["welcome"] == nil {
		t.Fatalf("first frame %v, want the welcome", f)
	}
	var acks []any
	for i := 0; i < 3; i++ {
		ws.WriteMessage(websocket.TextMessage, []byte(`{"id":"c1-1","channel_id":"room","content":"once","type":3}`))
		for {
			f := nextFrame(t, ws)
			if a, ok := f["ack"].(map[string]any); ok {
				acks = append(acks, a)
				break
			}
			if f["content"] != "once" || i > 0 {
				t.Fatalf("frame %v", f)
			}
		}
	}
	want := map[string]any{"id": "c1-1", "offset": float64(1), "epoch": acks[0].(map[string]any)["epoch"]}
	for _, a := range acks {
		if !reflectEqual(a, want) {
			t.Fatalf("acks %v", acks)
		}
	}
	other.WantContent("once")
	other.SendTo("room", "next")
	if m := other.NextMsg(); m.Content != "next" {
		t.Fatalf("got %+v: the retries were delivered", m)
	}
	// A refused message names its id.
	ws.WriteMessage(websocket.TextMessage, []byte(`{"id":"c1-2","channel_id":"nope","content":"x"}`))
	for {
		f := nextFrame(t, ws)
		if f["error"] != nil {
			if f["error"] != "not_joined" || f["id"] != "c1-2" {
				t.Fatalf("error frame %v", f)
			}
			break
		}
	}
}

// TestInboxAcks: direct messages to a uid that never connected wait for
// its first connection; a second device gets them only when the first did
// not acknowledge them.
func TestInboxAcks(t *testing.T) {
	hub := chart.New(chart.Config{Logger: quiet})
	j := &joiner{Recorder: charttest.NewRecorder(), hub: hub}
	s := charttest.Serve(t, hub, j)
	for i := 0; i < 3; i++ {
		if err := hub.SendMessageToUid(9, 1, fmt.Sprint("dm ", i)); err != nil {
			t.Fatal(err)
		}
	}
	phone := dialV1(t, s.URL+"?id=1", `{"hello":{}}`)
	for i := 0; i < 3; i++ {
		if f := nextFrame(t, phone); f["content"] != fmt.Sprint("dm ", i) {
			t.Fatalf("phone got %v", f)
		}
	}
	w := nextFrame(t, phone)["welcome"].(map[string]any)["inbox"].(map[string]any)
	if w["offset"] != float64(3) || w["recovered"] != true {
		t.Fatalf("welcome inbox %v", w)
	}
	// Not acknowledged yet: a laptop gets them too.
	laptop := dialV1(t, s.URL+"?id=1", `{"hello":{}}`)
	for i := 0; i < 3; i++ {
		if f := nextFrame(t, laptop); f["content"] != fmt.Sprint("dm ", i) {
			t.Fatalf("laptop got %v", f)
		}
	}
	// The phone acknowledges two; a tablet gets the third only.
	phone.WriteMessage(websocket.TextMessage, []byte(fmt.Sprintf(`{"ack":{"inbox":{"epoch":%q,"offset":2}}}`, w["epoch"])))
	charttest.Eventually(t, "ack recorded", func() bool { off, _ := hub.InboxAcked(1); return off == 2 })
	tablet := dialV1(t, s.URL+"?id=1", `{"hello":{}}`)
	if f := nextFrame(t, tablet); f["content"] != "dm 2" {
		t.Fatalf("tablet got %v, want only what was not acknowledged", f)
	}
}

func reflectEqual(a, b any) bool { return fmt.Sprint(a) == fmt.Sprint(b) }

// slowFilter holds the message "slow" until released.
type slowFilter struct {
	*joiner
	entered, release chan struct{}
}

func (f *slowFilter) FilterMessage(c *chart.Conn, m *chart.Message) error {
	if m.Content == "slow" {
		f.entered <- struct{}{}
		<-f.release
		return chart.Refuse("late", "refused after all")
	}
	return nil
}

// TestRetryWhileSending: a retry that comes while the first try is still
// being sent is not acknowledged, so a refusal of the first cannot leave
// the client believing it was sent.
func TestRetryWhileSending(t *testing.T) {
	hub := chart.New(chart.Config{Logger: quiet})
	f := &slowFilter{joiner: &joiner{Recorder: charttest.NewRecorder(), hub: hub}, entered: make(chan struct{}, 2), release: make(chan struct{})}
	f.joiner.hub = hub
	s := charttest.Serve(t, hub, f)
	t.Cleanup(func() { // on failure too, before the hub shuts down
		select {
		case <-f.release:
		default:
			close(f.release)
		}
	})
	one := dialV1(t, s.URL+"?id=1", `{"hello":{}}`)
	f.WantLogin(t, 1)
	two := dialV1(t, s.URL+"?id=1", `{"hello":{}}`)
	nextFrame(t, one) // welcomes
	nextFrame(t, two)
	one.WriteMessage(websocket.TextMessage, []byte(`{"id":"r1","channel_id":"room","content":"slow"}`))
	charttest.Recv(t, f.entered, "first try in the filter") // r1 is claimed
	two.WriteMessage(websocket.TextMessage, []byte(`{"id":"r1","channel_id":"room","content":"slow"}`))
	two.WriteMessage(websocket.TextMessage, []byte(`{"channel_id":"room","content":"marker"}`))
	if fr := nextFrame(t, two); fr["content"] != "marker" {
		t.Fatalf("device two got %v before its marker: a retry in flight was answered", fr)
	}
	close(f.release)
	for {
		fr := nextFrame(t, one)
		if fr["error"] != nil {
			if fr["error"] != "late" || fr["id"] != "r1" {
				t.Fatalf("device one got %v", fr)
			}
			break
		}
	}
}

// TestProtocolAbuse: acks of channels not joined or without an epoch are
// ignored, ids over 64 bytes are refused, a hello past a stream's end
// recovers nothing, and a transient direct message to an offline user is
// echoed like any other (no online probe).
func TestProtocolAbuse(t *testing.T) {
	hub := chart.New(chart.Config{Logger: quiet})
	j := &joiner{Recorder: charttest.NewRecorder(), hub: hub}
	s := charttest.Serve(t, hub, j)
	hub.Publish("secret", chart.Message{Content: "s"})
	hub.Publish("room", chart.Message{Content: "r"})
	_, epoch := hub.Acked(0, "room")
	ws := dialV1(t, s.URL+"?id=1", fmt.Sprintf(`{"hello":{"channels":{"room":{"epoch":%q,"offset":1000}}}}`, epoch))
	j.WantLogin(t, 1)
	w := nextFrame(t, ws)["welcome"].(map[string]any)["channels"].(map[string]any)["room"].(map[string]any)
	if w["recovered"] != false || w["offset"] != float64(1) {
		t.Fatalf("hello past the end: welcome %v", w)
	}
	ws.WriteMessage(websocket.TextMessage, []byte(fmt.Sprintf(`{"ack":{"channels":{"secret":{"epoch":%q,"offset":1},"room":{"offset":1}}}}`, epoch)))
	ws.WriteMessage(websocket.TextMessage, []byte(`{"id":"`+strings.Repeat("x", 65)+`","channel_id":"room","content":"long id"}`))
	if f := nextFrame(t, ws); f["error"] != "bad_message" {
		t.Fatalf("long id: %v", f)
	}
	if off, _ := hub.Acked(1, "secret"); off != 0 {
		t.Fatalf("ack of a channel not joined recorded: %d", off)
	}
	if off, _ := hub.Acked(1, "room"); off != 0 {
		t.Fatalf("ack without an epoch recorded: %d", off)
	}
	ws.WriteMessage(websocket.TextMessage, []byte(`{"to_user_id":4242,"content":"typing","transient":true}`))
	if f := nextFrame(t, ws); f["content"] != "typing" || f["transient"] != true {
		t.Fatalf("transient direct message to an offline user: %v", f)
	}
}

// TestHeartbeat: a chart.v1 client's {"ping":n} is answered {"pong":n}.
func TestHeartbeat(t *testing.T) {
	hub := chart.New(chart.Config{Logger: quiet})
	j := &joiner{Recorder: charttest.NewRecorder(), hub: hub}
	s := charttest.Serve(t, hub, j)
	ws := dialV1(t, s.URL+"?id=1", `{"hello":{}}`)
	nextFrame(t, ws) // the welcome
	ws.WriteMessage(websocket.TextMessage, []byte(`{"ping":7}`))
	if f := nextFrame(t, ws); f["pong"] != float64(7) || len(f) != 1 {
		t.Fatalf("answer to a ping: %v", f)
	}
}

// TestRecoveryAcrossNodes: with a broker that keeps streams (the memory
// bus), a client that reconnects to another node recovers what it missed
// there, channel and direct messages, once and in order.
func TestRecoveryAcrossNodes(t *testing.T) {
	bus := chart.NewMemoryBus()
	var nodes []*charttest.Server
	var joiners []*joiner
	for i := 0; i < 2; i++ {
		hub := chart.New(chart.Config{Logger: quiet, Broker: bus.Broker()})
		j := &joiner{Recorder: charttest.NewRecorder(), hub: hub}
		nodes, joiners = append(nodes, charttest.Serve(t, hub, j)), append(joiners, j)
	}
	a, b := nodes[0], nodes[1]
	c := charttest.NewV1Client(t, a.URL+"?id=1")
	c.Connect()
	joiners[0].WantLogin(t, 1)
	charttest.Eventually(t, "node B routes to the room", func() bool {
		return len(b.Hub.ChannelUserIds("room")) == 1
	})
	b.Hub.Publish("room", chart.Message{Content: "before"})
	c.WaitFor("before")
	c.Drop()
	charttest.Recv(t, joiners[0].Logouts, "logout")
	for i := 0; i < 5; i++ {
		b.Hub.Publish("room", chart.Message{Content: fmt.Sprint("missed ", i)})
	}
	b.Hub.SendMessageToUid(9, 1, "dm while away")
	c.URL = b.URL + "?id=1"
	c.Connect() // to the other node
	c.WaitFor("missed 4")
	c.WaitFor("dm while away")
	var got []string
	for _, m := range c.Messages() {
		got = append(got, m.Content)
	}
	if want := "before,dm while away,missed 0,missed 1,missed 2,missed 3,missed 4"; strings.Join(got, ",") != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	if room := c.Welcome()["channels"].(map[string]any)["room"].(map[string]any); room["recovered"] != true || room["offset"] != float64(6) {
		t.Fatalf("welcome on node B: %v", c.Welcome())
	}
}

// TestStreamGapClosedAfterOutage: a node cut off from the broker delivers
// locally without positions; once the broker answers again it appends
// what it could not, late but in the stream's history, and the other
// nodes get it then, with its offset. The stream keeps its epoch, so a
// client reconnecting with its old position recovers, that message
// included. (Before: the stream was reset, the message reached no other
// node, and the client learned recovered:false.)
func TestStreamGapClosedAfterOutage(t *testing.T) {
	bus := chart.NewMemoryBus()
	bus.TTL = 300 * time.Millisecond
	var brokers []chart.Broker
	var nodes []*charttest.Server
	var joiners []*joiner
	for i := 0; i < 2; i++ {
		br := bus.Broker()
		hub := chart.New(chart.Config{Logger: quiet, Broker: br})
		j := &joiner{Recorder: charttest.NewRecorder(), hub: hub}
		brokers, nodes, joiners = append(brokers, br), append(nodes, charttest.Serve(t, hub, j)), append(joiners, j)
	}
	a, b := nodes[0], nodes[1]
	c := charttest.NewV1Client(t, b.URL+"?id=1")
	c.Connect()
	joiners[1].WantLogin(t, 1)
	b.Hub.Publish("room", chart.Message{Content: "before"})
	c.WaitFor("before")
	old, _, _ := b.Hub.History("room", 0, 0)

	bus.Cut(brokers[0], true)
	errs := a.Hub.Stats().BrokerErrors
	if err := a.Hub.Publish("room", chart.Message{Content: "cut"}); err != nil {
		t.Fatal(err) // served locally: nobody there
	}
	// Publish returns before the append: the cut must last until it failed.
	charttest.Eventually(t, "the append failed", func() bool { return a.Hub.Stats().BrokerErrors > errs })
	bus.Cut(brokers[0], false)
	c.WaitFor("cut")
	if m := c.Messages()[1]; m.Content != "cut" || m.Offset != 2 || m.Epoch != old[0].Epoch {
		t.Fatalf("uid 1 got %q at %d of %q, want cut at 2 of %q", m.Content, m.Offset, m.Epoch, old[0].Epoch)
	}
	c.Drop()
	b.Hub.Publish("room", chart.Message{Content: "after"})
	c.Connect()
	room := c.Welcome()["channels"].(map[string]any)["room"].(map[string]any)
	if room["recovered"] != true || room["epoch"] != old[0].Epoch || room["offset"] != float64(3) {
		t.Fatalf("welcome %v: want recovered at offset 3 of %q", room, old[0].Epoch)
	}
	msgs, _, _ := b.Hub.History("room", 0, 0)
	var got []string
	for _, m := range msgs {
		got = append(got, m.Content)
	}
	if !slices.Equal(got, []string{"before", "cut", "after"}) {
		t.Fatalf("history %q, want [before cut after]", got)
	}
	b.Hub.Publish("room", chart.Message{Content: "live"})
	c.WaitFor("live")
	got = got[:0]
	for _, m := range c.Messages() {
		got = append(got, m.Content)
	}
	if !slices.Equal(got, []string{"before", "cut", "after", "live"}) {
		t.Fatalf("uid 1 got %q over its two connections, want [before cut after live]", got)
	}
}

// TestEmptyChannelRecovered: a channel that had no message yet is in the
// welcome as an empty stream (epoch "", offset 0); a client that kept that
// position and reconnects after messages came gets them all, from the
// first, as not recovered (a restart or an eviction in between cannot be
// told apart from an empty stream); a still-empty stream, and an empty
// inbox, count as recovered.
func TestEmptyChannelRecovered(t *testing.T) {
	hub := chart.New(chart.Config{Logger: quiet})
	j := &joiner{Recorder: charttest.NewRecorder(), hub: hub}
	s := charttest.Serve(t, hub, j)
	ws := dialV1(t, s.URL+"?id=1", `{"hello":{}}`)
	j.WantLogin(t, 1)
	room := nextFrame(t, ws)["welcome"].(map[string]any)["channels"].(map[string]any)["room"]
	if fmt.Sprint(room) != "map[epoch: offset:0 recovered:false]" {
		t.Fatalf("welcome's room: %v, want an empty stream", room)
	}
	ws.Close()
	charttest.Recv(t, j.Logouts, "logout")

	// Still empty: recovered; the empty inbox too.
	const hello = `{"hello":{"channels":{"room":{"epoch":"","offset":0}},"inbox":{"epoch":"","offset":0}}}`
	ws = dialV1(t, s.URL+"?id=1", hello)
	w := nextFrame(t, ws)["welcome"].(map[string]any)
	if room := w["channels"].(map[string]any)["room"]; fmt.Sprint(room) != "map[epoch: offset:0 recovered:true]" {
		t.Fatalf("welcome's room: %v, want an empty stream, recovered", room)
	}
	if inbox := w["inbox"]; fmt.Sprint(inbox) != "map[epoch: offset:0 recovered:true]" {
		t.Fatalf("welcome's inbox: %v, want an empty stream, recovered", inbox)
	}
	ws.Close()
	charttest.Recv(t, j.Logouts, "logout")

	for i := 0; i < 3; i++ {
		hub.Publish("room", chart.Message{Content: fmt.Sprint("while away ", i)})
	}
	ws = dialV1(t, s.URL+"?id=1", hello)
	for i := 0; i < 3; i++ {
		if f := nextFrame(t, ws); f["content"] != fmt.Sprint("while away ", i) || f["offset"] != float64(i+1) {
			t.Fatalf("frame %v, want message %d at offset %d", f, i, i+1)
		}
	}
	if room := nextFrame(t, ws)["welcome"].(map[string]any)["channels"].(map[string]any)["room"].(map[string]any); room["recovered"] != false || room["offset"] != float64(3) {
		t.Fatalf("welcome's room: %v, want offset 3, not recovered", room)
	}
}

// TestBigInboxNoLockout: 1,000 direct messages of 1 KiB wait for an
// offline user, more than a send queue holds (SendQueueBytes, 1 MiB). Its
// connections, chart.v1 and plain, are not closed as slow consumers: each
// gets the oldest messages up to half a queue, the chart.v1 one is told
// its inbox is not recovered, and both stay open for live messages.
func TestBigInboxNoLockout(t *testing.T) {
	hub := chart.New(chart.Config{Logger: quiet})
	j := &joiner{Recorder: charttest.NewRecorder(), hub: hub}
	s := charttest.Serve(t, hub, j)
	big := strings.Repeat("x", 1024)
	for i := 0; i < 1000; i++ {
		if err := hub.SendMessageToUid(9, 5, fmt.Sprint(i, " ", big)); err != nil {
			t.Fatal(err)
		}
	}
	ws := dialV1(t, s.URL+"?id=5", `{"hello":{}}`)
	j.WantLogin(t, 5)
	n := 0
	for {
		f := nextFrame(t, ws)
		if w, ok := f["welcome"].(map[string]any); ok {
			if inbox := w["inbox"].(map[string]any); inbox["recovered"] != false || inbox["offset"] != float64(n) {
				t.Fatalf("welcome's inbox %v after %d messages, want not recovered at offset %d", inbox, n, n)
			}
			break
		}
		if want := fmt.Sprint(n, " ", big); f["content"] != want {
			t.Fatalf("message %d: %.20v", n, f["content"])
		}
		n++
	}
	if n < 100 || n >= 1000 {
		t.Fatalf("%d of 1000 messages replayed, want the oldest up to half a queue", n)
	}
	hub.SendMessageToUid(9, 5, "live")
	for f := nextFrame(t, ws); f["content"] != "live"; f = nextFrame(t, ws) {
	}
	ws.Close()
	charttest.Recv(t, j.Logouts, "logout")

	// A plain connection gets the unacknowledged inbox from the oldest
	// kept (the inbox keeps 1,000: "live" pushed out message 0, and "live
	// again" pushes out message 1 if it is appended before the replay
	// reads the inbox), up to half a queue too (acknowledged by being
	// written), then live.
	plain := s.Dial(t, 5)
	// Dial may have taken the registration of dialV1's connection above
	// (charttest's Open waits for any registration of the uid): wait for
	// this one's, or "live again" finds uid 5 offline and stays in its
	// inbox, past what the replay gives.
	charttest.Eventually(t, "the plain connection registered", func() bool { return hub.IsOnline(5) })
	hub.SendMessageToUid(9, 5, "live again")
	first := 0
	for k := 0; ; k++ {
		m := plain.NextMsg()
		if m.Content == "live again" {
			if k < 100 || k >= 1000 {
				t.Fatalf("%d messages before the live one", k)
			}
			break
		}
		if k == 0 {
			fmt.Sscan(m.Content, &first)
			if first != 1 && first != 2 {
				t.Fatalf("plain connection starts at message %d, want the oldest kept (1 or 2)", first)
			}
		}
		if want := fmt.Sprint(first+k, " ", big); m.Content != want {
			t.Fatalf("plain connection, message %d: %.20v", k, m.Content)
		}
	}
}

// TestJSONPingFlood: chart.v1 pings count against the rate limit as messages
// do: a flood gets RateBurst pongs and then no more, and is closed with
// 4029, while another user is not disturbed.
func TestJSONPingFlood(t *testing.T) {
	hub := chart.New(chart.Config{Logger: quiet, RateLimit: 10, RateBurst: 20})
	j := &joiner{Recorder: charttest.NewRecorder(), hub: hub}
	s := charttest.Serve(t, hub, j)
	other := s.Login(t, j.Recorder, 2)
	ws := dialV1(t, s.URL+"?id=1", `{"hello":{}}`)
	j.WantLogin(t, 1)
	nextFrame(t, ws) // the welcome
	for i := 0; i < 1000; i++ {
		if ws.WriteMessage(websocket.TextMessage, []byte(fmt.Sprintf(`{"ping":%d}`, i))) != nil {
			break // closed by the server
		}
	}
	pongs := 0
	ws.SetReadDeadline(time.Now().Add(charttest.Wait))
	var err error
	for {
		var f map[string]any
		if err = ws.ReadJSON(&f); err != nil {
			break
		}
		if f["pong"] != nil {
			pongs++
		}
	}
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != chart.CloseRateLimited {
		t.Fatalf("after the flood: %v, want close %d", err, chart.CloseRateLimited)
	}
	if pongs > 25 {
		t.Fatalf("%d pongs for a flood, want about RateBurst (20)", pongs)
	}
	hub.Publish("room", chart.Message{Content: "still here"})
	other.WantContent("still here")
}

// fullBroker is a broker with presence and streams, as MemoryBus makes.
type fullBroker interface {
	chart.Broker
	chart.Presence
	chart.Streams
}

// ackCounter counts the Ack calls that reach the broker.
type ackCounter struct {
	fullBroker
	acks atomic.Int64
}

func (a *ackCounter) Ack(stream string, uid uint64, epoch string, offset uint64) error {
	a.acks.Add(1)
	return a.fullBroker.Ack(stream, uid, epoch, offset)
}

// TestRepeatedAcksStayLocal: a client that repeats the same
// acknowledgement (here 200 frames naming 20 channels) costs one broker
// call per stream and position, not one per frame.
func TestRepeatedAcksStayLocal(t *testing.T) {
	br := &ackCounter{fullBroker: chart.NewMemoryBus().Broker().(fullBroker)}
	hub := chart.New(chart.Config{Logger: quiet, Broker: br, RateLimit: -1})
	rec := charttest.NewRecorder()
	s := charttest.Serve(t, hub, rec)
	ws := dialV1(t, s.URL+"?id=1", `{"hello":{}}`)
	rec.WantLogin(t, 1)
	var ids []string
	for i := 0; i < 20; i++ {
		ids = append(ids, fmt.Sprint("c", i))
	}
	hub.JoinChannelIds(1, ids...)
	acks := map[string]any{}
	for _, id := range ids {
		hub.Publish(id, chart.Message{Content: "m"})
		msgs, _, _ := hub.History(id, 0, 1)
		acks[id] = map[string]any{"epoch": msgs[0].Epoch, "offset": msgs[0].Offset}
	}
	frame, _ := json.Marshal(map[string]any{"ack": map[string]any{"channels": acks}})
	for i := 0; i < 200; i++ {
		ws.WriteMessage(websocket.TextMessage, frame)
	}
	charttest.Eventually(t, "the acks recorded", func() bool {
		off, _ := hub.Acked(1, "c19")
		return off == 1
	})
	ws.WriteMessage(websocket.TextMessage, []byte(`{"ping":1}`)) // the reader has handled every ack before it
	for f := nextFrame(t, ws); f["pong"] == nil; f = nextFrame(t, ws) {
	}
	if n := br.acks.Load(); n != 20 {
		t.Fatalf("%d Ack calls reached the broker, want 20", n)
	}
}

// TestWelcomeDuringOutageKeepsPosition (review 18): a chart.v1 client
// that reconnects while its node cannot read the broker is told its own
// position back, not recovered, so that it recovers from there on its next
// connection. (Before: the welcome said epoch "" and offset 0, a stream
// without history, and a client that kept it was replayed everything the
// stream had at its next connection; a hello with that empty position was
// told recovered: true.)
func TestWelcomeDuringOutageKeepsPosition(t *testing.T) {
	bus := chart.NewMemoryBus()
	br := bus.Broker()
	hub := chart.New(chart.Config{Logger: quiet, Broker: br})
	j := &joiner{Recorder: charttest.NewRecorder(), hub: hub}
	s := charttest.Serve(t, hub, j)
	keep := charttest.NewV1Client(t, s.URL+"?id=1") // keeps uid 1 online, in room
	keep.Connect()
	j.WantLogin(t, 1)
	c := charttest.NewV1Client(t, s.URL+"?id=1")
	c.Connect()
	s.Hub.Publish("room", chart.Message{Content: "before"})
	c.WaitFor("before")
	pos := c.Messages()[0]
	c.Drop()

	bus.Cut(br, true)
	c.Connect()
	room := c.Welcome()["channels"].(map[string]any)["room"].(map[string]any)
	if room["recovered"] != false || room["epoch"] != pos.Epoch || room["offset"] != float64(pos.Offset) {
		t.Fatalf("welcome during the outage %v: want its own position %d of %q back, not recovered", room, pos.Offset, pos.Epoch)
	}
	c.Drop()
	ws := dialV1(t, s.URL+"?id=1", `{"hello":{"channels":{"room":{"epoch":"","offset":0}}}}`)
	w := nextFrame(t, ws)["welcome"].(map[string]any)
	if room := w["channels"].(map[string]any)["room"]; fmt.Sprint(room) != "map[epoch: offset:0 recovered:false]" {
		t.Fatalf("welcome to an empty position during the outage: %v, want it back, not recovered", room)
	}
	ws.Close()
}

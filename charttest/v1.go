package charttest

import (
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wuyan94zl/chart"
)

// V1Client is a chart.v1 client (see chart.ProtocolV1): it keeps the last
// position it received of each stream and every frame, and connects with a
// hello naming those positions, to the same node or another.
type V1Client struct {
	t testing.TB
	// URL is where Connect dials; change it to reconnect elsewhere.
	URL string
	// HelloDelay, when set, makes the client wait that long between the
	// handshake and its hello, as a slow client would: messages published
	// meanwhile are held by the server and also in the history it replays.
	HelloDelay time.Duration

	mu       sync.Mutex
	pos      map[string]chart.Message // channel id, or "" for the inbox
	frames   []map[string]any
	msgs     []chart.Message
	welcomes int
	ws       *websocket.Conn
	gone     chan struct{}
}

// NewV1Client returns a client for url; Connect dials.
func NewV1Client(t testing.TB, url string) *V1Client {
	c := &V1Client{t: t, URL: url, pos: make(map[string]chart.Message)}
	t.Cleanup(c.Drop)
	return c
}

// Connect dials URL (retrying until Wait), sends the hello, reads frames
// from then on, and returns once the welcome came: recovery is done.
func (c *V1Client) Connect() {
	c.t.Helper()
	d := websocket.Dialer{HandshakeTimeout: 2 * time.Second, Subprotocols: []string{chart.ProtocolV1}}
	var ws *websocket.Conn
	Eventually(c.t, "connected", func() bool {
		var err error
		ws, _, err = d.Dial(c.URL, nil)
		return err == nil
	})
	if ws.Subprotocol() != chart.ProtocolV1 {
		c.t.Fatalf("subprotocol %q, want %q", ws.Subprotocol(), chart.ProtocolV1)
	}
	c.mu.Lock()
	channels := map[string]any{}
	hello := map[string]any{"channels": channels}
	for ch, m := range c.pos {
		p := map[string]any{"epoch": m.Epoch, "offset": m.Offset}
		if ch == "" {
			hello["inbox"] = p
		} else {
			channels[ch] = p
		}
	}
	c.ws, c.gone = ws, make(chan struct{})
	gone, welcomes := c.gone, c.welcomes
	c.mu.Unlock()
	go c.read(ws, gone)
	if c.HelloDelay > 0 {
		time.Sleep(c.HelloDelay) // a slow client, on purpose
	}
	b, _ := json.Marshal(map[string]any{"hello": hello})
	ws.WriteMessage(websocket.TextMessage, b)
	Eventually(c.t, "welcome", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.welcomes > welcomes
	})
}

func (c *V1Client) read(ws *websocket.Conn, gone chan struct{}) {
	defer close(gone)
	for {
		_, data, err := ws.ReadMessage()
		if err != nil {
			return
		}
		var raw map[string]any
		var m chart.Message
		json.Unmarshal(data, &raw)
		json.Unmarshal(data, &m)
		c.mu.Lock()
		c.frames = append(c.frames, raw)
		if raw["welcome"] != nil {
			c.welcomes++
		}
		if m.Offset != 0 {
			c.pos[m.ChannelId] = m // "" for the inbox
			c.msgs = append(c.msgs, m)
		}
		c.mu.Unlock()
	}
}

// Gone returns a channel closed when the current connection has ended.
func (c *V1Client) Gone() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gone
}

// Drop closes the current connection and waits until its reader ended.
func (c *V1Client) Drop() {
	c.mu.Lock()
	ws, gone := c.ws, c.gone
	c.mu.Unlock()
	if ws != nil {
		ws.Close()
		<-gone
	}
}

// WaitFor waits until a message with content has arrived.
func (c *V1Client) WaitFor(content string) {
	c.t.Helper()
	Eventually(c.t, "message "+content, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, m := range c.msgs {
			if m.Content == content {
				return true
			}
		}
		return false
	})
}

// Messages returns the messages with a position received so far, in the
// order they came.
func (c *V1Client) Messages() []chart.Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]chart.Message(nil), c.msgs...)
}

// Frames returns every frame received so far, decoded, in the order they
// came: messages, welcomes, acks, error frames.
func (c *V1Client) Frames() []map[string]any {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]map[string]any(nil), c.frames...)
}

// Welcome returns the last welcome received, or nil.
func (c *V1Client) Welcome() map[string]any {
	frames := c.Frames()
	for i := len(frames) - 1; i >= 0; i-- {
		if w, ok := frames[i]["welcome"].(map[string]any); ok {
			return w
		}
	}
	return nil
}

// Send writes a raw text frame on the current connection. It returns how
// many frames had come before, for WaitAck.
func (c *V1Client) Send(frame string) (since int) {
	c.t.Helper()
	c.mu.Lock()
	ws, since := c.ws, len(c.frames)
	c.mu.Unlock()
	ws.SetWriteDeadline(time.Now().Add(Wait))
	if err := ws.WriteMessage(websocket.TextMessage, []byte(frame)); err != nil {
		c.t.Fatalf("send: %v", err)
	}
	return since
}

// WaitAck waits for an acknowledgement of the message sent with id that
// came after frame since (what Send returned), and returns it
// ({"id","offset","epoch"}).
func (c *V1Client) WaitAck(id string, since int) map[string]any {
	c.t.Helper()
	var ack map[string]any
	Eventually(c.t, "ack of "+id, func() bool {
		for _, f := range c.Frames()[since:] {
			if a, ok := f["ack"].(map[string]any); ok && a["id"] == id {
				ack = a
			}
		}
		return ack != nil
	})
	return ack
}

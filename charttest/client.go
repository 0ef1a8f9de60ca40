package charttest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wuyan94zl/chart"
)

// Client is a real WebSocket client. A goroutine reads its frames into a
// buffer, so tests can wait for a frame with a deadline without breaking
// the connection.
type Client struct {
	t      testing.TB
	WS     *websocket.Conn
	Uid    uint64
	frames chan received
	end    error // why reading stopped; set before frames is closed
	done   chan struct{}
}

// Done is closed once the connection has ended and every frame it
// received was read into the client's buffer.
func (c *Client) Done() <-chan struct{} { return c.done }

// Frame is what a client receives: a Message or an error frame, or a
// presence event or the answer to a join or leave request.
type Frame struct {
	chart.Message
	Error  string `json:"error"`
	Detail string `json:"message"`
	Id     string `json:"id"`

	Presence string   `json:"presence"` // "members", "join" or "leave"
	UserIds  []uint64 `json:"user_ids"`
	More     bool     `json:"more"`
	Joined   string   `json:"joined"`
	Left     string   `json:"left"`
}

// received is a frame as read, with why it fails the strict checks ("" if
// it passes them or they are off).
type received struct {
	Frame
	bad string
}

// newClient starts reading ws into a new Client; the test's cleanup closes
// ws and waits for the reader.
func newClient(t testing.TB, ws *websocket.Conn, uid uint64, strict bool) *Client {
	c := &Client{t: t, WS: ws, Uid: uid, frames: make(chan received, 10000), done: make(chan struct{})}
	done := c.done
	go func() {
		defer close(done)
		defer close(c.frames)
		for {
			typ, data, err := ws.ReadMessage()
			if err != nil {
				c.end = err
				return
			}
			var r received
			if strict {
				r.Frame, r.bad = decodeStrict(typ, data)
			} else if json.Unmarshal(data, &r.Frame) != nil {
				r.Error = "unparsable frame: " + string(data)
			}
			c.frames <- r
		}
	}()
	t.Cleanup(func() {
		ws.Close()
		<-done
	})
	return c
}

// decodeStrict decodes a frame that must be a text frame holding exactly
// one JSON object with only Frame's fields; bad says why it is not.
func decodeStrict(typ int, data []byte) (f Frame, bad string) {
	if typ != websocket.TextMessage {
		return f, fmt.Sprintf("got frame type %d, want text", typ)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil || dec.More() {
		return f, fmt.Sprintf("frame %q is not one known JSON object: %v", data, err)
	}
	return f, ""
}

// Send writes a raw text frame.
func (c *Client) Send(s string) {
	c.t.Helper()
	c.WS.SetWriteDeadline(time.Now().Add(Wait))
	if err := c.WS.WriteMessage(websocket.TextMessage, []byte(s)); err != nil {
		c.t.Fatalf("uid %d send: %v", c.Uid, err)
	}
}

// SendTo sends content to a channel.
func (c *Client) SendTo(channelId, content string) {
	c.t.Helper()
	b, _ := json.Marshal(map[string]any{"channel_id": channelId, "content": content, "type": 3})
	c.Send(string(b))
}

// SendToUser sends content to a user.
func (c *Client) SendToUser(uid uint64, content string) {
	c.t.Helper()
	b, _ := json.Marshal(map[string]any{"to_user_id": uid, "content": content, "type": 3})
	c.Send(string(b))
}

// next waits up to d for the next frame; ok is false on timeout.
func (c *Client) next(d time.Duration) (f Frame, ok bool) {
	c.t.Helper()
	select {
	case r, open := <-c.frames:
		if !open {
			c.t.Fatalf("uid %d: connection closed", c.Uid)
		}
		if r.bad != "" {
			c.t.Fatalf("uid %d: %s", c.Uid, r.bad)
		}
		return r.Frame, true
	case <-time.After(d):
		return Frame{}, false
	}
}

// Next waits for the next frame.
func (c *Client) Next() Frame {
	c.t.Helper()
	f, ok := c.next(Wait)
	if !ok {
		c.t.Fatalf("uid %d: no frame within %v", c.Uid, Wait)
	}
	return f
}

// NextMsg waits for the next frame and requires a message.
func (c *Client) NextMsg() chart.Message {
	c.t.Helper()
	f := c.Next()
	if f.Error != "" {
		c.t.Fatalf("uid %d: got error frame %q (%s), want a message", c.Uid, f.Error, f.Detail)
	}
	return f.Message
}

// NextErr waits for the next frame and requires an error frame with code.
func (c *Client) NextErr(code string) Frame {
	c.t.Helper()
	f := c.Next()
	if f.Error != code {
		c.t.Fatalf("uid %d: got %+v, want error frame %q", c.Uid, f, code)
	}
	return f
}

// WantContent waits for the next message and requires its content.
func (c *Client) WantContent(content string) chart.Message {
	c.t.Helper()
	m := c.NextMsg()
	if m.Content != content {
		c.t.Fatalf("uid %d: got %+v, want content %q", c.Uid, m, content)
	}
	return m
}

// Quiet fails if a frame arrives within d.
func (c *Client) Quiet(d time.Duration) {
	c.t.Helper()
	if f, ok := c.next(d); ok {
		c.t.Fatalf("uid %d: unexpected frame %+v", c.Uid, f)
	}
}

// WaitClosed discards frames until the server has closed the connection.
func (c *Client) WaitClosed() {
	c.t.Helper()
	c.CloseReason()
}

// CloseCode discards frames until the connection has ended and returns the
// close code the server sent (websocket.CloseAbnormalClosure when it ended
// without a close frame).
func (c *Client) CloseCode() int {
	c.t.Helper()
	code, _ := c.CloseReason()
	return code
}

// CloseReason is CloseCode with the close frame's text.
func (c *Client) CloseReason() (code int, text string) {
	c.t.Helper()
	deadline := time.After(Wait)
	for {
		select {
		case _, open := <-c.frames:
			if !open {
				var ce *websocket.CloseError
				if errors.As(c.end, &ce) {
					return ce.Code, ce.Text
				}
				return websocket.CloseAbnormalClosure, ""
			}
		case <-deadline:
			c.t.Fatalf("uid %d: connection still open after %v", c.Uid, Wait)
		}
	}
}

// Close closes the client cleanly and waits until the server closed too.
func (c *Client) Close() {
	c.WS.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(Wait))
	deadline := time.After(Wait)
	for {
		select {
		case _, open := <-c.frames:
			if !open {
				c.WS.Close()
				return
			}
		case <-deadline:
			c.t.Fatalf("uid %d: server did not close", c.Uid)
		}
	}
}

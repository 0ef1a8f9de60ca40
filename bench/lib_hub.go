package main

import (
	"net/http"
	"time"

	"github.com/gorilla/websocket"
)

// The baseline: gorilla/websocket's examples/chat, unchanged except that the
// hub keeps rooms (channels) instead of one global set. One hub goroutine
// owns all state; every client has a 256-message send channel, a writePump
// that coalesces queued messages into one frame separated by newlines, and a
// readPump that forwards inbound messages to the hub. A client whose send
// channel is full is dropped, as in the example.
const (
	hubWriteWait      = 10 * time.Second
	hubPongWait       = 60 * time.Second
	hubPingPeriod     = (hubPongWait * 9) / 10
	hubMaxMessageSize = 512
)

var hubNewline = []byte{'\n'}

// hubMessage is a payload for every client of room.
type hubMessage struct {
	room string
	data []byte
}

// hubClient is one connection of the baseline.
type hubClient struct {
	hub   *hubLib
	conn  *websocket.Conn
	send  chan []byte
	rooms []string
}

// hubLib is the baseline hub.
type hubLib struct {
	upgrader   websocket.Upgrader
	rooms      map[string]map[*hubClient]struct{}
	broadcast  chan hubMessage
	register   chan *hubClient
	unregister chan *hubClient
}

func init() {
	register(&libSpec{
		name:     "gorilla-hub",
		settings: "gorilla/websocket examples/chat hub with rooms: Upgrader 1 KiB/1 KiB, 256-message send chan (drop client when full), writePump coalescing queued messages with newlines, 512-byte inbound limit, 54 s pings",
		server:   newHubLib,
		client:   rawProto,
	})
}

// newHubLib starts the hub goroutine.
func newHubLib(string) (serverLib, error) {
	h := &hubLib{
		upgrader:   websocket.Upgrader{ReadBufferSize: 1024, WriteBufferSize: 1024},
		rooms:      make(map[string]map[*hubClient]struct{}),
		broadcast:  make(chan hubMessage),
		register:   make(chan *hubClient),
		unregister: make(chan *hubClient),
	}
	go h.run()
	return h, nil
}

// run is the hub goroutine.
func (h *hubLib) run() {
	for {
		select {
		case c := <-h.register:
			for _, r := range c.rooms {
				set := h.rooms[r]
				if set == nil {
					set = make(map[*hubClient]struct{})
					h.rooms[r] = set
				}
				set[c] = struct{}{}
			}
		case c := <-h.unregister:
			h.remove(c)
		case m := <-h.broadcast:
			for c := range h.rooms[m.room] {
				select {
				case c.send <- m.data:
				default:
					h.remove(c)
				}
			}
		}
	}
}

// remove drops c from all its rooms and closes its send channel once.
func (h *hubLib) remove(c *hubClient) {
	found := false
	for _, r := range c.rooms {
		if set := h.rooms[r]; set != nil {
			if _, ok := set[c]; ok {
				found = true
				delete(set, c)
				if len(set) == 0 {
					delete(h.rooms, r)
				}
			}
		}
	}
	if found {
		close(c.send)
	}
}

// ServeHTTP is the example's serveWs.
func (h *hubLib) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, rooms, err := requestUser(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	conn, err := h.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	c := &hubClient{hub: h, conn: conn, send: make(chan []byte, 256), rooms: rooms}
	h.register <- c
	go c.writePump()
	go c.readPump()
}

// publish hands payload to the hub goroutine.
func (h *hubLib) publish(channel string, payload []byte) error {
	h.broadcast <- hubMessage{room: channel, data: payload}
	return nil
}

// readPump forwards inbound messages to the client's first room.
func (c *hubClient) readPump() {
	defer func() {
		c.hub.unregister <- c
		c.conn.Close()
	}()
	c.conn.SetReadLimit(hubMaxMessageSize)
	_ = c.conn.SetReadDeadline(time.Now().Add(hubPongWait))
	c.conn.SetPongHandler(func(string) error {
		return c.conn.SetReadDeadline(time.Now().Add(hubPongWait))
	})
	for {
		_, message, err := c.conn.ReadMessage()
		if err != nil {
			return
		}
		noteRead(string(message))
		if len(c.rooms) > 0 {
			c.hub.broadcast <- hubMessage{room: c.rooms[0], data: message}
		}
	}
}

// writePump writes queued messages, coalescing what is already queued into
// the same frame, and sends pings.
func (c *hubClient) writePump() {
	ticker := time.NewTicker(hubPingPeriod)
	defer func() {
		ticker.Stop()
		c.conn.Close()
	}()
	for {
		select {
		case message, ok := <-c.send:
			_ = c.conn.SetWriteDeadline(time.Now().Add(hubWriteWait))
			if !ok {
				_ = c.conn.WriteMessage(websocket.CloseMessage, []byte{})
				return
			}
			w, err := c.conn.NextWriter(websocket.TextMessage)
			if err != nil {
				return
			}
			_, _ = w.Write(message)
			n := len(c.send)
			for i := 0; i < n; i++ {
				_, _ = w.Write(hubNewline)
				_, _ = w.Write(<-c.send)
			}
			if err := w.Close(); err != nil {
				return
			}
		case <-ticker.C:
			_ = c.conn.SetWriteDeadline(time.Now().Add(hubWriteWait))
			if err := c.conn.WriteMessage(websocket.PingMessage, nil); err != nil {
				return
			}
		}
	}
}

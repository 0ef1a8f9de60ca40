package main

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// clientProto is the client side of a peer's wire protocol.
type clientProto struct {
	// setup runs right after the WebSocket upgrade, before the read loop
	// starts (centrifuge: connect and subscribe commands). May be nil.
	setup func(ws *wsConn, chans []string) error
	// appendPublish appends the frame a client sends to publish payload
	// into channel; id is a per-connection command counter.
	appendPublish func(dst []byte, channel string, payload []byte, id int64) []byte
	// isPing reports whether a message carries an application-level ping
	// that must be answered with pong. May be nil.
	isPing func(msg []byte) bool
	pong   []byte
}

// rawProto is used by melody and the gorilla hub: a payload is sent and
// received as the bare text message.
var rawProto = clientProto{
	appendPublish: func(dst []byte, _ string, payload []byte, _ int64) []byte {
		return append(dst, payload...)
	},
}

// chartProto speaks chart's JSON message format.
var chartProto = clientProto{
	appendPublish: func(dst []byte, channel string, payload []byte, _ int64) []byte {
		dst = append(dst, `{"channel_id":"`...)
		dst = append(dst, channel...)
		dst = append(dst, `","content":"`...)
		dst = append(dst, payload...)
		return append(dst, `","type":3}`...)
	},
}

// centrifugeProto speaks centrifuge's JSON client protocol (v2): replies,
// pushes and pings may be batched in one frame, separated by newlines; an
// empty command "{}" is a ping and is answered with "{}".
var centrifugeProto = clientProto{
	setup: centrifugeSetup,
	appendPublish: func(dst []byte, channel string, payload []byte, id int64) []byte {
		dst = append(dst, `{"id":`...)
		dst = strconv.AppendInt(dst, id+100, 10)
		dst = append(dst, `,"publish":{"channel":"`...)
		dst = append(dst, channel...)
		dst = append(dst, `","data":"`...)
		dst = append(dst, payload...)
		return append(dst, `"}}`...)
	},
	isPing: func(msg []byte) bool {
		return bytes.Equal(msg, []byte("{}")) || bytes.HasPrefix(msg, []byte("{}\n")) ||
			bytes.Contains(msg, []byte("\n{}\n")) || bytes.HasSuffix(msg, []byte("\n{}"))
	},
	pong: []byte("{}"),
}

// centrifugeSetup sends the connect command, then one subscribe command per
// channel, and waits for every reply.
func centrifugeSetup(ws *wsConn, chans []string) error {
	if err := ws.writeText([]byte(`{"id":1,"connect":{}}`)); err != nil {
		return err
	}
	if err := centrifugeAwait(ws, 1, 1); err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	if len(chans) == 0 {
		return nil
	}
	var b []byte
	for i, ch := range chans {
		b = b[:0]
		b = append(b, `{"id":`...)
		b = strconv.AppendInt(b, int64(i+2), 10)
		b = append(b, `,"subscribe":{"channel":"`...)
		b = append(b, ch...)
		b = append(b, `"}}`...)
		if err := ws.writeText(b); err != nil {
			return err
		}
	}
	if err := centrifugeAwait(ws, 2, len(chans)+1); err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	return nil
}

// centrifugeAwait reads replies until every id in [from,to] has answered.
func centrifugeAwait(ws *wsConn, from, to int) error {
	_ = ws.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	defer func() { _ = ws.c.SetReadDeadline(time.Time{}) }()
	left := to - from + 1
	for left > 0 {
		msg, err := ws.readMessage()
		if err != nil {
			return err
		}
		for _, line := range bytes.Split(msg, []byte("\n")) {
			if !bytes.HasPrefix(line, []byte(`{"id":`)) {
				continue
			}
			id, n := parseInt(line[6:])
			if n == 0 || int(id) < from || int(id) > to {
				continue
			}
			if bytes.Contains(line, []byte(`"error"`)) {
				return errors.New(string(line))
			}
			left--
		}
	}
	return nil
}

// sink receives every payload a client reads.
type sink interface {
	onPayload(c *client, h payloadHeader, now int64)
}

// messageSink is a sink that also sees every message whole (the presence
// workload's frames carry no payload).
type messageSink interface {
	onMessage(c *client, msg []byte, now int64)
}

// roomSize is the number of users per room in the rooms workload.
const roomSize = 10

// client is one benchmark connection. Its read loop owns lastSeq and
// roomLast; counters are atomics read by the driver.
type client struct {
	idx   int
	uid   int64
	chans []string
	ws    *wsConn
	proto *clientProto
	sink  sink

	lastSeq  int64
	roomLast [roomSize]int64
	paging   bool         // presence: a member list's pages are coming
	last     atomic.Int64 // presence: the last room message's sequence

	recv  atomic.Int64 // measured deliveries
	gaps  atomic.Int64 // sequence errors (lost, duplicated or reordered)
	self  atomic.Int64 // own messages echoed back (rooms)
	ready atomic.Bool  // warm-up message seen
	probe chan struct{}
	done  chan struct{} // closed when the read loop ends

	wbuf  []byte // owned by the sender
	cmdID int64  // owned by the sender
	sent  int64  // owned by the sender
}

// path returns the request path of a connection.
func wsPath(uid int64, chans []string) string {
	return "/ws/" + chans[0] + "?uid=" + strconv.FormatInt(uid, 10) + "&ch=" + strings.Join(chans, ",")
}

// connectClient dials, upgrades, runs the protocol setup and starts the
// read loop.
func connectClient(addr string, spec *libSpec, idx int, uid int64, chans []string, s sink) (*client, error) {
	ws, err := dialWS(addr, wsPath(uid, chans), 4096, 30*time.Second)
	if err != nil {
		return nil, err
	}
	if spec.client.setup != nil {
		if err := spec.client.setup(ws, chans); err != nil {
			ws.Close()
			return nil, err
		}
	}
	c := &client{idx: idx, uid: uid, chans: chans, ws: ws, proto: &spec.client, sink: s,
		probe: make(chan struct{}, 1), done: make(chan struct{})}
	go c.readLoop()
	return c, nil
}

// readLoop reads messages until the connection ends and hands every
// payload found in them to the sink.
func (c *client) readLoop() {
	defer close(c.done)
	for {
		msg, err := c.ws.readMessage()
		if err != nil {
			return
		}
		if c.proto.isPing != nil && c.proto.isPing(msg) {
			if err := c.ws.writeText(c.proto.pong); err != nil {
				return
			}
		}
		now := time.Now().UnixNano()
		if ms, ok := c.sink.(messageSink); ok {
			ms.onMessage(c, msg, now)
		}
		rest := msg
		for {
			h, r, ok := nextPayload(rest)
			if !ok {
				break
			}
			rest = r
			c.sink.onPayload(c, h, now)
		}
	}
}

// closed reports whether the read loop has ended.
func (c *client) closed() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// publish sends payload into channel with the peer's client protocol.
func (c *client) publish(channel string, payload []byte) error {
	c.cmdID++
	c.wbuf = c.proto.appendPublish(c.wbuf[:0], channel, payload, c.cmdID)
	return c.ws.writeText(c.wbuf)
}

// connectAll opens n connections with the given concurrency. Connection i
// has uid i+1 (chart reserves uid 0), joins the channels chans(i) and
// connects to addrs[i%len(addrs)] (the nodes of a cluster in turn).
func connectAll(addrs []string, spec *libSpec, n, concurrency int, chans func(i int) []string, s sink) ([]*client, error) {
	clients := make([]*client, n)
	var next atomic.Int64
	var firstErr error
	var failed atomic.Int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				c, err := connectClient(addrs[i%len(addrs)], spec, i, int64(i)+1, chans(i), s)
				if err != nil {
					failed.Add(1)
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					continue
				}
				clients[i] = c
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		closeAll(clients)
		return nil, fmt.Errorf("%d of %d connections failed, first: %w", failed.Load(), n, firstErr)
	}
	return clients, nil
}

// closeAll closes every connection and waits for the read loops to end.
func closeAll(clients []*client) {
	for _, c := range clients {
		if c != nil {
			c.ws.Close()
		}
	}
	for _, c := range clients {
		if c != nil {
			<-c.done
		}
	}
}

package main

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// WebSocket opcodes used by the client (RFC 6455, section 5.2).
const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xA
)

// maxClientMessage bounds the size of a reassembled server message.
const maxClientMessage = 1 << 20

// errClosed is returned by readMessage when the server sent a close frame.
var errClosed = errors.New("websocket: close frame received")

// wsConn is a minimal client side WebSocket connection, the same for every
// peer under test. It performs the opening handshake without an Origin
// header and without extensions (no compression), reads server frames into
// one reusable buffer (so reading a message does not allocate) and writes
// masked frames. Pings are answered with pongs. It implements exactly what
// the benchmark needs and nothing else.
type wsConn struct {
	c   net.Conn
	br  *bufio.Reader
	msg []byte // reassembly buffer, reused for every message

	wmu  sync.Mutex
	wbuf []byte // frame buffer, guarded by wmu
	mask uint32 // per connection mask key stream state, guarded by wmu
}

// dialWS opens a TCP connection to addr (always a loopback address) and
// performs the WebSocket opening handshake for path. readBuf sizes the
// buffered reader (small to keep client memory low with 10,000 conns).
func dialWS(addr, path string, readBuf int, timeout time.Duration) (*wsConn, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	var key [16]byte
	_, _ = rand.Read(key[:])
	var seed [4]byte
	_, _ = rand.Read(seed[:])
	k := base64.StdEncoding.EncodeToString(key[:])
	req := "GET " + path + " HTTP/1.1\r\nHost: " + addr +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + k +
		"\r\nSec-WebSocket-Version: 13\r\n\r\n"
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, req); err != nil {
		c.Close()
		return nil, err
	}
	br := bufio.NewReaderSize(c, readBuf)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("handshake: %w", err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		c.Close()
		return nil, fmt.Errorf("handshake: status %s", resp.Status)
	}
	_ = c.SetDeadline(time.Time{})
	return &wsConn{c: c, br: br, mask: binary.LittleEndian.Uint32(seed[:]) | 1}, nil
}

// Close closes the underlying TCP connection.
func (w *wsConn) Close() error { return w.c.Close() }

// readMessage returns the next complete text or binary message. The returned
// slice is valid until the next call. Control frames are handled inline:
// pings are answered, pongs ignored, a close frame ends the connection.
func (w *wsConn) readMessage() ([]byte, error) {
	w.msg = w.msg[:0]
	var hdr [8]byte
	for {
		if _, err := io.ReadFull(w.br, hdr[:2]); err != nil {
			return nil, err
		}
		fin := hdr[0]&0x80 != 0
		op := hdr[0] & 0x0F
		if hdr[1]&0x80 != 0 {
			return nil, errors.New("websocket: masked server frame")
		}
		n := uint64(hdr[1] & 0x7F)
		switch n {
		case 126:
			if _, err := io.ReadFull(w.br, hdr[:2]); err != nil {
				return nil, err
			}
			n = uint64(binary.BigEndian.Uint16(hdr[:2]))
		case 127:
			if _, err := io.ReadFull(w.br, hdr[:8]); err != nil {
				return nil, err
			}
			n = binary.BigEndian.Uint64(hdr[:8])
		}
		if n > maxClientMessage || uint64(len(w.msg))+n > maxClientMessage {
			return nil, errors.New("websocket: message too large")
		}
		if op >= opClose {
			ctl := make([]byte, n)
			if _, err := io.ReadFull(w.br, ctl); err != nil {
				return nil, err
			}
			switch op {
			case opClose:
				return nil, errClosed
			case opPing:
				if err := w.writeFrame(opPong, ctl); err != nil {
					return nil, err
				}
			}
			continue
		}
		start := len(w.msg)
		if need := start + int(n); cap(w.msg) < need {
			// Grow geometrically: a message coalesced from many fragments
			// must not be copied once per fragment.
			grown := make([]byte, start, max(need, 2*cap(w.msg), 512))
			copy(grown, w.msg)
			w.msg = grown
		}
		w.msg = w.msg[:start+int(n)]
		if _, err := io.ReadFull(w.br, w.msg[start:]); err != nil {
			return nil, err
		}
		if fin && (op == opText || op == opBinary || op == opContinuation) {
			return w.msg, nil
		}
	}
}

// writeText sends one masked text frame. It is safe for concurrent use.
func (w *wsConn) writeText(p []byte) error { return w.writeFrame(opText, p) }

// writeFrame sends one masked frame with the given opcode.
func (w *wsConn) writeFrame(op byte, p []byte) error {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	b := w.wbuf[:0]
	b = append(b, 0x80|op)
	switch n := len(p); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n <= 0xFFFF:
		b = append(b, 0x80|126, byte(n>>8), byte(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	// xorshift mask stream: cheap, unpredictable enough for a load client.
	m := w.mask
	m ^= m << 13
	m ^= m >> 17
	m ^= m << 5
	w.mask = m
	var key [4]byte
	binary.LittleEndian.PutUint32(key[:], m)
	b = append(b, key[:]...)
	off := len(b)
	b = append(b, p...)
	for i := range p {
		b[off+i] ^= key[i&3]
	}
	w.wbuf = b
	_, err := w.c.Write(b)
	return err
}

package chart

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// maskedFrame is a client's frame: b0 (FIN, RSV and opcode as given), a
// masked payload.
func maskedFrame(b0 byte, payload []byte) []byte {
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
	key := [4]byte{0x11, 0x22, 0x33, 0x44}
	f = append(f, key[:]...)
	for i, c := range payload {
		f = append(f, c^key[i&3])
	}
	return f
}

func cat(frames ...[]byte) []byte {
	var b []byte
	for _, f := range frames {
		b = append(b, f...)
	}
	return b
}

// FuzzFrameReader writes arbitrary bytes as a client's frames on a real
// polled connection, then half-closes it, and checks what the server
// does: it never panics, ends the connection (the client reads the end of
// the stream, not a timeout), and what it sent is a well-formed sequence
// of server frames (unmasked, known opcodes, control frames short and
// final) in which a close frame, if any, comes last with a code a server
// may send.
func FuzzFrameReader(f *testing.F) {
	msg := []byte(`{"channel_id":"a","content":"hi"}`)
	for _, seed := range [][]byte{
		maskedFrame(0x81, msg),
		cat(maskedFrame(0x81, msg), maskedFrame(0x89, []byte("p")), maskedFrame(0x81, msg)),
		cat(maskedFrame(0x01, msg[:5]), maskedFrame(0x89, nil), maskedFrame(0x80, msg[5:])),
		cat(maskedFrame(0x01, msg[:5]), maskedFrame(0x81, msg)), // data before FIN
		maskedFrame(0x80, msg),                                             // continuation first
		maskedFrame(0xc1, msg),                                             // RSV1
		maskedFrame(0x83, nil),                                             // bad opcode
		maskedFrame(0x09, nil),                                             // fragmented ping
		maskedFrame(0x89, make([]byte, 126)),                               // long ping
		{0x81, 0x05, 'h', 'e', 'l', 'l', 'o'},                              // unmasked
		{0x81, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4},                // negative length
		{0x81, 0xfe, 0x04, 0x01, 1, 2, 3, 4},                               // 1025 bytes announced, over the limit
		maskedFrame(0x81, []byte("{\"content\":\"\xff\"}")),                // not UTF-8
		cat(maskedFrame(0x88, []byte{0x03, 0xe8}), maskedFrame(0x81, msg)), // close, then more
		maskedFrame(0x88, []byte{0x03}),                                    // 1-byte close
		maskedFrame(0x88, []byte{0x03, 0xed}),                              // close 1005
		maskedFrame(0x88, []byte{0x0f, 0xa0, 0xff}),                        // close 4000, reason not UTF-8
		maskedFrame(0x81, msg)[:3],                                         // a header cut short
		{},
	} {
		f.Add(seed)
	}
	s := startServer(f, Config{RateLimit: -1, ReadRate: -1, MaxMessageSize: 1024, CloseGrace: 200 * time.Millisecond}, nil)
	var uid uint64
	f.Fuzz(func(t *testing.T, data []byte) {
		uid++
		ws := s.dial(t, uid).ws
		nc := ws.NetConn().(*net.TCPConn)
		nc.SetDeadline(time.Now().Add(wait))
		if _, err := nc.Write(data); err != nil {
			t.Fatal(err)
		}
		nc.CloseWrite()
		out, err := io.ReadAll(nc)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("connection not ended after %v (read %d bytes)", wait, len(out))
		}
		checkServerFrames(t, out)
	})
}

// checkServerFrames checks that b is a sequence of frames a server may
// send (the last possibly cut short: the server may drop the socket
// while writing).
func checkServerFrames(t *testing.T, b []byte) {
	t.Helper()
	closed := false
	for len(b) > 0 {
		if closed {
			t.Fatalf("%d bytes after the close frame", len(b))
		}
		if len(b) < 2 {
			return
		}
		b0, b1 := b[0], b[1]
		if b0&0x70 != 0 || b1&0x80 != 0 {
			t.Fatalf("frame header %#x %#x: RSV or MASK set", b0, b1)
		}
		op := b0 & 0xf
		n, h := int(b1&0x7f), 2
		switch n {
		case 126:
			if len(b) < 4 {
				return
			}
			n, h = int(binary.BigEndian.Uint16(b[2:])), 4
		case 127:
			if len(b) < 10 {
				return
			}
			n, h = int(binary.BigEndian.Uint64(b[2:])), 10
		}
		switch op {
		case 0x0, 0x1, 0x2:
		case 0x8, 0x9, 0xA:
			if n > 125 || b0&0x80 == 0 {
				t.Fatalf("control frame %#x of %d bytes, FIN %v", op, n, b0&0x80 != 0)
			}
		default:
			t.Fatalf("opcode %#x", op)
		}
		if len(b) < h+n {
			return
		}
		if op == 0x8 {
			closed = true
			if n == 1 {
				t.Fatalf("close frame of 1 byte")
			}
			if n >= 2 {
				code := int(binary.BigEndian.Uint16(b[h:]))
				if !validCloseCode(code) {
					t.Fatalf("server sent close code %d", code)
				}
			}
		}
		b = b[h+n:]
	}
}

package chart

import (
	"encoding/binary"
	"errors"
	"io"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"
	"unsafe"

	"github.com/gorilla/websocket"
)

// The hub's own frame reader, for connections that wait in the poller
// (poll_linux.go): gorilla's reader keeps a buffer per connection and may
// hold frames the poller never learns about, so a polled connection reads
// its frames here, on the hijacked socket, through a pooled buffer that it
// holds only while reading. It follows gorilla's reader (advanceFrame,
// messageReader) rule for rule: what a client sees and what the hub
// reports do not depend on which reader read it.

// readBufSize is the size of the pooled buffers frames are read through.
const readBufSize = 4 << 10

// frameReader reads one connection's frames for the time it is read: its
// reader takes one from frameReaders when the socket is readable and gives
// it back when it returns the connection to the poller, which it does only
// between messages with nothing buffered.
type frameReader struct {
	c         *Conn
	buf       []byte
	r, w      int   // buf[r:w] is read but not consumed
	remaining int64 // payload bytes of the current data frame not yet read
	msgLen    int64 // payload bytes of the current message so far (MaxMessageSize)
	maskKey   [4]byte
	maskPos   int
	final     bool  // the current data frame is its message's last
	inMsg     bool  // a message began and its last byte is not read yet
	drained   bool  // the last read did not fill the buffer: the socket had no more then
	err       error // sticky, as gorilla's
}

var frameReaders = sync.Pool{New: func() any { return &frameReader{buf: make([]byte, readBufSize)} }}

func getFrameReader(c *Conn) *frameReader {
	fr := frameReaders.Get().(*frameReader)
	fr.c = c
	return fr
}

// put gives fr back to the pool; it must hold nothing of its connection.
func (fr *frameReader) put() {
	*fr = frameReader{buf: fr.buf}
	frameReaders.Put(fr)
}

// idle reports whether fr is between messages with nothing buffered: the
// connection may wait in the poller, and fr go back to the pool.
func (fr *frameReader) idle() bool {
	return fr.err == nil && !fr.inMsg && fr.r == fr.w
}

// fill reads what the socket has into the buffer, which has room.
func (fr *frameReader) fill() error {
	if fr.r == fr.w {
		fr.r, fr.w = 0, 0
	}
	n, err := fr.c.nc.Read(fr.buf[fr.w:])
	fr.drained = n < len(fr.buf)-fr.w
	fr.w += n
	if n > 0 {
		return nil
	}
	return readError(err)
}

// readError turns a socket error into what gorilla's reader returns: the
// end of the stream is an abnormal closure (1006) from the client.
func readError(err error) error {
	switch {
	case err == nil:
		return io.ErrNoProgress
	case err == io.EOF:
		return errUnexpectedEOF
	}
	return err
}

var errUnexpectedEOF = &websocket.CloseError{Code: websocket.CloseAbnormalClosure, Text: io.ErrUnexpectedEOF.Error()}

// next returns the next n buffered bytes (n at most 125), reading as
// needed.
func (fr *frameReader) next(n int) ([]byte, error) {
	for fr.w-fr.r < n {
		if len(fr.buf)-fr.r < n {
			fr.w = copy(fr.buf, fr.buf[fr.r:fr.w])
			fr.r = 0
		}
		if err := fr.fill(); err != nil {
			return nil, err
		}
	}
	p := fr.buf[fr.r : fr.r+n]
	fr.r += n
	return p, nil
}

// unmask unmasks the next bytes of the current frame's payload, a word at
// a time where it can (as gorilla's maskBytes).
func (fr *frameReader) unmask(b []byte) {
	pos := fr.maskPos
	fr.maskPos += len(b)
	if len(b) >= 32 {
		for uintptr(unsafe.Pointer(unsafe.SliceData(b)))%8 != 0 {
			b[0] ^= fr.maskKey[pos&3]
			b, pos = b[1:], pos+1
		}
		var k [8]byte
		for i := range k {
			k[i] = fr.maskKey[(pos+i)&3]
		}
		kw := *(*uint64)(unsafe.Pointer(&k))
		words := unsafe.Slice((*uint64)(unsafe.Pointer(unsafe.SliceData(b))), len(b)/8)
		for i := range words {
			words[i] ^= kw
		}
		b, pos = b[len(words)*8:], pos+len(words)*8
	}
	for i := range b {
		b[i] ^= fr.maskKey[(pos+i)&3]
	}
}

const (
	opContinuation = 0x0
	opBinary       = 0x2
	finalBit       = 0x80
	rsvBits        = 0x70
	maskBit        = 0x80
	maxControlLen  = 125
)

// nextMessage skips what is left of the current message and returns the
// type of the next one, whose payload Read then returns. Control frames on
// the way are handled as gorilla does: pings and pongs go to onPing and
// onPong, a close frame ends reading with a *websocket.CloseError. After a
// control frame it returns 0 (no message): the reader bounds the next
// frame's wait again, or with nothing buffered gives the connection back
// to the poller (a client that sends pings, or answers the server's, must
// not keep a reader for good).
func (fr *frameReader) nextMessage() (int, error) {
	if fr.inMsg {
		if _, err := io.Copy(io.Discard, fr); err != nil {
			return 0, err
		}
	}
	fr.msgLen = 0
	for fr.err == nil {
		op, err := fr.advance()
		if err != nil {
			fr.err = err
			break
		}
		if op == opText || op == opBinary {
			fr.inMsg = true
			return op, nil
		}
		return 0, nil
	}
	return 0, fr.err
}

// Read reads the current message's payload; io.EOF at its end.
func (fr *frameReader) Read(p []byte) (int, error) {
	for fr.err == nil {
		if fr.remaining > 0 {
			p = p[:min(int64(len(p)), fr.remaining)]
			var n int
			if fr.r < fr.w {
				n = copy(p, fr.buf[fr.r:fr.w])
				fr.r += n
			} else if len(p) >= len(fr.buf) {
				// A large payload: straight into p.
				var err error
				if n, err = fr.c.nc.Read(p); n == 0 {
					fr.err = readError(err)
					break
				}
				fr.drained = n < len(p)
			} else {
				if err := fr.fill(); err != nil {
					fr.err = err
					break
				}
				continue
			}
			fr.unmask(p[:n])
			fr.remaining -= int64(n)
			return n, nil
		}
		if !fr.inMsg || fr.final {
			fr.inMsg = false
			return 0, io.EOF
		}
		op, err := fr.advance()
		switch {
		case err != nil:
			fr.err = err
		case op == opText || op == opBinary:
			fr.err = errors.New("websocket: internal error, unexpected text or binary in Reader")
		}
	}
	return 0, fr.err
}

// advance reads the next frame's header; a control frame it reads and
// handles whole. It returns the frame's opcode.
func (fr *frameReader) advance() (int, error) {
	c := fr.c
	p, err := fr.next(2)
	if err != nil {
		return 0, err
	}
	op := int(p[0] & 0xf)
	final := p[0]&finalBit != 0
	length := int64(p[1] & 0x7f)
	var problems []string
	if p[0]&0x40 != 0 {
		problems = append(problems, "RSV1 set")
	}
	if p[0]&0x20 != 0 {
		problems = append(problems, "RSV2 set")
	}
	if p[0]&0x10 != 0 {
		problems = append(problems, "RSV3 set")
	}
	switch op {
	case opClose, opPing, opPong:
		if length > maxControlLen {
			problems = append(problems, "len > 125 for control")
		}
		if !final {
			problems = append(problems, "FIN not set on control")
		}
	case opText, opBinary:
		if fr.inMsg && !fr.final {
			problems = append(problems, "data before FIN")
		}
		fr.final = final
	case opContinuation:
		if !fr.inMsg || fr.final {
			problems = append(problems, "continuation after FIN")
		}
		fr.final = final
	default:
		problems = append(problems, "bad opcode "+strconv.Itoa(op))
	}
	if p[1]&maskBit == 0 {
		problems = append(problems, "bad MASK")
	}
	if len(problems) > 0 {
		return 0, fr.protocolError(strings.Join(problems, ", "))
	}
	switch length {
	case 126:
		if p, err = fr.next(2); err != nil {
			return 0, err
		}
		length = int64(binary.BigEndian.Uint16(p))
	case 127:
		if p, err = fr.next(8); err != nil {
			return 0, err
		}
		if length = int64(binary.BigEndian.Uint64(p)); length < 0 {
			return 0, websocket.ErrReadLimit
		}
	}
	if p, err = fr.next(4); err != nil {
		return 0, err
	}
	copy(fr.maskKey[:], p)
	fr.maskPos = 0

	if op == opText || op == opBinary || op == opContinuation {
		fr.remaining = length
		fr.msgLen += length
		if limit := c.hub.cfg.MaxMessageSize; fr.msgLen < 0 || limit > 0 && fr.msgLen > limit {
			c.closeFromReader(closeTooBig, "")
			return 0, websocket.ErrReadLimit
		}
		return op, nil
	}

	var payload []byte
	if length > 0 {
		if payload, err = fr.next(int(length)); err != nil {
			return 0, err
		}
		fr.unmask(payload)
	}
	switch op {
	case opPong:
		c.onPong(string(payload))
	case opPing:
		c.onPing(string(payload))
	case opClose:
		code, text := websocket.CloseNoStatusReceived, ""
		if len(payload) >= 2 {
			code = int(binary.BigEndian.Uint16(payload))
			if !validCloseCode(code) {
				return 0, fr.protocolError("bad close code " + strconv.Itoa(code))
			}
			text = string(payload[2:])
			if !utf8.ValidString(text) {
				return 0, fr.protocolError("invalid utf8 payload in close frame")
			}
		}
		return 0, &websocket.CloseError{Code: code, Text: text}
	}
	return op, nil
}

// protocolError answers a protocol violation as gorilla does, with a close
// frame 1002 naming it (sent by the writer, ahead of anything queued, and
// the socket dropped after it), and returns the error the reader ends with.
func (fr *frameReader) protocolError(msg string) error {
	fr.c.closeFromReader(websocket.CloseProtocolError, msg)
	return errors.New("websocket: " + msg)
}

// closeFromReader has the writer send a close frame at once, ahead of the
// queue, and drop the socket after it: what gorilla's reader does itself
// when a client breaks the protocol. The reason stays the read error, as
// with gorilla's reader.
func (c *Conn) closeFromReader(code int, text string) {
	c.mu.Lock()
	c.closeLocked(c.reason, code, text, closeHangUp)
	c.mu.Unlock()
}

// validCloseCode is gorilla's isValidReceivedCloseCode.
func validCloseCode(code int) bool {
	switch code {
	case 1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014:
		return true
	}
	return code >= 3000 && code <= 4999
}

package chart

import (
	"encoding/binary"

	"github.com/gorilla/websocket"
)

// This file holds the WebSocket framing the hub does itself. gorilla's
// Conn keeps the handshake and the reading; every frame the server sends is
// built here and written by the connection's writer (conn.go), so that one
// message is framed once and the same bytes go to every recipient.

// WebSocket opcodes the writer emits. Frames from server to client are
// never masked, so a whole frame is a header followed by the payload.
const (
	opText  = 0x1
	opClose = 0x8
	opPing  = 0x9
	opPong  = 0xA
)

// Close status codes the server sends (RFC 6455, section 7.4.1).
const (
	closeNormal        = websocket.CloseNormalClosure
	closeGoingAway     = websocket.CloseGoingAway
	closePolicy        = websocket.ClosePolicyViolation
	closeTooBig        = websocket.CloseMessageTooBig
	closeNoStatus      = websocket.CloseNoStatusReceived
	maxCloseReasonSize = 123 // a control frame's payload is at most 125 bytes
)

var pingFrame = frame(opPing, nil)

// frame returns a complete WebSocket frame (FIN set) holding payload. The
// result is immutable and shared by every connection it is queued to.
func frame(op byte, payload []byte) []byte {
	hl := frameHeaderLen(len(payload))
	b := make([]byte, hl+len(payload))
	putFrameHeader(b, op, len(payload))
	copy(b[hl:], payload)
	return b
}

// frameHeaderLen is the length of the header of a frame of n bytes.
func frameHeaderLen(n int) int {
	switch {
	case n < 126:
		return 2
	case n <= 0xffff:
		return 4
	}
	return 10
}

// putFrameHeader writes the header of a final, unmasked frame of n bytes.
func putFrameHeader(b []byte, op byte, n int) {
	b[0] = 0x80 | op
	switch {
	case n < 126:
		b[1] = byte(n)
	case n <= 0xffff:
		b[1] = 126
		binary.BigEndian.PutUint16(b[2:], uint16(n))
	default:
		b[1] = 127
		binary.BigEndian.PutUint64(b[2:], uint64(n))
	}
}

// closeFrame builds a close frame with a status code and a short reason.
func closeFrame(code int, reason string) []byte {
	if len(reason) > maxCloseReasonSize {
		reason = reason[:maxCloseReasonSize]
	}
	p := make([]byte, 2+len(reason))
	binary.BigEndian.PutUint16(p, uint16(code))
	copy(p[2:], reason)
	return frame(opClose, p)
}

// Close codes the server sends in its close frame, so that clients can act
// on why they were closed. Besides these: 1000 (or the client's own code)
// answering a client's close, 1001 on Shutdown, 1002 for a protocol
// violation, 1007 for a text frame that is not UTF-8, 1009 for an
// oversize message.
const (
	// CloseDisconnected: the application closed the connection
	// (Disconnect, Conn.Close). Do not reconnect.
	CloseDisconnected = 4001
	// CloseExpired: the connection's credentials expired
	// (Conn.SetExpiry). Reconnect with fresh ones.
	CloseExpired = 4002
	// CloseRefused: ConnectServer refused the connection. Do not
	// reconnect.
	CloseRefused = 4003
	// CloseSlowConsumer: the client did not read fast enough. Reconnect
	// (and recover what was missed).
	CloseSlowConsumer = 4008
	// CloseReplaced: the uid opened more than MaxConnsPerUid connections
	// and this was its oldest.
	CloseReplaced = 4009
	// CloseRateLimited: the client kept sending over the rate limit.
	// Reconnect after a backoff.
	CloseRateLimited = 4029
)

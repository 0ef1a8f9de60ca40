package main

import (
	"bytes"
	"strconv"
)

// Payload kinds. Every application payload in the suite starts with the
// marker "@@", a kind byte and three decimal fields:
//
//	@@<kind><seq>,<unix-nanos>,<sender>;xxxx...
//
// padded with 'x' to the requested size. Only JSON-safe ASCII is used, so
// each library may wrap the payload in its own JSON envelope without
// escaping, and a client finds every payload in a frame (even when a
// library batches several messages into one frame) by scanning for "@@".
const (
	kindFanout = 'F' // fan-out message from business code
	kindRoom   = 'R' // rooms message sent by a client
	kindWarmup = 'W' // readiness check published by the server
	kindProbe  = 'P' // storm probe published to one connection
)

// marker starts every payload.
var marker = []byte("@@")

// payloadHeader holds the decoded fields of one payload.
type payloadHeader struct {
	kind   byte
	seq    int64
	ts     int64 // sender's time.Now().UnixNano() taken just before sending
	sender int64
}

// appendPayload appends a payload of exactly size bytes (or the header alone
// when it is longer than size) to dst.
func appendPayload(dst []byte, kind byte, seq, ts, sender int64, size int) []byte {
	start := len(dst)
	dst = append(dst, '@', '@', kind)
	dst = strconv.AppendInt(dst, seq, 10)
	dst = append(dst, ',')
	dst = strconv.AppendInt(dst, ts, 10)
	dst = append(dst, ',')
	dst = strconv.AppendInt(dst, sender, 10)
	dst = append(dst, ';')
	for len(dst)-start < size {
		dst = append(dst, 'x')
	}
	return dst
}

// parseInt parses a non-negative decimal number at the start of b and
// returns it with the number of bytes consumed.
func parseInt(b []byte) (int64, int) {
	var v int64
	i := 0
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		v = v*10 + int64(b[i]-'0')
		i++
	}
	return v, i
}

// nextPayload finds the next payload in frame and returns its header and the
// rest of the frame after the header. ok is false when none is left.
func nextPayload(frame []byte) (h payloadHeader, rest []byte, ok bool) {
	for {
		i := bytes.Index(frame, marker)
		if i < 0 || i+3 > len(frame) {
			return h, nil, false
		}
		b := frame[i+3:]
		h.kind = frame[i+2]
		var n int
		if h.seq, n = parseInt(b); n == 0 || n >= len(b) || b[n] != ',' {
			frame = frame[i+2:]
			continue
		}
		b = b[n+1:]
		if h.ts, n = parseInt(b); n == 0 || n >= len(b) || b[n] != ',' {
			frame = frame[i+2:]
			continue
		}
		b = b[n+1:]
		if h.sender, n = parseInt(b); n == 0 || n >= len(b) || b[n] != ';' {
			frame = frame[i+2:]
			continue
		}
		return h, b[n+1:], true
	}
}

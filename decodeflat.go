package chart

import (
	"bytes"
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// The inbound frame's fast path. Nearly every client frame is a flat
// object of a few known keys with plain values:
//
//	{"channel_id":"lobby","content":"hi","type":"3"}
//
// encoding/json, through reflection, costs about 12 allocations and
// 1.7 us per such frame, and the garbage makes the collector run (and
// stop the world) more often. decodeFlat parses that common shape itself
// and gives up on anything else (an escape in a string, a nested object,
// null, an unknown, repeated or differently cased key, a number that is
// not plain digits), leaving it to encoding/json, which stays the
// reference: for every frame decodeFlat takes, both give the same result
// (FuzzDecodeFlat).

// flatKeys are the keys decodeFlat takes, by bit.
var flatKeys = map[string]uint16{
	"channel_id": 1 << 0, "to_user_id": 1 << 1, "type": 1 << 2, "content": 1 << 3,
	"transient": 1 << 4, "id": 1 << 5, "join": 1 << 6, "leave": 1 << 7, "ping": 1 << 8,
}

// decodeFlat parses data, a trimmed frame that starts with '{', into in
// (zero) when it has the common shape; false: encoding/json must, and in
// may hold part of it.
func decodeFlat(data []byte, in *inbound) bool {
	i := skipSpace(data, 1)
	if i < len(data) && data[i] == '}' {
		return i+1 == len(data)
	}
	var seen uint16
	for {
		key, j, ok := plainString(data, i)
		if !ok {
			return false
		}
		bit := flatKeys[string(key)]
		if bit == 0 || seen&bit != 0 {
			return false
		}
		seen |= bit
		i = skipSpace(data, j)
		if i >= len(data) || data[i] != ':' {
			return false
		}
		i = skipSpace(data, i+1)
		switch string(key) {
		case "channel_id", "content", "id", "join", "leave":
			s, j, ok := plainString(data, i)
			if !ok {
				return false
			}
			str := string(s)
			switch string(key) {
			case "channel_id":
				in.ChannelId = str
			case "content":
				in.text = str
				in.Content = &in.text
			case "id":
				in.Id = str
			case "join":
				in.Join = new(string)
				*in.Join = str
			case "leave":
				in.Leave = new(string)
				*in.Leave = str
			}
			i = j
		case "type", "to_user_id":
			j, ok := plainScalar(data, i)
			if !ok {
				return false
			}
			raw := json.RawMessage(bytes.Clone(data[i:j]))
			if string(key) == "type" {
				in.Type = raw
			} else {
				in.ToUserId = raw
			}
			i = j
		case "transient":
			switch {
			case bytes.HasPrefix(data[i:], []byte("true")):
				in.Transient, i = true, i+4
			case bytes.HasPrefix(data[i:], []byte("false")):
				in.Transient, i = false, i+5
			default:
				return false
			}
		case "ping":
			j := digits(data, i)
			n, err := strconv.ParseUint(string(data[i:j]), 10, 64)
			if j == i || err != nil || (data[i] == '0' && j > i+1) {
				return false
			}
			in.Ping, i = &n, j
		}
		i = skipSpace(data, i)
		if i >= len(data) {
			return false
		}
		switch data[i] {
		case ',':
			i = skipSpace(data, i+1)
		case '}':
			return i+1 == len(data)
		default:
			return false
		}
	}
}

// skipSpace returns the index of the first byte at or after i that is not
// JSON white space.
func skipSpace(data []byte, i int) int {
	for i < len(data) {
		switch data[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// plainString reads the JSON string at i, one with no escape, no control
// character and valid UTF-8, and returns its content and the index after
// it; ok false for anything else.
func plainString(data []byte, i int) (s []byte, end int, ok bool) {
	if i >= len(data) || data[i] != '"' {
		return nil, 0, false
	}
	for j := i + 1; j < len(data); j++ {
		switch c := data[j]; {
		case c == '"':
			s = data[i+1 : j]
			return s, j + 1, utf8.Valid(s)
		case c == '\\' || c < 0x20:
			return nil, 0, false
		}
	}
	return nil, 0, false
}

// plainScalar returns the index after the plain string or the plain
// number (digits, no leading zero) at i; ok false for anything else.
func plainScalar(data []byte, i int) (end int, ok bool) {
	if _, j, ok := plainString(data, i); ok {
		return j, true
	}
	j := digits(data, i)
	if j == i || (data[i] == '0' && j > i+1) {
		return 0, false
	}
	if j < len(data) {
		switch data[j] {
		case '.', 'e', 'E':
			return 0, false
		}
	}
	return j, true
}

// digits returns the index after the ASCII digits at i.
func digits(data []byte, i int) int {
	for i < len(data) && data[i] >= '0' && data[i] <= '9' {
		i++
	}
	return i
}

// plainUint parses s, plain digits with no leading zero, as a uint64; ok
// false for anything else (strconv then says what is wrong).
func plainUint(s []byte) (n uint64, ok bool) {
	if len(s) == 0 || len(s) > 19 || (s[0] == '0' && len(s) > 1) {
		return 0, false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	return n, true
}

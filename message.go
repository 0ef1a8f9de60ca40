package chart

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// TimeLayout is the format of Message.SendTime.
const TimeLayout = "2006-01-02 15:04:05"

// TypeText is the Type of messages sent by business code through
// SendMessageToChannelIds and SendMessageToUid, as in the original chart.
const TypeText uint8 = 3

// Message is one chat message, as the SendMessage callback sees it and as a
// client receives it: one JSON object per WebSocket text frame.
//
//	{"channel_id":"room","user_id":7,"type":3,"content":"hi","send_time":"2026-11-25 21:07:00"}
//
// A direct message has ToUserId set and ChannelId empty.
type Message struct {
	// ChannelId is the channel the message was published to.
	ChannelId string `json:"channel_id"`
	// UserId is the sender's uid, always set by the server from the
	// authenticated connection; a client cannot forge it. 0 for system
	// messages published with Publish.
	UserId uint64 `json:"user_id"`
	// ToUserId is the recipient of a direct message.
	ToUserId uint64 `json:"to_user_id,omitempty"`
	// Type is free for the application; business-code messages use TypeText.
	Type uint8 `json:"type"`
	// Content is the message text.
	Content string `json:"content"`
	// SendTime is set by the server when it accepts the message, in
	// TimeLayout and the server's local time zone.
	SendTime string `json:"send_time"`
	// Transient messages (typing indicators, say) are kept in no history
	// and carry no Offset.
	Transient bool `json:"transient,omitempty"`
	// Offset is the message's place in its stream, set by the server: the
	// channel's, or for a direct message the inbox of the user it is
	// delivered to (in SendMessage, the sender's). It grows by one per
	// message of the stream. 0 when the message is kept in no history.
	Offset uint64 `json:"offset,omitempty"`
	// Epoch names the stream's history: offsets compare only within one
	// epoch, and a new epoch means what came before is gone.
	Epoch string `json:"epoch,omitempty"`
	// Online, for a direct message in SendMessage, tells whether the
	// recipient had a connection when it was sent: when not, it waits in
	// the recipient's inbox (push a notification). Not sent to clients.
	Online bool `json:"-"`
}

// inbound is what a client sends. type and to_user_id accept a number or a
// numeric string: the original demo page sends "type": "3".
type inbound struct {
	ChannelId string          `json:"channel_id"`
	ToUserId  json.RawMessage `json:"to_user_id"`
	Type      json.RawMessage `json:"type"`
	Content   *string         `json:"content"`
	Transient bool            `json:"transient"`
	// chart.v1 (recovery.go): a client's own id for its message, and the
	// hello and acknowledgement frames.
	Id    string     `json:"id"`
	Hello *positions `json:"hello"`
	Ack   *positions `json:"ack"`
	Ping  *uint64    `json:"ping"`
	// A request to join or leave a channel (join.go), in a frame without
	// content.
	Join  *string `json:"join"`
	Leave *string `json:"leave"`
	// text holds decodeFlat's content, which Content points at: one
	// allocation less per frame.
	text string
}

// decodeInbound parses one client frame into a Message without server fields.
func decodeInbound(uid uint64, data []byte) (Message, error) {
	in, err := decodeFrame(uid, data)
	if err != nil {
		return Message{}, err
	}
	defer in.free()
	return in.message(uid)
}

// inbounds pools the frames being parsed: one fewer allocation (some 200
// bytes) per client message.
var inbounds = sync.Pool{New: func() any { return new(inbound) }}

// free gives in back to the pool; nothing may use it, or keep Content,
// which points into it, after.
func (in *inbound) free() {
	*in = inbound{}
	inbounds.Put(in)
}

// decodeFrame parses one client frame; the caller frees it.
func decodeFrame(uid uint64, data []byte) (*inbound, error) {
	data = bytes.TrimSpace(data)
	if len(data) == 0 || data[0] != '{' {
		return nil, badMessage(uid, "want a JSON object")
	}
	in := inbounds.Get().(*inbound)
	if decodeFlat(data, in) {
		return in, nil
	}
	*in = inbound{}
	if err := json.Unmarshal(data, in); err != nil {
		in.free()
		return nil, badMessage(uid, "%s", jsonProblem(err))
	}
	return in, nil
}

// message validates a frame as a chat message, without server fields.
func (in *inbound) message(uid uint64) (Message, error) {
	if in.Content == nil {
		return Message{}, badMessage(uid, "missing \"content\"")
	}
	typ, err := parseNumber(in.Type, 0xff)
	if err != nil {
		return Message{}, badMessage(uid, "field \"type\": %w", err)
	}
	to, err := parseNumber(in.ToUserId, 1<<64-1)
	if err != nil {
		return Message{}, badMessage(uid, "field \"to_user_id\": %w", err)
	}
	switch {
	case to != 0 && in.ChannelId != "":
		return Message{}, badMessage(uid, "set either \"channel_id\" or \"to_user_id\", not both")
	case to == 0 && in.ChannelId == "":
		return Message{}, badMessage(uid, "missing \"channel_id\" or \"to_user_id\"")
	}
	return Message{ChannelId: in.ChannelId, ToUserId: to, Type: uint8(typ), Content: *in.Content, Transient: in.Transient}, nil
}

// jsonProblem says what is wrong with a client's JSON in the client's
// terms (field names, offsets), not the decoder's.
func jsonProblem(err error) string {
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te):
		return "field " + strconv.Quote(clip(te.Field)) + ": want " + jsonKind(te.Type.Kind()) + ", got " + te.Value
	case errors.As(err, &se):
		return "malformed JSON at byte " + strconv.FormatInt(se.Offset, 10)
	}
	return "malformed JSON"
}

func jsonKind(k reflect.Kind) string {
	if k == reflect.String || k == reflect.Pointer {
		return "a string"
	}
	return "a JSON value of another type"
}

type numberError string

func (e numberError) Error() string { return string(e) }

// parseNumber reads an unsigned integer given as a JSON number or a JSON
// string holding one. Absent or null means 0.
func parseNumber(raw json.RawMessage, max uint64) (uint64, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return 0, nil
	}
	s := raw
	if raw[0] == '"' {
		if inner, _, ok := plainString(raw, 0); ok {
			s = inner // no escape: its bytes are its text
		} else {
			var str string
			if err := json.Unmarshal(raw, &str); err != nil {
				return 0, err
			}
			s = []byte(str)
		}
	}
	if n, ok := plainUint(s); ok && n <= max {
		return n, nil
	}
	n, err := strconv.ParseUint(string(s), 10, 64)
	if err != nil || n > max {
		return 0, numberError("want an integer from 0 to " + strconv.FormatUint(max, 10) + ", got " + clip(string(raw)))
	}
	return n, nil
}

// now is the server's clock for SendTime.
func now() string { return time.Now().Format(TimeLayout) }

// encode turns a message into a text frame. Its JSON is what
// encoding/json would write, except that <, > and & stay as they are (the
// payload is never HTML; escaped they cost 6 bytes each), and that the
// position (offset, epoch) comes last, so that a message stored without it
// (appendPrefix) is framed at any position cheaply (framePrefix).
func encode(m *Message) []byte {
	bp := scratch.Get().(*[]byte)
	b := appendPrefix((*bp)[:0], m)
	f := framePrefix(b, m.Offset, m.Epoch)
	putScratch(bp, b)
	return f
}

// framePrefix frames a message's JSON prefix at a position (none when
// offset is 0), without a stamp (stamp.go).
func framePrefix(prefix []byte, offset uint64, epoch string) []byte {
	return stampedFrame(prefix, offset, epoch, 0)
}

// appendPosition ends a message's JSON with its position, if any.
func appendPosition(b []byte, offset uint64, epoch string) []byte {
	if offset != 0 {
		b = append(b, `,"offset":`...)
		b = strconv.AppendUint(b, offset, 10)
		b = append(b, `,"epoch":`...)
		b = appendString(b, epoch)
	}
	return append(b, '}')
}

var scratch = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

func putScratch(bp *[]byte, b []byte) {
	if cap(b) <= 64<<10 {
		*bp = b[:0]
		scratch.Put(bp)
	}
}

// appendMessage appends m as JSON.
func appendMessage(b []byte, m *Message) []byte {
	return appendPosition(appendPrefix(b, m), m.Offset, m.Epoch)
}

// appendPrefix appends m's JSON without its position and closing brace:
// what a stream stores.
func appendPrefix(b []byte, m *Message) []byte {
	b = append(b, `{"channel_id":`...)
	b = appendString(b, m.ChannelId)
	b = append(b, `,"user_id":`...)
	b = strconv.AppendUint(b, m.UserId, 10)
	if m.ToUserId != 0 {
		b = append(b, `,"to_user_id":`...)
		b = strconv.AppendUint(b, m.ToUserId, 10)
	}
	b = append(b, `,"type":`...)
	b = strconv.AppendUint(b, uint64(m.Type), 10)
	b = append(b, `,"content":`...)
	b = appendString(b, m.Content)
	b = append(b, `,"send_time":`...)
	b = appendString(b, m.SendTime)
	if m.Transient {
		b = append(b, `,"transient":true`...)
	}
	return b
}

// appendString appends s as a JSON string: quotes, backslashes and control
// characters escaped, invalid UTF-8 replaced by U+FFFD, U+2028 and U+2029
// escaped (JavaScript source cannot hold them raw), everything else as is.
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if c >= utf8.RuneSelf && r != utf8.RuneError && r != '\u2028' && r != '\u2029' {
			i += size
			continue
		}
		b = append(b, s[start:i]...)
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c == '\n':
			b = append(b, '\\', 'n')
		case c == '\r':
			b = append(b, '\\', 'r')
		case c == '\t':
			b = append(b, '\\', 't')
		case c == '\b':
			b = append(b, '\\', 'b')
		case c == '\f':
			b = append(b, '\\', 'f')
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		case r == utf8.RuneError && size == 1:
			b = append(b, `\ufffd`...)
		case r == utf8.RuneError:
			b = append(b, s[i:i+size]...) // a real U+FFFD
		default:
			b = append(b, `\u202`...)
			b = append(b, hex[r&0xf])
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// encodeError is the frame sent to a client whose message was refused:
//
//	{"error":"not_joined","message":"chart: uid 7: channel \"x\": channel not joined","channel_id":"x"}
//
// Client-chosen strings in it are cut short (clip).
func encodeError(err error, channelId string, toUid uint64, id string) []byte {
	bp := scratch.Get().(*[]byte)
	b := append((*bp)[:0], `{"error":`...)
	b = appendString(b, errorCode(err))
	b = append(b, `,"message":`...)
	b = appendString(b, clipMessage(err.Error()))
	if channelId != "" {
		b = append(b, `,"channel_id":`...)
		b = appendString(b, clip(channelId))
	}
	if toUid != 0 {
		b = append(b, `,"to_user_id":`...)
		b = strconv.AppendUint(b, toUid, 10)
	}
	if id != "" {
		b = append(b, `,"id":`...)
		b = appendString(b, id)
	}
	f := frame(opText, append(b, '}'))
	putScratch(bp, b)
	return f
}

package chart

import (
	"bytes"
	"encoding/json"
	"strconv"
	"time"
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
}

// inbound is what a client sends. type and to_user_id accept a number or a
// numeric string: the original demo page sends "type": "3".
type inbound struct {
	ChannelId string          `json:"channel_id"`
	ToUserId  json.RawMessage `json:"to_user_id"`
	Type      json.RawMessage `json:"type"`
	Content   *string         `json:"content"`
}

// decodeInbound parses one client frame into a Message without server fields.
func decodeInbound(uid uint64, data []byte) (Message, error) {
	var in inbound
	data = bytes.TrimSpace(data)
	if len(data) == 0 || data[0] != '{' {
		return Message{}, badMessage(uid, "want a JSON object")
	}
	if err := json.Unmarshal(data, &in); err != nil {
		return Message{}, badMessage(uid, "%w", err)
	}
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
	return Message{ChannelId: in.ChannelId, ToUserId: to, Type: uint8(typ), Content: *in.Content}, nil
}

type numberError string

func (e numberError) Error() string { return string(e) }

// parseNumber reads an unsigned integer given as a JSON number or a JSON
// string holding one. Absent or null means 0.
func parseNumber(raw json.RawMessage, max uint64) (uint64, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return 0, nil
	}
	s := string(raw)
	if raw[0] == '"' {
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, err
		}
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n > max {
		return 0, numberError("want an integer from 0 to " + strconv.FormatUint(max, 10) + ", got " + strconv.Quote(string(raw)))
	}
	return n, nil
}

// now is the server's clock for SendTime.
func now() string { return time.Now().Format(TimeLayout) }

// encode turns a message into a text frame.
func encode(m *Message) []byte {
	payload, err := json.Marshal(m)
	if err != nil {
		// A Message has only strings and integers; Marshal cannot fail.
		panic("chart: encode message: " + err.Error())
	}
	return frame(opText, payload)
}

// errorFrame is sent to a client whose message was refused:
//
//	{"error":"not_joined","message":"chart: uid 7: channel \"x\": channel not joined","channel_id":"x"}
type errorFrame struct {
	Error     string `json:"error"`
	Message   string `json:"message"`
	ChannelId string `json:"channel_id,omitempty"`
	ToUserId  uint64 `json:"to_user_id,omitempty"`
}

func encodeError(err error, channelId string, toUid uint64) []byte {
	payload, _ := json.Marshal(errorFrame{Error: errorCode(err), Message: err.Error(), ChannelId: channelId, ToUserId: toUid})
	return frame(opText, payload)
}

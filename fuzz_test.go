package chart

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
)

// FuzzInbound sends arbitrary UTF-8 text frames through a real connection
// and checks the dispatch contract: each frame gets exactly one answer,
// either the accepted message (with server-set UserId and SendTime, as
// decodeInbound read it) or an error frame, and the connection survives.
// (A frame that is not UTF-8 closes the connection with 1007: see
// TestInvalidUTF8.)
func FuzzInbound(f *testing.F) {
	for _, seed := range []string{
		`{"channel_id":"a","content":"hi","type":3}`,
		`{"channel_id":"a","content":"hi","type":"3"}`,
		`{"to_user_id":1,"content":"hi","type":0}`,
		`{"to_user_id":"1","content":"\u00e9\ud83d\ude00","type":"255"}`,
		`{"channel_id":"b","content":"x","type":3}`,
		`{"channel_id":"a","content":"x","type":3,"user_id":99,"send_time":"x"}`,
		`{"channel_id":"a","content":null,"type":3}`,
		`{"channel_id":"a","content":"x","type":[3]}`,
		`{"channel_id":"a","to_user_id":1,"content":"x"}`,
		`{"to_user_id":18446744073709551615,"content":"x"}`,
		`{"to_user_id":18446744073709551616,"content":"x"}`,
		`{"channel_id":"a","content":"x","type":3e0}`,
		" \t{\"channel_id\":\"a\",\"content\":\"\"}\n",
		`{}`, `null`, `[]`, `"x"`, `3`, ``, `{`, `}`,
	} {
		f.Add([]byte(seed))
	}
	// One server and connection for the whole run; uid 1 has joined
	// channel "a" and is the only user online.
	s := startServer(f, Config{RateLimit: -1}, nil)
	c := s.dial(f, 1)
	if err := s.hub.JoinChannelIds(1, "a"); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 4096 || !utf8.Valid(data) {
			return
		}
		want, derr := decodeInbound(1, data)
		c.ws.SetWriteDeadline(time.Now().Add(wait))
		if err := c.ws.WriteMessage(websocket.TextMessage, data); err != nil {
			t.Fatalf("write: %v", err)
		}
		c.ws.SetReadDeadline(time.Now().Add(wait))
		_, out, err := c.ws.ReadMessage()
		if err != nil {
			t.Fatalf("read answer to %q: %v", data, err)
		}
		var got frameIn
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("answer %q is not JSON: %v", out, err)
		}
		// Channel "a", or a direct message to anyone (the sender gets its
		// own copy; an offline recipient's waits in its inbox).
		accepted := derr == nil && (want.ChannelId == "a" || want.ToUserId != 0)
		if !accepted {
			if got.Error == "" || got.Detail == "" {
				t.Fatalf("frame %q (decode error %v) answered with %q, want an error frame", data, derr, out)
			}
			return
		}
		if got.Error != "" {
			t.Fatalf("frame %q answered with error %q", data, out)
		}
		want.UserId, want.SendTime = 1, got.SendTime
		if !want.Transient {
			if got.Offset == 0 || got.Epoch == "" {
				t.Fatalf("frame %q delivered without a position: %q", data, out)
			}
			want.Offset, want.Epoch = got.Offset, got.Epoch
		}
		if got.Message != want {
			t.Fatalf("frame %q delivered as %+v, want %+v", data, got.Message, want)
		}
		if !bytes.Contains(out, []byte(`"send_time":"`)) || len(got.SendTime) != len(TimeLayout) {
			t.Fatalf("frame %q: bad send_time in %q", data, out)
		}
	})
}

// FuzzEncode checks the hand-written JSON encoder against encoding/json:
// valid JSON that decodes to what encoding/json's output decodes to, with
// <, > and & left as they are.
func FuzzEncode(f *testing.F) {
	for _, s := range []string{"", "hi", `<a href="x">&amp;</a>`, "\x00\x1f\b\f\n\r\t\\\"", "\xff\xfe", "\u2028\u2029\ufffd", "é中😀"} {
		f.Add(s, s+"x", uint64(7), uint8(3))
	}
	f.Fuzz(func(t *testing.T, channel, content string, uid uint64, typ uint8) {
		m := Message{ChannelId: channel, UserId: uid, ToUserId: uid / 2, Type: typ, Content: content, SendTime: content}
		got := appendMessage(nil, &m)
		std, err := json.Marshal(&m)
		if err != nil {
			t.Fatal(err)
		}
		var a, b Message
		if err := json.Unmarshal(got, &a); err != nil {
			t.Fatalf("appendMessage(%+v) = %s: %v", m, got, err)
		}
		if err := json.Unmarshal(std, &b); err != nil {
			t.Fatal(err)
		}
		if a != b {
			t.Fatalf("appendMessage(%+v) decodes to %+v, encoding/json's to %+v", m, a, b)
		}
		if bytes.Contains(got, []byte(`\u003c`)) || bytes.Contains(got, []byte(`\u0026`)) {
			t.Fatalf("appendMessage escaped HTML: %s", got)
		}
		if utf8.ValidString(content) && strings.ContainsAny(content, "<>&") && !bytes.ContainsAny(got, "<>&") {
			t.Fatalf("appendMessage(%+v) = %s: <>& not kept", m, got)
		}
	})
}

// FuzzDecodeFlat: every frame decodeFlat takes, encoding/json takes too,
// with the same result (decodeflat.go's promise). The seeds are the
// frames clients send and near misses decodeFlat must leave to it.
func FuzzDecodeFlat(f *testing.F) {
	for _, s := range []string{
		`{"channel_id":"lobby","content":"hi","type":"3"}`,
		`{"to_user_id":42,"content":"x","type":3,"id":"m-1","transient":true}`,
		`{ "channel_id" : "a" , "content" : "" , "transient" : false }`,
		`{"ping":17}`, `{"join":"room"}`, `{"leave":"room"}`, `{}`, `{"ack":{"inbox":{"epoch":"e","offset":3}}}`,
		`{"content":"é \u00e9"}`, `{"Content":"x"}`, `{"content":"a","content":"b"}`, `{"type":03}`,
		`{"type":3.0}`, `{"to_user_id":18446744073709551616}`, `{"ping":-1}`, `{"content":null}`,
		"{\"content\":\"\xff\"}", `{"content":"x"} `, `{"content":"x"}}`, `{"content":"x",}`, `{"x":1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		data = bytes.TrimSpace(data)
		if len(data) == 0 || data[0] != '{' {
			return
		}
		got := new(inbound)
		if !decodeFlat(data, got) {
			return
		}
		var want inbound
		if err := json.Unmarshal(data, &want); err != nil {
			t.Fatalf("decodeFlat took %q, which encoding/json refuses: %v", data, err)
		}
		str := func(p *string) string {
			if p == nil {
				return "<nil>"
			}
			return "=" + *p
		}
		ping := func(p *uint64) string {
			if p == nil {
				return "<nil>"
			}
			return fmt.Sprint(*p)
		}
		if got.ChannelId != want.ChannelId || !bytes.Equal(got.ToUserId, want.ToUserId) || !bytes.Equal(got.Type, want.Type) ||
			str(got.Content) != str(want.Content) || got.Transient != want.Transient || got.Id != want.Id ||
			str(got.Join) != str(want.Join) || str(got.Leave) != str(want.Leave) || ping(got.Ping) != ping(want.Ping) ||
			got.Hello != nil || got.Ack != nil || want.Hello != nil || want.Ack != nil {
			t.Fatalf("%q: decodeFlat %+v, encoding/json %+v", data, *got, want)
		}
	})
}

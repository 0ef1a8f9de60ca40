package chart

import (
	"encoding/json"
	"testing"
)

// payload returns a server frame's payload (unmasked, FIN set).
func payload(t *testing.T, f []byte) []byte {
	t.Helper()
	switch n := f[1] & 0x7f; {
	case n < 126:
		return f[2:]
	case n == 126:
		return f[4:]
	}
	return f[10:]
}

// TestPresencePages: a member list of 2,500 uids is three frames of at
// most presencePage uids, every page but the last marked "more"; an empty
// list is one frame; a delta without uids is none.
func TestPresencePages(t *testing.T) {
	ids := make([]uint64, 2500)
	for i := range ids {
		ids[i] = uint64(i + 1)
	}
	frames := appendPages(nil, "members", "room", ids, true)
	if len(frames) != 3 {
		t.Fatalf("%d frames", len(frames))
	}
	next := uint64(1)
	for i, f := range frames {
		var p struct {
			Presence, ChannelId string
			UserIds             []uint64 `json:"user_ids"`
			More                bool
		}
		if err := json.Unmarshal(payload(t, f), &p); err != nil {
			t.Fatal(err)
		}
		if want := min(1000, 2500-1000*i); p.Presence != "members" || len(p.UserIds) != want || p.More != (i < 2) {
			t.Fatalf("frame %d: %q with %d uids, more %v", i, p.Presence, len(p.UserIds), p.More)
		}
		for _, uid := range p.UserIds {
			if uid != next {
				t.Fatalf("frame %d: uid %d, want %d", i, uid, next)
			}
			next++
		}
	}
	if f := appendPages(nil, "members", "a\"b", nil, true); len(f) != 1 || string(payload(t, f[0])) != `{"presence":"members","channel_id":"a\"b","user_ids":[]}` {
		t.Fatalf("empty list: %q", f)
	}
	if f := appendPages(nil, "join", "room", nil, false); len(f) != 0 {
		t.Fatalf("empty delta: %d frames", len(f))
	}
	if f := appendPages(nil, "leave", "room", ids[:1001], false); len(f) != 2 || string(payload(t, f[1])) != `{"presence":"leave","channel_id":"room","user_ids":[1001]}` {
		t.Fatalf("delta of 1001: %d frames", len(f))
	}
	if got := string(payload(t, presenceEnd("room"))); got != `{"presence":"end","channel_id":"room"}` {
		t.Fatalf("end: %s", got)
	}
	if got := string(payload(t, encodeAnswer(true, "room", "r1"))); got != `{"joined":"room","id":"r1"}` {
		t.Fatalf("answer: %s", got)
	}
}

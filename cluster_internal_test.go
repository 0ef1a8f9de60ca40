package chart

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"testing"
)

// TestReceiveMalformed: envelopes that are cut short or unknown are
// ignored without a panic.
func TestReceiveMalformed(t *testing.T) {
	bus := NewMemoryBus()
	h := New(Config{Broker: bus.Broker(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	defer h.Shutdown(context.Background())
	other := []byte{envChannel, 1, 'x'}
	cl := h.peers.(*cluster)
	for _, data := range [][]byte{
		nil, {envChannel}, {envChannel, 200}, {envChannel, 5, 'x'},
		append(other, 9, 'a'), append([]byte{envUser, 1, 'x'}, 0xff),
		{envJoin, 1, 'x', 7, 3, 'a'}, {envLeave, 1, 'x'}, {'?', 1, 'x', 1, 2, 3},
	} {
		cl.Receive(data)
	}
}

// TestSubscriptionsFollowLocalInterest: a node subscribes to a channel only
// while it has a local member, and to a uid only while it is connected.
func TestSubscriptionsFollowLocalInterest(t *testing.T) {
	bus := NewMemoryBus()
	rec := newRecorder()
	s := startServer(t, Config{Broker: bus.Broker()}, rec)
	subs := func() (chans []string, uids []uint64) {
		bus.mu.Lock()
		defer bus.mu.Unlock()
		for t := range bus.subs {
			switch t[:2] {
			case "c:":
				chans = append(chans, t[2:])
			case "u:":
				uid, _ := strconv.ParseUint(t[2:], 10, 64)
				uids = append(uids, uid)
			}
		}
		return chans, uids
	}
	c := s.login(t, rec, 1)
	if chans, uids := subs(); len(chans) != 0 || len(uids) != 1 || uids[0] != 1 {
		t.Fatalf("after login: %v %v", chans, uids)
	}
	s.hub.JoinChannelIds(1, "a", "b")
	s.hub.UnJoinChannelIds(1, "a")
	if chans, _ := subs(); len(chans) != 1 || chans[0] != "b" {
		t.Fatalf("after join a, b and leave a: %v", chans)
	}
	c.closeNow()
	recv(t, rec.logouts, "logout")
	if chans, uids := subs(); len(chans) != 0 || len(uids) != 0 {
		t.Fatalf("after logout: %v %v", chans, uids)
	}
}

// FuzzEnvelope feeds arbitrary broker messages to a hub with a member, a
// connection-less uid and a channel: nothing may panic.
func FuzzEnvelope(f *testing.F) {
	f.Add([]byte{envChannel, 1, 'x', 4, 'r', 'o', 'o', 'm', 'h', 'i'})
	f.Add([]byte{envUser, 1, 'x', 7, 'h', 'i'})
	f.Add([]byte{envJoin, 1, 'x', 7, 1, 'a', 2, 'b', 'c'})
	f.Add([]byte{envLeave, 1, 'x', 7, 1, 'a'})
	bus := NewMemoryBus()
	h := New(Config{Broker: bus.Broker(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	defer h.Shutdown(context.Background())
	cl := h.peers.(*cluster)
	f.Fuzz(func(t *testing.T, data []byte) {
		cl.Receive(data)
	})
}

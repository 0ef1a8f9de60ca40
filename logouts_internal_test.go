package chart

import (
	"context"
	"testing"
	"time"
)

// eventually polls cond until it holds, for at most wait.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling state that has no event
	}
}

// TestLogoutWaitsForTheBroker: node A is cut off from the broker (shorter
// than the TTL) while three uids' last connections there close: uid 1 is
// still connected to node B, uid 2 is gone for good, uid 3 comes back to A
// during the cut. A defers their LogoutServer; once the cut ends, only uid
// 2, offline everywhere, is logged out, and uid 3 gets no second login and
// keeps its channel.
// (Deciding alone, A logged out 1 and 3 and logged 3 in again.)
func TestLogoutWaitsForTheBroker(t *testing.T) {
	bus := NewMemoryBus()
	bus.TTL = 5 * time.Second
	ra, rb := newRecorder(), newRecorder()
	ba := bus.Broker()
	a := startServer(t, Config{Broker: ba}, ra)
	b := startServer(t, Config{Broker: bus.Broker()}, rb)
	c1 := a.login(t, ra, 1)
	b.dial(t, 1) // online on B too: no login there
	c2 := a.login(t, ra, 2)
	c3 := a.login(t, ra, 3)
	if err := a.hub.JoinChannelIds(3, "k"); err != nil {
		t.Fatal(err)
	}
	cl := a.hub.peers.(*cluster)
	deferredUids := func() map[uint64]bool {
		cl.logoutMu.Lock()
		defer cl.logoutMu.Unlock()
		m := make(map[uint64]bool)
		for uid := range cl.logouts {
			m[uid] = true
		}
		return m
	}

	bus.Cut(ba, true)
	c1.closeNow()
	c2.closeNow()
	c3.closeNow()
	eventually(t, "three logouts deferred", func() bool { return len(deferredUids()) == 3 })
	a.dial(t, 3)
	eventually(t, "uid 3's logout dropped", func() bool { d := deferredUids(); return len(d) == 2 && !d[3] })
	if chans, _ := a.hub.localChannels(3); len(chans) != 1 || chans[0] != "k" {
		t.Fatalf("uid 3 back in %v during the cut, want [k] (as it left)", chans)
	}
	bus.Cut(ba, false)

	if got := recv(t, ra.logouts, "uid 2's logout"); got != 2 {
		t.Fatalf("logout of %d, want 2", got)
	}
	// Settled: uid 1 is marked offline on A only (online on B).
	eventually(t, "uid 1 on node B only", func() bool {
		bus.mu.Lock()
		defer bus.mu.Unlock()
		u := bus.users[1]
		return u != nil && len(u.nodes) == 1 && len(deferredUids()) == 0
	})
	select {
	case uid := <-ra.logouts:
		t.Fatalf("logout of %d on A, want none", uid)
	case uid := <-ra.logins:
		t.Fatalf("login of %d on A, want none", uid)
	case uid := <-rb.logouts:
		t.Fatalf("logout of %d on B, want none", uid)
	default:
	}
	eventually(t, "uid 3 in k on node B's view", func() bool {
		ids := b.hub.ChannelUserIds("k")
		return len(ids) == 1 && ids[0] == 3
	})
	if !b.hub.IsOnline(1) || !b.hub.IsOnline(3) || b.hub.IsOnline(2) {
		t.Fatalf("online 1 %v, 2 %v, 3 %v; want true, false, true", b.hub.IsOnline(1), b.hub.IsOnline(2), b.hub.IsOnline(3))
	}
}

// TestLogoutDecidedAloneAfterTTL: a node cut off longer than the TTL runs
// the LogoutServer it deferred (the others reap it meanwhile).
func TestLogoutDecidedAloneAfterTTL(t *testing.T) {
	bus := NewMemoryBus()
	bus.TTL = 600 * time.Millisecond
	ra := newRecorder()
	ba := bus.Broker()
	a := startServer(t, Config{Broker: ba}, ra)
	c := a.login(t, ra, 4)
	bus.Cut(ba, true)
	defer bus.Cut(ba, false)
	c.closeNow()
	if got := recv(t, ra.logouts, "uid 4's logout"); got != 4 {
		t.Fatalf("logout of %d, want 4", got)
	}
}

// TestShutdownEndsDeferredLogouts: Shutdown runs the LogoutServer of a uid
// whose logout waits for the broker, as it does for every user it had.
func TestShutdownEndsDeferredLogouts(t *testing.T) {
	bus := NewMemoryBus()
	ra := newRecorder()
	ba := bus.Broker()
	a := startServer(t, Config{Broker: ba}, ra)
	c := a.login(t, ra, 5)
	bus.Cut(ba, true)
	c.closeNow()
	cl := a.hub.peers.(*cluster)
	eventually(t, "the logout deferred", func() bool {
		cl.logoutMu.Lock()
		defer cl.logoutMu.Unlock()
		return len(cl.logouts) == 1
	})
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	a.hub.Shutdown(ctx)
	if got := recv(t, ra.logouts, "uid 5's logout"); got != 5 {
		t.Fatalf("logout of %d, want 5", got)
	}
}

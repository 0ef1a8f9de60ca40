package natsbroker

import (
	"context"
	"slices"
	"testing"
	"time"
)

// TestDeletedKeysLeaveNoMarkers: presence keys deleted as users leave
// (the uid's record, its node key, its memberships) leave no marker for
// longer than markerTTL: the listings (Online, Members, NodeUids) walk
// every marker their keys left, so they slowed with every uid that ever
// connected (4,000 gone: 55 ms, past BrokerWait, and presence fell back
// to each node's own users for good).
func TestDeletedKeysLeaveNoMarkers(t *testing.T) {
	srv := startNATS(t)
	b, err := connect(srv.url(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, _, _, err := b.Heartbeat(false); err != nil {
		t.Fatal(err)
	}
	const gone = 500
	for uid := uint64(1000); uid < 1000+gone; uid++ {
		if _, err := b.Connect(uid); err != nil {
			t.Fatal(err)
		}
		if err := b.Join(uid, []string{"room"}); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Disconnect(uid); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.Connect(7); err != nil {
		t.Fatal(err)
	}
	if err := b.Join(7, []string{"room"}); err != nil {
		t.Fatal(err)
	}
	kv, _ := b.buckets()
	s, err := b.js.Stream(context.Background(), "KV_"+kv.Bucket())
	if err != nil {
		t.Fatal(err)
	}
	// Live: u.7, nu.NODE.7, c.room.7 and the node's own key.
	deadline := time.Now().Add(markerTTL + 5*time.Second)
	for {
		info, err := s.Info(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs <= 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the presence bucket holds %d messages %v after %d uids left, want the 4 live keys", info.State.Msgs, markerTTL+5*time.Second, gone)
		}
		time.Sleep(100 * time.Millisecond) // polling the server's expiry, with a deadline
	}
	if ids, err := b.Online(); err != nil || !slices.Equal(ids, []uint64{7}) {
		t.Fatalf("Online = %v, %v; want [7]", ids, err)
	}
	if ids, err := b.Members("room"); err != nil || !slices.Equal(ids, []uint64{7}) {
		t.Fatalf("Members(room) = %v, %v; want [7]", ids, err)
	}
}

package chart

import (
	"fmt"
	"testing"
)

// TestSendsPerUid: a sender whose uid shares a shard with a victim's
// cannot push the victim's remembered ids out alone: past maxSendsPerUid
// it pushes out its own oldest; the shard stays within maxSendsPerShard.
func TestSendsPerUid(t *testing.T) {
	var ss sends
	victim := uint64(7)
	shard := (victim * 0x9E3779B97F4A7C15) >> 58
	attacker := uint64(victim + 1)
	for (attacker*0x9E3779B97F4A7C15)>>58 != shard {
		attacker++
	}
	if prev, fresh := ss.claim(victim, "pay-10"); prev != nil || fresh == nil {
		t.Fatal("first claim not fresh")
	}
	for i := 0; i < 3*maxSendsPerShard; i++ {
		ss.claim(attacker, fmt.Sprint("junk-", i))
	}
	if prev, _ := ss.claim(victim, "pay-10"); prev == nil {
		t.Fatal("the victim's id was pushed out by another uid's sends")
	}
	sh := &ss.shards[shard]
	if n := sh.perUid[attacker]; n != maxSendsPerUid {
		t.Fatalf("attacker holds %d ids, want %d", n, maxSendsPerUid)
	}
	if prev, _ := ss.claim(attacker, fmt.Sprint("junk-", 3*maxSendsPerShard-1)); prev == nil {
		t.Fatal("the attacker's newest id was forgotten")
	}
	// Many uids of one shard together stay within the shard's bound.
	for u, n := uint64(1000), 0; n < 20; u++ {
		if (u*0x9E3779B97F4A7C15)>>58 != shard {
			continue
		}
		n++
		for i := 0; i < maxSendsPerUid; i++ {
			ss.claim(u, fmt.Sprint(i))
		}
	}
	if len(sh.ids) > maxSendsPerShard {
		t.Fatalf("shard holds %d ids, bound %d", len(sh.ids), maxSendsPerShard)
	}
}

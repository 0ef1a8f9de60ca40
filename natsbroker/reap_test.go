package natsbroker

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/wuyan94zl/chart/charttest"
)

// TestReapFenced: node B dies holding 40 uids (in channels, two of them
// also online on node C). Nodes A1..A3, whose connections go through a
// proxy, and C reap it while the proxy is blackholed (requests the server
// applied whose answers never come back: the calls time out) and reset
// (connections dropped mid-call) at random moments, so that heartbeats are
// cut short anywhere in the reap. Every uid that went offline everywhere
// is reported in gone by exactly one heartbeat of one node, the two on C
// by none, and presence ends right: B's uids offline and out of their
// channels, no trace or key of B's left, the two on C still online.
func TestReapFenced(t *testing.T) {
	srv := startNATS(t)
	opt := Options{Prefix: "fence", Bucket: "fence", TTL: 2 * time.Second, Timeout: 2 * time.Second}
	connect := func(url string, opt Options) *Broker {
		br, err := Connect(url, opt)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { br.Close() })
		return br
	}
	b := connect(srv.url(), opt)
	c := connect(srv.url(), opt)
	if _, _, _, err := b.Heartbeat(false); err != nil {
		t.Fatal(err)
	}
	const n = 40
	for uid := uint64(1); uid <= n; uid++ {
		if _, err := b.Connect(uid); err != nil {
			t.Fatal(err)
		}
		if err := b.Join(uid, []string{"room", "r" + uidStr(uid%3)}); err != nil {
			t.Fatal(err)
		}
	}
	both := map[uint64]bool{5: true, 17: true}
	for uid := range both {
		if _, err := c.Connect(uid); err != nil {
			t.Fatal(err)
		}
	}
	proxy := charttest.NewProxy(t, strings.TrimPrefix(srv.url(), "nats://"))
	aOpt := opt
	aOpt.Timeout = 40 * time.Millisecond
	var as []*Broker
	for range 3 {
		as = append(as, connect("nats://"+proxy.Addr(), aOpt)) // New's calls are bounded by 10 s
	}
	b.Close() // dies: its liveness key expires
	_, alive := c.buckets()
	charttest.Eventually(t, "B's liveness key expired", func() bool {
		if _, _, _, err := c.Heartbeat(false); err != nil {
			t.Fatal(err)
		}
		for _, a := range as {
			a.Heartbeat(false) // 40 ms may not do: it fails then
		}
		_, err := alive.Get(context.Background(), b.opt.NodeID)
		return errors.Is(err, jetstream.ErrKeyNotFound)
	})

	var (
		mu      sync.Mutex
		reports = make(map[uint64]int)
		by      = make(map[*Broker]int)
		errs    int
		cLast   = time.Now()
	)
	beat := func(br *Broker, reap bool) {
		t0 := time.Now()
		gone, lost, _, err := br.Heartbeat(reap)
		mu.Lock()
		defer mu.Unlock()
		if lost && br == c {
			t.Errorf("C's liveness key expired (%v since its previous heartbeat)", t0.Sub(cLast))
		}
		if br == c {
			cLast = t0
		}
		for _, uid := range gone {
			reports[uid]++
		}
		by[br] += len(gone)
		if err != nil {
			errs++
		}
	}
	settled := func() bool {
		on, err := c.Online()
		if err != nil {
			return false
		}
		mu.Lock()
		defer mu.Unlock()
		return len(on) == len(both) && len(reports) == n-len(both)
	}

	// The reap, cut short: the As beat every 2 ms while the proxy
	// blackholes for 60 ms or resets, every 10 to 50 ms, for 3 s (then
	// the reap goes on undisturbed: on a loaded machine the As, cut
	// every few tries, may not finish it within charttest.Wait); C beats
	// every 300 ms, and reaps too after a second.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		calm := time.After(3 * time.Second)
		for i := 0; ; i++ {
			select {
			case <-stop:
				proxy.Restore()
				return
			case <-calm:
				proxy.Restore()
				<-stop
				return
			case <-time.After(time.Duration(10+rand.IntN(40)) * time.Millisecond):
			}
			if i%2 == 0 {
				proxy.Reset()
				continue
			}
			proxy.Blackhole()
			select {
			case <-stop:
			case <-time.After(60 * time.Millisecond):
			}
			proxy.Restore()
		}
	}()
	cStop := make(chan struct{})
	go func() {
		defer wg.Done()
		tick := time.NewTicker(300 * time.Millisecond)
		defer tick.Stop()
		start := time.Now()
		for {
			select {
			case <-cStop:
				return
			case <-tick.C:
				beat(c, time.Since(start) > time.Second)
			}
		}
	}()
	var as_ sync.WaitGroup
	for _, a := range as {
		as_.Add(1)
		go func() {
			defer as_.Done()
			tick := time.NewTicker(2 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
					beat(a, true)
				}
			}
		}()
	}
	charttest.Eventually(t, "the reap settled", settled)
	close(stop)
	as_.Wait()
	// Whole heartbeats of the As settle what they left; C goes on beating.
	for _, a := range as {
		charttest.Eventually(t, "A connected", a.nc.IsConnected)
	}
	charttest.Eventually(t, "every attempt settled", func() bool {
		left := 0
		for _, br := range as {
			beat(br, true)
		}
		for _, br := range append([]*Broker{c}, as...) {
			br.reapMu.Lock()
			left += len(br.attempts)
			br.reapMu.Unlock()
		}
		return left == 0
	})
	close(cStop)
	wg.Wait()
	t.Logf("%d heartbeats failed; reported by A1-3: %d %d %d, by C: %d", errs, by[as[0]], by[as[1]], by[as[2]], by[c])
	for uid := uint64(1); uid <= n; uid++ {
		want := 1
		if both[uid] {
			want = 0
		}
		if reports[uid] != want {
			t.Errorf("uid %d reported %d times, want %d", uid, reports[uid], want)
		}
	}
	on, err := c.Online()
	if err != nil {
		t.Fatal(err)
	}
	if len(on) != len(both) || !both[on[0]] || !both[on[1]] {
		t.Errorf("online %v, want the uids on C", on)
	}
	for _, ch := range []string{"room", "r0", "r1", "r2"} {
		m, err := c.Members(ch)
		if err != nil {
			t.Fatal(err)
		}
		for _, uid := range m {
			if !both[uid] {
				t.Errorf("uid %d still in %s", uid, ch)
			}
		}
	}
	// Nothing of the reap is left pending in the uids' keys.
	for uid := uint64(1); uid <= n; uid++ {
		st, err := c.readUid(context.Background(), uid, true)
		if err != nil {
			t.Fatal(err)
		}
		if len(st.pending) > 0 {
			t.Errorf("uid %d keeps traces %v", uid, st.pending)
		}
	}
	kv, _ := c.buckets()
	if keys, err := c.keys(context.Background(), kv, "nu."+b.opt.NodeID+".*"); err != nil || len(keys) > 0 {
		t.Errorf("B's keys left: %v, %v", keys, err)
	}
	if _, err := kv.Get(context.Background(), "node."+b.opt.NodeID); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("node B still listed: %v", err)
	}
}

// TestKeysPaged: a key list longer than a batch of direct gets comes whole,
// without the deleted keys.
func TestKeysPaged(t *testing.T) {
	srv := startNATS(t)
	br, err := Connect(srv.url(), Options{Prefix: "paged", Bucket: "paged"})
	if err != nil {
		t.Fatal(err)
	}
	defer br.Close()
	kv, _ := br.buckets()
	ctx := context.Background()
	const n = 2*keysBatch + 10
	for uid := uint64(1); uid <= n; uid++ {
		if _, err := kv.Put(ctx, br.memberKey("room", uid), nil); err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Put(ctx, br.memberKey("other", uid), nil); err != nil {
			t.Fatal(err)
		}
	}
	for uid := uint64(1); uid <= n; uid += 7 {
		if err := kv.Delete(ctx, br.memberKey("room", uid)); err != nil {
			t.Fatal(err)
		}
	}
	got, err := br.Members("room")
	if err != nil {
		t.Fatal(err)
	}
	seen := make(map[uint64]bool)
	for _, uid := range got {
		if seen[uid] || uid%7 == 1 || uid < 1 || uid > n {
			t.Fatalf("Members lists %d (twice, deleted, or unknown)", uid)
		}
		seen[uid] = true
	}
	if want := n - (n+6)/7; len(seen) != want {
		t.Fatalf("Members lists %d uids, want %d", len(seen), want)
	}
}

// TestDisconnectCutAnywhere (review: logins without a logout under NATS
// restarts): a Disconnect whose connection is cut after any of its writes
// (the one that takes the uid offline, the member keys', the node key's;
// the hub defers the logout) is settled as the hub settles it once NATS
// answers: Disconnect again, and IsOnline when that says not last and
// NodeUids no longer lists the uid here. It must tell the uid went
// offline, and leave no member key. (Cut after the trace's removal and before the node key's, the retry
// found nothing to take offline and reported not last: LogoutServer never
// ran.) A further Disconnect reports not last.
func TestDisconnectCutAnywhere(t *testing.T) {
	srv := startNATS(t)
	proxy := charttest.NewProxy(t, strings.TrimPrefix(srv.url(), "nats://"))
	br, err := Connect("nats://"+proxy.Addr(), Options{Prefix: "retry", Bucket: "retry", Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { br.Close(); cutHook = nil })
	for k := 1; ; k++ {
		uid := uint64(k)
		if _, err := br.Connect(uid); err != nil {
			t.Fatal(err)
		}
		if err := br.Join(uid, []string{"room", "hall"}); err != nil {
			t.Fatal(err)
		}
		writes, reconnects := 0, br.nc.Stats().Reconnects
		cutHook = func() {
			if writes++; writes == k {
				proxy.Blackhole()
			}
		}
		last, err := br.Disconnect(uid)
		cutHook = nil
		if writes < k { // past its last write: every cut is tried
			if err != nil || !last {
				t.Fatalf("uncut Disconnect: last %v, %v", last, err)
			}
			break
		}
		if err == nil {
			t.Fatalf("Disconnect cut after write %d: last %v, no error", k, last)
		}
		proxy.Restore()
		// The handlers run in order: the reconnect's after the disconnect's.
		charttest.Eventually(t, "reconnected", func() bool { return br.nc.Stats().Reconnects > reconnects && br.connected() })
		listed, err := br.NodeUids()
		if err != nil {
			t.Fatal(err)
		}
		last, err = br.Disconnect(uid)
		if err == nil && !last && !slices.Contains(listed, uid) {
			var on bool
			on, err = br.IsOnline(uid)
			last = !on
		}
		if err != nil || !last {
			t.Fatalf("cut after write %d (node key listed %v): the retry: last %v, %v; want last", k, slices.Contains(listed, uid), last, err)
		}
		for _, ch := range []string{"room", "hall"} {
			if m, err := br.Members(ch); err != nil || len(m) != 0 {
				t.Fatalf("cut after write %d: %s's members after the retry: %v, %v; want none", k, ch, m, err)
			}
		}
		if last, err := br.Disconnect(uid); err != nil || last {
			t.Fatalf("cut after write %d: a further call: last %v, %v; want not last", k, last, err)
		}
		if listed, err := br.NodeUids(); err != nil || len(listed) != 0 {
			t.Fatalf("cut after write %d: NodeUids %v, %v; want none", k, listed, err)
		}
	}
}

// TestJoinRacingDisconnect (review: departed uids listed as channel
// members for good): a Join whose record write comes before a
// Disconnect's and whose member keys land after the Disconnect removed
// them does not leave the uid listed.
func TestJoinRacingDisconnect(t *testing.T) {
	srv := startNATS(t)
	br, err := Connect(srv.url(), Options{Prefix: "jrace", Bucket: "jrace"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { br.Close(); joinHook = nil })
	if _, err := br.Connect(7); err != nil {
		t.Fatal(err)
	}
	joinHook = func() {
		joinHook = nil
		if last, err := br.Disconnect(7); err != nil || !last {
			t.Errorf("Disconnect: last %v, %v", last, err)
		}
	}
	if err := br.Join(7, []string{"room"}); err != nil {
		t.Fatal(err)
	}
	if m, err := br.Members("room"); err != nil || len(m) != 0 {
		t.Fatalf("room's members: %v, %v; want none", m, err)
	}
}

// TestDisconnectFencesLateConnect (review: uids listed online for good
// with no node holding them): a Connect whose call gave up may still have
// its record write on its way (in the client's buffer, in a slow server);
// a Disconnect that finds nothing to take offline moves the key's revision
// on, so that the late write's compare-and-swap fails and no record names
// a node that no longer holds the uid. Both a key never written and one
// written before. (The late write landed.)
func TestDisconnectFencesLateConnect(t *testing.T) {
	srv := startNATS(t)
	br, err := Connect(srv.url(), Options{Prefix: "fence2", Bucket: "fence2"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { br.Close() })
	ctx, cancel := br.ctx()
	defer cancel()
	for _, uid := range []uint64{7, 8} {
		if uid == 8 { // written before: online, then offline
			if _, err := br.Connect(uid); err != nil {
				t.Fatal(err)
			}
			if _, err := br.Disconnect(uid); err != nil {
				t.Fatal(err)
			}
		}
		// The late Connect read the key, then its write waited.
		st, err := br.readUid(ctx, uid, true)
		if err != nil || st.rec != nil {
			t.Fatalf("uid %d: %+v, %v; want offline", uid, st, err)
		}
		if last, err := br.Disconnect(uid); err != nil || last {
			t.Fatalf("uid %d: Disconnect: last %v, %v", uid, last, err)
		}
		err = br.writeUid(ctx, uid, &record{Nodes: []string{br.opt.NodeID}}, nil, st.rev)
		if !conflict(err) {
			t.Fatalf("uid %d: the late write: %v; want a wrong-revision conflict", uid, err)
		}
		if on, err := br.IsOnline(uid); err != nil || on {
			t.Fatalf("uid %d online %v, %v", uid, on, err)
		}
	}
}

// TestSweepAfterRestart (review: departed uids listed as channel members
// for good under kills of a server with file storage, which brings back
// keys removed with an expired marker, nats-io/nats-server#8505): after
// the server restarts, a broker with file storage removes the member keys
// that the uids' records do not list (here written as such a revival
// leaves them: for a uid that left the channel, and for one offline),
// and keeps the others.
func TestSweepAfterRestart(t *testing.T) {
	srv := startNATSProc(t, true)
	br, err := Connect(srv.url(), Options{Prefix: "sweep", Bucket: "sweep", FileStorage: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { br.Close() })
	br.Attach(&recvNode{ch: make(chan string, 16)})
	for _, uid := range []uint64{1, 2} {
		if _, err := br.Connect(uid); err != nil {
			t.Fatal(err)
		}
	}
	if err := br.Join(1, []string{"room", "hall"}); err != nil {
		t.Fatal(err)
	}
	if err := br.Join(2, []string{"hall"}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := br.ctx()
	defer cancel()
	kv, _ := br.buckets()
	for _, uid := range []uint64{2, 3} { // 2 online, not in room; 3 offline
		if _, err := kv.Put(ctx, br.memberKey("room", uid), nil); err != nil {
			t.Fatal(err)
		}
	}
	if m, err := br.Members("room"); err != nil || len(m) != 3 {
		t.Fatalf("room's members before the restart: %v, %v", m, err)
	}
	reconnects := br.nc.Stats().Reconnects
	srv.kill()
	srv.restart(t)
	charttest.Eventually(t, "reconnected", func() bool { return br.nc.Stats().Reconnects > reconnects && br.connected() })
	charttest.Eventually(t, "room's members swept", func() bool {
		m, err := br.Members("room")
		return err == nil && slices.Equal(m, []uint64{1})
	})
	for ch, want := range map[string][]uint64{"room": {1}, "hall": {1, 2}} {
		m, err := br.Members(ch)
		slices.Sort(m)
		if err != nil || !slices.Equal(m, want) {
			t.Fatalf("%s's members after the sweep: %v, %v; want %v", ch, m, err, want)
		}
	}
}

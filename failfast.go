package chart

import (
	"errors"
	"slices"
	"sync/atomic"
	"time"
)

// Failing fast. The hub's calls to the broker's Presence and Streams run
// on the callers' goroutines: API calls, HTTP handlers, readers. A broker
// that is down (connections refused) or frozen (a stopped process, a
// blackholed network) must not hold them. The guard in front of those
// calls refuses them at once, with ErrBrokerDown, while
//
//   - the broker is known to be failing: a call failed and no call has
//     succeeded since; a probe (one cheap read, at most every probeEvery,
//     on its own goroutine) finds out when it answers again, as does the
//     heartbeat;
//   - or it stopped answering: calls are in flight and none has completed
//     for Config.BrokerWait (50 ms by default). The calls already in
//     flight then wait for their own timeouts (the broker's options),
//     except those an API caller waits for (presence reads, joins and
//     leaves, lookups: bounded): their caller gets ErrBrokerDown once
//     BrokerWait has passed without an answer, and the call finishes on
//     its own goroutine, its result dropped. What such a call changes
//     on the broker if it lands later, the re-publishing of presence
//     after the outage overwrites.
//
// Stream reads (recovery) and batched appends (pipeline.go) are refused
// in both cases, but do not count as calls in flight: a long read or a big
// batch is not a frozen broker. A refusal is no news of the broker: it does
// not mark it failing (cluster.failed).

// ErrBrokerDown is the error of a broker call refused at once because the
// broker is failing or has stopped answering; it reaches callers wrapped
// in an *Error of kind ErrBroker.
var ErrBrokerDown = errors.New("chart: broker failing, call refused at once")

const probeEvery = 100 * time.Millisecond

// guard is a cluster's fail-fast state. Times are monotonic nanoseconds
// since start.
type guard struct {
	cl       *cluster
	wait     int64 // Config.BrokerWait
	start    time.Time
	inflight atomic.Int64
	progress atomic.Int64 // the last completion, or the start of a lone call
	probing  atomic.Bool
	probed   atomic.Int64
	probe    func() error // a cheap read of the broker
}

func (g *guard) now() int64 { return int64(time.Since(g.start)) }

// enter admits a call, or refuses it at once. counted calls must exit.
func (g *guard) enter(counted bool) error {
	if g.cl.down.Load() {
		g.startProbe()
		return ErrBrokerDown
	}
	now := g.now()
	if !counted {
		if g.inflight.Load() > 0 && now-g.progress.Load() > g.wait {
			return ErrBrokerDown // stopped answering, as the counted calls show
		}
		return nil
	}
	if g.inflight.Add(1) == 1 {
		g.progress.Store(now)
	} else if now-g.progress.Load() > g.wait {
		g.inflight.Add(-1)
		return ErrBrokerDown
	}
	return nil
}

// exit records the end of a counted call.
func (g *guard) exit(err error) {
	g.progress.Store(g.now())
	g.inflight.Add(-1)
	g.done(err)
}

// done notes that the broker answered: a failure marks it failing (the
// caller reports it), a success ends that.
func (g *guard) done(err error) {
	if err == nil {
		g.progress.Store(g.now()) // any answer shows the broker is not frozen
		if g.cl.down.Load() {
			g.cl.up()
		}
	}
}

// startProbe checks, on another goroutine and at most every probeEvery,
// whether a failing broker answers again.
func (g *guard) startProbe() {
	now := g.now()
	if g.probe == nil || now-g.probed.Load() < int64(probeEvery) || !g.probing.CompareAndSwap(false, true) {
		return
	}
	g.probed.Store(now)
	if !g.cl.spawn(func() {
		defer g.probing.Store(false)
		if err := g.probe(); err == nil {
			g.cl.up()
		}
	}) {
		g.probing.Store(false)
	}
}

// guarded runs a counted broker call through g.
func guarded[T any](g *guard, call func() (T, error)) (T, error) {
	if err := g.enter(true); err != nil {
		var zero T
		return zero, err
	}
	v, err := call()
	g.exit(err)
	return v, err
}

// bounded is guarded for a call an API caller waits for: it waits at most
// the guard's wait for an answer that does not come, then returns
// ErrBrokerDown, leaving the call to finish on a goroutine of its own
// (counted in flight until it does).
func bounded[T any](g *guard, call func() (T, error)) (T, error) {
	var zero T
	if err := g.enter(true); err != nil {
		return zero, err
	}
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	run := func() {
		v, err := call()
		g.exit(err)
		ch <- result{v, err}
	}
	if !g.cl.spawn(run) {
		run() // the cluster stops: no goroutine may outlive it
	}
	if r, ok := await(g, ch); ok {
		return r.v, r.err
	}
	return zero, ErrBrokerDown
}

// await waits for ch until the broker has given no answer for the guard's
// wait: while other calls complete, the broker is slow, not stuck.
func await[T any](g *guard, ch <-chan T) (T, bool) { return awaitFor(g, ch, g.wait) }

// awaitFor is await with wait instead of the guard's.
func awaitFor[T any](g *guard, ch <-chan T, wait int64) (T, bool) {
	select {
	case v := <-ch:
		return v, true
	default:
	}
	t := time.NewTimer(time.Duration(wait))
	defer t.Stop()
	for {
		select {
		case v := <-ch:
			return v, true
		case <-t.C:
			idle := g.now() - g.progress.Load()
			if idle >= wait {
				var zero T
				return zero, false
			}
			t.Reset(time.Duration(wait - idle))
		}
	}
}

// guardedPresence is the broker's Presence behind the guard. Heartbeat is
// not guarded: it is the cluster's own probe, on its own goroutine.
type guardedPresence struct {
	p Presence
	g *guard
	q *lookupQueue // IsOnline in batches; nil: one call each
}

func (gp guardedPresence) Connect(uid uint64) (bool, error) {
	return guarded(gp.g, func() (bool, error) { return gp.p.Connect(uid) })
}

func (gp guardedPresence) Disconnect(uid uint64) (bool, error) {
	return guarded(gp.g, func() (bool, error) { return gp.p.Disconnect(uid) })
}

func (gp guardedPresence) Restore(uid uint64, channelIds []string) (bool, error) {
	return guarded(gp.g, func() (bool, error) { return gp.p.Restore(uid, channelIds) })
}

// Join and Leave hand the broker a copy of channelIds: a call that gives
// up returns while the broker's goes on, and the caller may reuse its
// slice (propagate's is pooled) once it has returned.
func (gp guardedPresence) Join(uid uint64, channelIds []string) error {
	ids := slices.Clone(channelIds)
	_, err := bounded(gp.g, func() (struct{}, error) { return struct{}{}, gp.p.Join(uid, ids) })
	return err
}

func (gp guardedPresence) Leave(uid uint64, channelIds []string) error {
	ids := slices.Clone(channelIds)
	_, err := bounded(gp.g, func() (struct{}, error) { return struct{}{}, gp.p.Leave(uid, ids) })
	return err
}

func (gp guardedPresence) Channels(uid uint64) ([]string, error) {
	return bounded(gp.g, func() ([]string, error) { return gp.p.Channels(uid) })
}

func (gp guardedPresence) Members(channelId string) ([]uint64, error) {
	return bounded(gp.g, func() ([]uint64, error) { return gp.p.Members(channelId) })
}

func (gp guardedPresence) Online() ([]uint64, error) {
	return bounded(gp.g, gp.p.Online)
}

func (gp guardedPresence) IsOnline(uid uint64) (bool, error) {
	if gp.q != nil {
		return gp.q.isOnline(uid)
	}
	return bounded(gp.g, func() (bool, error) { return gp.p.IsOnline(uid) })
}

func (gp guardedPresence) NodeUids() ([]uint64, error) {
	return guarded(gp.g, gp.p.NodeUids)
}

func (gp guardedPresence) Heartbeat(reap bool) ([]uint64, bool, bool, error) {
	gone, lost, reaped, err := gp.p.Heartbeat(reap)
	gp.g.done(err)
	return gone, lost, reaped, err
}

func (gp guardedPresence) HeartbeatInterval() time.Duration { return gp.p.HeartbeatInterval() }

// guardedStreams is the broker's Streams behind the guard.
type guardedStreams struct {
	s Streams
	g *guard
}

func (gs guardedStreams) Append(stream string, data []byte) (uint64, string, error) {
	var epoch string
	off, err := guarded(gs.g, func() (uint64, error) {
		off, e, err := gs.s.Append(stream, data)
		epoch = e
		return off, err
	})
	return off, epoch, err
}

func (gs guardedStreams) Read(stream string, after uint64, limit int) ([]StreamEntry, string, bool, uint64, error) {
	if err := gs.g.enter(false); err != nil {
		return nil, "", false, 0, err
	}
	es, epoch, complete, last, err := gs.s.Read(stream, after, limit)
	gs.g.done(err)
	return es, epoch, complete, last, err
}

// Tail returns the stream's epoch ("" for a stream that does not exist),
// newest offset, and when its newest entry kept was appended (zero: none,
// or not told): a call an API caller waits for (a join), bounded.
func (gs guardedStreams) Tail(stream string) (string, uint64, time.Time, error) {
	type tail struct {
		epoch string
		last  uint64
		at    time.Time
	}
	t, err := bounded(gs.g, func() (tail, error) {
		es, epoch, _, last, err := gs.s.Read(stream, 0, 1)
		var at time.Time
		if len(es) > 0 {
			at = es[len(es)-1].Time
		}
		return tail{epoch, last, at}, err
	})
	return t.epoch, t.last, t.at, err
}

func (gs guardedStreams) Ack(stream string, uid uint64, epoch string, offset uint64) error {
	_, err := guarded(gs.g, func() (struct{}, error) { return struct{}{}, gs.s.Ack(stream, uid, epoch, offset) })
	return err
}

func (gs guardedStreams) Acked(stream string, uid uint64) (uint64, string, error) {
	var epoch string
	off, err := guarded(gs.g, func() (uint64, error) {
		off, e, err := gs.s.Acked(stream, uid)
		epoch = e
		return off, err
	})
	return off, epoch, err
}

func (gs guardedStreams) Reset(stream string) error {
	_, err := guarded(gs.g, func() (struct{}, error) { return struct{}{}, gs.s.Reset(stream) })
	return err
}

func (gs guardedStreams) Claim(uid uint64, id string) (fresh, done bool, offset uint64, epoch string, err error) {
	_, err = guarded(gs.g, func() (struct{}, error) {
		var e error
		fresh, done, offset, epoch, e = gs.s.Claim(uid, id)
		return struct{}{}, e
	})
	return fresh, done, offset, epoch, err
}

func (gs guardedStreams) Settle(uid uint64, id string, ok bool, offset uint64, epoch string) error {
	_, err := guarded(gs.g, func() (struct{}, error) { return struct{}{}, gs.s.Settle(uid, id, ok, offset, epoch) })
	return err
}

// guardedBatch is guardedStreams for Streams that append in batches.
// Like a read, a batch is refused while the broker is failing or stuck but
// does not count as a call in flight: batches are sent by the pipeline's
// flushers, not by callers that must not wait, and a big batch on a busy
// broker is not a frozen one (refusing appends leaves holes in the
// streams).
type guardedBatch struct {
	guardedStreams
	b BatchStreams
}

func (gb guardedBatch) AppendBatch(batch []StreamAppend) {
	err := gb.g.enter(false)
	if errors.Is(err, ErrBrokerDown) && gb.g.cl.down.Load() {
		gb.g.startProbe()
		if gb.g.cl.awaitUp(time.Duration(gb.g.wait)) {
			err = gb.g.enter(false)
		}
	}
	if err != nil {
		for i := range batch {
			batch[i].Err = err
		}
		return
	}
	gb.b.AppendBatch(batch)
	gb.g.done(batchErr(batch))
}

// guardedAcks is guardedStreams for Streams that acknowledge in batches;
// like an append batch, a batch of acknowledgements is sent by a flusher
// and is refused, uncounted, while the broker is failing or stuck.
type guardedAcks struct {
	b BatchAcks
	g *guard
}

func (ga guardedAcks) AckBatch(acks []StreamAck) error {
	if err := ga.g.enter(false); err != nil {
		return err
	}
	err := ga.b.AckBatch(acks)
	ga.g.done(err)
	return err
}

// batchErr is a batch's outcome for the guard: nil when one append
// succeeded (the broker answers), else the first error.
func batchErr(batch []StreamAppend) error {
	for i := range batch {
		if batch[i].Err == nil {
			return nil
		}
	}
	if len(batch) == 0 {
		return nil
	}
	return batch[0].Err
}

package natsbroker

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Reaping. A heartbeat takes the uids of a dead node offline key by key,
// and each step is a request whose answer may be lost (the caller's
// Options.Timeout passed, the connection dropped) while the server applies
// it, then or later (a request that waited in the client's reconnect
// buffer). Yet every uid that a reap takes offline everywhere must be
// reported in gone exactly once in the cluster. So:
//
//   - Claim. A reaper claims a dead node N with key reaped.N of the
//     presence bucket, created naming the reaper and a random generation
//     (KV Create: one reaper at a time). It is also the mark that tells N,
//     should it come back, that it was reaped (N deletes it). A claim whose
//     reaper is dead itself is taken over (compare-and-swap), keeping its
//     generation. The reaper re-checks, before each uid, that N is still
//     dead and the claim still its own: a reap never acts on a judgement
//     made before N came back.
//   - Trace. The write that takes uid offline is a compare-and-swap of its
//     key u.UID against the revision the reaper read; when N was its last
//     node, it leaves a trace naming N and the generation in the key: the
//     body of the delete marker that takes the uid offline (readers and key
//     lists see a deleted key). A later Connect or Restore carries the
//     trace over into the new record, so it stays until reported: whether
//     the write applied is read back from the key, never inferred from an
//     answer.
//   - Report. A reaper that reads a trace back marks it as reported by
//     itself (compare-and-swap on the key), and reports uid in gone once
//     it has read or written that mark; then it removes the trace and the
//     key nu.N.UID (compare-and-swap on its revision, so that a late
//     delete cannot remove a key N wrote again). A trace marked by
//     another node is that node's to report. The reaper remembers, in
//     memory, every write it sent and every uid it reported until it
//     reads the outcome back: a heartbeat cut short anywhere is settled by
//     the next one, which reports what was applied and not reported yet,
//     and never reports a uid twice.
//   - Budget. A heartbeat reaps for at most half a heartbeat interval;
//     the next ones go on where it stopped, so that a long reap does not
//     let the reaper's own liveness key expire.
//
// Limits: a reaper that dies after marking a trace and before its hub ran
// LogoutServer loses that logout (nobody else reports a marked trace); a
// trace whose reaper died before marking it is reported by whoever takes
// the claim over. A reaped node that comes back while a trace of its uids
// is not reported yet may run LoginServer for the uid before the reaper's
// LogoutServer.

// trace marks, in a uid's key, that the reap of Node (generation Gen) took
// the uid offline, out of Channels.
type trace struct {
	Node     string   `json:"n"`
	Gen      string   `json:"g"`
	Channels []string `json:"c,omitempty"`
	// By is the node that reports it, once it has marked it so.
	By string `json:"by,omitempty"`
}

func (t trace) same(o trace) bool { return t.Node == o.Node && t.Gen == o.Gen }

// claim is the value of reaped.NODE.
type claim struct {
	By  string `json:"by"`
	Gen string `json:"g"`
}

// attempt is a reap's write to a uid's key (at revision rev) whose outcome
// the reaper has not read back yet, or a trace it reported but has not
// removed yet.
type attempt struct {
	uid      uint64
	tr       trace
	rev      uint64
	reported bool
}

func attemptKey(t trace, uid uint64) string { return t.Gen + "/" + t.Node + "/" + uidStr(uid) }

// uidState is a uid's key: its record (nil: offline), the reaps pending in
// it, and its revision (0: never written).
type uidState struct {
	rec     *record
	pending []trace
	rev     uint64
}

func (st uidState) traced(t trace) bool {
	return slices.ContainsFunc(st.pending, t.same)
}

// msgGetResponse is JetStream's answer to STREAM.MSG.GET.
type msgGetResponse struct {
	Error   *jetstream.APIError `json:"error,omitempty"`
	Message *struct {
		Seq    uint64 `json:"seq"`
		Header []byte `json:"hdrs,omitempty"`
		Data   []byte `json:"data,omitempty"`
	} `json:"message,omitempty"`
}

// errMsgNotFound is JetStream's "no message found".
const errMsgNotFound jetstream.ErrorCode = 10037

func (b *Broker) kvSubject(key string) string { return "$KV." + b.opt.Bucket + "." + key }

// readUid reads uid's key, a delete marker included. From any replica (a
// direct get, as KV reads are), or with leader from the stream's leader, so
// that what the reaper reads back is not older than what it wrote.
func (b *Broker) readUid(ctx context.Context, uid uint64, leader bool) (uidState, error) {
	subj := b.kvSubject("u." + uidStr(uid))
	stream := "KV_" + b.opt.Bucket
	var (
		seq  uint64
		hdr  nats.Header
		data []byte
	)
	if leader {
		req, _ := json.Marshal(map[string]string{"last_by_subj": subj})
		m, err := b.nc.RequestWithContext(ctx, jetstream.DefaultAPIPrefix+"STREAM.MSG.GET."+stream, req)
		if err != nil {
			return uidState{}, err
		}
		var r msgGetResponse
		if err := json.Unmarshal(m.Data, &r); err != nil {
			return uidState{}, err
		}
		switch {
		case r.Error != nil && r.Error.ErrorCode == errMsgNotFound:
			return uidState{}, nil
		case r.Error != nil:
			return uidState{}, r.Error
		case r.Message == nil:
			return uidState{}, jetstream.ErrInvalidJetStreamResponse
		}
		seq, data = r.Message.Seq, r.Message.Data
		if len(r.Message.Header) > 0 {
			var err error
			if hdr, err = nats.DecodeHeadersMsg(r.Message.Header); err != nil {
				return uidState{}, err
			}
		}
	} else {
		m, err := b.nc.RequestWithContext(ctx, jetstream.DefaultAPIPrefix+"DIRECT.GET."+stream+"."+subj, nil)
		if err != nil {
			return uidState{}, err
		}
		switch s := status(m); s {
		case "":
		case "404":
			return uidState{}, nil
		default:
			return uidState{}, errors.New("natsbroker: direct get: " + s + " " + m.Header.Get("Description"))
		}
		if seq, err = strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64); err != nil {
			return uidState{}, errors.New("natsbroker: direct get: answer without sequence")
		}
		hdr, data = m.Header, m.Data
	}
	st := uidState{rev: seq}
	r := new(record)
	if len(data) > 0 {
		if err := json.Unmarshal(data, r); err != nil {
			return uidState{}, err
		}
	}
	st.pending, r.Pending = r.Pending, nil
	if op := hdr.Get(kvOperation); op == "" {
		st.rec = r
	}
	return st, nil
}

const kvOperation = "KV-Operation"

// writeUid writes uid's record (nil: offline) with the pending traces,
// provided its key is still at revision rev.
func (b *Broker) writeUid(ctx context.Context, uid uint64, r *record, pending []trace, rev uint64) error {
	kv, _ := b.buckets()
	key := "u." + uidStr(uid)
	if r != nil {
		r.Pending = pending
		data, _ := json.Marshal(r)
		r.Pending = nil
		_, err := kv.Update(ctx, key, data, rev)
		return err
	}
	if len(pending) == 0 {
		return b.remove(ctx, kv, key, jetstream.LastRevision(rev))
	}
	// A delete marker whose body keeps the traces.
	data, _ := json.Marshal(record{Pending: pending})
	m := nats.NewMsg(b.kvSubject(key))
	m.Header.Set(kvOperation, "DEL")
	m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(rev, 10))
	m.Data = data
	_, err := b.js.PublishMsg(ctx, m)
	return err
}

// Heartbeat refreshes the node's liveness key, settles the reaps its
// earlier heartbeats left unfinished, and reaps dead nodes (see Reaping
// above). After a server restart that lost the buckets it creates them
// again and reports lost. A node whose own liveness key had expired reaps
// nobody in that heartbeat.
func (b *Broker) Heartbeat(reap bool) (gone []uint64, lost, reaped bool, err error) {
	if !b.connected() {
		return nil, false, false, errDisconnected
	}
	ctx, cancel := b.ctx()
	defer cancel()
	kv, alive := b.buckets()
	switch _, err := alive.Get(ctx, b.opt.NodeID); {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		lost = true
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		// A slow server is no sign of a lost record.
		return nil, false, false, err
	}
	// Another failure (the bucket gone with a restarted server): the Put
	// finds out.
	if _, err := alive.Put(ctx, b.opt.NodeID, nil); err != nil {
		if err := b.ensureBuckets(ctx); err != nil {
			return nil, false, false, err
		}
		kv, alive = b.buckets()
		if _, err := alive.Put(ctx, b.opt.NodeID, nil); err != nil {
			return nil, false, false, err
		}
		lost = true
	}
	if lost {
		if _, err := kv.Put(ctx, "node."+b.opt.NodeID, nil); err != nil {
			return nil, lost, false, err
		}
		// Reaped by another node, whose claim is the mark.
		if _, err := kv.Get(ctx, "reaped."+b.opt.NodeID); err == nil {
			reaped = true
			kv.Delete(ctx, "reaped."+b.opt.NodeID)
		}
	}
	if !b.reapMu.TryLock() {
		return nil, lost, reaped, nil // another heartbeat is reaping
	}
	defer b.reapMu.Unlock()
	gone, err = b.settle(ctx)
	if err != nil || !reap || lost {
		return gone, lost, reaped, err
	}
	nodes, err := b.keys(ctx, kv, "node.*")
	if err != nil {
		return gone, lost, reaped, err
	}
	// A long reap goes on in the next heartbeats, so that this node's own
	// liveness key is refreshed in time.
	budget := time.Now().Add(b.HeartbeatInterval() / 2)
	for _, k := range nodes {
		node := strings.TrimPrefix(k, "node.")
		if node == b.opt.NodeID {
			continue
		}
		if _, err := alive.Get(ctx, node); !errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // alive, or unknown: reap only what is surely dead
		}
		g, err := b.reapNode(ctx, node, budget)
		gone = append(gone, g...)
		if err != nil || time.Now().After(budget) {
			return gone, lost, reaped, err
		}
	}
	return gone, lost, reaped, nil
}

// reapNode claims the dead node and takes its uids offline, returning
// those that thereby went offline everywhere. Past budget it stops, and
// a later heartbeat goes on.
func (b *Broker) reapNode(ctx context.Context, node string, budget time.Time) (gone []uint64, err error) {
	gen, ok, err := b.claim(ctx, node)
	if err != nil || !ok {
		return nil, err
	}
	kv, _ := b.buckets()
	uids, err := lastUids(b.keys(ctx, kv, "nu."+node+".*"))
	if err != nil {
		return nil, err
	}
	for _, uid := range uids {
		if time.Now().After(budget) {
			return gone, nil
		}
		report, stop, err := b.reapUid(ctx, trace{Node: node, Gen: gen}, uid)
		if report {
			gone = append(gone, uid)
		}
		if err != nil || stop {
			return gone, err
		}
	}
	// Every uid is settled: the node is forgotten (its claim stays, as its
	// mark).
	return gone, kv.Delete(ctx, "node."+node)
}

// claim claims the reap of node for this node: ok with the claim's
// generation, or not ok when another live node holds it.
func (b *Broker) claim(ctx context.Context, node string) (gen string, ok bool, err error) {
	kv, alive := b.buckets()
	key := "reaped." + node
	for {
		e, err := kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			c := claim{By: b.opt.NodeID, Gen: newEpoch()}
			data, _ := json.Marshal(c)
			_, err = kv.Create(ctx, key, data)
			if errors.Is(err, jetstream.ErrKeyExists) || conflict(err) {
				continue
			}
			return c.Gen, err == nil, err
		}
		if err != nil {
			return "", false, err
		}
		var c claim
		json.Unmarshal(e.Value(), &c) // an empty mark: a claim to take over
		if c.By == b.opt.NodeID && c.Gen != "" {
			return c.Gen, true, nil
		}
		if c.By != "" {
			if _, err := alive.Get(ctx, c.By); !errors.Is(err, jetstream.ErrKeyNotFound) {
				return "", false, err // its reaper is alive (or unknown): its reap
			}
		}
		c.By = b.opt.NodeID
		if c.Gen == "" {
			c.Gen = newEpoch()
		}
		data, _ := json.Marshal(c)
		_, err = kv.Update(ctx, key, data, e.Revision())
		if conflict(err) {
			continue
		}
		return c.Gen, err == nil, err
	}
}

// holds reports whether node is still dead and the reap of generation gen
// still this node's.
func (b *Broker) holds(ctx context.Context, node, gen string) (bool, error) {
	kv, alive := b.buckets()
	if _, err := alive.Get(ctx, node); !errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, err
	}
	e, err := kv.Get(ctx, "reaped."+node)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, nil // node came back and took its mark
	}
	if err != nil {
		return false, err
	}
	var c claim
	json.Unmarshal(e.Value(), &c)
	return c.By == b.opt.NodeID && c.Gen == gen, nil
}

// reapUid takes uid offline on the dead node t.Node, in the reap t.Gen.
// report: uid went offline everywhere and is reported now; stop: the node
// is back or the claim lost, so the reap ends here.
func (b *Broker) reapUid(ctx context.Context, t trace, uid uint64) (report, stop bool, err error) {
	id := attemptKey(t, uid)
	for {
		st, err := b.readUid(ctx, uid, true)
		if err != nil {
			return false, false, err
		}
		if a := b.attempts[id]; a != nil || st.traced(t) {
			if a == nil {
				a = &attempt{uid: uid, tr: t}
				b.attempts[id] = a
			}
			report, done, err := b.resolve(ctx, a, st)
			if done || err != nil {
				return report, false, err
			}
			if st.traced(t) {
				continue // the mark conflicted: read again
			}
		}
		if st.rec == nil || !slices.Contains(st.rec.Nodes, t.Node) {
			// Not on the node (any more): nothing of this reap to report.
			return false, false, b.deleteNu(ctx, t.Node, uid)
		}
		if ok, err := b.holds(ctx, t.Node, t.Gen); !ok || err != nil {
			return false, true, err
		}
		r, pending := st.rec.clone(), st.pending
		if r.Nodes = removeAll(r.Nodes, t.Node); len(r.Nodes) == 0 {
			tr := t
			tr.Channels = r.Channels
			r, pending = nil, append(slices.Clone(pending), tr)
		}
		// Remembered before it is sent: its answer may be lost.
		b.attempts[id] = &attempt{uid: uid, tr: t, rev: st.rev}
		err = b.writeUid(ctx, uid, r, pending, st.rev)
		if err != nil && !conflict(err) {
			return false, false, err
		}
		// Read back (a conflict: someone wrote first; read again).
	}
}

// settle reads back the outcome of the attempts earlier heartbeats left:
// it reports the uids they took offline and has not reported yet.
func (b *Broker) settle(ctx context.Context) (gone []uint64, err error) {
	ids := make([]string, 0, len(b.attempts))
	for id := range b.attempts {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		a := b.attempts[id]
		st, err := b.readUid(ctx, a.uid, true)
		if err != nil {
			return gone, err
		}
		report, _, err := b.resolve(ctx, a, st)
		if report {
			gone = append(gone, a.uid)
		}
		if err != nil {
			return gone, err
		}
	}
	return gone, nil
}

// resolve settles attempt a given the uid's key st. When its trace is
// there, unmarked, it marks it reported by this node (compare-and-swap;
// a conflict: done false, read again); marked by this node, it reports
// the uid unless it did already, then removes the trace and the node's
// key of the uid; marked by another node, that node reports it. done says
// that a is settled. An attempt not applied (st still at its revision)
// stays: it may apply yet, and the next heartbeat reads it back again.
func (b *Broker) resolve(ctx context.Context, a *attempt, st uidState) (report, done bool, err error) {
	id := attemptKey(a.tr, a.uid)
	i := slices.IndexFunc(st.pending, a.tr.same)
	if i < 0 {
		if a.rev != 0 && st.rev == a.rev {
			return false, false, nil // not applied yet
		}
		// Applied without taking uid offline everywhere, or superseded: it
		// can no longer apply. Or its trace was reported and removed.
		delete(b.attempts, id)
		return false, false, nil
	}
	switch by := st.pending[i].By; by {
	case "":
		pending := slices.Clone(st.pending)
		pending[i].By = b.opt.NodeID
		err := b.writeUid(ctx, a.uid, st.rec.clone(), pending, st.rev)
		if err != nil {
			if conflict(err) {
				err = nil
			}
			return false, false, err
		}
	case b.opt.NodeID:
	default:
		delete(b.attempts, id)
		return false, true, b.deleteNu(ctx, a.tr.Node, a.uid)
	}
	report = !a.reported
	a.reported = true
	if err := b.unTrace(ctx, a.uid, a.tr); err != nil {
		return report, false, err
	}
	delete(b.attempts, id)
	return report, true, b.deleteNu(ctx, a.tr.Node, a.uid)
}

// unTrace removes trace t from uid's key, and uid from the member index
// of the channels it left then and has not joined again.
func (b *Broker) unTrace(ctx context.Context, uid uint64, t trace) error {
	for {
		st, err := b.readUid(ctx, uid, true)
		if err != nil {
			return err
		}
		i := slices.IndexFunc(st.pending, t.same)
		if i < 0 {
			return nil
		}
		chans := st.pending[i].Channels
		if st.rec != nil {
			chans = removeAll(slices.Clone(chans), st.rec.Channels...)
		}
		if err := b.members(ctx, uid, chans, false); err != nil {
			return err
		}
		pending := slices.Delete(slices.Clone(st.pending), i, i+1)
		err = b.writeUid(ctx, uid, st.rec.clone(), pending, st.rev)
		if !conflict(err) {
			return err
		}
	}
}

// deleteNu deletes nu.NODE.UID unless it was written again since read.
func (b *Broker) deleteNu(ctx context.Context, node string, uid uint64) error {
	kv, _ := b.buckets()
	key := "nu." + node + "." + uidStr(uid)
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	err = b.remove(ctx, kv, key, jetstream.LastRevision(e.Revision()))
	if conflict(err) {
		return nil
	}
	return err
}

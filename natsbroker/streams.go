package natsbroker

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/wuyan94zl/chart"
)

// Streams: the cluster's streams (chart.Streams) live in one JetStream
// stream, Options.Bucket+"_streams", with one subject per chart stream:
// PREFIX.s.NAME, the name in unpadded base64url. Each message is one entry
// and carries its offset and its epoch in the headers Chart-Offset and
// Chart-Epoch, so MaxMsgsPerSubject is Options.StreamSize.
//
// An append publishes the next offset under the epoch of the subject's
// last message, expecting that message to be still the subject's last
// (Nats-Expected-Last-Subject-Sequence): appends from any number of nodes
// are serialised by the server, and a loser reads the last message again
// and retries. A subject with no message (never appended to, every entry
// aged out, purged by Reset, the stream deleted or lost with a
// memory-storage server) starts a new random epoch at offset 1: all the
// entries of a subject share one epoch, and their offsets are consecutive
// in the stream's order.
//
// AppendBatch (Append is a batch of one) makes that cheap:
//
//   - The node caches each subject's tail (sequence, offset, epoch) from
//     the server's answer to its append, so that its next append to the
//     subject needs no read. A stale tail (another node appended since)
//     costs a conflict, a read and a retry. The stream is created with a
//     random first sequence, so that a tail cached before the stream was
//     deleted and created again matches no message of the new one.
//   - The entries of one subject go as one atomic batch (JetStream's
//     AllowAtomicPublish, nats-server 2.12 and later: headers
//     Nats-Batch-Id, -Sequence, -Commit), the first message carrying the
//     expectation: the server stores all of them, consecutively, or none.
//     One entry is one plain publish.
//   - All the subjects of a batch are published at once and answered each
//     on its own, so that a conflict retries only its subject; the tails
//     to read are read at once too (direct gets). A batch thus costs one
//     round trip when its tails are cached, two when some must be read,
//     and a read and a publish more for each round of conflicts.
//   - Only definite refusals are retried (a conflict, an incomplete batch,
//     too many batches in flight, no responders: the stream missing, then
//     created again, or without a leader yet): nothing of them was stored.
//     A publish not answered within Options.Timeout fails with
//     context.DeadlineExceeded, which the hub takes as maybe stored; it is
//     not retried, so no entry is stored twice (hence no Nats-Msg-Id).
//   - With a server that has no atomic batches, or a file stream of one
//     replica (which stages each atomic batch in a file store of its own,
//     far slower), a batch appends one entry per subject per round trip.
//
// Acknowledgements are keys a.NAME.UID of the presence bucket, holding
// "EPOCH OFFSET", updated with compare-and-swap; one of another epoch
// than the stream's counts as none.

var _ chart.Streams = (*Broker)(nil)

const (
	hdrOffset = "Chart-Offset"
	hdrEpoch  = "Chart-Epoch"
	// readBatch is how many messages Read fetches per request.
	readBatch = 256
)

// streamName is the JetStream stream keeping the chart streams.
func (o Options) streamName() string { return o.Bucket + "_streams" }

// DefaultMaxBytes is Options.MaxBytes by default: 256 MiB.
const DefaultMaxBytes = 256 << 20

// streamSubject is a chart stream's subject.
func (b *Broker) streamSubject(stream string) string {
	return b.opt.Prefix + ".s." + token(stream)
}

// ensureStream creates the JetStream stream, or updates its limits. It
// fails when the stream exists with other subjects: another cluster's, on
// the same Bucket with another Prefix. A stream it creates starts at a
// random sequence (see Streams above). It forgets the cached tails.
func (b *Broker) ensureStream(ctx context.Context) error {
	subjects := []string{b.opt.Prefix + ".s.>"}
	cfg := jetstream.StreamConfig{
		Name:               b.opt.streamName(),
		Subjects:           subjects,
		Retention:          jetstream.LimitsPolicy,
		Discard:            jetstream.DiscardOld,
		MaxMsgsPerSubject:  int64(b.opt.StreamSize),
		MaxAge:             b.opt.StreamTTL,
		MaxBytes:           max(b.opt.MaxBytes, -1),
		Storage:            b.opt.storage(),
		Replicas:           b.opt.Replicas,
		AllowDirect:        true,
		AllowAtomicPublish: true,
	}
	var s jetstream.Stream
	for raced := false; ; raced = true {
		cur, err := b.js.Stream(ctx, b.opt.streamName())
		switch {
		case err == nil:
			got := cur.CachedInfo().Config
			if !slices.Equal(got.Subjects, subjects) {
				return fmt.Errorf("natsbroker: stream %s has subjects %q, not %q: clusters sharing a server need different Prefix and Bucket",
					b.opt.streamName(), got.Subjects, subjects)
			}
			cfg.FirstSeq = got.FirstSeq
			s, err = b.js.UpdateStream(ctx, cfg)
		case errors.Is(err, jetstream.ErrStreamNotFound):
			cfg.FirstSeq = firstSeq()
			s, err = b.js.CreateStream(ctx, cfg)
			if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) && !raced {
				continue // another node created it meanwhile
			}
		}
		if err != nil {
			return err
		}
		break
	}
	b.tails.clear()
	b.mu.Lock()
	b.stream = s
	// An atomic batch is staged in memory, but on disk (a file store per
	// batch) for a file stream of one replica: far slower than one message
	// per round trip.
	got := s.CachedInfo().Config
	b.atomicBatch = got.AllowAtomicPublish && (got.Storage == jetstream.MemoryStorage || got.Replicas > 1)
	b.mu.Unlock()
	return nil
}

// firstSeq is the first sequence of a new stream: random, in [2^32, 2^62),
// so that two lives of the stream do not share sequences.
func firstSeq() uint64 {
	var b [8]byte
	rand.Read(b[:])
	return 1<<32 + binary.BigEndian.Uint64(b[:])>>3
}

func (b *Broker) jsStream() jetstream.Stream {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.stream
}

// tail is the last message of a subject; seq 0: none.
type tail struct {
	seq   uint64
	off   uint64
	epoch string
	data  []byte
	at    time.Time // when JetStream stored it
}

// missing reports an error meaning that the JetStream stream is gone.
func missing(err error) bool {
	return errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, jetstream.ErrNoStreamResponse)
}

// entryOf parses a message's offset and epoch.
func entryOf(h nats.Header) (uint64, string, error) {
	off, err := strconv.ParseUint(h.Get(hdrOffset), 10, 64)
	if err != nil || off == 0 {
		return 0, "", errors.New("natsbroker: stream message without offset")
	}
	return off, h.Get(hdrEpoch), nil
}

// last returns the last message of subj; a zero tail when there is none
// or the JetStream stream is missing (gone reports the latter).
func (b *Broker) last(ctx context.Context, subj string) (t tail, gone bool, err error) {
	if !b.connected() {
		return t, false, errDisconnected
	}
	m, err := b.jsStream().GetLastMsgForSubject(ctx, subj)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return t, false, nil
	case missing(err):
		return t, true, nil
	case err != nil:
		return t, false, err
	}
	t.seq, t.data, t.at = m.Sequence, m.Data, m.Time
	t.off, t.epoch, err = entryOf(m.Header)
	return t, false, err
}

func newEpoch() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Read returns the entries above after; see chart.Streams. It reads the
// subject's kept entries from the oldest (at most Options.StreamSize).
func (b *Broker) Read(stream string, after uint64, limit int) ([]chart.StreamEntry, string, bool, uint64, error) {
	ctx, cancel := b.ctx()
	defer cancel()
	subj := b.streamSubject(stream)
	t, _, err := b.last(ctx, subj)
	if err != nil {
		return nil, "", false, 0, err
	}
	if t.seq == 0 {
		return nil, "", after == 0, 0, nil
	}
	if after >= t.off {
		return nil, t.epoch, true, t.off, nil
	}
	from := after + 1
	if limit > 0 && t.off-after > uint64(limit) {
		from = t.off - uint64(limit) + 1
	}
	if from == t.off {
		// The newest alone (after it, or cut to it by limit): the tail
		// read it already.
		return []chart.StreamEntry{{Offset: t.off, Data: t.data, Time: t.at}}, t.epoch, from == after+1, t.off, nil
	}
	entries, first, err := b.scan(ctx, subj, t, from)
	if err != nil {
		return nil, "", false, 0, err
	}
	complete := from == after+1 && first != 0 && first <= from
	return entries, t.epoch, complete, t.off, nil
}

// scan reads subj's messages up to t with offsets from from on, through
// an ephemeral consumer; first is the oldest offset kept (0: t is gone).
func (b *Broker) scan(ctx context.Context, subj string, t tail, from uint64) (entries []chart.StreamEntry, first uint64, err error) {
	s := b.jsStream()
	c, err := s.CreateConsumer(ctx, jetstream.ConsumerConfig{
		FilterSubject:     subj,
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		AckPolicy:         jetstream.AckNonePolicy,
		MemoryStorage:     true,
		Replicas:          1,
		InactiveThreshold: 2 * b.opt.Timeout,
	})
	if err != nil {
		return nil, 0, err
	}
	defer func() {
		dctx, cancel := b.ctx()
		s.DeleteConsumer(dctx, c.CachedInfo().Name)
		cancel()
	}()
	for {
		batch, err := c.FetchNoWait(readBatch)
		if err != nil {
			return nil, 0, err
		}
		n := 0
		for m := range batch.Messages() {
			n++
			md, err := m.Metadata()
			if err != nil {
				return nil, 0, err
			}
			if md.Sequence.Stream > t.seq {
				continue // appended since: not part of this read
			}
			off, epoch, err := entryOf(m.Headers())
			if err != nil {
				return nil, 0, err
			}
			if epoch != t.epoch {
				continue // cannot happen: a subject's entries share its epoch
			}
			if first == 0 {
				first = off
			}
			if off >= from {
				entries = append(entries, chart.StreamEntry{Offset: off, Data: m.Data(), Time: md.Timestamp})
			}
			if md.Sequence.Stream == t.seq {
				return entries, first, nil
			}
		}
		err = batch.Error()
		if err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, nats.ErrNoResponders) {
			return nil, 0, err
		}
		if n > 0 && err == nil {
			continue
		}
		// Nothing more before t: t aged out meanwhile, or the consumer
		// is on a replica (of a replicated stream) that has not got it
		// yet, or is not ready (no responders).
		if kept, err := b.kept(ctx, t.seq); err != nil || !kept {
			return entries, first, err
		}
		if err := pause(ctx, 5*time.Millisecond); err != nil {
			return nil, 0, err
		}
	}
}

// kept reports whether the stream still has the message at seq, as its
// leader sees it.
func (b *Broker) kept(ctx context.Context, seq uint64) (bool, error) {
	req, _ := json.Marshal(struct {
		Seq uint64 `json:"seq"`
	}{seq})
	m, err := b.nc.RequestWithContext(ctx, jetstream.DefaultAPIPrefix+"STREAM.MSG.GET."+b.opt.streamName(), req)
	if err != nil {
		return false, err
	}
	var resp struct {
		Error *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(m.Data, &resp); err != nil {
		return false, err
	}
	switch {
	case resp.Error == nil:
		return true, nil
	case resp.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound:
		return false, nil
	}
	return false, resp.Error
}

// pause waits for d, or returns ctx's error.
func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func (b *Broker) ackKey(stream string, uid uint64) string {
	return "a." + token(stream) + "." + uidStr(uid)
}

// parseAck parses an acknowledgement's value, "EPOCH OFFSET".
func parseAck(v []byte) (epoch string, off uint64) {
	e, o, _ := strings.Cut(string(v), " ")
	off, _ = strconv.ParseUint(o, 10, 64)
	return e, off
}

// AckBatch records every acknowledgement as Ack does, up to batchParallel
// at once (each is a read of the stream's tail and a compare-and-set of
// the key), and returns the first error.
func (b *Broker) AckBatch(acks []chart.StreamAck) error {
	return parallel(len(acks), func(i int) error {
		a := acks[i]
		return b.Ack(a.Stream, a.Uid, a.Epoch, a.Offset)
	})
}

// Ack records that uid has received stream up to offset, when epoch is the
// stream's ("": whatever it is), offset is within it, and above what uid
// acknowledged.
func (b *Broker) Ack(stream string, uid uint64, epoch string, offset uint64) error {
	if !validStream(stream) {
		return errors.New("natsbroker: bad stream name " + strconv.Quote(stream))
	}
	ctx, cancel := b.ctx()
	defer cancel()
	t, _, err := b.last(ctx, b.streamSubject(stream))
	if err != nil || t.seq == 0 || (epoch != "" && epoch != t.epoch) || offset > t.off || offset == 0 {
		return err
	}
	kv, _ := b.buckets()
	key := b.ackKey(stream, uid)
	val := []byte(t.epoch + " " + strconv.FormatUint(offset, 10))
	for {
		e, err := kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			_, err = kv.Create(ctx, key, val)
			if errors.Is(err, jetstream.ErrKeyExists) {
				continue
			}
		case err != nil:
			return err
		default:
			if ep, off := parseAck(e.Value()); ep == t.epoch && off >= offset {
				return nil
			}
			_, err = kv.Update(ctx, key, val, e.Revision())
		}
		if conflict(err) {
			continue
		}
		return err
	}
}

// Acked returns the offset uid acknowledged in stream and the stream's
// epoch (0 and "" when the stream has no entry).
func (b *Broker) Acked(stream string, uid uint64) (uint64, string, error) {
	ctx, cancel := b.ctx()
	defer cancel()
	t, _, err := b.last(ctx, b.streamSubject(stream))
	if err != nil || t.seq == 0 {
		return 0, "", err
	}
	kv, _ := b.buckets()
	e, err := kv.Get(ctx, b.ackKey(stream, uid))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, t.epoch, nil
	}
	if err != nil {
		return 0, "", err
	}
	if ep, off := parseAck(e.Value()); ep == t.epoch {
		return off, t.epoch, nil
	}
	return 0, t.epoch, nil
}

// Reset purges the stream's subject: its next Append starts a new epoch
// (acknowledgements of the old one then count for nothing).
func (b *Broker) Reset(stream string) error {
	ctx, cancel := b.ctx()
	defer cancel()
	st, err := b.js.Stream(ctx, b.opt.streamName())
	if err != nil {
		return err
	}
	subj := b.streamSubject(stream)
	err = st.Purge(ctx, jetstream.WithPurgeSubject(subj))
	b.tails.drop(subj)
	return err
}

// idTTL is how long a client's message id is remembered (chart.Streams).
const idTTL = 2 * time.Minute

func (b *Broker) idBucket() jetstream.KeyValue {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ids
}

func idKey(uid uint64, id string) string { return uidStr(uid) + "." + token(id) }

// Claim records uid's message id for the cluster: a KV create, which
// fails when the key exists.
func (b *Broker) Claim(uid uint64, id string) (fresh, done bool, offset uint64, epoch string, err error) {
	ctx, cancel := b.ctx()
	defer cancel()
	kv := b.idBucket()
	if _, err := kv.Create(ctx, idKey(uid, id), []byte("p")); err == nil {
		return true, false, 0, "", nil
	} else if !errors.Is(err, jetstream.ErrKeyExists) {
		return false, false, 0, "", err
	}
	e, err := kv.Get(ctx, idKey(uid, id))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return true, false, 0, "", nil // expired between the two calls
	}
	if err != nil {
		return false, false, 0, "", err
	}
	// "p" while being sent, "d:OFFSET:EPOCH" once settled.
	parts := strings.SplitN(string(e.Value()), ":", 3)
	if len(parts) != 3 || parts[0] != "d" {
		return false, false, 0, "", nil
	}
	off, _ := strconv.ParseUint(parts[1], 10, 64)
	return false, true, off, parts[2], nil
}

// Settle records how a claimed send ended, or forgets a refused one.
func (b *Broker) Settle(uid uint64, id string, ok bool, offset uint64, epoch string) error {
	ctx, cancel := b.ctx()
	defer cancel()
	kv := b.idBucket()
	if !ok {
		return kv.Delete(ctx, idKey(uid, id))
	}
	_, err := kv.Put(ctx, idKey(uid, id), []byte("d:"+strconv.FormatUint(offset, 10)+":"+epoch))
	return err
}

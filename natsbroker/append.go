package natsbroker

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/wuyan94zl/chart"
)

// Appending: see the design at the top of streams.go.

var _ chart.BatchStreams = (*Broker)(nil)

// errClosed fails the appends made after Close.
var errClosed = errors.New("natsbroker: broker closed")

const (
	// maxTails bounds the cached tails; past it an arbitrary one goes.
	maxTails = 1 << 15
	// maxAtomic is how many messages an atomic batch holds at most: the
	// server's default limit (a server configured lower makes it halve).
	maxAtomic = 1000

	hdrBatchID     = "Nats-Batch-Id"
	hdrBatchSeq    = "Nats-Batch-Sequence"
	hdrBatchCommit = "Nats-Batch-Commit"

	// JetStream error codes (nats-server's jetstream_errors_generated.go).
	errAtomicDisabled   jetstream.ErrorCode = 10174
	errAtomicIncomplete jetstream.ErrorCode = 10176
	errAtomicTooLarge   jetstream.ErrorCode = 10199
	errAtomicInflight   jetstream.ErrorCode = 10210
)

// tails caches subjects' tails (without their data), as this node last
// appended or read them.
type tails struct {
	mu sync.Mutex
	m  map[string]tail
}

func (c *tails) get(subj string) (tail, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.m[subj]
	return t, ok
}

func (c *tails) put(subj string, t tail) {
	t.data = nil
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[string]tail)
	}
	if _, ok := c.m[subj]; !ok && len(c.m) >= maxTails {
		for k := range c.m {
			delete(c.m, k)
			break
		}
	}
	c.m[subj] = t
}

func (c *tails) drop(subj string) {
	c.mu.Lock()
	delete(c.m, subj)
	c.mu.Unlock()
}

func (c *tails) clear() {
	c.mu.Lock()
	clear(c.m)
	c.mu.Unlock()
}

// run is the entries of one subject in a batch.
type run struct {
	subj  string
	items []int // indexes in the batch, in order
	done  int   // items appended
	t     tail  // the subject's tail, as far as known
	known bool  // t is known
	err   error // the run failed: items[done:] fail with err

	// The publish in flight: n items from done on, at offsets from off.
	n       int
	off     uint64
	epoch   string
	waiting bool
}

func (r *run) open() bool { return r.err == nil && r.done < len(r.items) }

// Append adds data to the stream: a batch of one (see Streams in
// streams.go).
func (b *Broker) Append(stream string, data []byte) (uint64, string, error) {
	batch := []chart.StreamAppend{{Stream: stream, Data: data}}
	b.AppendBatch(batch)
	return batch[0].Offset, batch[0].Epoch, batch[0].Err
}

// AppendBatch appends each entry to its stream and sets its offset and
// epoch, or its error; see chart.BatchStreams, and Streams in streams.go
// for how. An entry whose stream is not named "c:..." or "u:..." fails
// alone. It does not keep the entries' data.
func (b *Broker) AppendBatch(batch []chart.StreamAppend) {
	if len(batch) == 0 {
		return
	}
	ctx, cancel := b.plainCtx()
	defer cancel()
	var runs []*run
	bySubj := make(map[string]*run)
	for i := range batch {
		batch[i].Offset, batch[i].Epoch, batch[i].Err = 0, "", nil
		if !validStream(batch[i].Stream) {
			batch[i].Err = errors.New("natsbroker: bad stream name " + strconv.Quote(batch[i].Stream))
			continue
		}
		subj := b.streamSubject(batch[i].Stream)
		r := bySubj[subj]
		if r == nil {
			r = &run{subj: subj}
			bySubj[subj] = r
			runs = append(runs, r)
		}
		r.items = append(r.items, i)
	}
	err := b.appendRuns(ctx, batch, runs)
	for _, r := range runs {
		e := r.err
		if e == nil {
			e = err
		}
		for _, i := range r.items[r.done:] {
			batch[i].Err = e
		}
	}
}

// validStream reports whether stream is a chart stream's name: "c:" or
// "u:" and at least one byte more.
func validStream(stream string) bool {
	return len(stream) > 2 && (stream[:2] == "c:" || stream[:2] == "u:")
}

// appendRuns appends the runs in rounds: it reads the tails not known,
// publishes the next entries of every run at once, and retries the runs
// refused for a conflict (their tail is read again) or a busy server. It
// returns an error that fails every run still open.
func (b *Broker) appendRuns(ctx context.Context, batch []chart.StreamAppend, runs []*run) error {
	ensured := false
	for {
		select {
		case <-b.closed:
			return errClosed // its reply subscription is gone
		default:
		}
		if !b.connected() {
			return errDisconnected
		}
		var open, read []*run
		for _, r := range runs {
			if !r.open() {
				continue
			}
			if !r.known {
				r.t, r.known = b.tails.get(r.subj)
			}
			if !r.known {
				read = append(read, r)
			}
			open = append(open, r)
		}
		if len(open) == 0 {
			return nil
		}
		gone := false
		if len(read) > 0 {
			var err error
			if gone, err = b.readTails(ctx, read); err != nil {
				return err
			}
		}
		if !gone {
			progress, busy, g, err := b.publishRuns(ctx, batch, open)
			if err != nil {
				return err
			}
			gone = g
			if busy && !progress {
				// Too many batches in flight on the server: give it a moment.
				if err := pause(ctx, 2*time.Millisecond); err != nil {
					return err
				}
			}
		}
		switch {
		case gone && !ensured:
			// The stream was deleted, or lost with a server restart (its
			// subjects start new epochs), or has no leader yet.
			if err := b.ensureStream(ctx); err != nil {
				return err
			}
			ensured = true
			for _, r := range runs {
				r.known = false
			}
		case gone:
			// It exists: a new stream's leader is not ready yet.
			if err := pause(ctx, 20*time.Millisecond); err != nil {
				return err
			}
		}
	}
}

// directGet is the subject of a direct get of subj's last message.
func (b *Broker) directGet(subj string) string {
	return jetstream.DefaultAPIPrefix + "DIRECT.GET." + b.opt.streamName() + "." + subj
}

// readTails reads the runs' tails at once (direct gets). A run whose read
// fails fails; gone reports that the stream is missing.
func (b *Broker) readTails(ctx context.Context, runs []*run) (gone bool, err error) {
	c := b.replies.calls(len(runs))
	for i, r := range runs {
		if err := b.nc.PublishMsg(&nats.Msg{Subject: b.directGet(r.subj), Reply: c.reply(i)}); err != nil {
			c.forget()
			return false, err
		}
	}
	err = c.wait(ctx, func(i int, m *nats.Msg) {
		r := runs[i]
		t, g, err := tailOf(m)
		switch {
		case g:
			gone = true
		case err != nil:
			r.err = err
		default:
			r.t, r.known = t, true
			b.tails.put(r.subj, t)
		}
	})
	return gone, err
}

// status is the status of an answer without data ("" for a message).
func status(m *nats.Msg) string {
	if len(m.Data) > 0 || m.Header == nil {
		return ""
	}
	return m.Header.Get("Status")
}

// tailOf parses the answer to a direct get of a subject's last message;
// gone: the stream is missing.
func tailOf(m *nats.Msg) (t tail, gone bool, err error) {
	switch s := status(m); s {
	case "":
	case "404":
		return t, false, nil
	case "503":
		return t, true, nil
	default:
		return t, false, errors.New("natsbroker: direct get: " + s + " " + m.Header.Get("Description"))
	}
	if t.seq, err = strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64); err != nil {
		return t, false, errors.New("natsbroker: direct get: answer without sequence")
	}
	t.off, t.epoch, err = entryOf(m.Header)
	return t, false, err
}

// pubAck is the server's answer to a publish (or a batch's commit).
type pubAck struct {
	Error  *jetstream.APIError `json:"error,omitempty"`
	Stream string              `json:"stream"`
	Seq    uint64              `json:"seq"`
}

// ackOf parses the answer to a publish: the sequence of the (last)
// message stored, or why nothing was.
func ackOf(m *nats.Msg) (uint64, error) {
	if status(m) == "503" {
		return 0, nats.ErrNoResponders
	}
	var pa pubAck
	if err := json.Unmarshal(m.Data, &pa); err != nil {
		return 0, jetstream.ErrInvalidJSAck
	}
	if pa.Error != nil {
		return 0, pa.Error
	}
	if pa.Stream == "" || pa.Seq == 0 {
		return 0, jetstream.ErrInvalidJSAck
	}
	return pa.Seq, nil
}

// errCode is the JetStream error code of err (0: none).
func errCode(err error) jetstream.ErrorCode {
	var api *jetstream.APIError
	if errors.As(err, &api) {
		return api.ErrorCode
	}
	return 0
}

// atomicBatches reports whether the stream takes atomic batches, and how
// large.
func (b *Broker) atomicBatches() (bool, int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.atomicBatch, b.maxAtomic
}

// publishRuns publishes the next entries of each run (all of them as one
// atomic batch, or the next one without atomic batches) and waits for the
// answers. progress: some run advanced; busy: some was refused for a busy
// server; gone: the stream is missing. The runs whose publish was refused
// for a conflict forget their tail; those refused otherwise fail. err
// (the timeout) means that the runs not answered may have been stored.
func (b *Broker) publishRuns(ctx context.Context, batch []chart.StreamAppend, runs []*run) (progress, busy, gone bool, err error) {
	batched, most := b.atomicBatches()
	stream := b.opt.streamName()
	c := b.replies.calls(len(runs))
	var sent []*run
	for _, r := range runs {
		if !r.open() || !r.known {
			continue
		}
		r.n = 1
		if batched {
			r.n = min(len(r.items)-r.done, most)
		}
		r.off, r.epoch = r.t.off+1, r.t.epoch
		if r.t.seq == 0 {
			r.off, r.epoch = 1, newEpoch()
		}
		var id string
		if r.n > 1 {
			id = b.batchID()
		}
		reply := c.reply(len(sent))
		for j := 0; j < r.n; j++ {
			m := &nats.Msg{Subject: r.subj, Data: batch[r.items[r.done+j]].Data, Header: nats.Header{
				hdrOffset: {strconv.FormatUint(r.off+uint64(j), 10)},
				hdrEpoch:  {r.epoch},
			}}
			if j == 0 {
				m.Header[jetstream.ExpectedStreamHeader] = []string{stream}
				m.Header[jetstream.ExpectedLastSubjSeqHeader] = []string{strconv.FormatUint(r.t.seq, 10)}
			}
			if r.n > 1 {
				m.Header[hdrBatchID] = []string{id}
				m.Header[hdrBatchSeq] = []string{strconv.Itoa(j + 1)}
			}
			if j == r.n-1 {
				if r.n > 1 {
					m.Header[hdrBatchCommit] = []string{"1"}
				}
				m.Reply = reply
			}
			if err := b.nc.PublishMsg(m); err != nil {
				// Not sent (too large, connection closed): without its
				// commit the server drops what it got of the batch.
				r.err = err
				break
			}
		}
		if r.err != nil {
			c.cancel()
			continue
		}
		r.waiting = true
		sent = append(sent, r)
	}
	err = c.wait(ctx, func(i int, m *nats.Msg) {
		r := sent[i]
		r.waiting = false
		seq, err := ackOf(m)
		switch code := errCode(err); {
		case err == nil:
			for j := 0; j < r.n; j++ {
				a := &batch[r.items[r.done+j]]
				a.Offset, a.Epoch = r.off+uint64(j), r.epoch
			}
			r.done += r.n
			r.t = tail{seq: seq, off: r.off + uint64(r.n) - 1, epoch: r.epoch}
			b.tails.put(r.subj, r.t)
			progress = true
		case missing(err):
			gone = true
		case conflict(err):
			r.known = false
			b.tails.drop(r.subj)
		case code == errAtomicIncomplete || code == errAtomicInflight:
			busy = true
		case code == errAtomicDisabled:
			b.mu.Lock()
			b.atomicBatch = false
			b.mu.Unlock()
		case code == errAtomicTooLarge:
			b.mu.Lock()
			b.maxAtomic = max(1, min(b.maxAtomic, r.n)/2)
			b.mu.Unlock()
		default:
			r.err = err
			b.tails.drop(r.subj)
		}
	})
	if err != nil {
		for _, r := range sent {
			if r.waiting {
				r.waiting = false
				r.err = err // maybe stored: not retried
				b.tails.drop(r.subj)
			}
		}
	}
	return progress, busy, gone, err
}

// batchID names an atomic batch uniquely (the server takes 64 bytes).
func (b *Broker) batchID() string {
	return b.batchPrefix + strconv.FormatUint(b.batches.Add(1), 36)
}

package main

import (
	"cmp"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// fanRing is the number of per-message delivery counters; it must exceed
// the publish window.
const fanRing = 4096

// fanoutSink counts deliveries of fan-out messages. A message is complete
// when all n subscribers have received it; completions drive the
// publisher's window.
type fanoutSink struct {
	n         int32
	ring      [fanRing]atomic.Int32
	completed atomic.Int64
	notify    chan struct{}
	warm      atomic.Int64
	warmDone  chan struct{}
	hist      atomic.Pointer[histogram]
	// callHist, when set, records latency from the publish call rather
	// than from the payload's timestamp: the fixed-rate pacer stamps the
	// scheduled time and puts how late the call was (ns) in the sender
	// field.
	callHist atomic.Pointer[histogram]
}

// onPayload is called from every client's read loop.
func (s *fanoutSink) onPayload(c *client, h payloadHeader, now int64) {
	switch h.kind {
	case kindWarmup:
		if !c.ready.Load() {
			c.ready.Store(true)
			if s.warm.Add(1) == int64(s.n) {
				close(s.warmDone)
			}
		}
	case kindFanout:
		if hist := s.hist.Load(); hist != nil {
			hist.record(c.idx, now-h.ts)
		}
		if hist := s.callHist.Load(); hist != nil {
			hist.record(c.idx, now-h.ts-h.sender)
		}
		if h.seq != c.lastSeq+1 {
			c.gaps.Add(1)
		}
		c.lastSeq = h.seq
		c.recv.Add(1)
		slot := &s.ring[h.seq%fanRing]
		if slot.Add(1) == s.n {
			slot.Store(0)
			s.completed.Add(1)
			select {
			case s.notify <- struct{}{}:
			default:
			}
		}
	}
}

// fanoutResult is one fan-out measurement.
type fanoutResult struct {
	Lib          string  `json:"lib"`
	Subs         int     `json:"subscribers"`
	Size         int     `json:"payload_bytes"`
	Published    int64   `json:"published"`
	Deliveries   int64   `json:"deliveries"`
	Seconds      float64 `json:"seconds"`
	Rate         float64 `json:"deliveries_per_sec"`
	Repeats      int     `json:"repeats"`
	MinRate      float64 `json:"min_deliveries_per_sec"`
	MaxRate      float64 `json:"max_deliveries_per_sec"`
	P50us        float64 `json:"p50_us"`
	P90us        float64 `json:"p90_us"`
	P99us        float64 `json:"p99_us"`
	MaxUs        float64 `json:"max_us"`
	MeanUs       float64 `json:"mean_us"`
	Lost         int64   `json:"lost"`
	SeqErrors    int64   `json:"seq_errors"`
	Disconnected int     `json:"disconnected"`
	ServerCPU    float64 `json:"server_cores"` // every server process (node) together
	BrokerCPU    float64 `json:"broker_cores,omitempty"`
	ClientCPU    float64 `json:"client_cores"`
	OtherCPU     float64 `json:"other_cores"`
	// WritesPerK and ReadsPerK are the server's write(v) and the clients'
	// read system calls per 1,000 deliveries: how well each side batches.
	WritesPerK float64 `json:"server_writes_per_1000_deliveries"`
	ReadsPerK  float64 `json:"client_reads_per_1000_deliveries"`
	Err        string  `json:"error,omitempty"`
	// Hub is chart's accepted-to-written latency (Stats().Delivery) over
	// the same measurement; nil for the other peers.
	Hub *hubStage `json:"hub_stage,omitempty"`
	// The fixed-rate fan-out only: the offered deliveries/s and where that
	// rate comes from, and how late the server's pacer published against
	// its schedule.
	Offered       float64 `json:"offered_deliveries_per_sec,omitempty"`
	OfferedFrom   string  `json:"offered_from,omitempty"`
	PacerLagP50us float64 `json:"pacer_lag_p50_us,omitempty"`
	PacerLagP99us float64 `json:"pacer_lag_p99_us,omitempty"`
	PacerLagMaxUs float64 `json:"pacer_lag_max_us,omitempty"`
	// CallP50us, CallP99us and CallMeanUs are the latency from the actual
	// publish call (the scheduled time plus the pacer's lag) to receive.
	CallP50us  float64 `json:"call_p50_us,omitempty"`
	CallP99us  float64 `json:"call_p99_us,omitempty"`
	CallMeanUs float64 `json:"call_mean_us,omitempty"`
}

// waitNotify waits for a signal on ch or until d passes; it reports whether
// a signal arrived.
func waitNotify(ch <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-t.C:
		return false
	}
}

// warmUp publishes warm-up messages through publish until every client has
// seen one (ready is closed) or 60 s pass. The retry interval is a
// deadline on the wait, not a stand-in for synchronisation.
func warmUp(ready <-chan struct{}, publish func() error) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if err := publish(); err != nil {
			return err
		}
		if waitNotify(ready, 200*time.Millisecond) {
			return nil
		}
	}
	return fmt.Errorf("not every client became ready within 60s")
}

// runFanout measures one peer with subs subscribers for every payload size.
func runFanout(cfg *config, spec *libSpec, subs int) ([]fanoutResult, string) {
	srv, err := startServer(spec.name, wlFanout)
	if err != nil {
		return failFanout(cfg, spec.name, subs, err), ""
	}
	defer srv.stop()
	s := newFanoutSink(subs)
	clients, err := connectAll([]string{srv.addr}, spec, subs, cfg.dialConcurrency, func(int) []string { return []string{"room"} }, s)
	if err != nil {
		return failFanout(cfg, spec.name, subs, err), ""
	}
	defer func() { srv.stop(); closeAll(clients) }()
	return fanoutSizes(cfg, spec.name, single(srv), s, clients)
}

// newFanoutSink returns the sink of a fan-out to subs subscribers.
func newFanoutSink(subs int) *fanoutSink {
	return &fanoutSink{n: int32(subs), notify: make(chan struct{}, 1), warmDone: make(chan struct{})}
}

// failFanout returns a failed result for every payload size.
func failFanout(cfg *config, lib string, subs int, err error) []fanoutResult {
	var results []fanoutResult
	for _, size := range cfg.sizes {
		results = append(results, fanoutResult{Lib: lib, Subs: subs, Size: size, Err: err.Error()})
	}
	return results
}

// fanoutSizes measures the fan-out to the connected clients, all in
// channel "room", for every payload size (cfg.repeat times each, the
// median reported), publishing through the first server of set. It
// returns the results and the CPU profile, if one was taken.
func fanoutSizes(cfg *config, lib string, set serverSet, s *fanoutSink, clients []*client) ([]fanoutResult, string) {
	subs := len(clients)
	pub := set.procs[0]
	if err := warmUp(s.warmDone, func() error { return pub.publish("room", kindWarmup, 0, 1, 16) }); err != nil {
		return failFanout(cfg, lib, subs, err), ""
	}

	var results []fanoutResult
	var profile string
	var seq int64 // last published sequence number
	// An unrecorded warm-up phase lets buffers, stacks and the heap of both
	// processes grow to their working size before anything is measured.
	warm := cfg.fanoutDuration / 2
	if warm > time.Second {
		warm = time.Second
	}
	if r := fanoutPhase(cfg, lib, set, s, clients, &seq, cfg.sizes[0], warm, nil); r.Err != "" {
		logf("fanout %-12s subs=%-6d warm-up phase failed: %s", lib, subs, r.Err)
	}
	for _, size := range cfg.sizes {
		var reps []fanoutResult
		for rep := 0; rep < cfg.repeat; rep++ {
			var prof func()
			if rep == 0 && cfg.pprof && lib == cfg.profileLib && subs == cfg.fanoutSubs[len(cfg.fanoutSubs)-1] && size == cfg.sizes[len(cfg.sizes)-1] {
				prof = func() { profile = captureProfile(cfg, pub, fmt.Sprintf("%s-fanout-%d-%d", lib, subs, size)) }
			}
			r := fanoutPhase(cfg, lib, set, s, clients, &seq, size, cfg.fanoutDuration, prof)
			logf("fanout %-12s subs=%-6d size=%-5d %10.0f deliveries/s  p50=%8.0fus p99=%8.0fus  msgs=%d lost=%d srvCPU=%.2f brokerCPU=%.2f cliCPU=%.2f other=%.2f writes/1k=%.0f reads/1k=%.0f%s %s",
				lib, subs, size, r.Rate, r.P50us, r.P99us, r.Published, r.Lost, r.ServerCPU, r.BrokerCPU, r.ClientCPU, r.OtherCPU, r.WritesPerK, r.ReadsPerK, hubLog(r.Hub), r.Err)
			reps = append(reps, r)
			if r.Disconnected > 0 {
				break
			}
		}
		r := medianFanout(reps)
		results = append(results, r)
		if r.Disconnected > 0 {
			break
		}
	}
	return results, profile
}

// medianFanout returns the repetition with the median delivery rate; lost
// messages, sequence errors and errors of every repetition are carried
// over so that a loss in any repetition is reported.
func medianFanout(reps []fanoutResult) fanoutResult {
	sorted := slices.Clone(reps)
	slices.SortFunc(sorted, func(a, b fanoutResult) int { return cmp.Compare(a.Rate, b.Rate) })
	m := sorted[len(sorted)/2]
	m.Repeats = len(reps)
	m.Lost, m.SeqErrors, m.Err = 0, 0, ""
	var errs []string
	for _, r := range reps {
		m.Lost += r.Lost
		m.SeqErrors += r.SeqErrors
		m.Disconnected = max(m.Disconnected, r.Disconnected)
		m.MinRate, m.MaxRate = minPos(m.MinRate, r.Rate), max(m.MaxRate, r.Rate)
		if r.Err != "" {
			errs = append(errs, r.Err)
		}
	}
	m.Err = strings.Join(errs, "; ")
	return m
}

// minPos returns the smaller of a and b, treating 0 as unset.
func minPos(a, b float64) float64 {
	if a == 0 || (b > 0 && b < a) {
		return b
	}
	return a
}

// fanoutPhase publishes size-byte payloads through the first server of set
// for dur with the window, waits until every message reached every
// subscriber and returns the figures. seq is the last sequence number
// published so far and is advanced. prof, when set, runs concurrently with
// the phase (the CPU profile).
func fanoutPhase(cfg *config, lib string, set serverSet, s *fanoutSink, clients []*client, seq *int64, size int, dur time.Duration, prof func()) fanoutResult {
	r := fanoutResult{Lib: lib, Subs: len(clients), Size: size}
	srv := set.procs[0]
	hist := new(histogram)
	s.hist.Store(hist)
	var recv0, gaps0 int64
	for _, c := range clients {
		recv0 += c.recv.Load()
		gaps0 += c.gaps.Load()
	}
	waitQuiet(cfg)
	var profWG sync.WaitGroup
	if prof != nil {
		profWG.Add(1)
		go func() {
			defer profWG.Done()
			prof()
		}()
	}
	stage := startStage(set)
	cpu := set.startCPU()
	start := time.Now()
	base := *seq
	window := int64(cfg.window)
	for time.Since(start) < dur && r.Err == "" {
		inflight := *seq - s.completed.Load()
		if inflight <= window/2 {
			n := window - inflight
			if err := srv.publish("room", kindFanout, *seq+1, int(n), size); err != nil {
				r.Err = err.Error()
				break
			}
			*seq += n
			continue
		}
		if !waitNotify(s.notify, 10*time.Second) {
			r.Err = "stalled: no message completed within 10s"
		}
	}
	// Drain: wait until every published message reached every client,
	// giving up after 10 s without progress.
	for last := s.completed.Load(); s.completed.Load() < *seq; {
		if !waitNotify(s.notify, 10*time.Second) {
			if now := s.completed.Load(); now == last {
				break
			} else {
				last = now
			}
		}
	}
	elapsed := time.Since(start)
	cpu.stop()
	r.Hub = stage.stop()
	profWG.Wait()
	var recv, gaps int64
	for _, c := range clients {
		recv += c.recv.Load()
		gaps += c.gaps.Load()
		if c.closed() {
			r.Disconnected++
		}
	}
	r.Published = *seq - base
	r.Deliveries = recv - recv0
	r.Lost = r.Published*int64(len(clients)) - r.Deliveries
	r.SeqErrors = gaps - gaps0
	r.Seconds = elapsed.Seconds()
	r.Rate = float64(r.Deliveries) / r.Seconds
	fillLatency(&r, hist)
	r.ServerCPU, r.BrokerCPU, r.ClientCPU, r.OtherCPU = cpu.server, cpu.broker, cpu.clnt, cpu.other
	if r.Deliveries > 0 {
		r.WritesPerK = 1000 * float64(cpu.srvWrites) / float64(r.Deliveries)
		r.ReadsPerK = 1000 * float64(cpu.cliReads) / float64(r.Deliveries)
	}
	if r.Err == "" && (r.Lost != 0 || r.SeqErrors != 0 || r.Disconnected != 0) {
		r.Err = fmt.Sprintf("lost %d, sequence errors %d, disconnected %d", r.Lost, r.SeqErrors, r.Disconnected)
	}
	return r
}

// captureProfile records a CPU profile of the server for most of a fan-out
// phase and returns `go tool pprof -top` output for it.
func captureProfile(cfg *config, srv *serverProc, name string) string {
	return captureProfileFor(cfg, srv, name, int(cfg.fanoutDuration.Seconds())-1)
}

// captureProfileFor records a profile of srv (cfg.profileKind: CPU, or
// the allocations) for secs seconds (at least one), saves it in
// cfg.outDir as name.pprof and returns its `go tool pprof -top` output.
func captureProfileFor(cfg *config, srv *serverProc, name string, secs int) string {
	if secs < 1 {
		secs = 1
	}
	kind, flags := "profile", []string{}
	if cfg.profileKind == "allocs" {
		kind, flags, name = "allocs", []string{"-sample_index=alloc_space"}, name+"-allocs"
	}
	b, err := srv.ctl(fmt.Sprintf("/debug/pprof/%s?seconds=%d", kind, secs))
	if err != nil {
		return "profile failed: " + err.Error()
	}
	if err := os.MkdirAll(cfg.outDir, 0o755); err != nil {
		return err.Error()
	}
	file := filepath.Join(cfg.outDir, name+".pprof")
	if err := os.WriteFile(file, b, 0o644); err != nil {
		return err.Error()
	}
	pprof := func(args ...string) ([]byte, error) {
		args = append(append([]string{"tool", "pprof"}, flags...), append(args, file)...)
		return exec.Command("go", args...).CombinedOutput()
	}
	out, err := pprof("-top", "-nodecount=25")
	if err != nil {
		return fmt.Sprintf("saved %s; go tool pprof failed: %v\n%s", file, err, out)
	}
	cum, _ := pprof("-top", "-cum", "-nodecount=30")
	opts := strings.Join(flags, " ")
	top := fmt.Sprintf("profile: %s (%d s during the phase)\n\n$ go tool pprof %s -top -nodecount=25\n%s\n$ go tool pprof %s -top -cum -nodecount=30\n%s", file, secs, opts, out, opts, cum)
	_ = os.WriteFile(filepath.Join(cfg.outDir, name+".top.txt"), []byte(top), 0o644)
	return top
}

// us converts a duration to microseconds.
func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

package main

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"time"
)

// The fixed-rate fan-out (-workloads fanout-fixed): the fan-out of
// fanout.go at an offered load every peer carries, the same for every
// peer, instead of as fast as each can go. A pacer in the server process
// publishes to one channel at a fixed rate (open loop: no window, nothing
// waits for deliveries), for every subscriber count and payload size; the
// figures to compare are latency and CPU per delivery at equal load.
//
// The rate of a configuration is, unless -fixed-rate sets it,
// -fixed-fraction (0.5) of the slowest peer's saturated deliveries/s in
// the same run's fan-out of the same configuration, or defaultFixedRate
// when the saturated fan-out did not run.

const wlFixed = "fanout-fixed"

// defaultFixedRate is the offered deliveries/s of a configuration that
// no saturated fan-out measured in the run: below half the slowest peer's
// saturated rate in every configuration of the full run on 2 cores
// (centrifuge's 89,589/s at 10,000 subscribers and 1 KiB).
const defaultFixedRate = 40000

// fixedRate returns the offered deliveries/s for subs subscribers and size
// bytes, and where it comes from.
func fixedRate(cfg *config, rep *report, subs, size int) (float64, string) {
	if cfg.fixedRate > 0 {
		return cfg.fixedRate, "-fixed-rate"
	}
	slowest, lib := 0.0, ""
	for _, f := range rep.Fanout {
		if f.Subs == subs && f.Size == size && f.Rate > 0 && (slowest == 0 || f.Rate < slowest) {
			slowest, lib = f.Rate, f.Lib
		}
	}
	if slowest == 0 {
		return defaultFixedRate, "default"
	}
	return slowest * cfg.fixedFraction, fmt.Sprintf("%g × %s", cfg.fixedFraction, lib)
}

// paceResult is what /ctl/pace returns: how many messages it published,
// how many publish calls failed, and how late the pacer was against the
// schedule (the time of the publish call less the scheduled time).
type paceResult struct {
	Published int     `json:"published"`
	Failed    int     `json:"failed"`
	LagP50ns  int64   `json:"lag_p50_ns"`
	LagP99ns  int64   `json:"lag_p99_ns"`
	LagMaxns  int64   `json:"lag_max_ns"`
	Seconds   float64 `json:"seconds"`
}

// handlePaceCtl serves /ctl/pace?ch=C&kind=K&seq=S&n=N&rate=R&size=B:
// publish N payloads with sequence numbers S..S+N-1 to channel C, message
// k scheduled at k/R seconds after the start. A sleeping loop publishes
// every message due when it wakes, each stamped with its scheduled time,
// not the time of the call, so that a late pacer (a busy server, a publish
// call that blocked) shows in the measured latency instead of hiding it;
// how late the call was (ns) goes in the payload's sender field. It
// answers with a paceResult when done.
func handlePaceCtl(mux *http.ServeMux, lib serverLib) {
	mux.HandleFunc("/ctl/pace", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		ch := q.Get("ch")
		kind := byte(kindFanout)
		if k := q.Get("kind"); k != "" {
			kind = k[0]
		}
		seq, _ := strconv.ParseInt(q.Get("seq"), 10, 64)
		n, _ := strconv.Atoi(q.Get("n"))
		size, _ := strconv.Atoi(q.Get("size"))
		rate, _ := strconv.ParseFloat(q.Get("rate"), 64)
		if n <= 0 || rate <= 0 {
			http.Error(w, "n and rate must be positive", http.StatusBadRequest)
			return
		}
		res := paceResult{}
		lags := make([]int64, 0, n)
		start := time.Now().Add(time.Millisecond)
		at := func(k int) time.Time { return start.Add(time.Duration(float64(k) * float64(time.Second) / rate)) }
		for k := 0; k < n; {
			if d := time.Until(at(k)); d > 0 {
				time.Sleep(d)
			}
			for now := time.Now(); k < n; k++ {
				sched := at(k)
				if sched.After(now) {
					break
				}
				lag := max(int64(time.Since(sched)), 0)
				p := appendPayload(nil, kind, seq+int64(k), sched.UnixNano(), lag, size)
				lags = append(lags, lag)
				if err := lib.publish(ch, p); err != nil {
					res.Failed++
				}
				res.Published++
			}
		}
		res.Seconds = time.Since(start).Seconds()
		slices.Sort(lags)
		if len(lags) > 0 {
			res.LagP50ns, res.LagP99ns, res.LagMaxns = lags[len(lags)/2], lags[len(lags)*99/100], lags[len(lags)-1]
		}
		_ = json.NewEncoder(w).Encode(res)
	})
}

// pace asks the server to publish n payloads from seq to ch at rate
// messages per second.
func (s *serverProc) pace(ch string, kind byte, seq int64, n int, rate float64, size int) (paceResult, error) {
	var pr paceResult
	b, err := s.ctl(fmt.Sprintf("/ctl/pace?ch=%s&kind=%c&seq=%d&n=%d&rate=%g&size=%d", ch, kind, seq, n, rate, size))
	if err != nil {
		return pr, err
	}
	err = json.Unmarshal(b, &pr)
	return pr, err
}

// runFixed measures one peer with subs subscribers at the fixed rate of
// every payload size. rep holds the results so far (the saturated
// fan-out's, which set the rates).
func runFixed(cfg *config, spec *libSpec, subs int, rep *report) []fanoutResult {
	fail := func(err error) []fanoutResult {
		var results []fanoutResult
		for _, size := range cfg.sizes {
			rate, src := fixedRate(cfg, rep, subs, size)
			results = append(results, fanoutResult{Lib: spec.name, Subs: subs, Size: size, Offered: rate, OfferedFrom: src, Err: err.Error()})
		}
		logf("fixed  %-12s subs=%-6d error: %v", spec.name, subs, err)
		return results
	}
	srv, err := startServer(spec.name, wlFanout) // the server side is the fan-out's
	if err != nil {
		return fail(err)
	}
	defer srv.stop()
	s := newFanoutSink(subs)
	clients, err := connectAll([]string{srv.addr}, spec, subs, cfg.dialConcurrency, func(int) []string { return []string{"room"} }, s)
	if err != nil {
		return fail(err)
	}
	defer func() { srv.stop(); closeAll(clients) }()
	set := single(srv)
	if err := warmUp(s.warmDone, func() error { return srv.publish("room", kindWarmup, 0, 1, 16) }); err != nil {
		return fail(err)
	}
	var seq int64
	// An unrecorded phase at the first configuration's rate lets buffers,
	// stacks and heaps grow to their working size.
	warm := min(cfg.fixedDuration/2, time.Second)
	rate, _ := fixedRate(cfg, rep, subs, cfg.sizes[0])
	if r := fixedPhase(cfg, spec.name, set, s, clients, &seq, cfg.sizes[0], rate, warm); r.Err != "" {
		logf("fixed  %-12s subs=%-6d warm-up phase failed: %s", spec.name, subs, r.Err)
	}
	var results []fanoutResult
	for _, size := range cfg.sizes {
		rate, src := fixedRate(cfg, rep, subs, size)
		var reps []fanoutResult
		for range cfg.repeat {
			r := fixedPhase(cfg, spec.name, set, s, clients, &seq, size, rate, cfg.fixedDuration)
			r.OfferedFrom = src
			logf("fixed  %-12s subs=%-6d size=%-5d offered %8.0f/s achieved %8.0f/s  p50=%8.0fus p90=%8.0fus p99=%8.0fus max=%8.0fus  msgs=%d lost=%d srvCPU=%.2f (%.2fus/delivery) cliCPU=%.2f other=%.2f pacer lag p99=%.0fus%s %s",
				spec.name, subs, size, r.Offered, r.Rate, r.P50us, r.P90us, r.P99us, r.MaxUs, r.Published, r.Lost, r.ServerCPU, perDelivery(r.ServerCPU, r.Rate), r.ClientCPU, r.OtherCPU, r.PacerLagP99us, hubLog(r.Hub), r.Err)
			reps = append(reps, r)
			if r.Disconnected > 0 {
				break
			}
		}
		r := medianFixed(reps)
		results = append(results, r)
		if r.Disconnected > 0 {
			break
		}
	}
	return results
}

// medianFixed combines the repetitions of a fixed-rate configuration:
// each latency and CPU figure is its median over them (a single phase's
// p99 at a fixed rate moves by 10-20% from run to run), and the losses
// and errors of every repetition are carried over.
func medianFixed(reps []fanoutResult) fanoutResult {
	m := medianFanout(reps) // the rate's median, and every loss and error
	med := func(f func(r fanoutResult) float64) float64 { return medianOf(reps, f) }
	m.P50us = med(func(r fanoutResult) float64 { return r.P50us })
	m.P90us = med(func(r fanoutResult) float64 { return r.P90us })
	m.P99us = med(func(r fanoutResult) float64 { return r.P99us })
	m.MeanUs = med(func(r fanoutResult) float64 { return r.MeanUs })
	m.MaxUs = med(func(r fanoutResult) float64 { return r.MaxUs })
	m.CallP50us = med(func(r fanoutResult) float64 { return r.CallP50us })
	m.CallP99us = med(func(r fanoutResult) float64 { return r.CallP99us })
	m.CallMeanUs = med(func(r fanoutResult) float64 { return r.CallMeanUs })
	m.ServerCPU = med(func(r fanoutResult) float64 { return r.ServerCPU })
	return m
}

// medianOf is the median of f over reps (the upper one of an even count).
func medianOf[T any](reps []T, f func(T) float64) float64 {
	v := make([]float64, len(reps))
	for i, r := range reps {
		v[i] = f(r)
	}
	slices.Sort(v)
	return v[len(v)/2]
}

// hubLog formats a hub stage for a progress line.
func hubLog(h *hubStage) string {
	if h == nil {
		return ""
	}
	return fmt.Sprintf(" hub accepted->written p50=%.0fus p99=%.0fus mean=%.0fus", h.P50us, h.P99us, h.MeanUs)
}

// fixedPhase publishes size-byte payloads through the first server of set
// at rate deliveries per second (rate ÷ subscribers messages per second)
// for dur, waits until every message reached every subscriber (giving up
// after 10 s without progress) and returns the figures. seq is the last
// sequence number published so far and is advanced.
func fixedPhase(cfg *config, lib string, set serverSet, s *fanoutSink, clients []*client, seq *int64, size int, rate float64, dur time.Duration) fanoutResult {
	subs := len(clients)
	r := fanoutResult{Lib: lib, Subs: subs, Size: size, Offered: rate}
	msgRate := rate / float64(subs)
	n := max(int(math.Round(msgRate*dur.Seconds())), 1)
	hist, callHist := new(histogram), new(histogram)
	s.hist.Store(hist)
	s.callHist.Store(callHist)
	defer s.callHist.Store(nil)
	sum := func() (recv, gaps int64) {
		for _, c := range clients {
			recv += c.recv.Load()
			gaps += c.gaps.Load()
		}
		return
	}
	recv0, gaps0 := sum()
	waitQuiet(cfg)
	stage := startStage(set)
	cpu := set.startCPU()
	start := time.Now()
	pr, err := set.procs[0].pace("room", kindFanout, *seq+1, n, msgRate, size)
	if err != nil {
		r.Err = err.Error()
	} else if pr.Failed > 0 {
		r.Err = fmt.Sprintf("%d publish calls failed", pr.Failed)
	}
	*seq += int64(pr.Published)
	// Drain: poll the delivery count until every message reached every
	// subscriber, giving up after 10 s without progress.
	want := recv0 + int64(pr.Published)*int64(subs)
	poll := time.NewTicker(2 * time.Millisecond)
	for last, lastChange := int64(-1), time.Now(); ; <-poll.C {
		recv, _ := sum()
		if recv >= want {
			break
		}
		if recv != last {
			last, lastChange = recv, time.Now()
		} else if time.Since(lastChange) > 10*time.Second {
			break
		}
	}
	poll.Stop()
	elapsed := time.Since(start)
	cpu.stop()
	r.Hub = stage.stop()
	recv, gaps := sum()
	for _, c := range clients {
		if c.closed() {
			r.Disconnected++
		}
	}
	r.Published = int64(pr.Published)
	r.Deliveries = recv - recv0
	r.Lost = r.Published*int64(subs) - r.Deliveries
	r.SeqErrors = gaps - gaps0
	r.Seconds = elapsed.Seconds()
	r.Rate = float64(r.Deliveries) / r.Seconds
	fillLatency(&r, hist)
	_, mean, q := callHist.summary(0.5, 0.99)
	r.CallP50us, r.CallP99us, r.CallMeanUs = us(q[0]), us(q[1]), us(mean)
	r.PacerLagP50us, r.PacerLagP99us, r.PacerLagMaxUs = us(time.Duration(pr.LagP50ns)), us(time.Duration(pr.LagP99ns)), us(time.Duration(pr.LagMaxns))
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

// fillLatency sets the client-measured latency figures of r from hist.
func fillLatency(r *fanoutResult, hist *histogram) {
	_, mean, q := hist.summary(0.5, 0.9, 0.99, 1)
	r.P50us, r.P90us, r.P99us, r.MaxUs, r.MeanUs = us(q[0]), us(q[1]), us(q[2]), us(q[3]), us(mean)
}

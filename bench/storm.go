package main

import (
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// stormSink signals a client when its probe arrives.
type stormSink struct{}

// onPayload is called from every client's read loop.
func (stormSink) onPayload(c *client, h payloadHeader, _ int64) {
	if h.kind == kindProbe {
		select {
		case c.probe <- struct{}{}:
		default:
		}
	}
}

// stormResult is one connect storm and idle memory measurement.
type stormResult struct {
	Lib          string  `json:"lib"`
	Conns        int     `json:"connections"`
	Concurrency  int     `json:"concurrency"`
	Seconds      float64 `json:"seconds"`
	ConnsPerSec  float64 `json:"conns_per_sec"`
	P50us        float64 `json:"ready_p50_us"`
	P99us        float64 `json:"ready_p99_us"`
	Retried      int64   `json:"probes_retried"`
	Failed       int64   `json:"failed"`
	ServerCPU    float64 `json:"server_cores"`
	ClientCPU    float64 `json:"client_cores"`
	OtherCPU     float64 `json:"other_cores"`
	Base         serverStats
	Idle         serverStats
	HeapStackPer float64 `json:"heap_stack_bytes_per_conn"`
	HeapPer      float64 `json:"heap_bytes_per_conn"`
	StackPer     float64 `json:"stack_bytes_per_conn"`
	RSSPer       float64 `json:"rss_bytes_per_conn"`
	GoroutinePer float64 `json:"goroutines_per_conn"`
	SeqP50us     float64 `json:"sequential_ready_p50_us"`
	SeqP99us     float64 `json:"sequential_ready_p99_us"`
	SeqRetried   int64   `json:"sequential_probes_retried"`
	Err          string  `json:"error,omitempty"`
}

// probeInterval is how long a client waits for its probe before asking
// for another one (the connection may not be registered yet).
const probeInterval = time.Millisecond

// runStorm opens cfg.stormConns connections from cfg.stormConcurrency
// workers, each opening its next connection as soon as the previous one is
// ready, then measures the server's memory with all connections idle.
//
// Connect-to-ready of one connection is the time from just before the TCP
// dial until the client has received a probe message that business code in
// the server published, through the peer's API, to that connection's own
// channel "u<uid>". In between the client completes the WebSocket handshake
// and the peer's protocol setup (centrifuge: connect and subscribe replies),
// then asks the server over the HTTP control connection to publish the
// probe; if the probe does not arrive within 1 ms (the connection was not
// registered yet) it asks again, up to 3000 times.
func runStorm(cfg *config, spec *libSpec) stormResult {
	n := cfg.stormConns
	r := stormResult{Lib: spec.name, Conns: n, Concurrency: cfg.stormConcurrency}
	fail := func(err error) stormResult {
		r.Err = err.Error()
		logf("storm  %-12s error: %v", spec.name, err)
		return r
	}
	srv, err := startServer(spec.name, wlStorm)
	if err != nil {
		return fail(err)
	}
	defer srv.stop()
	// Warm the control connections so their setup is not part of a sample.
	if r.Base, err = srv.stats(true); err != nil {
		return fail(err)
	}

	hist := new(histogram)
	clients := make([]*client, n, n+cfg.stormSequential)
	var next, failed, retried atomic.Int64
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	waitQuiet(cfg)
	cpu := startCPU(srv)
	start := time.Now()
	for w := 0; w < cfg.stormConcurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			timer := time.NewTimer(time.Hour)
			defer timer.Stop()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				c, lat, again, err := openReady(srv, spec, i, timer)
				clients[i] = c
				if again {
					retried.Add(1)
				}
				if err != nil {
					failed.Add(1)
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					continue
				}
				hist.record(i, int64(lat))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu.stop()
	defer func() { srv.stop(); closeAll(clients) }()
	r.Seconds = elapsed.Seconds()
	r.ConnsPerSec = float64(n) / r.Seconds
	r.Failed = failed.Load()
	r.Retried = retried.Load()
	_, q := hist.quantiles(0.5, 0.99)
	r.P50us, r.P99us = us(q[0]), us(q[1])
	r.ServerCPU, r.ClientCPU, r.OtherCPU = cpu.server, cpu.clnt, cpu.other
	if firstErr != nil {
		r.Err = fmt.Sprintf("%d failed, first: %v", r.Failed, firstErr)
	}

	// Idle memory: drop the control connections, wait (bounded) until the
	// server has closed them, then measure after GC.
	srv.tr.CloseIdleConnections()
	poll := time.NewTicker(20 * time.Millisecond)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		st, err := srv.stats(false)
		srv.tr.CloseIdleConnections()
		if err != nil || st.HTTPConns <= 1 {
			break
		}
		<-poll.C
	}
	poll.Stop()
	if r.Idle, err = srv.stats(true); err != nil {
		return fail(err)
	}
	live := float64(n - int(r.Failed))
	for _, c := range clients {
		if c != nil && c.closed() {
			live--
		}
	}
	if live > 0 {
		heap := float64(r.Idle.HeapInuse) - float64(r.Base.HeapInuse)
		stack := float64(r.Idle.StackInuse) - float64(r.Base.StackInuse)
		r.HeapPer = heap / live
		r.StackPer = stack / live
		r.HeapStackPer = (heap + stack) / live
		r.RSSPer = (float64(r.Idle.RSS) - float64(r.Base.RSS)) / live
		r.GoroutinePer = float64(r.Idle.Goroutines-r.Base.Goroutines) / live
	}
	// Unloaded connect-to-ready: one connection at a time, with the idle
	// connections still open.
	if cfg.stormSequential > 0 {
		seqHist := new(histogram)
		timer := time.NewTimer(time.Hour)
		for j := 0; j < cfg.stormSequential; j++ {
			c, lat, again, err := openReady(srv, spec, n+j, timer)
			if c != nil {
				clients = append(clients, c)
			}
			if again {
				r.SeqRetried++
			}
			if err != nil {
				r.Err = fmt.Sprintf("sequential connect: %v", err)
				break
			}
			seqHist.record(j, int64(lat))
		}
		timer.Stop()
		_, q := seqHist.quantiles(0.5, 0.99)
		r.SeqP50us, r.SeqP99us = us(q[0]), us(q[1])
	}
	logf("storm  %-12s conns=%d conc=%d %8.0f conns/s  ready p50=%7.0fus p99=%7.0fus retried=%d failed=%d | one at a time: p50=%5.0fus p99=%5.0fus | idle/conn: heap+stack=%.0f B rss=%.0f B goroutines=%.2f %s",
		spec.name, n, cfg.stormConcurrency, r.ConnsPerSec, r.P50us, r.P99us, r.Retried, r.Failed, r.SeqP50us, r.SeqP99us, r.HeapStackPer, r.RSSPer, r.GoroutinePer, r.Err)
	return r
}

// openReady opens connection i and waits until its probe arrives; see
// runStorm for the definition. again reports whether more than one probe
// was needed. timer is the caller's reusable timer; with Go 1.23+ timer
// semantics Stop and Reset need no draining.
func openReady(srv *serverProc, spec *libSpec, i int, timer *time.Timer) (c *client, lat time.Duration, again bool, err error) {
	uid := int64(i) + 1
	ch := "u" + strconv.FormatInt(uid, 10)
	t0 := time.Now()
	c, err = connectClient(srv.addr, spec, i, uid, []string{ch}, stormSink{})
	if err != nil {
		return nil, 0, false, err
	}
	for try := 0; try < 3000; try++ {
		if try == 1 {
			again = true
		}
		if err = srv.publish(ch, kindProbe, uid, 1, 16); err != nil {
			return c, 0, again, err
		}
		timer.Reset(probeInterval)
		select {
		case <-c.probe:
			timer.Stop()
			return c, time.Since(t0), again, nil
		case <-c.done:
			timer.Stop()
			return c, 0, again, fmt.Errorf("connection %d closed before its probe arrived", i)
		case <-timer.C:
		}
	}
	return c, 0, again, fmt.Errorf("no probe received on connection %d", i)
}

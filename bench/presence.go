package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The presence workload (chart only: the peers have no presence events).
// One room carries presence events (chart.Config.PresenceChannels). Users
// log in at a fixed rate until presenceUsers are in, then presenceChurn of
// them drop their connections at once and reconnect at once, as after a
// node restart. Meanwhile business code publishes a timestamped message to
// the room every 100 ms: its publish-to-deliver latency shows what the
// presence frames cost the room's ordinary traffic. Every member's view is
// kept (from its member list and the join and leave frames after it) and
// compared, once things are quiet, with who is connected.

const wlPresence = "presence"

// viewSample: one client in viewSample keeps (and checks) its view; the
// others count their frames. Decoding every member's frames would make the
// driver, not the server, the slow reader.
const viewSample = 100

// presenceSink counts presence frames and keeps the sampled clients' views.
type presenceSink struct {
	hist   *histogram
	frames atomic.Int64 // presence frames received
	bytes  atomic.Int64 // their bytes
	recv   atomic.Int64 // room messages received
	last   atomic.Int64 // unix ns of the last presence frame
	mu     sync.Mutex
	views  map[*client]map[int64]bool
}

func (s *presenceSink) onPayload(c *client, h payloadHeader, now int64) {
	if h.kind == kindFanout {
		s.hist.record(c.idx, now-h.ts)
		s.recv.Add(1)
		// A client gets the room's messages from the one after it joined.
		if last := c.last.Load(); last != 0 && h.seq != last+1 {
			c.gaps.Add(1)
		}
		c.last.Store(h.seq)
	}
}

// presenceFrame is a chart presence frame.
type presenceFrame struct {
	Presence string  `json:"presence"`
	Channel  string  `json:"channel_id"`
	Uids     []int64 `json:"user_ids"`
	More     bool    `json:"more"`
}

// onMessage sees every message a client reads: presence frames update its
// view.
func (s *presenceSink) onMessage(c *client, msg []byte, now int64) {
	if !bytes.HasPrefix(msg, []byte(`{"presence"`)) {
		return
	}
	s.frames.Add(1)
	s.bytes.Add(int64(len(msg)))
	s.last.Store(now)
	if c.idx%viewSample != 0 {
		return // the driver shares the machine: it checks a sample of the views
	}
	var f presenceFrame
	if json.Unmarshal(msg, &f) != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.views[c]
	switch f.Presence {
	case "members":
		if v == nil || !c.paging {
			v = make(map[int64]bool)
			s.views[c] = v
		}
		c.paging = f.More
		for _, u := range f.Uids {
			v[u] = true
		}
	case "join":
		for _, u := range f.Uids {
			if v != nil {
				v[u] = true
			}
		}
	case "leave":
		for _, u := range f.Uids {
			if v != nil {
				delete(v, u)
			}
		}
	case "end":
		delete(s.views, c)
	}
}

// presenceResult is one presence measurement.
type presenceResult struct {
	Lib          string  `json:"lib"`
	Users        int     `json:"users"`
	LoginRate    float64 `json:"logins_per_sec"`
	Churn        int     `json:"reconnected"`
	Seconds      float64 `json:"seconds"`
	Frames       int64   `json:"presence_frames"`
	FrameBytes   int64   `json:"presence_bytes"`
	FramesPerMem float64 `json:"presence_frames_per_member"`
	Published    int64   `json:"room_messages"`
	Delivered    int64   `json:"room_deliveries"`
	Lost         int64   `json:"room_lost"`
	P50us        float64 `json:"room_p50_us"`
	P99us        float64 `json:"room_p99_us"`
	Disconnected int     `json:"disconnected"`
	WrongViews   int     `json:"wrong_views"`
	ServerCPU    float64 `json:"server_cores"`
	ClientCPU    float64 `json:"client_cores"`
	OtherCPU     float64 `json:"other_cores"`
	Err          string  `json:"error,omitempty"`
}

// runPresence runs the presence workload on chart.
func runPresence(cfg *config, spec *libSpec) (presenceResult, bool) {
	r := presenceResult{Lib: spec.name, Users: cfg.presenceUsers, LoginRate: cfg.presenceRate, Churn: cfg.presenceChurn}
	if spec.name != "chart" {
		return r, false
	}
	fail := func(err error) (presenceResult, bool) {
		r.Err = err.Error()
		logf("presence %-10s error: %v", spec.name, err)
		return r, true
	}
	srv, err := startServer(spec.name, wlPresence)
	if err != nil {
		return fail(err)
	}
	defer srv.stop()
	s := &presenceSink{hist: new(histogram), views: make(map[*client]map[int64]bool)}
	n := cfg.presenceUsers
	clients := make([]*client, n)
	defer func() { closeAll(clients) }()
	chans := []string{"room"}
	addr := srv.addr

	waitQuiet(cfg)
	cpu := startCPU(srv)
	start := time.Now()
	stop := make(chan struct{})
	var published atomic.Int64
	var pubErr atomic.Value
	pubDone := make(chan struct{})
	go func() { // the room's ordinary traffic
		defer close(pubDone)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			seq := published.Add(1)
			if err := srv.publish("room", kindFanout, seq, 1, 100); err != nil {
				pubErr.Store(err)
				return
			}
		}
	}()

	// Logins at the rate, each on its own goroutine so that a slow
	// handshake does not hold the pace.
	var wg sync.WaitGroup
	var failed atomic.Int64
	var firstErr atomic.Value
	connect := func(i int) { // user i's connection, on its own goroutine
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := connectClient(addr, spec, i, int64(i)+1, chans, s)
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err)
				return
			}
			clients[i] = c
		}()
	}
	every := time.Duration(float64(time.Second) / cfg.presenceRate)
	pace := time.NewTicker(every)
	for i := 0; i < n; i++ {
		<-pace.C
		connect(i)
	}
	pace.Stop()
	wg.Wait()
	if failed.Load() > 0 {
		close(stop)
		<-pubDone
		return fail(fmt.Errorf("%d logins failed, first: %v", failed.Load(), firstErr.Load()))
	}
	settle(s)

	// The churn: presenceChurn users drop at once, then reconnect at once.
	churn := clients[:min(cfg.presenceChurn, n)]
	for _, c := range churn {
		c.ws.Close()
	}
	for i, c := range churn {
		<-c.done
		s.mu.Lock()
		delete(s.views, c)
		s.mu.Unlock()
		churn[i] = nil
	}
	for i := range churn {
		connect(i)
	}
	wg.Wait()
	settle(s)
	close(stop)
	<-pubDone
	// The last room message reaches everyone, then the figures. (The
	// reconnected miss what was published while they were away: their
	// count starts again.)
	want := published.Load()
	stayed := clients[len(churn):]
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && slices.ContainsFunc(stayed, func(c *client) bool { return c.last.Load() < want && !c.closed() }) {
		time.Sleep(10 * time.Millisecond) // polling counters of other goroutines' reads
	}
	for _, c := range clients {
		if c != nil {
			r.Lost += c.gaps.Load() + want - c.last.Load()
		}
	}
	elapsed := time.Since(start)
	cpu.stop()
	if v := pubErr.Load(); v != nil {
		r.Err = fmt.Sprint(v)
	}
	if failed.Load() > 0 {
		r.Err = fmt.Sprintf("%d reconnections failed, first: %v", failed.Load(), firstErr.Load())
	}
	r.Seconds = elapsed.Seconds()
	r.Frames, r.FrameBytes = s.frames.Load(), s.bytes.Load()
	r.FramesPerMem = float64(r.Frames) / float64(n+len(churn))
	r.Published, r.Delivered = want, s.recv.Load()
	_, q := s.hist.quantiles(0.5, 0.99)
	r.P50us, r.P99us = us(q[0]), us(q[1])
	r.ServerCPU, r.ClientCPU, r.OtherCPU = cpu.server, cpu.clnt, cpu.other
	everyone := make(map[int64]bool, n)
	for _, c := range clients {
		if c != nil && !c.closed() {
			everyone[c.uid] = true
		} else {
			r.Disconnected++
		}
	}
	s.mu.Lock()
	for _, c := range clients {
		if c == nil || c.closed() || c.idx%viewSample != 0 {
			continue
		}
		if v := s.views[c]; len(v) != len(everyone) || !sameKeys(v, everyone) {
			r.WrongViews++
		}
	}
	s.mu.Unlock()
	logf("presence %-10s users=%d logins=%.0f/s churn=%d  presence frames=%d (%.1f per member, %d KiB)  room p50=%.0fus p99=%.0fus delivered=%d lost=%d disconnected=%d wrong views=%d %s",
		spec.name, n, cfg.presenceRate, len(churn), r.Frames, r.FramesPerMem, r.FrameBytes>>10, r.P50us, r.P99us,
		r.Delivered, r.Lost, r.Disconnected, r.WrongViews, r.Err)
	return r, true
}

// settle waits until no presence frame came for a second (at most 30 s).
func settle(s *presenceSink) {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if last := s.last.Load(); last != 0 && time.Since(time.Unix(0, last)) > time.Second {
			return
		}
		time.Sleep(50 * time.Millisecond) // polling: quiet is the absence of an event
	}
}

func sameKeys(a, b map[int64]bool) bool {
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

// presenceMarkdown renders the presence workload's section of the report.
func presenceMarkdown(r *report) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("## Presence\n\n")
	w("chart only (`-workloads presence`; the peers have no presence events). One room carries presence events (`Config{PresenceChannels: room}`, default `PresenceWindow`). Users log in at a fixed rate, each joining the room, until all are in; once no presence frame came for a second, a number of them drop their connections at once and reconnect at once (a node restart). Meanwhile business code publishes a 100-byte message to the room every 100 ms: its publish-to-deliver latency is what presence costs the room's ordinary traffic. One member in %d keeps its view from its member list and the join and leave frames after it (the others count their frames: decoding all of them would make the driver the slow reader); at the end each kept view is compared with the users connected. \"Disconnected\" counts members the server closed (all of them read everything).\n\n", viewSample)
	w("| peer | users | logins/s | reconnected at once | presence frames | per member | presence bytes | room messages | lost | room p50 | room p99 | disconnected | wrong views | server cores | note |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, p := range r.Presence {
		w("| %s | %s | %g | %s | %s | %.1f | %s | %s | %d | %s | %s | %d | %d | %.2f | %s |\n", p.Lib, groupDigits(int64(p.Users)), p.LoginRate, groupDigits(int64(p.Churn)),
			groupDigits(p.Frames), p.FramesPerMem, fmtMem(float64(p.FrameBytes)), groupDigits(p.Published), p.Lost, fmtUs(p.P50us), fmtUs(p.P99us), p.Disconnected, p.WrongViews, p.ServerCPU, p.Err)
	}
	w("\n")
	return b.String()
}

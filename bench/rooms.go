package main

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// roomsSink counts deliveries of room messages and checks, per receiver
// and sender, that sequence numbers arrive without gaps. Connection i has
// uid i+1 and is in room i/group; group is at most roomSize.
type roomsSink struct {
	n        int64
	group    int64
	warm     atomic.Int64
	warmDone chan struct{}
	hist     *histogram
}

// onPayload is called from every client's read loop.
func (s *roomsSink) onPayload(c *client, h payloadHeader, now int64) {
	switch h.kind {
	case kindWarmup:
		if !c.ready.Load() {
			c.ready.Store(true)
			if s.warm.Add(1) == s.n {
				close(s.warmDone)
			}
		}
	case kindRoom:
		s.hist.record(c.idx, now-h.ts)
		if (h.sender-1)/s.group != int64(c.idx)/s.group {
			c.gaps.Add(1) // delivered to the wrong room
			return
		}
		if h.sender == c.uid {
			c.self.Add(1)
		}
		i := (h.sender - 1) % s.group
		if h.seq != c.roomLast[i]+1 {
			c.gaps.Add(1)
		}
		c.roomLast[i] = h.seq
		c.recv.Add(1)
	}
}

// roomsResult is one rooms measurement.
type roomsResult struct {
	Lib          string  `json:"lib"`
	Kind         string  `json:"kind,omitempty"` // "direct": to a partner, not to a room
	Conns        int     `json:"connections"`
	Rooms        int     `json:"rooms"`
	PerUserRate  float64 `json:"msgs_per_user_per_sec"`
	Size         int     `json:"payload_bytes"`
	Sent         int64   `json:"sent"`
	SendRate     float64 `json:"achieved_send_rate"`
	Echo         bool    `json:"sender_receives_own"`
	Expected     int64   `json:"expected_deliveries"`
	Deliveries   int64   `json:"deliveries"`
	Seconds      float64 `json:"seconds"`
	Rate         float64 `json:"deliveries_per_sec"`
	P50us        float64 `json:"p50_us"`
	P99us        float64 `json:"p99_us"`
	MeanUs       float64 `json:"mean_us"`
	Lost         int64   `json:"lost"`
	SeqErrors    int64   `json:"seq_errors"`
	Disconnected int     `json:"disconnected"`
	ServerCPU    float64 `json:"server_cores"` // every server process (node) together
	BrokerCPU    float64 `json:"broker_cores,omitempty"`
	ClientCPU    float64 `json:"client_cores"`
	OtherCPU     float64 `json:"other_cores"`
	Err          string  `json:"error,omitempty"`
	Runs         int     `json:"runs,omitempty"` // repetitions combined (medianRooms)
	// Hub is chart's accepted-to-written latency (Stats().Delivery) over
	// the same measurement; nil for the other peers.
	Hub *hubStage `json:"hub_stage,omitempty"`
	// Read is the client-send-to-server-read latency (readstage.go).
	Read *readStage `json:"read_stage,omitempty"`
	// WritesPerK is the server's write system calls per 1,000 deliveries.
	WritesPerK float64 `json:"server_writes_per_1k"`
}

// runRooms measures one peer with cfg.roomsConns connections in rooms of
// roomSize, every user sending rate messages per second for
// cfg.roomsDuration, cfg.repeat times, each on a fresh server and
// connections; see medianRooms.
func runRooms(cfg *config, spec *libSpec, rate float64) roomsResult {
	var reps []roomsResult
	for range max(cfg.repeat, 1) {
		r := runRoomsOnce(cfg, spec, rate)
		reps = append(reps, r)
		if r.Err != "" {
			break
		}
	}
	return medianRooms(reps)
}

// medianRooms combines the repetitions of a rooms measurement: each
// latency, rate and CPU figure is its median over them (at saturation a
// single run's p50 moves by 2-10x from run to run), the stages are the
// run's with the median p50, and the losses and the first error of any
// repetition are carried over.
func medianRooms(reps []roomsResult) roomsResult {
	med := func(f func(r roomsResult) float64) float64 { return medianOf(reps, f) }
	byP50 := slices.Clone(reps)
	slices.SortStableFunc(byP50, func(a, b roomsResult) int { return cmp.Compare(a.P50us, b.P50us) })
	m := byP50[len(byP50)/2]
	m.P50us = med(func(r roomsResult) float64 { return r.P50us })
	m.P99us = med(func(r roomsResult) float64 { return r.P99us })
	m.MeanUs = med(func(r roomsResult) float64 { return r.MeanUs })
	m.Rate = med(func(r roomsResult) float64 { return r.Rate })
	m.ServerCPU = med(func(r roomsResult) float64 { return r.ServerCPU })
	m.ClientCPU = med(func(r roomsResult) float64 { return r.ClientCPU })
	m.OtherCPU = med(func(r roomsResult) float64 { return r.OtherCPU })
	m.WritesPerK = med(func(r roomsResult) float64 { return r.WritesPerK })
	m.Runs = len(reps)
	for _, r := range reps {
		m.Lost = max(m.Lost, r.Lost)
		m.SeqErrors = max(m.SeqErrors, r.SeqErrors)
		m.Disconnected = max(m.Disconnected, r.Disconnected)
		if m.Err == "" {
			m.Err = r.Err
		}
	}
	return m
}

// runRoomsOnce is one run of runRooms.
func runRoomsOnce(cfg *config, spec *libSpec, rate float64) roomsResult {
	n := cfg.roomsConns
	r := roomsResult{Lib: spec.name, Conns: n, Rooms: n / roomSize, PerUserRate: rate, Size: cfg.roomsSize}
	fail := func(err error) roomsResult {
		r.Err = err.Error()
		logf("rooms  %-12s error: %v", spec.name, err)
		return r
	}
	srv, err := startServer(spec.name, wlRooms)
	if err != nil {
		return fail(err)
	}
	defer srv.stop()
	s := &roomsSink{n: int64(n), group: roomSize, warmDone: make(chan struct{}), hist: new(histogram)}
	room := func(i int) []string { return []string{"room-" + strconv.Itoa(i/roomSize)} }
	clients, err := connectAll([]string{srv.addr}, spec, n, cfg.dialConcurrency, room, s)
	if err != nil {
		return fail(err)
	}
	defer func() { srv.stop(); closeAll(clients) }()
	send := func(c *client, p []byte) error { return c.publish(c.chans[0], p) }
	return roomsPhase(cfg, r, single(srv), clients, s, send)
}

// roomsPhase warms up and measures a rooms workload on connected clients:
// client i is in channel "room-<i/s.group>", and every user sends r.Size-byte
// payloads with send at r.PerUserRate per second for cfg.roomsDuration. r
// names the measurement; the figures are filled in and r is returned.
func roomsPhase(cfg *config, r roomsResult, set serverSet, clients []*client, s *roomsSink, send func(c *client, payload []byte) error) roomsResult {
	n, rate, label := len(clients), r.PerUserRate, r.Lib
	if r.Kind != "" {
		label += " " + r.Kind
	}
	err := warmUp(s.warmDone, func() error {
		_, err := set.procs[0].ctl(fmt.Sprintf("/ctl/publish?ch=room-&kind=%c&rooms=%d&size=16", kindWarmup, r.Rooms))
		return err
	})
	if err != nil {
		r.Err = err.Error()
		logf("rooms  %-12s error: %v", label, err)
		return r
	}

	// Pacer: a 1 ms ticker; at each tick, send every message due by now so
	// that the aggregate rate is exactly n*rate per second. Users are
	// visited with a stride coprime to n so rooms' sends interleave.
	stride := 1
	for _, p := range []int{1009, 997, 991, 983} {
		if n%p != 0 {
			stride = p
			break
		}
	}
	total := float64(n) * rate
	var buf []byte
	var sendErrs int
	waitQuiet(cfg)
	stage := startStage(set)
	readBefore := set.readCounts()
	cpu := set.startCPU()
	start := time.Now()
	var profiled chan struct{}
	if cfg.profileRooms && (r.Kind != "" || r.Lib == cfg.profileLib) {
		profiled = make(chan struct{})
		name := strings.NewReplacer(" ", "-", "/", "-").Replace(fmt.Sprintf("%s-%s-%g", label, r.Kind, rate))
		go func() {
			defer close(profiled)
			top := captureProfileFor(cfg, set.procs[0], name, int(cfg.roomsDuration.Seconds())-1)
			logf("profile: %s", strings.SplitN(top, "\n", 2)[0])
		}()
	}
	ticker := time.NewTicker(time.Millisecond)
	var k int64
	for {
		elapsed := time.Since(start)
		if elapsed >= cfg.roomsDuration {
			break
		}
		due := int64(elapsed.Seconds() * total)
		for ; k < due; k++ {
			c := clients[int(k*int64(stride))%n]
			c.sent++
			buf = appendPayload(buf[:0], kindRoom, c.sent, time.Now().UnixNano(), c.uid, r.Size)
			if err := send(c, buf); err != nil {
				sendErrs++
			}
		}
		<-ticker.C
	}
	ticker.Stop()
	sendTime := time.Since(start)
	if profiled != nil {
		<-profiled
	}
	r.Sent = k
	r.SendRate = float64(k) / sendTime.Seconds()

	// Drain: poll the delivery count until it reaches the expected total,
	// giving up after 10 s without progress or 60 s in all.
	sum := func() (recv, self int64) {
		for _, c := range clients {
			recv += c.recv.Load()
			self += c.self.Load()
		}
		return
	}
	expected := func() int64 {
		_, self := sum()
		fan := s.group - 1
		if self > 0 {
			fan = s.group
		}
		return r.Sent * fan
	}
	poll := time.NewTicker(10 * time.Millisecond)
	lastRecv, lastChange := int64(-1), time.Now()
	for drainEnd := time.Now().Add(60 * time.Second); time.Now().Before(drainEnd); {
		recv, _ := sum()
		if recv >= expected() {
			break
		}
		if recv != lastRecv {
			lastRecv, lastChange = recv, time.Now()
		} else if time.Since(lastChange) > 10*time.Second {
			break
		}
		<-poll.C
	}
	poll.Stop()
	elapsed := time.Since(start)
	cpu.stop()
	r.Hub = stage.stop()
	r.Read = readDiff(readBefore, set.readCounts())

	recv, self := sum()
	r.Echo = self > 0
	r.Expected = expected()
	r.Deliveries = recv
	r.Lost = r.Expected - recv
	for _, c := range clients {
		r.SeqErrors += c.gaps.Load()
		if c.closed() {
			r.Disconnected++
		}
	}
	r.Seconds = elapsed.Seconds()
	r.Rate = float64(recv) / r.Seconds
	_, mean, q := s.hist.summary(0.5, 0.99)
	r.P50us, r.P99us, r.MeanUs = us(q[0]), us(q[1]), us(mean)
	r.ServerCPU, r.BrokerCPU, r.ClientCPU, r.OtherCPU = cpu.server, cpu.broker, cpu.clnt, cpu.other
	if recv > 0 {
		r.WritesPerK = 1000 * float64(cpu.srvWrites) / float64(recv)
	}
	if r.Lost != 0 || r.SeqErrors != 0 || r.Disconnected != 0 || sendErrs != 0 {
		r.Err = fmt.Sprintf("lost %d, sequence errors %d, disconnected %d, send errors %d", r.Lost, r.SeqErrors, r.Disconnected, sendErrs)
	}
	logf("rooms  %-12s conns=%d rate=%.1f/s/user  %10.0f deliveries/s  p50=%8.0fus p99=%8.0fus  sent=%d echo=%v lost=%d srvCPU=%.2f brokerCPU=%.2f cliCPU=%.2f other=%.2f writes/1k=%.0f%s%s %s",
		label, n, rate, r.Rate, r.P50us, r.P99us, r.Sent, r.Echo, r.Lost, r.ServerCPU, r.BrokerCPU, r.ClientCPU, r.OtherCPU, r.WritesPerK, hubLog(r.Hub), readLog(r.Read), r.Err)
	return r
}

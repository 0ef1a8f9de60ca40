package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/wuyan94zl/chart"
)

// machine describes where a run happened.
type machine struct {
	CPU       string `json:"cpu"`
	CPUs      int    `json:"cpus"`
	MemTotal  string `json:"mem_total"`
	Kernel    string `json:"kernel"`
	GoVersion string `json:"go_version"`
	NoFile    uint64 `json:"ulimit_n"`
}

// libInfo documents one peer's settings.
type libInfo struct {
	Name     string `json:"name"`
	Settings string `json:"settings"`
}

// report is everything a run produced.
type report struct {
	Mode     string           `json:"mode"`
	Command  string           `json:"command"`
	Date     string           `json:"date"`
	Seconds  float64          `json:"seconds"`
	Machine  machine          `json:"machine"`
	Params   map[string]any   `json:"params"`
	Libs     []libInfo        `json:"libs"`
	Fanout   []fanoutResult   `json:"fanout"`
	Fixed    []fanoutResult   `json:"fanout_fixed,omitempty"`
	Rooms    []roomsResult    `json:"rooms"`
	Storm    []stormResult    `json:"storm"`
	History  []historyResult  `json:"history,omitempty"`
	Presence []presenceResult `json:"presence,omitempty"`
	Profile  string           `json:"profile,omitempty"`
	// BackgroundCPU is the machine's busy CPU (cores) measured for one
	// second before the run, with nothing of the suite running.
	BackgroundCPU float64 `json:"background_cores"`
	// QuietWaited is how long the run waited for other work to stop.
	QuietWaited float64 `json:"quiet_waited_seconds"`
	cfg         *config
	baseline    string
}

// newReport records the machine and parameters of a run.
func newReport(cfg *config) *report {
	r := &report{
		Mode:    cfg.mode,
		Command: "cd bench && go run . " + strings.Join(os.Args[1:], " "),
		Date:    time.Now().UTC().Format("2006-01-02 15:04 UTC"),
		Machine: machine{CPU: cpuModel(), CPUs: runtime.NumCPU(), MemTotal: memTotal(),
			Kernel: strings.TrimSpace(readFile("/proc/sys/kernel/osrelease")), GoVersion: runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH},
		Params: map[string]any{
			"fanout_subscribers": cfg.fanoutSubs, "fanout_payload_bytes": cfg.sizes,
			"fanout_seconds_per_phase": cfg.fanoutDuration.Seconds(), "fanout_window": cfg.window,
			"rooms_connections": cfg.roomsConns, "room_size": roomSize, "rooms_msgs_per_user_per_sec": cfg.roomsRates,
			"rooms_payload_bytes": cfg.roomsSize, "rooms_seconds": cfg.roomsDuration.Seconds(),
			"storm_connections": cfg.stormConns, "storm_concurrency": cfg.stormConcurrency,
			"setup_dial_concurrency": cfg.dialConcurrency,
			"history_channels":       cfg.histChannels, "history_offline_users": cfg.histUsers, "history_flood": cfg.histFlood,
			"history_max_history_bytes": histCap(cfg),
			"fixed_rate":                cfg.fixedRate, "fixed_fraction": cfg.fixedFraction, "fixed_seconds_per_phase": cfg.fixedDuration.Seconds(),
		},
		cfg: cfg,
	}
	var rl syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl) == nil {
		r.Machine.NoFile = rl.Cur
	}
	for _, name := range cfg.libs {
		l := findLib(name)
		r.Libs = append(r.Libs, libInfo{Name: l.name, Settings: l.settings})
	}
	return r
}

// failures counts measurements that errored or lost messages, of peer
// lib only, or of every peer when lib is "".
func (r *report) failures(lib string) int {
	n := 0
	count := func(name, err string) {
		if err != "" && (lib == "" || lib == name) {
			n++
		}
	}
	for _, f := range r.Fanout {
		count(f.Lib, f.Err)
	}
	for _, f := range r.Fixed {
		count(f.Lib, f.Err)
	}
	for _, f := range r.Rooms {
		count(f.Lib, f.Err)
	}
	for _, f := range r.Storm {
		count(f.Lib, f.Err)
	}
	for _, f := range r.History {
		count(f.Lib, f.ChannelError)
		count(f.Lib, f.Err)
	}
	for _, f := range r.Presence {
		if f.Lost > 0 || f.Disconnected > 0 || f.WrongViews > 0 {
			count(f.Lib, "lost, disconnected or wrong views")
		}
		count(f.Lib, f.Err)
	}
	return n
}

// readFile returns a file's content or "".
func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

// cpuModel returns the first "model name" of /proc/cpuinfo.
func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}

// memTotal returns MemTotal from /proc/meminfo in GiB.
func memTotal() string {
	for _, line := range strings.Split(readFile("/proc/meminfo"), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
			var kb float64
			fmt.Sscan(f[1], &kb)
			return fmt.Sprintf("%.1f GiB", kb/(1<<20))
		}
	}
	return "?"
}

// writeReport writes the JSON results, the markdown report and the SVG.
func writeReport(cfg *config, r *report) error {
	if err := os.MkdirAll(cfg.outDir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(cfg.outDir, "results-"+cfg.mode+".json"), b, 0o644); err != nil {
		return err
	}
	for _, p := range []string{cfg.doc, cfg.svg} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
	}
	if err := os.WriteFile(cfg.svg, []byte(fanoutSVG(r)), 0o644); err != nil {
		return err
	}
	return os.WriteFile(cfg.doc, []byte(markdown(r)), 0o644)
}

// Formatting helpers. A missing or failed figure prints as "–".

func fmtRate(v float64) string {
	if v <= 0 || math.IsNaN(v) {
		return "–"
	}
	return groupDigits(int64(math.Round(v)))
}

func groupDigits(v int64) string {
	s := fmt.Sprint(v)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func fmtUs(v float64) string {
	switch {
	case v <= 0 || math.IsNaN(v):
		return "–"
	case v >= 1e6:
		return fmt.Sprintf("%.2f s", v/1e6)
	case v >= 1000:
		return fmt.Sprintf("%.2f ms", v/1000)
	default:
		return fmt.Sprintf("%.0f µs", v)
	}
}

func fmtBytes(v float64) string {
	if v <= 0 || math.IsNaN(v) {
		return "–"
	}
	return fmt.Sprintf("%.1f KiB", v/1024)
}

func fmtSize(n int) string {
	if n%1024 == 0 {
		return fmt.Sprintf("%d KiB", n/1024)
	}
	return fmt.Sprintf("%d B", n)
}

// perDelivery returns server CPU microseconds per delivery: the cost that
// is least disturbed by other load on the machine.
func perDelivery(cores, rate float64) float64 {
	if rate <= 0 {
		return 0
	}
	return cores / rate * 1e6
}

func fmtCost(v float64) string {
	if v <= 0 || math.IsNaN(v) {
		return "–"
	}
	return fmt.Sprintf("%.2f µs", v)
}

func ratio(a, b float64) string {
	if a <= 0 || b <= 0 || math.IsNaN(a) || math.IsNaN(b) {
		return "–"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

// summaryRow is one metric across peers.
type summaryRow struct {
	workload, metric string
	fmtv             func(float64) string
	values           map[string]float64
	failed           map[string]bool
}

// writeMatrix renders rows as a table with one column per name, then one
// ratio column per pair (numerator, denominator).
func writeMatrix(b *strings.Builder, rows []summaryRow, names []string, ratios [][2]string) {
	w := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	w("| workload | metric |")
	for _, n := range names {
		w(" %s |", n)
	}
	for _, q := range ratios {
		w(" %s/%s |", q[0], q[1])
	}
	w("\n|---|---|")
	for range len(names) + len(ratios) {
		w("---:|")
	}
	w("\n")
	for _, row := range rows {
		w("| %s | %s |", row.workload, row.metric)
		for _, n := range names {
			v, ok := row.values[n]
			cell := "–"
			if ok {
				cell = row.fmtv(v)
				if row.failed[n] {
					cell += " (!)"
				}
			}
			w(" %s |", cell)
		}
		for _, q := range ratios {
			w(" %s |", ratio(row.values[q[0]], row.values[q[1]]))
		}
		w("\n")
	}
	w("\n")
}

// markdown renders the report.
func markdown(r *report) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	names := r.cfg.libs
	w("# Benchmarks\n\n")
	w("Generated by the `bench/` suite (%s mode) on %s; the run took %.1f minutes. Reproduce with:\n\n", r.Mode, r.Date, r.Seconds/60)
	w("```sh\n%s\n```\n\n", r.Command)
	w("Machine: %s, %d logical CPUs, %s RAM, Linux %s, %s, `ulimit -n` %d. ", r.Machine.CPU, r.Machine.CPUs, r.Machine.MemTotal, r.Machine.Kernel, r.Machine.GoVersion, r.Machine.NoFile)
	w("Background load before the run: %.2f cores busy; the run waited %.0f s in all for other work on the machine to stop before measurements (at most %v). ", r.BackgroundCPU, r.QuietWaited, r.cfg.quietBudget)
	w("Server and clients run on this same machine over loopback (127.0.0.1): the server is a separate process with default GOMAXPROCS, the clients all run in the driver process, so both compete for the same cores. Server and client CPU are reported in cores (CPU seconds per wall second) so a client-bound result is visible, and as server CPU µs per delivery, the figure least disturbed by the two processes (and anything else) sharing the cores; \"other cores\" is the rest of the machine's busy time during the measurement (other processes, and kernel work charged to neither process): a high value means the figure was disturbed.\n\n")

	// Summary matrix.
	var rows []summaryRow
	add := func(row summaryRow) { rows = append(rows, row) }
	for _, subs := range r.cfg.fanoutSubs {
		for _, size := range r.cfg.sizes {
			wl := fmt.Sprintf("fan-out %s subs, %s", groupDigits(int64(subs)), fmtSize(size))
			rate := summaryRow{workload: wl, metric: "deliveries/s ↑", fmtv: fmtRate, values: map[string]float64{}, failed: map[string]bool{}}
			cost := summaryRow{workload: wl, metric: "server CPU µs per delivery ↓", fmtv: fmtCost, values: map[string]float64{}, failed: map[string]bool{}}
			p50 := summaryRow{workload: wl, metric: "p50 latency ↓", fmtv: fmtUs, values: map[string]float64{}, failed: map[string]bool{}}
			p99 := summaryRow{workload: wl, metric: "p99 latency ↓", fmtv: fmtUs, values: map[string]float64{}, failed: map[string]bool{}}
			found := false
			for _, f := range r.Fanout {
				if f.Subs == subs && f.Size == size {
					found = true
					rate.values[f.Lib], cost.values[f.Lib], p50.values[f.Lib], p99.values[f.Lib] = f.Rate, perDelivery(f.ServerCPU, f.Rate), f.P50us, f.P99us
					for _, row := range []summaryRow{rate, cost, p50, p99} {
						row.failed[f.Lib] = f.Err != ""
					}
				}
			}
			if !found {
				continue
			}
			add(rate)
			add(cost)
			add(p50)
			add(p99)
		}
	}
	rows = append(rows, fixedSummary(r)...)
	for _, rr := range r.cfg.roomsRates {
		wl := fmt.Sprintf("rooms %s conns / %d per room, %g msg/s/user", groupDigits(int64(r.cfg.roomsConns)), roomSize, rr)
		rate := summaryRow{workload: wl, metric: "deliveries/s ↑", fmtv: fmtRate, values: map[string]float64{}, failed: map[string]bool{}}
		p50 := summaryRow{workload: wl, metric: "p50 latency ↓", fmtv: fmtUs, values: map[string]float64{}, failed: map[string]bool{}}
		p99 := summaryRow{workload: wl, metric: "p99 latency ↓", fmtv: fmtUs, values: map[string]float64{}, failed: map[string]bool{}}
		cpu := summaryRow{workload: wl, metric: "server CPU µs per delivery ↓", fmtv: fmtCost, values: map[string]float64{}, failed: map[string]bool{}}
		found := false
		for _, f := range r.Rooms {
			if f.PerUserRate != rr {
				continue
			}
			found = true
			rate.values[f.Lib], p50.values[f.Lib], p99.values[f.Lib], cpu.values[f.Lib] = f.Rate, f.P50us, f.P99us, perDelivery(f.ServerCPU, f.Rate)
			rate.failed[f.Lib], p50.failed[f.Lib], p99.failed[f.Lib], cpu.failed[f.Lib] = f.Err != "", f.Err != "", f.Err != "", f.Err != ""
		}
		if found {
			add(rate)
			add(p50)
			add(p99)
			add(cpu)
		}
	}
	if len(r.Storm) > 0 {
		wl := fmt.Sprintf("connect storm %s conns", groupDigits(int64(r.cfg.stormConns)))
		cps := summaryRow{workload: wl, metric: "connections/s ↑", fmtv: fmtRate, values: map[string]float64{}, failed: map[string]bool{}}
		p50 := summaryRow{workload: wl, metric: "connect-to-ready p50 ↓", fmtv: fmtUs, values: map[string]float64{}, failed: map[string]bool{}}
		p99 := summaryRow{workload: wl, metric: "connect-to-ready p99 ↓", fmtv: fmtUs, values: map[string]float64{}, failed: map[string]bool{}}
		s50 := summaryRow{workload: "connect one at a time", metric: "connect-to-ready p50 ↓", fmtv: fmtUs, values: map[string]float64{}, failed: map[string]bool{}}
		s99 := summaryRow{workload: "connect one at a time", metric: "connect-to-ready p99 ↓", fmtv: fmtUs, values: map[string]float64{}, failed: map[string]bool{}}
		hs := summaryRow{workload: "idle connection", metric: "heap+stacks per conn ↓", fmtv: fmtBytes, values: map[string]float64{}, failed: map[string]bool{}}
		rss := summaryRow{workload: "idle connection", metric: "RSS per conn ↓", fmtv: fmtBytes, values: map[string]float64{}, failed: map[string]bool{}}
		for _, f := range r.Storm {
			cps.values[f.Lib], p50.values[f.Lib], p99.values[f.Lib], hs.values[f.Lib], rss.values[f.Lib] = f.ConnsPerSec, f.P50us, f.P99us, f.HeapStackPer, f.RSSPer
			s50.values[f.Lib], s99.values[f.Lib] = f.SeqP50us, f.SeqP99us
			for _, row := range []summaryRow{cps, p50, p99, s50, s99, hs, rss} {
				row.failed[f.Lib] = f.Err != ""
			}
		}
		add(cps)
		add(p50)
		add(p99)
		add(s50)
		add(s99)
		add(hs)
		add(rss)
	}
	if len(r.History) > 0 {
		chans := fmt.Sprintf("channel history, %s channels × %d × %d B", groupDigits(int64(r.cfg.histChannels)), chart.DefaultHistorySize, histPayload)
		users := fmt.Sprintf("offline users, %s × one %d-B direct message", groupDigits(int64(r.cfg.histUsers)), histPayload)
		flood := fmt.Sprintf("%s direct messages to offline users", groupDigits(int64(r.cfg.histFlood)))
		hc := summaryRow{workload: chans, metric: "heap per channel ↓", fmtv: fmtMem, values: map[string]float64{}, failed: map[string]bool{}}
		hm := summaryRow{workload: chans, metric: "heap per kept message ↓", fmtv: fmtMem, values: map[string]float64{}, failed: map[string]bool{}}
		rc := summaryRow{workload: chans, metric: "RSS per channel ↓", fmtv: fmtMem, values: map[string]float64{}, failed: map[string]bool{}}
		hu := summaryRow{workload: users, metric: "heap per offline user ↓", fmtv: fmtMem, values: map[string]float64{}, failed: map[string]bool{}}
		ru := summaryRow{workload: users, metric: "RSS per offline user ↓", fmtv: fmtMem, values: map[string]float64{}, failed: map[string]bool{}}
		fp := summaryRow{workload: flood, metric: "live heap at the end ↓", fmtv: fmtMem, values: map[string]float64{}, failed: map[string]bool{}}
		for _, h := range r.History {
			if h.Channels > 0 {
				hc.values[h.Lib], hm.values[h.Lib], rc.values[h.Lib] = h.HeapPerChannel, h.HeapPerMessage, h.RSSPerChannel
				hc.failed[h.Lib], hm.failed[h.Lib], rc.failed[h.Lib] = h.ChannelError != "", h.ChannelError != "", h.ChannelError != ""
			}
			if h.Users > 0 {
				hu.values[h.Lib], ru.values[h.Lib] = h.HeapPerUser, h.RSSPerUser
				hu.failed[h.Lib], ru.failed[h.Lib] = h.Err != "", h.Err != ""
			}
			if len(h.Flood) > 0 {
				fp.values[h.Lib], fp.failed[h.Lib] = float64(h.Flood[len(h.Flood)-1].Mem.HeapAlloc), h.Err != ""
			}
		}
		for _, row := range []summaryRow{hc, hm, rc, hu, ru, fp} {
			if len(row.values) > 0 {
				add(row)
			}
		}
	}
	w("## Summary\n\n")
	w("Ratios are chart ÷ peer: above 1 is better for chart where the metric is marked ↑, below 1 is better where it is marked ↓. A figure marked (!) comes from a measurement that lost messages or had errors (see the detail tables).\n\n")
	var others []string
	for _, n := range names {
		if n != "chart" {
			others = append(others, n)
		}
	}
	hasChart := len(others) < len(names)
	var ratios [][2]string
	if hasChart {
		for _, n := range others {
			ratios = append(ratios, [2]string{"chart", n})
		}
	}
	writeMatrix(&b, rows, names, ratios)

	if hasChart {
		writeTargets(&b, r)
	}

	if len(r.Fanout) > 0 {
		w("## Fan-out\n\n![Fan-out deliveries per second by subscribers and payload](%s)\n\n", filepath.Base(r.cfg.svg))
		w("One channel, every connection subscribed; business code in the server publishes (chart.Publish, melody Broadcast, centrifuge node.Publish, hub broadcast channel), one publisher. Each payload carries a sequence number and the server's `time.Now()` taken just before the publish call; a client records publish-to-deliver latency at arrival and checks that sequence numbers arrive complete and in order. The publisher is windowed identically for every peer: at most %d messages may be published and not yet received by every subscriber (counted by the clients); publishing stops after %.0f s and the phase ends when every message has reached every subscriber. deliveries/s = messages × subscribers delivered ÷ phase time.\n\n", r.cfg.window, r.cfg.fanoutDuration.Seconds())
		w("Each configuration is run %d time(s) on the same connections after an unrecorded warm-up; the table shows the run with the median delivery rate (its messages, latencies and CPU) and the range of rates; lost counts every run.\n\n", r.cfg.repeat)
		w("\"server writes\" and \"client reads\" are the write/writev and read system calls of each process per 1,000 deliveries (from `/proc/<pid>/io`): how much each side batches.\n\n")
		w("| peer | subscribers | payload | messages | deliveries/s | range | p50 | p99 | lost | server cores | server µs/delivery | client cores | other cores | server writes /1k | client reads /1k | note |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
		for _, f := range r.Fanout {
			w("| %s | %s | %s | %s | %s | %s–%s | %s | %s | %d | %.2f | %s | %.2f | %.2f | %.0f | %.0f | %s |\n", f.Lib, groupDigits(int64(f.Subs)), fmtSize(f.Size), groupDigits(f.Published), fmtRate(f.Rate), shortNum(f.MinRate), shortNum(f.MaxRate), fmtUs(f.P50us), fmtUs(f.P99us), f.Lost, f.ServerCPU, fmtCost(perDelivery(f.ServerCPU, f.Rate)), f.ClientCPU, f.OtherCPU, f.WritesPerK, f.ReadsPerK, f.Err)
		}
		w("\n")
	}
	if len(r.Fixed) > 0 {
		b.WriteString(fixedMarkdown(r))
	}
	if len(r.Rooms) > 0 {
		w("## Rooms\n\n")
		w("%s connections in rooms of %d; every user sends a %d-byte payload to its room at a fixed rate, %d run(s) per rate, each on a fresh server and connections, each latency, rate and CPU figure the median of the runs (a 1 ms pacer in the client process sends everything due, users visited in a strided order); the send timestamp is taken by the client. Whether a sender also receives its own message is the peer's behaviour and is reported; expected deliveries count it accordingly. A peer that keeps up delivers the offered load (rate × connections × room size per second), so compare latency and server CPU; a peer that does not shows it in latency, lost messages and disconnections.\n\n", groupDigits(int64(r.cfg.roomsConns)), roomSize, r.cfg.roomsSize, max(r.cfg.repeat, 1))
		w("| peer | msg/s/user | sent | send rate | own echo | deliveries | deliveries/s | p50 | p99 | lost | server cores | client cores | other cores | note |\n|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
		for _, f := range r.Rooms {
			w("| %s | %g | %s | %s/s | %v | %s | %s | %s | %s | %d | %.2f | %.2f | %.2f | %s |\n", f.Lib, f.PerUserRate, groupDigits(f.Sent), fmtRate(f.SendRate), f.Echo, groupDigits(f.Deliveries), fmtRate(f.Rate), fmtUs(f.P50us), fmtUs(f.P99us), f.Lost, f.ServerCPU, f.ClientCPU, f.OtherCPU, f.Err)
		}
		w("\n")
	}
	b.WriteString(stagesMarkdown(r))
	b.WriteString(readMarkdown(r))
	if len(r.Storm) > 0 {
		w("## Connect storm and idle memory\n\n")
		w("%s connections are opened by %d workers in the client process, each opening its next connection as soon as the previous one is ready. **Connect-to-ready** is measured per connection from just before the TCP dial until the client receives a probe message that server business code published, through the peer's API, to that connection's own channel `u<uid>` (chart.Publish after JoinChannelIds in LoginServer; melody Session.Write on the session registered in HandleConnect; centrifuge node.Publish after the client's connect and subscribe commands were answered; hub broadcast to the client's room). After the WebSocket handshake (and centrifuge's connect/subscribe round trips) the client asks the server over a kept-alive HTTP control connection to publish the probe, and asks again every %v until it arrives (\"retried\" counts connections that needed more than one probe because they were not registered yet). With %d connections in flight, the storm's latency is mostly queueing behind the others; after the memory measurement %d more connections are opened one at a time, with the storm's connections still open, to give the unloaded connect-to-ready (\"one at a time\").\n\n", groupDigits(int64(r.cfg.stormConns)), r.cfg.stormConcurrency, probeInterval, r.cfg.stormConcurrency, r.cfg.stormSequential)
		w("**Idle memory** is measured in the server process with every connection open and idle: after `runtime.GC()` twice and `debug.FreeOSMemory()`, HeapInuse + StackInuse from `runtime.MemStats` and VmRSS from `/proc/self/status`, minus the same figures taken the same way before the first connection, divided by the number of connections. Kernel socket buffers are not included in either.\n\n")
		w("| peer | conns/s | ready p50 | ready p99 | retried | failed | one at a time p50 | one at a time p99 | server cores | client cores | other cores | note |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
		for _, f := range r.Storm {
			w("| %s | %s | %s | %s | %d | %d | %s | %s | %.2f | %.2f | %.2f | %s |\n", f.Lib, fmtRate(f.ConnsPerSec), fmtUs(f.P50us), fmtUs(f.P99us), f.Retried, f.Failed, fmtUs(f.SeqP50us), fmtUs(f.SeqP99us), f.ServerCPU, f.ClientCPU, f.OtherCPU, f.Err)
		}
		w("\n| peer | heap/conn | stacks/conn | heap+stacks/conn | RSS/conn | goroutines/conn | heap in use (idle) | RSS (idle) |\n|---|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, f := range r.Storm {
			w("| %s | %s | %s | %s | %s | %.2f | %.1f MiB | %.1f MiB |\n", f.Lib, fmtBytes(f.HeapPer), fmtBytes(f.StackPer), fmtBytes(f.HeapStackPer), fmtBytes(f.RSSPer), f.GoroutinePer, float64(f.Idle.HeapInuse)/(1<<20), float64(f.Idle.RSS)/(1<<20))
		}
		w("\n")
	}
	if len(r.History) > 0 {
		b.WriteString(historyMarkdown(r))
	}
	if len(r.Presence) > 0 {
		b.WriteString(presenceMarkdown(r))
	}
	w("## Peers and settings\n\nNothing is tuned beyond each peer's documented defaults / README usage.\n\n")
	for _, l := range r.Libs {
		w("- **%s**: %s.\n", l.Name, l.Settings)
	}
	w("\nClients are identical for every peer: one raw WebSocket client in `bench/wsconn.go` (no Origin header, no compression, a 4 KiB read buffer, one reusable message buffer, masked writes, pings answered), with the peer's framing in `bench/client.go`. Every client checks sequence numbers, so a lost, duplicated or reordered message is counted.\n\n")
	if r.Profile != "" {
		w("## %s server CPU profile\n\nCaptured with `/debug/pprof/profile` in the server process during the largest fan-out phase.\n\n```\n%s\n```\n", r.cfg.profileLib, strings.TrimSpace(r.Profile))
	}
	return b.String()
}

// writeTargets renders the target checks for chart.
func writeTargets(b *strings.Builder, r *report) {
	find := func(lib string, subs, size int) *fanoutResult {
		for i := range r.Fanout {
			f := &r.Fanout[i]
			if f.Lib == lib && f.Subs == subs && f.Size == size {
				return f
			}
		}
		return nil
	}
	minRatio := func(peer string) (float64, bool) {
		m, ok := math.Inf(1), false
		for _, subs := range r.cfg.fanoutSubs {
			for _, size := range r.cfg.sizes {
				c, p := find("chart", subs, size), find(peer, subs, size)
				if c != nil && p != nil && c.Rate > 0 && p.Rate > 0 {
					m, ok = math.Min(m, c.Rate/p.Rate), true
				}
			}
		}
		return m, ok
	}
	yes := func(ok bool) string {
		if ok {
			return "yes"
		}
		return "**no**"
	}
	var rows strings.Builder
	if m, ok := minRatio("melody"); ok {
		fmt.Fprintf(&rows, "| fan-out deliveries/s ≥ 2× melody (every configuration) | worst %.2f× | %s |\n", m, yes(m >= 2))
	}
	if m, ok := minRatio("centrifuge"); ok {
		fmt.Fprintf(&rows, "| fan-out deliveries/s ≥ 1× centrifuge (every configuration) | worst %.2f× | %s |\n", m, yes(m >= 1))
	}
	rows.WriteString(equalLoadTargets(r))
	for _, s := range r.Storm {
		if s.Lib == "chart" {
			fmt.Fprintf(&rows, "| idle RSS per connection ≤ 4 KiB (issue 15) | %s | %s |\n", fmtBytes(s.RSSPer), yes(s.RSSPer > 0 && s.RSSPer <= 4096))
			fmt.Fprintf(&rows, "| connect-to-ready p50 ≤ 2 ms, during the storm (%d connecting at once) | %s | %s |\n", s.Concurrency, fmtUs(s.P50us), yes(s.P50us > 0 && s.P50us <= 2000))
			fmt.Fprintf(&rows, "| connect-to-ready p50 ≤ 0.5 ms, one at a time (%d idle connections open; issue 15) | %s | %s |\n", s.Conns, fmtUs(s.SeqP50us), yes(s.SeqP50us > 0 && s.SeqP50us <= 500))
		}
	}
	for _, h := range r.History {
		if h.Lib == "chart" && len(h.Flood) >= 2 {
			last := h.Flood[len(h.Flood)-1]
			fmt.Fprintf(&rows, "| memory bounded by MaxHistoryBytes under a flood of direct messages to offline users (%s) | live heap %s at the end, %s kept | %s |\n", groupDigits(int64(last.Sent)), fmtMem(float64(last.Mem.HeapAlloc)), groupDigits(int64(last.Kept)), yes(h.Bounded))
		}
	}
	for _, p := range r.Presence {
		fmt.Fprintf(&rows, "| presence: no well-behaved reader disconnected (%s users logging in at %g/s, then %s reconnecting at once) | %d disconnected, %d lost, %d wrong views | %s |\n",
			groupDigits(int64(p.Users)), p.LoginRate, groupDigits(int64(p.Churn)), p.Disconnected, p.Lost, p.WrongViews, yes(p.Err == "" && p.Disconnected == 0 && p.Lost == 0 && p.WrongViews == 0))
	}
	if rows.Len() == 0 {
		return
	}
	fmt.Fprintf(b, "## Targets\n\n| target | measured | met |\n|---|---:|---|\n%s", rows.String())
	fmt.Fprintf(b, "\n")
}

// svgColors are the bar colours, by peer order.
var svgColors = []string{"#d62728", "#1f77b4", "#2ca02c", "#7f7f7f", "#9467bd", "#ff7f0e"}

// fanoutSVG draws fan-out deliveries/s as grouped bars: one group per
// (subscribers, payload) configuration, one bar per peer.
func fanoutSVG(r *report) string {
	names := r.cfg.libs
	type group struct {
		label  string
		values []float64
	}
	var groups []group
	maxV := 0.0
	for _, subs := range r.cfg.fanoutSubs {
		for _, size := range r.cfg.sizes {
			g := group{label: fmt.Sprintf("%s subs · %s", groupDigits(int64(subs)), fmtSize(size))}
			for _, n := range names {
				v := 0.0
				for _, f := range r.Fanout {
					if f.Lib == n && f.Subs == subs && f.Size == size {
						v = f.Rate
					}
				}
				g.values = append(g.values, v)
				maxV = math.Max(maxV, v)
			}
			groups = append(groups, g)
		}
	}
	const (
		width, height         = 820, 420
		left, right, top, bot = 90, 20, 50, 90
		plotW, plotH          = width - left - right, height - top - bot
	)
	// Nice axis maximum and ticks.
	step := 1.0
	if maxV > 0 {
		step = math.Pow(10, math.Floor(math.Log10(maxV/4)))
		for _, m := range []float64{1, 2, 2.5, 5, 10} {
			if maxV/(step*m) <= 5 {
				step *= m
				break
			}
		}
	}
	axisMax := math.Ceil(maxV/step) * step
	if axisMax == 0 {
		axisMax = 1
	}
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	w(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	w(`<text x="%d" y="24" font-size="16" font-weight="bold">Fan-out: deliveries per second by subscribers and payload (higher is better)</text>`+"\n", left)
	for v := 0.0; v <= axisMax+step/2; v += step {
		y := float64(top) + float64(plotH)*(1-v/axisMax)
		w(`<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>`+"\n", left, y, width-right, y)
		w(`<text x="%d" y="%.1f" text-anchor="end" dominant-baseline="middle">%s</text>`+"\n", left-8, y, shortNum(v))
	}
	w(`<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333"/>`+"\n", left, top+plotH, width-right, top+plotH)
	if len(groups) > 0 && len(names) > 0 {
		gw := float64(plotW) / float64(len(groups))
		bw := gw * 0.8 / float64(len(names))
		for gi, g := range groups {
			x0 := float64(left) + gw*float64(gi) + gw*0.1
			for li, v := range g.values {
				h := float64(plotH) * v / axisMax
				x := x0 + bw*float64(li)
				y := float64(top+plotH) - h
				w(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s: %s deliveries/s</title></rect>`+"\n", x, y, bw-2, h, svgColors[li%len(svgColors)], names[li], fmtRate(v))
				label := shortNum(v)
				if v <= 0 {
					label = "n/a"
				}
				w(`<text x="%.1f" y="%.1f" text-anchor="middle" font-size="10">%s</text>`+"\n", x+bw/2-1, y-4, label)
			}
			w(`<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", x0+gw*0.4, top+plotH+18, g.label)
		}
	}
	lx := left
	for li, n := range names {
		w(`<rect x="%d" y="%d" width="12" height="12" fill="%s"/><text x="%d" y="%d">%s</text>`+"\n", lx, height-40, svgColors[li%len(svgColors)], lx+16, height-30, n)
		lx += 30 + 8*len(n) + 20
	}
	w(`<text x="%d" y="%d" fill="#555">%s, %s; %s mode</text>`+"\n", left, height-10, r.Machine.CPU+fmt.Sprintf(" ×%d", r.Machine.CPUs), r.Machine.GoVersion, r.Mode)
	w("</svg>\n")
	return b.String()
}

// shortNum formats v as 1.2k / 3.4M.
func shortNum(v float64) string {
	switch {
	case v >= 1e6:
		return strconv.FormatFloat(math.Round(v/1e4)/100, 'f', -1, 64) + "M"
	case v >= 1e3:
		return fmt.Sprintf("%.0fk", v/1e3)
	default:
		return fmt.Sprintf("%.0f", v)
	}
}

// Command bench compares github.com/wuyan94zl/chart with melody,
// centrifuge and a gorilla/websocket examples/chat-style hub on four
// workloads over loopback: fan-out from business code, chat rooms, a
// connect storm followed by an idle memory measurement, and the memory
// that history (channels' recent messages, offline users' direct
// messages) costs.
//
// One binary plays every role. The driver (the default role) starts one
// server subprocess per peer and workload (-role server), runs all clients
// itself, and talks to the server over a small HTTP control API
// (/ctl/publish, /ctl/stats, /debug/pprof). Clients and server are separate
// processes so that each stays below the file descriptor limit.
//
//	cd bench && go run . -quick   # smoke run, < 3 minutes, writes out/quick.md
//	cd bench && go run . -quick -workloads history # history memory only, ~15 s, also printed
//	cd bench && go run . -all     # full run, writes ../docs/benchmarks.md and ../docs/fanout.svg
//	cd bench && go run . -cluster # chart on one node vs two nodes over Redis and NATS, writes ../docs/benchmarks-cluster.md
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// config holds the parameters of a run.
type config struct {
	mode             string
	libs             []string
	workloads        []string
	fanoutSubs       []int
	sizes            []int
	fanoutDuration   time.Duration
	window           int
	roomsConns       int
	roomsRates       []float64
	quietBudget      time.Duration
	quietWaited      time.Duration
	roomsSize        int
	roomsDuration    time.Duration
	stormConns       int
	stormConcurrency int
	stormSequential  int
	repeat           int
	dialConcurrency  int
	pprof            bool
	profileRooms     bool
	profileKind      string // "cpu" or "allocs"
	profileLib       string
	outDir           string
	doc              string
	svg              string
	strict           bool
	setups           []string      // -cluster: "single", "redis", "nats"
	histChannels     int           // history: channels filled with their default history
	histUsers        int           // history: offline users with one direct message each
	histFlood        int           // history: direct messages to offline users in the flood past MaxHistoryBytes (0: none)
	presenceUsers    int           // presence: users logging in to the room
	presenceRate     float64       // presence: logins per second
	presenceChurn    int           // presence: users dropping and reconnecting at once
	histCap          int64         // history: chart's MaxHistoryBytes (0: its default)
	fixedRate        float64       // fanout-fixed: offered deliveries/s of every configuration (0: from the saturated fan-out)
	fixedFraction    float64       // fanout-fixed: share of the slowest peer's saturated deliveries/s offered
	fixedDuration    time.Duration // fanout-fixed: publishing time per phase
}

// logf prints a progress line to stderr.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// roleMain runs the subprocess role named by BENCH_ROLE, if any, and exits:
// "server" (a peer under test) or "nats" (the NATS server of a cluster
// measurement).
func roleMain() {
	switch os.Getenv("BENCH_ROLE") {
	case "server":
		serverMain()
	case "nats":
		natsMain()
	}
}

func main() {
	roleMain()
	var (
		role      = flag.String("role", "driver", "driver (default) or server (internal)")
		lib       = flag.String("lib", "", "server role: peer to serve")
		workload  = flag.String("workload", "", "server role: fanout, rooms, storm or history")
		all       = flag.Bool("all", false, "full run of every workload; writes ../docs/benchmarks.md and ../docs/fanout.svg")
		quick     = flag.Bool("quick", false, "quick smoke run (< 3 min) at reduced scale; writes out/quick.md")
		cluster   = flag.Bool("cluster", false, "chart on one node vs two nodes sharing a broker (< 5 min); writes ../docs/benchmarks-cluster.md")
		setups    = flag.String("cluster-setups", "single,redis,nats", "-cluster: setups to run (single: one node, no broker; redis, nats: two nodes)")
		libsFlag  = flag.String("libs", "", "comma-separated peers (default: all)")
		wlFlag    = flag.String("workloads", "fanout,fanout-fixed,rooms,storm,history,presence", "comma-separated workloads")
		subsFlag  = flag.String("fanout-subs", "", "fan-out subscriber counts (default 1000,10000; quick 500,2000)")
		sizesFlag = flag.String("sizes", "100,1024", "fan-out payload sizes in bytes")
		fanDur    = flag.Duration("fanout-duration", 0, "publishing time per fan-out phase (default 4s; quick 1s)")
		repeat    = flag.Int("repeat", 0, "fan-out, fixed-rate fan-out and rooms repetitions per configuration, the median is reported (default 3; quick 1)")
		fxRate    = flag.Float64("fixed-rate", 0, "fanout-fixed: offered deliveries/s (messages/s × subscribers), the same for every peer and configuration; 0: -fixed-fraction of the slowest peer's saturated deliveries/s in this run's fan-out of the same configuration, or 40000 when that did not run")
		fxFrac    = flag.Float64("fixed-fraction", 0.5, "fanout-fixed: share of the slowest peer's saturated fan-out deliveries/s offered (when -fixed-rate is 0)")
		fxDur     = flag.Duration("fixed-duration", 0, "fanout-fixed: publishing time per phase, at most 50s (default 5s; quick 2s)")
		window    = flag.Int("window", 64, "fan-out publisher window: messages published but not yet received by every subscriber")
		rConns    = flag.Int("rooms-conns", 0, "rooms workload connections (default 10000; quick 2000)")
		rRate     = flag.String("rooms-rate", "0.5,1", "rooms workload: messages per second per user, -repeat runs per value")
		quiet     = flag.Duration("quiet-wait", -1, "before each measurement wait for the machine to be idle (< 0.3 busy cores), at most this long in all (default 4m; quick 0)")
		rSize     = flag.Int("rooms-size", 100, "rooms workload payload bytes")
		rDur      = flag.Duration("rooms-duration", 0, "rooms workload sending time (default 8s; quick 2s)")
		sConns    = flag.Int("storm-conns", 0, "connect storm connections (default 10000; quick 2000)")
		sConc     = flag.Int("storm-concurrency", 64, "connect storm: connections being opened at once")
		sSeq      = flag.Int("storm-sequential", 0, "after the storm: connections opened one at a time for unloaded connect-to-ready (default 500; quick 200)")
		hChans    = flag.Int("history-channels", 0, "history workload: channels filled with 100 messages each (default 1000)")
		hUsers    = flag.Int("history-users", 0, "history workload: offline users sent one direct message each (default 50000)")
		pUsers    = flag.Int("presence-users", 0, "presence workload: users logging in to one room with presence events (default 10000; quick 2000)")
		pRate     = flag.Float64("presence-rate", 400, "presence workload: logins per second")
		pChurn    = flag.Int("presence-churn", 0, "presence workload: users then dropping and reconnecting at once (default 1000; quick 200)")
		hFlood    = flag.Int("history-flood", -1, "history workload: direct messages to offline users in the flood past MaxHistoryBytes, 0 for none (default 2000000)")
		hCap      = flag.Int64("history-cap", 0, "history workload: chart's MaxHistoryBytes (default chart's, 64 MiB)")
		dialConc  = flag.Int("dial-concurrency", 256, "connections opened at once when setting up fan-out and rooms")
		pprofFlag = flag.Bool("pprof", true, "profile the server of -profile-lib during the largest fan-out phase")
		profRooms = flag.Bool("profile-rooms", false, "rooms and direct workloads: save a CPU profile of the (first) chart server during each send phase in -out")
		profLib   = flag.String("profile-lib", "chart", "peer whose server is profiled")
		profKind  = flag.String("profile-kind", "cpu", "what the profiles record: cpu, or allocs (the allocations made during the phase, by bytes)")
		outDir    = flag.String("out", "out", "directory for results JSON, profiles and the quick report")
		doc       = flag.String("doc", "", "markdown report path (default ../docs/benchmarks.md for -all, out/quick.md otherwise)")
		svg       = flag.String("svg", "", "SVG chart path (default ../docs/fanout.svg for -all, out/fanout.svg otherwise)")
		strict    = flag.Bool("strict", true, "exit with status 1 if a measurement lost messages or failed: of any peer with -quick, of chart with -all")
	)
	flag.Parse()

	if *role == "server" {
		os.Setenv("BENCH_LIB", *lib)
		os.Setenv("BENCH_WORKLOAD", *workload)
		serverMain()
	}
	if !*all && !*quick && !*cluster {
		fmt.Fprintln(os.Stderr, "usage: go run . -all | -quick | -cluster [flags]")
		flag.PrintDefaults()
		os.Exit(2)
	}
	if *profKind != "cpu" && *profKind != "allocs" {
		fmt.Fprintf(os.Stderr, "-profile-kind %q: want cpu or allocs\n", *profKind)
		os.Exit(2)
	}

	cfg := &config{
		mode: "full", workloads: splitList(*wlFlag), sizes: ints(*sizesFlag),
		fanoutSubs: []int{1000, 10000}, fanoutDuration: 4 * time.Second, window: *window,
		roomsConns: 10000, roomsRates: floats(*rRate), quietBudget: 4 * time.Minute, roomsSize: *rSize, roomsDuration: 8 * time.Second,
		stormConns: 10000, stormConcurrency: *sConc, stormSequential: 500, repeat: 3, dialConcurrency: *dialConc,
		pprof: *pprofFlag, profileRooms: *profRooms, profileKind: *profKind, profileLib: *profLib, outDir: *outDir, doc: *doc, svg: *svg, strict: *strict,
		histChannels: 1000, histUsers: 50000, histFlood: 2000000, histCap: *hCap,
		presenceUsers: 10000, presenceRate: *pRate, presenceChurn: 1000,
		fixedRate: *fxRate, fixedFraction: *fxFrac, fixedDuration: 5 * time.Second,
	}
	if *quick {
		cfg.mode = "quick"
		cfg.fanoutSubs = []int{500, 2000}
		cfg.fanoutDuration = time.Second
		cfg.fixedDuration = 2 * time.Second
		cfg.roomsConns, cfg.roomsDuration, cfg.stormConns = 2000, 2*time.Second, 2000
		cfg.presenceUsers, cfg.presenceChurn = 2000, 200
		cfg.stormSequential, cfg.repeat, cfg.quietBudget = 200, 1, 0
	}
	if *cluster {
		setClusterDefaults(cfg, *setups)
	}
	if *quiet >= 0 {
		cfg.quietBudget = *quiet
	}
	if *sSeq > 0 {
		cfg.stormSequential = *sSeq
	}
	if *repeat > 0 {
		cfg.repeat = *repeat
	}
	if *subsFlag != "" {
		cfg.fanoutSubs = ints(*subsFlag)
	}
	if *fanDur > 0 {
		cfg.fanoutDuration = *fanDur
	}
	if *fxDur > 0 {
		cfg.fixedDuration = *fxDur
	}
	if cfg.fixedDuration > 50*time.Second || cfg.fixedRate < 0 || cfg.fixedFraction <= 0 {
		fmt.Fprintln(os.Stderr, "-fixed-duration must be at most 50s, -fixed-rate not negative and -fixed-fraction positive")
		os.Exit(2)
	}
	cfg.workloads = fixedAfterFanout(cfg.workloads)
	if *rConns > 0 {
		cfg.roomsConns = *rConns
	}
	if *rDur > 0 {
		cfg.roomsDuration = *rDur
	}
	if *sConns > 0 {
		cfg.stormConns = *sConns
	}
	if *hChans > 0 {
		cfg.histChannels = *hChans
	}
	if *hUsers > 0 {
		cfg.histUsers = *hUsers
	}
	if *hFlood >= 0 {
		cfg.histFlood = *hFlood
	}
	if *pUsers > 0 {
		cfg.presenceUsers = *pUsers
	}
	if *pChurn > 0 {
		cfg.presenceChurn = *pChurn
	}
	if cfg.histFlood != 0 && cfg.histFlood/2 <= cfg.histUsers {
		fmt.Fprintln(os.Stderr, "-history-flood must be 0 or more than twice -history-users")
		os.Exit(2)
	}
	if cfg.doc == "" {
		cfg.doc = filepath.Join(cfg.outDir, "quick.md")
		switch cfg.mode {
		case "full":
			cfg.doc = filepath.Join("..", "docs", "benchmarks.md")
		case "cluster":
			cfg.doc = filepath.Join("..", "docs", "benchmarks-cluster.md")
		}
	}
	if cfg.svg == "" {
		cfg.svg = filepath.Join(filepath.Dir(cfg.doc), "fanout.svg")
	}
	for _, name := range libOrder {
		if findLib(name) != nil {
			cfg.libs = append(cfg.libs, name)
		}
	}
	if *libsFlag != "" {
		cfg.libs = splitList(*libsFlag)
	}
	for _, name := range cfg.libs {
		if findLib(name) == nil {
			fmt.Fprintf(os.Stderr, "unknown peer %q\n", name)
			os.Exit(2)
		}
	}
	if cfg.roomsConns%roomSize != 0 {
		fmt.Fprintf(os.Stderr, "-rooms-conns must be a multiple of %d\n", roomSize)
		os.Exit(2)
	}
	if cfg.window <= 0 || cfg.window >= fanRing {
		fmt.Fprintf(os.Stderr, "-window must be in [1,%d)\n", fanRing)
		os.Exit(2)
	}

	if cfg.mode == "cluster" {
		os.Exit(clusterMain(cfg))
	}
	rep := run(cfg)
	if err := writeReport(cfg, rep); err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
	if len(rep.History) > 0 {
		fmt.Print(historyMarkdown(rep))
	}
	logf("wrote %s, %s and %s", cfg.doc, cfg.svg, filepath.Join(cfg.outDir, "results-"+cfg.mode+".json"))
	if n := rep.failures(""); n > 0 {
		logf("%d measurement(s) failed or lost messages (see the notes in %s)", n, cfg.doc)
	}
	// In quick mode every peer must be lossless at its reduced scale, so a
	// failure points at the suite or at a peer's bug; in a full run an
	// overloaded peer may legitimately drop, and only chart's failures count.
	strictLib := ""
	if cfg.mode == "full" {
		strictLib = "chart"
	}
	if cfg.strict && rep.failures(strictLib) > 0 {
		os.Exit(1)
	}
}

// serverMain runs the server role described by BENCH_LIB and
// BENCH_WORKLOAD and exits.
func serverMain() {
	if err := runServer(os.Getenv("BENCH_LIB"), os.Getenv("BENCH_WORKLOAD")); err != nil {
		fmt.Fprintln(os.Stderr, "server:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// run executes every selected workload for every selected peer.
func run(cfg *config) *report {
	rep := newReport(cfg)
	b0, t0 := machineBusy(), time.Now()
	idle := time.NewTimer(time.Second) // measuring the background load, not synchronising
	<-idle.C
	rep.BackgroundCPU = (machineBusy() - b0).Seconds() / time.Since(t0).Seconds()
	if rep.BackgroundCPU > 0.2 {
		logf("warning: the machine is already busy (%.2f cores) before the run; figures will be disturbed", rep.BackgroundCPU)
	}
	start := time.Now()
	for _, wl := range cfg.workloads {
		for _, name := range cfg.libs {
			spec := findLib(name)
			switch wl {
			case wlFanout:
				for _, subs := range cfg.fanoutSubs {
					res, prof := runFanout(cfg, spec, subs)
					rep.Fanout = append(rep.Fanout, res...)
					if prof != "" {
						rep.Profile = prof
					}
				}
			case wlFixed:
				for _, subs := range cfg.fanoutSubs {
					rep.Fixed = append(rep.Fixed, runFixed(cfg, spec, subs, rep)...)
				}
			case wlRooms:
				for _, rate := range cfg.roomsRates {
					rep.Rooms = append(rep.Rooms, runRooms(cfg, spec, rate))
				}
			case wlStorm:
				rep.Storm = append(rep.Storm, runStorm(cfg, spec))
			case wlHistory:
				if h, ok := runHistory(cfg, spec); ok {
					rep.History = append(rep.History, h)
				}
			case wlPresence:
				if p, ok := runPresence(cfg, spec); ok {
					rep.Presence = append(rep.Presence, p)
				}
			default:
				logf("unknown workload %q skipped", wl)
			}
		}
	}
	rep.Seconds = time.Since(start).Seconds()
	rep.QuietWaited = cfg.quietWaited.Seconds()
	return rep
}

// fixedAfterFanout moves the fixed-rate fan-out right after the saturated
// one when both are selected: its rates come from the saturated results of
// every peer.
func fixedAfterFanout(wls []string) []string {
	i, j := slices.Index(wls, wlFanout), slices.Index(wls, wlFixed)
	if i < 0 || j < 0 || j > i {
		return wls
	}
	out := slices.Delete(slices.Clone(wls), j, j+1)
	i = slices.Index(out, wlFanout)
	return slices.Insert(out, i+1, wlFixed)
}

// splitList splits a comma-separated list, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" && !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	return out
}

// floats parses a comma-separated list of positive numbers.
func floats(s string) []float64 {
	var out []float64
	for _, f := range splitList(s) {
		v, err := strconv.ParseFloat(f, 64)
		if err != nil || v <= 0 {
			fmt.Fprintf(os.Stderr, "bad number %q\n", f)
			os.Exit(2)
		}
		out = append(out, v)
	}
	return out
}

// quietThreshold is the busy CPU (cores) below which the machine counts as
// idle for waitQuiet.
const quietThreshold = 0.3

// waitQuiet waits until the machine is idle, sampling its busy CPU over
// 300 ms windows, for at most what is left of cfg.quietBudget. The suite's
// own processes are idle between measurements, so what it sees is other
// work on the machine (other developers' builds and tests). It measures the
// machine; it does not synchronise anything.
func waitQuiet(cfg *config) {
	logged := false
	for cfg.quietWaited < cfg.quietBudget {
		b0, t0 := machineBusy(), time.Now()
		t := time.NewTimer(300 * time.Millisecond)
		<-t.C
		busy := (machineBusy() - b0).Seconds() / time.Since(t0).Seconds()
		if busy < quietThreshold {
			return
		}
		cfg.quietWaited += time.Since(t0)
		if !logged {
			logf("waiting for the machine to be idle (%.2f cores busy); %v of %v waited so far", busy, cfg.quietWaited.Round(time.Second), cfg.quietBudget)
			logged = true
		}
	}
}

// ints parses a comma-separated list of positive integers.
func ints(s string) []int {
	var out []int
	for _, f := range splitList(s) {
		v, err := strconv.Atoi(f)
		if err != nil || v <= 0 {
			fmt.Fprintf(os.Stderr, "bad number %q\n", f)
			os.Exit(2)
		}
		out = append(out, v)
	}
	return out
}

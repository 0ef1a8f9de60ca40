package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Workload names. The server process is told which one it serves because
// a few peers have no notion of channels and need the workload to pick the
// idiomatic publish call (for melody: Broadcast, BroadcastFilter or a
// direct Session.Write).
const (
	wlFanout  = "fanout"
	wlRooms   = "rooms"
	wlStorm   = "storm"
	wlHistory = "history"
)

// serverLib is one peer under test, running in the server process.
//
// Every peer serves WebSocket connections on /ws/<channel>?uid=N&ch=a,b: the
// uid identifies the user and ch lists the channels the connection belongs
// to (peers that subscribe from the client side, like centrifuge, ignore
// ch). publish is "business code" sending payload to every connection in
// channel through the peer's public API.
type serverLib interface {
	http.Handler
	publish(channel string, payload []byte) error
}

// libSpec describes a peer: how to build its server and how a client talks
// to it.
type libSpec struct {
	name     string
	settings string // documented configuration, shown in the report
	server   func(workload string) (serverLib, error)
	client   clientProto
	// keepsChannels and keepsInboxes say which parts of the history
	// workload the peer takes part in: its server keeps channel history
	// (its serverLib is a channelKeeper), and direct messages for offline
	// users (an inboxKeeper).
	keepsChannels, keepsInboxes bool
}

// libs lists the peers known to this binary; each lib_*.go file registers
// its peer.
var libs []*libSpec

// libOrder is the order of peers in runs and reports.
var libOrder = []string{"chart", "melody", "centrifuge", "gorilla-hub"}

// register adds a peer to libs.
func register(s *libSpec) { libs = append(libs, s) }

// findLib returns the peer called name.
func findLib(name string) *libSpec {
	for _, l := range libs {
		if l.name == name {
			return l
		}
	}
	return nil
}

// requestUser extracts the uid and channel list of a WebSocket request.
func requestUser(r *http.Request) (uint64, []string, error) {
	q := r.URL.Query()
	uid, err := strconv.ParseUint(q.Get("uid"), 10, 64)
	if err != nil {
		return 0, nil, fmt.Errorf("bad uid: %w", err)
	}
	var chans []string
	if ch := q.Get("ch"); ch != "" {
		chans = strings.Split(ch, ",")
	}
	return uid, chans, nil
}

// serverStats is what /ctl/stats returns.
type serverStats struct {
	HeapInuse  uint64 `json:"heap_inuse"`
	StackInuse uint64 `json:"stack_inuse"`
	HeapAlloc  uint64 `json:"heap_alloc"`
	Sys        uint64 `json:"sys"`
	RSS        uint64 `json:"rss"`
	PeakRSS    uint64 `json:"peak_rss"` // VmHWM: the largest RSS since the process started
	Goroutines int    `json:"goroutines"`
	NumGC      uint32 `json:"num_gc"`
	HTTPConns  int64  `json:"http_conns"` // live non-WebSocket HTTP connections
	GoVersion  string `json:"go_version"`
}

// readRSS returns VmRSS of this process in bytes, from /proc/self/status.
func readRSS() uint64 { return readStatus("VmRSS:") }

// readStatus returns a figure in kB of /proc/self/status, such as "VmRSS:",
// in bytes.
func readStatus(key string) uint64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, key) {
			fields := strings.Fields(line)
			if len(fields) >= 2 {
				kb, _ := strconv.ParseUint(fields[1], 10, 64)
				return kb * 1024
			}
		}
	}
	return 0
}

// runServer is the -role server entry point: it serves one peer for one
// workload on a loopback port, prints "LISTEN <addr>" on stdout and exits
// when its standard input is closed (the driver exited or stopped it).
func runServer(libName, workload string) error {
	spec := findLib(libName)
	if spec == nil {
		return fmt.Errorf("unknown lib %q", libName)
	}
	lib, err := spec.server(workload)
	if err != nil {
		return err
	}
	var httpConns atomic.Int64
	mux := http.NewServeMux()
	mux.Handle("/ws/", lib)
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)

	// /ctl/publish?ch=C&kind=K&seq=S&n=N&size=B publishes N payloads with
	// sequence numbers S..S+N-1 to channel C, each stamped with the time
	// just before the publish call. With rooms=R the channel is "C<i>" for
	// every i in [0,R) instead (one payload per room).
	mux.HandleFunc("/ctl/publish", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		ch := q.Get("ch")
		kind := byte('F')
		if k := q.Get("kind"); k != "" {
			kind = k[0]
		}
		seq, _ := strconv.ParseInt(q.Get("seq"), 10, 64)
		n, _ := strconv.Atoi(q.Get("n"))
		size, _ := strconv.Atoi(q.Get("size"))
		rooms, _ := strconv.Atoi(q.Get("rooms"))
		if n <= 0 {
			n = 1
		}
		var failed int
		if rooms > 0 {
			for i := 0; i < rooms; i++ {
				p := appendPayload(nil, kind, seq, time.Now().UnixNano(), 0, size)
				if err := lib.publish(ch+strconv.Itoa(i), p); err != nil {
					failed++
				}
			}
		} else {
			for i := 0; i < n; i++ {
				p := appendPayload(nil, kind, seq+int64(i), time.Now().UnixNano(), 0, size)
				if err := lib.publish(ch, p); err != nil {
					failed++
				}
			}
		}
		fmt.Fprintf(w, "%d\n", failed)
	})
	// /ctl/stats reports memory figures; with gc=1 it first runs the garbage
	// collector twice and returns freed memory to the OS, so that heap and
	// RSS reflect live data only.
	mux.HandleFunc("/ctl/stats", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("gc") == "1" {
			runtime.GC()
			runtime.GC()
			debug.FreeOSMemory()
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		_ = json.NewEncoder(w).Encode(serverStats{
			HeapInuse:  ms.HeapInuse,
			StackInuse: ms.StackInuse,
			HeapAlloc:  ms.HeapAlloc,
			Sys:        ms.Sys,
			RSS:        readRSS(),
			PeakRSS:    readStatus("VmHWM:"),
			Goroutines: runtime.NumGoroutine(),
			NumGC:      ms.NumGC,
			HTTPConns:  httpConns.Load(),
			GoVersion:  runtime.Version(),
		})
	})
	// /ctl/delivery returns the peer's own accepted-to-written latency
	// histogram (chart's Stats().Delivery) as JSON; 404 for other peers.
	mux.HandleFunc("/ctl/delivery", func(w http.ResponseWriter, r *http.Request) {
		d, ok := lib.(deliveryReporter)
		if !ok {
			http.NotFound(w, r)
			return
		}
		_ = json.NewEncoder(w).Encode(d.delivery())
	})
	handlePaceCtl(mux, lib)
	handleReadCtl(mux)
	handleHistoryCtl(mux, lib)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ConnState: func(_ net.Conn, s http.ConnState) {
			switch s {
			case http.StateNew:
				httpConns.Add(1)
			case http.StateHijacked, http.StateClosed:
				httpConns.Add(-1)
			}
		},
		ErrorLog: nil,
	}
	fmt.Printf("LISTEN %s\n", ln.Addr())
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	return srv.Serve(ln)
}

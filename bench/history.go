package main

import (
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/wuyan94zl/chart"
)

// The history workload measures, in the server process, what the messages
// a peer keeps for recovery cost in memory, with no connection open:
//
//   - channels: cfg.histChannels channels, each filled with its default
//     history (chart.DefaultHistorySize = 100 messages) of 100-byte
//     payloads published by business code; reported per channel and per
//     kept message (chart, and centrifuge with the same count and age
//     limits);
//   - offline users: cfg.histUsers users who never connected, each sent one
//     100-byte direct message (chart.SendMessageToUid from uid 1, whose own
//     inbox is full before the measurement starts); reported per offline
//     user (chart only: no peer keeps direct messages for offline users);
//   - flood: direct messages to ever more never-connected users, up to
//     cfg.histFlood, many times what MaxHistoryBytes lets chart keep,
//     measured at four checkpoints: the memory must stop growing.
//
// Memory is the server's live heap (runtime.MemStats.HeapAlloc) and RSS
// after runtime.GC() twice and debug.FreeOSMemory(), minus the same figures
// before; the peak RSS of the process is its VmHWM.

// Server side: optional interfaces of a serverLib.

// channelKeeper is a peer whose server keeps channel history.
type channelKeeper interface {
	// keptInChannel returns how many messages channel keeps.
	keptInChannel(channel string) (int, error)
}

// inboxKeeper is a peer whose server keeps direct messages for users who
// are offline.
type inboxKeeper interface {
	sendDirect(from, to uint64, payload []byte) error
	// keptInInbox returns how many direct messages uid's inbox keeps.
	keptInInbox(uid uint64) int
}

// Parameters of the workload that are not flags.
const (
	histPayload    = 100             // bytes of every payload
	histSender     = 1               // uid sending the direct messages
	histWarmUsers  = 1000            // direct messages sent before the offline measurement: fills the sender's inbox (chart.DefaultInboxSize)
	histWarmBase   = uint64(1) << 40 // first uid of those warm-up messages
	histUserBase   = uint64(1) << 32 // first uid of the measured offline users
	histChunk      = 10000           // direct messages per control request
	histBoundRatio = 0.1             // "bounded": the flood's second half grew the heap by less than this share of what one message per user costs
)

// handleHistoryCtl adds the history workload's control endpoints:
//
//	/ctl/direct?from=F&to=T&n=N&size=B   N direct messages from F to uids T..T+N-1
//	/ctl/kept?ch=C&rooms=R               messages kept by channels C0..C(R-1)
//	/ctl/kept?uid=T&n=N                  messages kept by the inboxes of uids T..T+N-1
//
// Both answer a count on one line; a peer that keeps no such history
// answers 501.
func handleHistoryCtl(mux *http.ServeMux, lib serverLib) {
	mux.HandleFunc("/ctl/direct", func(w http.ResponseWriter, r *http.Request) {
		ik, ok := lib.(inboxKeeper)
		if !ok {
			http.Error(w, "this peer keeps no direct messages", http.StatusNotImplemented)
			return
		}
		q := r.URL.Query()
		from, _ := strconv.ParseUint(q.Get("from"), 10, 64)
		to, _ := strconv.ParseUint(q.Get("to"), 10, 64)
		n, _ := strconv.Atoi(q.Get("n"))
		size, _ := strconv.Atoi(q.Get("size"))
		failed := 0
		var p []byte
		for i := 0; i < n; i++ {
			p = appendPayload(p[:0], kindDirect, int64(i), time.Now().UnixNano(), int64(from), size)
			if err := ik.sendDirect(from, to+uint64(i), p); err != nil {
				failed++
			}
		}
		fmt.Fprintf(w, "%d\n", failed)
	})
	mux.HandleFunc("/ctl/kept", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		total := 0
		if ch := q.Get("ch"); ch != "" {
			ck, ok := lib.(channelKeeper)
			if !ok {
				http.Error(w, "this peer keeps no channel history", http.StatusNotImplemented)
				return
			}
			rooms, _ := strconv.Atoi(q.Get("rooms"))
			for i := 0; i < rooms; i++ {
				n, err := ck.keptInChannel(ch + strconv.Itoa(i))
				if err != nil {
					http.Error(w, err.Error(), http.StatusInternalServerError)
					return
				}
				total += n
			}
		} else {
			ik, ok := lib.(inboxKeeper)
			if !ok {
				http.Error(w, "this peer keeps no direct messages", http.StatusNotImplemented)
				return
			}
			uid, _ := strconv.ParseUint(q.Get("uid"), 10, 64)
			n, _ := strconv.Atoi(q.Get("n"))
			for i := 0; i < n; i++ {
				total += ik.keptInInbox(uid + uint64(i))
			}
		}
		fmt.Fprintf(w, "%d\n", total)
	})
}

// Driver side.

// floodPoint is one checkpoint of the flood of direct messages.
type floodPoint struct {
	Sent int         `json:"sent"` // direct messages sent, each to its own offline user
	Kept int         `json:"kept"` // of them, still kept
	Mem  serverStats `json:"mem"`
}

// historyResult is the history workload of one peer.
type historyResult struct {
	Lib string `json:"lib"`

	// Channels.
	Channels            int         `json:"channels,omitempty"`
	PerChannel          int         `json:"messages_per_channel,omitempty"`
	ChannelKept         int         `json:"channel_messages_kept,omitempty"`
	ChannelBase         serverStats `json:"channel_base"`
	ChannelOne          serverStats `json:"channel_one_message"` // every channel holding 1 message
	ChannelFull         serverStats `json:"channel_full"`        // every channel holding PerChannel messages
	HeapPerChannel      float64     `json:"heap_bytes_per_channel,omitempty"`
	HeapPerMessage      float64     `json:"heap_bytes_per_kept_message,omitempty"`
	HeapPerExtraMessage float64     `json:"heap_bytes_per_message_beyond_the_first,omitempty"`
	RSSPerChannel       float64     `json:"rss_bytes_per_channel,omitempty"`
	RSSPerMessage       float64     `json:"rss_bytes_per_kept_message,omitempty"`
	ChannelSeconds      float64     `json:"channel_seconds,omitempty"`

	// Offline users, each with one direct message.
	Users       int         `json:"offline_users,omitempty"`
	UsersKept   int         `json:"offline_users_kept,omitempty"`
	UserBase    serverStats `json:"offline_base"`
	UserFull    serverStats `json:"offline_full"`
	HeapPerUser float64     `json:"heap_bytes_per_offline_user,omitempty"`
	RSSPerUser  float64     `json:"rss_bytes_per_offline_user,omitempty"`

	// Flood of direct messages to offline users, past MaxHistoryBytes.
	Cap          int64        `json:"max_history_bytes,omitempty"`
	Flood        []floodPoint `json:"flood,omitempty"`
	FloodGrowth  float64      `json:"flood_second_half_growth,omitempty"` // heap growth over the flood's second half ÷ that growth if every message were kept
	Bounded      bool         `json:"bounded"`
	UserSeconds  float64      `json:"offline_seconds,omitempty"`
	ChannelError string       `json:"channel_error,omitempty"`
	Err          string       `json:"error,omitempty"`
}

// kindDirect marks the payloads of the history workload's direct messages.
const kindDirect = 'D'

// ctlCount calls a control endpoint that answers a count.
func (s *serverProc) ctlCount(pathAndQuery string) (int, error) {
	b, err := s.ctl(pathAndQuery)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// histCap is the MaxHistoryBytes the chart server runs with.
func histCap(cfg *config) int64 {
	if cfg.histCap > 0 {
		return cfg.histCap
	}
	return chart.DefaultMaxHistoryBytes
}

// runHistory runs the parts of the history workload that spec takes part
// in; ok is false when it takes part in none.
func runHistory(cfg *config, spec *libSpec) (r historyResult, ok bool) {
	if !spec.keepsChannels && !spec.keepsInboxes {
		logf("history %-12s skipped: keeps no history", spec.name)
		return r, false
	}
	r.Lib = spec.name
	if spec.keepsChannels {
		t0 := time.Now()
		if err := historyChannels(cfg, spec, &r); err != nil {
			r.ChannelError = err.Error()
		}
		r.ChannelSeconds = time.Since(t0).Seconds()
		logf("history %-12s %d channels × %d × %d B: kept %d, per channel heap=%.0f B rss=%.0f B, per kept message heap=%.0f B (beyond the first %.0f B) rss=%.0f B (%.1f s) %s",
			spec.name, r.Channels, r.PerChannel, histPayload, r.ChannelKept, r.HeapPerChannel, r.RSSPerChannel, r.HeapPerMessage, r.HeapPerExtraMessage, r.RSSPerMessage, r.ChannelSeconds, r.ChannelError)
	}
	if spec.keepsInboxes {
		t0 := time.Now()
		if err := historyInboxes(cfg, spec, &r); err != nil {
			r.Err = err.Error()
		}
		r.UserSeconds = time.Since(t0).Seconds()
		logf("history %-12s %d offline users × one %d-B DM: kept %d, per user heap=%.0f B rss=%.0f B (%.1f s) %s",
			spec.name, r.Users, histPayload, r.UsersKept, r.HeapPerUser, r.RSSPerUser, r.UserSeconds, r.Err)
		for _, p := range r.Flood {
			logf("history %-12s flood: %9d DMs sent, %7d kept, heap %6.1f MiB, rss %6.1f MiB, peak rss %6.1f MiB",
				spec.name, p.Sent, p.Kept, mib(p.Mem.HeapAlloc), mib(p.Mem.RSS), mib(p.Mem.PeakRSS))
		}
		if len(r.Flood) > 0 {
			logf("history %-12s flood: second half grew the heap by %.1f%% of what keeping every message would: bounded=%v", spec.name, 100*r.FloodGrowth, r.Bounded)
		}
	}
	return r, true
}

func mib(v uint64) float64 { return float64(v) / (1 << 20) }

// historyChannels fills cfg.histChannels channels with their default
// history, one message per channel at a time, measuring after the first
// round and after the last.
func historyChannels(cfg *config, spec *libSpec, r *historyResult) error {
	n, per := cfg.histChannels, chart.DefaultHistorySize
	r.Channels, r.PerChannel = n, per
	srv, err := startServer(spec.name, wlHistory, historyEnv(cfg)...)
	if err != nil {
		return err
	}
	defer srv.stop()
	publish := func(prefix string, round, rooms int) error {
		failed, err := srv.ctlCount(fmt.Sprintf("/ctl/publish?ch=%s&kind=H&seq=%d&size=%d&rooms=%d", prefix, round, histPayload, rooms))
		if err == nil && failed > 0 {
			err = fmt.Errorf("%d of %d publishes failed", failed, rooms)
		}
		return err
	}
	// Warm up the control connection and the peer's publish path on a
	// channel of its own, then measure the base.
	if err := publish("warm", 0, 1); err != nil {
		return err
	}
	if r.ChannelBase, err = srv.stats(true); err != nil {
		return err
	}
	for round := 1; round <= per; round++ {
		if err := publish("h", round, n); err != nil {
			return err
		}
		if round == 1 {
			if r.ChannelOne, err = srv.stats(true); err != nil {
				return err
			}
		}
	}
	if r.ChannelFull, err = srv.stats(true); err != nil {
		return err
	}
	heap := float64(r.ChannelFull.HeapAlloc) - float64(r.ChannelBase.HeapAlloc)
	rss := float64(r.ChannelFull.RSS) - float64(r.ChannelBase.RSS)
	r.HeapPerChannel, r.RSSPerChannel = heap/float64(n), rss/float64(n)
	r.HeapPerMessage, r.RSSPerMessage = heap/float64(n*per), rss/float64(n*per)
	if per > 1 {
		r.HeapPerExtraMessage = (float64(r.ChannelFull.HeapAlloc) - float64(r.ChannelOne.HeapAlloc)) / float64(n*(per-1))
	}
	if r.ChannelKept, err = srv.ctlCount(fmt.Sprintf("/ctl/kept?ch=h&rooms=%d", n)); err != nil {
		return err
	}
	if r.ChannelKept != n*per {
		return fmt.Errorf("%d of %d messages kept: MaxHistoryBytes was reached, use fewer -history-channels", r.ChannelKept, n*per)
	}
	return nil
}

// historyEnv is the server environment of the history workload.
func historyEnv(cfg *config) []string {
	if cfg.histCap > 0 {
		return []string{"BENCH_HISTORY_CAP=" + strconv.FormatInt(cfg.histCap, 10)}
	}
	return nil
}

// historyInboxes sends one direct message to each of cfg.histUsers users
// who never connected and measures, then floods ever more such users up to
// cfg.histFlood messages in all, measuring at four checkpoints.
func historyInboxes(cfg *config, spec *libSpec, r *historyResult) error {
	r.Users, r.Cap = cfg.histUsers, histCap(cfg)
	srv, err := startServer(spec.name, wlHistory, historyEnv(cfg)...)
	if err != nil {
		return err
	}
	defer srv.stop()
	sent := 0 // to uids histUserBase..histUserBase+sent-1
	send := func(to uint64, n int) error {
		for n > 0 {
			k := min(n, histChunk)
			failed, err := srv.ctlCount(fmt.Sprintf("/ctl/direct?from=%d&to=%d&n=%d&size=%d", histSender, to, k, histPayload))
			if err == nil && failed > 0 {
				err = fmt.Errorf("%d of %d direct messages failed", failed, k)
			}
			if err != nil {
				return err
			}
			to, n = to+uint64(k), n-k
		}
		return nil
	}
	sendUpTo := func(total int) error {
		err := send(histUserBase+uint64(sent), total-sent)
		if err == nil {
			sent = total
		}
		return err
	}
	// Warm up, filling the sender's own inbox (each direct message is kept
	// in the sender's inbox too) so that it stays the same size from here.
	if err := send(histWarmBase, histWarmUsers); err != nil {
		return err
	}
	if r.UserBase, err = srv.stats(true); err != nil {
		return err
	}
	if err := sendUpTo(r.Users); err != nil {
		return err
	}
	if r.UserFull, err = srv.stats(true); err != nil {
		return err
	}
	r.HeapPerUser = (float64(r.UserFull.HeapAlloc) - float64(r.UserBase.HeapAlloc)) / float64(r.Users)
	r.RSSPerUser = (float64(r.UserFull.RSS) - float64(r.UserBase.RSS)) / float64(r.Users)
	if r.UsersKept, err = srv.ctlCount(fmt.Sprintf("/ctl/kept?uid=%d&n=%d", histUserBase, r.Users)); err != nil {
		return err
	}
	if r.UsersKept != r.Users {
		return fmt.Errorf("%d of %d direct messages kept: MaxHistoryBytes was reached, use fewer -history-users", r.UsersKept, r.Users)
	}

	// The flood: checkpoints at 1/8, 1/4, 1/2 and all of cfg.histFlood.
	for _, part := range []int{8, 4, 2, 1} {
		total := cfg.histFlood / part
		if total <= sent {
			continue
		}
		if err := sendUpTo(total); err != nil {
			return err
		}
		p := floodPoint{Sent: total}
		if p.Mem, err = srv.stats(true); err != nil {
			return err
		}
		if p.Kept, err = srv.ctlCount(fmt.Sprintf("/ctl/kept?uid=%d&n=%d", histUserBase, total)); err != nil {
			return err
		}
		r.Flood = append(r.Flood, p)
	}
	if k := len(r.Flood); k >= 2 && r.HeapPerUser > 0 {
		a, b := r.Flood[k-2], r.Flood[k-1]
		unbounded := float64(b.Sent-a.Sent) * r.HeapPerUser
		r.FloodGrowth = (float64(b.Mem.HeapAlloc) - float64(a.Mem.HeapAlloc)) / unbounded
		r.Bounded = r.FloodGrowth < histBoundRatio
		if !r.Bounded {
			return fmt.Errorf("memory not bounded: the flood's second half grew the heap by %.0f%% of what keeping every message would", 100*r.FloodGrowth)
		}
	}
	return nil
}

// fmtMem formats a byte count: B below 10 KiB, then KiB, then MiB.
func fmtMem(v float64) string {
	switch {
	case v <= 0 || math.IsNaN(v):
		return "–"
	case v < 10<<10:
		return fmt.Sprintf("%.0f B", v)
	case v < 10<<20:
		return fmt.Sprintf("%.1f KiB", v/(1<<10))
	default:
		return fmt.Sprintf("%.1f MiB", v/(1<<20))
	}
}

// historyMarkdown renders the history workload's section of the report.
func historyMarkdown(r *report) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	cfg := r.cfg
	w("## History memory\n\n")
	w("What the messages kept for recovery cost, measured in the server process with no connection open (`-workloads history`): the live heap (`runtime.MemStats.HeapAlloc`) and RSS after `runtime.GC()` twice and `debug.FreeOSMemory()`, minus the same figures taken before, divided by what was added. Payloads are %d bytes; chart runs with its defaults (HistorySize %d, InboxSize %d, MaxHistoryBytes %s", histPayload, chart.DefaultHistorySize, chart.DefaultInboxSize, fmtMem(float64(histCap(cfg))))
	if cfg.histCap > 0 {
		w(", set with -history-cap")
	}
	w("). Melody and the gorilla hub keep no history and take no part.\n\n")
	var chans, users []historyResult
	for _, h := range r.History {
		if h.Channels > 0 {
			chans = append(chans, h)
		}
		if h.Users > 0 {
			users = append(users, h)
		}
	}
	if len(chans) > 0 {
		w("**Channels**: %s channels nobody is subscribed to, each sent %d messages by business code (chart.Publish; centrifuge node.Publish with `WithHistory(%d, %v)`, the same count and age limits as chart's defaults), one message per channel at a time, so each keeps its full default history. \"Beyond the first\" is the cost of messages 2 to %d, measured from the point where every channel held one message: a kept message without its channel's share.\n\n",
			groupDigits(int64(cfg.histChannels)), chart.DefaultHistorySize, chart.DefaultHistorySize, chart.DefaultHistoryTTL, chart.DefaultHistorySize)
		w("| peer | channels × messages kept | heap per channel | heap per kept message | beyond the first | RSS per channel | RSS per kept message | note |\n|---|---:|---:|---:|---:|---:|---:|---|\n")
		for _, h := range chans {
			w("| %s | %s × %d | %s | %s | %s | %s | %s | %s |\n", h.Lib, groupDigits(int64(h.Channels)), h.PerChannel, fmtMem(h.HeapPerChannel), fmtMem(h.HeapPerMessage), fmtMem(h.HeapPerExtraMessage), fmtMem(h.RSSPerChannel), fmtMem(h.RSSPerMessage), h.ChannelError)
		}
		w("\n")
	}
	for _, h := range users {
		w("**Offline users** (%s): %s users who never connected, each sent one direct message (`SendMessageToUid(%d, uid, payload)`; the sender's own inbox, which keeps every direct message too, was filled to its %d messages before the measurement).\n\n", h.Lib, groupDigits(int64(h.Users)), histSender, chart.DefaultInboxSize)
		w("| peer | offline users | messages kept | heap per offline user | RSS per offline user | note |\n|---|---:|---:|---:|---:|---|\n")
		w("| %s | %s | %s | %s | %s | %s |\n\n", h.Lib, groupDigits(int64(h.Users)), groupDigits(int64(h.UsersKept)), fmtMem(h.HeapPerUser), fmtMem(h.RSSPerUser), h.Err)
		if len(h.Flood) < 2 {
			continue
		}
		w("**Flood past MaxHistoryBytes** (%s): direct messages to ever more users who never connected, one each, up to %s, many times what the %s cap lets the hub keep; the oldest go first. Measured as above at each checkpoint (totals of the process, not differences); peak RSS is the process's VmHWM, the most it ever held between collections.\n\n", h.Lib, groupDigits(int64(cfg.histFlood)), fmtMem(float64(h.Cap)))
		w("| direct messages sent | still kept | live heap | heap in use | RSS | peak RSS |\n|---:|---:|---:|---:|---:|---:|\n")
		var plateau serverStats
		for _, p := range h.Flood {
			w("| %s | %s | %s | %s | %s | %s |\n", groupDigits(int64(p.Sent)), groupDigits(int64(p.Kept)), fmtMem(float64(p.Mem.HeapAlloc)), fmtMem(float64(p.Mem.HeapInuse)), fmtMem(float64(p.Mem.RSS)), fmtMem(float64(p.Mem.PeakRSS)))
			plateau.HeapAlloc, plateau.HeapInuse = max(plateau.HeapAlloc, p.Mem.HeapAlloc), max(plateau.HeapInuse, p.Mem.HeapInuse)
			plateau.RSS, plateau.PeakRSS = max(plateau.RSS, p.Mem.RSS), max(plateau.PeakRSS, p.Mem.PeakRSS)
		}
		above := func(v, base uint64) string {
			return fmt.Sprintf("%s, %.2f×", fmtMem(float64(v)-float64(base)), (float64(v)-float64(base))/float64(h.Cap))
		}
		verdict := "bounded"
		if !h.Bounded {
			verdict = "**not bounded**"
		}
		a, z := h.Flood[len(h.Flood)-2], h.Flood[len(h.Flood)-1]
		w("\nPlateau, above the figures before the first offline message, and as a multiple of MaxHistoryBytes: live heap %s; heap in use (spans holding live objects, fragmentation included) %s; RSS %s; peak RSS %s (with GOGC=100 the heap grows to about twice the live heap between collections). From %s to %s messages the live heap grew by %.1f%% of what keeping every message would add: %s.\n\n",
			above(plateau.HeapAlloc, h.UserBase.HeapAlloc), above(plateau.HeapInuse, h.UserBase.HeapInuse), above(plateau.RSS, h.UserBase.RSS), above(plateau.PeakRSS, h.UserBase.RSS),
			groupDigits(int64(a.Sent)), groupDigits(int64(z.Sent)), 100*h.FloodGrowth, verdict)
	}
	return b.String()
}

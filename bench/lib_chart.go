package main

import (
	"log"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/wuyan94zl/chart"
)

// chartLib drives github.com/wuyan94zl/chart through its package-level API
// and DefaultHub, as an application would: chart.NewServer in the HTTP
// handler, chart.JoinChannelIds from Handler.LoginServer, chart.Publish from
// business code. Clients send {"channel_id","content","type":3} frames to
// publish into a joined channel (rooms workload). All chart defaults are
// kept (origin check, 50 msg/s inbound limit, 4096-message / 1 MiB queues).
type chartLib struct {
	mu      sync.Mutex
	pending map[uint64][]string // channels to join at login, by uid
	errs    atomic.Int64
}

func init() {
	register(&libSpec{
		name:     "chart",
		settings: "package-level API on DefaultHub with defaults; NewServer in the HTTP handler, JoinChannelIds from LoginServer, business publish: chart.Publish(channel, Message{Type: 3}); rooms: clients send {\"channel_id\",\"content\",\"type\":3}; history: chart.Publish, and chart.SendMessageToUid to uids never connected",
		server:   newChartHistoryLib,
		client:   chartProto,

		keepsChannels: true,
		keepsInboxes:  true,
	})
}

// newChartHistoryLib is newChartLib, with DefaultHub replaced by one whose
// MaxHistoryBytes is BENCH_HISTORY_CAP for the history workload when that
// is set (-history-cap; the tests use a small cap to reach it quickly).
//
// For the presence workload, DefaultHub is one whose channel "room" carries
// presence events.
func newChartHistoryLib(workload string) (serverLib, error) {
	if c, _ := strconv.ParseInt(os.Getenv("BENCH_HISTORY_CAP"), 10, 64); workload == wlHistory && c > 0 {
		chart.DefaultHub = chart.New(chart.Config{MaxHistoryBytes: c})
	}
	if workload == wlPresence {
		chart.DefaultHub = chart.New(chart.Config{PresenceChannels: func(id string) bool { return id == "room" }})
	}
	return newChartLib(workload)
}

// newChartLib returns the chart adapter; chart state lives in DefaultHub.
func newChartLib(string) (serverLib, error) {
	return &chartLib{pending: make(map[uint64][]string)}, nil
}

// ServeHTTP records the channels the user joins at login and calls
// chart.NewServer.
func (l *chartLib) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	uid, chans, err := requestUser(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	l.mu.Lock()
	l.pending[uid] = chans
	l.mu.Unlock()
	chart.NewServer(w, r, uid, l)
}

// publish sends payload as the Content of a type-3 message to channel.
func (l *chartLib) publish(channel string, payload []byte) error {
	return chart.Publish(channel, chart.Message{ChannelId: channel, Type: 3, Content: string(payload)})
}

// delivery returns the hub's accepted-to-written latency histogram.
func (l *chartLib) delivery() chart.Latency { return chart.DefaultHub.Stats().Delivery }

// keptInChannel returns how many messages channel keeps in its history.
func (l *chartLib) keptInChannel(channel string) (int, error) {
	msgs, _, err := chart.DefaultHub.History(channel, 0, 0)
	return len(msgs), err
}

// sendDirect sends payload from uid from to uid to, as business code would
// on behalf of a user: kept in both users' inboxes.
func (l *chartLib) sendDirect(from, to uint64, payload []byte) error {
	return chart.SendMessageToUid(from, to, string(payload))
}

// keptInInbox returns how many direct messages uid's inbox keeps.
func (l *chartLib) keptInInbox(uid uint64) int {
	msgs, _ := chart.DefaultHub.InboxHistory(uid, 0, 0)
	return len(msgs)
}

// SendMessage is chart's hook for messages sent by clients; the benchmark
// does nothing with them.
func (l *chartLib) SendMessage(m chart.Message) { noteRead(m.Content) }

// LoginServer joins the user to the channels named in its request.
func (l *chartLib) LoginServer(uid uint64) {
	l.mu.Lock()
	chans := l.pending[uid]
	delete(l.pending, uid)
	l.mu.Unlock()
	if len(chans) > 0 {
		if err := chart.JoinChannelIds(uid, chans...); err != nil {
			l.ErrorLogServer(err)
		}
	}
}

// LogoutServer is called when a user's connection ends.
func (l *chartLib) LogoutServer(uint64) {}

// ErrorLogServer counts errors and logs the first few.
func (l *chartLib) ErrorLogServer(err error) {
	if n := l.errs.Add(1); n <= 5 {
		log.Printf("chart error: %v", err)
	}
}

func init() {
	register(&libSpec{
		name:     "chart-nohistory",
		settings: "as chart, with history off (Config{HistorySize: -1, InboxSize: -1}): what keeping streams costs; only with -libs",
		server: func(arg string) (serverLib, error) {
			chart.DefaultHub = chart.New(chart.Config{HistorySize: -1, InboxSize: -1})
			return newChartLib(arg)
		},
		client: chartProto,
	})
}

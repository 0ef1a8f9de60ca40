// Command chat is a small, complete chat application built on the chart
// library: one Go binary that serves a browser page and the WebSocket it talks
// to.
//
// Run it from the repository root and open http://localhost:8888 in two
// browser windows:
//
//	go run ./examples/chat
//	go run ./examples/chat -addr 127.0.0.1:9000
//
// It shows how an application embeds chart:
//
//   - /ws upgrades a request to a chart connection with [chart.NewServer]; the
//     user id comes from the "id" query parameter (a real application would
//     take it from its session or token instead) and "name" is a display name
//     the demo remembers for the online list.
//   - /chart.js is the library's JavaScript client ([chart.ClientScript]); the
//     page (static/app.js) talks to /ws through it: reconnects, recovery of
//     what it missed (protocol chart.v1), acknowledged sends.
//   - The [chart.Handler] joins every user to the "lobby" channel when they
//     come online and logs what the library reports. A user who comes back
//     within [chart.DefaultHistoryTTL] of going offline (a network cut, a
//     reload) is put back in the channels they had instead, before their
//     page's hello is read, so that the page recovers what was sent there
//     meanwhile.
//   - Presence is pushed, not polled: on every login and logout the server
//     publishes a system message with the full online list, via
//     [chart.Publish], to the reserved "presence" channel that each user is
//     joined to. The page fetches /api/online once per (re)connection and
//     then only applies pushes; a version number orders the two.
//   - A small JSON API (see api.go) lets the page join and leave channels with
//     [chart.JoinChannelIds] and [chart.UnJoinChannelIds], and gives it the
//     client's timing (/api/config).
//
// Flags:
//
//	-addr               address to listen on (default :8888)
//	-heartbeat          how often the page pings the server (default 10s; 0: off)
//	-heartbeat-timeout  silence after a ping that counts as a dead connection (default 10s)
//	-max-backoff        the longest wait between the page's reconnect attempts (default 10s)
//
// The last three are chart.js options the page reads from /api/config: the
// operator sets them, never the page's URL, so a link cannot change how a
// visitor's page behaves. Tests make them short to see a dead connection
// (a blackhole) within seconds.
//
// Chat messages themselves travel over the WebSocket only, in chart's wire
// format. The demo has no authentication and no store: anyone can claim any
// user id, and a page shows what arrived while it was signed in (kept in the
// tab's sessionStorage across reloads) plus what the hub's history gives it
// after a reconnect.
package main

import (
	"context"
	"embed"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"

	"github.com/wuyan94zl/chart"
)

const (
	// lobbyChannel is the channel every user is joined to on login.
	lobbyChannel = "lobby"
	// presenceChannel carries the server's presence pushes. Every online
	// user is joined to it; the page hides it and the API refuses to join
	// or leave it.
	presenceChannel = "presence"
	// presenceType is the Message.Type of a presence push. Pushes are
	// published by the server, so their UserId is 0, which no client can
	// forge: the library stamps client messages with the sender's uid.
	presenceType uint8 = 1
	// maxNameRunes bounds a display name.
	maxNameRunes = 32

	// rememberFor is how long the channels of a user who went offline are
	// kept for their return: as long as the hub keeps a channel's history,
	// beyond which a returning page could not recover the channel anyway.
	rememberFor = chart.DefaultHistoryTTL
	// maxRemembered bounds how many offline users' channels are kept, and
	// maxRememberedChannels how many channels per user, so that clients
	// claiming ever new user ids cannot grow the demo's memory without end.
	maxRemembered         = 10000
	maxRememberedChannels = 64
)

//go:embed static
var staticFiles embed.FS

func main() {
	addr := flag.String("addr", ":8888", "address to listen on")
	heartbeat := flag.Duration("heartbeat", 10*time.Second, "how often the page pings the server (0: off)")
	heartbeatTimeout := flag.Duration("heartbeat-timeout", 10*time.Second, "silence after a ping that counts as a dead connection")
	maxBackoff := flag.Duration("max-backoff", 10*time.Second, "the longest wait between the page's reconnect attempts")
	flag.Parse()

	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	slog.SetDefault(logger)

	client, err := newClientOptions(*heartbeat, *heartbeatTimeout, *maxBackoff)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chat:", err)
		flag.Usage()
		os.Exit(2)
	}
	app := newApp(logger)
	app.client = client
	srv := newHTTPServer(app.routes())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		logger.Error("listen", "err", err)
		os.Exit(1)
	}
	logger.Info("chat demo listening", "addr", ln.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()

	select {
	case err := <-errc:
		logger.Error("serve", "err", err)
		os.Exit(1)
	case <-ctx.Done():
	}
	stop()
	logger.Info("shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		logger.Warn("http shutdown", "err", err)
	}
	// WebSockets are hijacked connections, which http.Server does not track:
	// the hub closes them itself, with status 1001 so that pages reconnect.
	if err := chart.Shutdown(shutdownCtx); err != nil {
		logger.Warn("chart shutdown", "err", err)
	}
}

// newHTTPServer returns the demo's http.Server, with timeouts that bound slow
// or idle clients without cutting WebSockets short.
//
// They all concern plain HTTP: the page, the API, and a WebSocket's upgrade
// request. Once upgraded, a WebSocket is a hijacked connection that
// http.Server no longer watches; gorilla/websocket clears the deadlines the
// server had set on it, and chart bounds it with its own (PongWait for reads,
// WriteWait for writes). So these values may be short even though a chat
// connection stays open for hours.
func newHTTPServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler: h,
		// ReadHeaderTimeout bounds reading a request's headers, an upgrade
		// request's included: a client that opens a connection and sends
		// its headers byte by byte (slowloris) is dropped after 10 s.
		ReadHeaderTimeout: 10 * time.Second,
		// ReadTimeout bounds reading a whole request, body included. The
		// only bodies are the API's JSON, at most 16 KiB, and an upgrade
		// request has none; the deadline does not survive the upgrade.
		ReadTimeout: 30 * time.Second,
		// WriteTimeout bounds writing a response (the page, the API). It
		// is set when the request has been read and also cleared by the
		// upgrade, so it never closes a WebSocket.
		WriteTimeout: 30 * time.Second,
		// IdleTimeout closes a keep-alive connection that carries no new
		// request for 2 minutes. A WebSocket is not idle HTTP: it is not
		// subject to it.
		IdleTimeout: 2 * time.Minute,
	}
}

// app is the demo's state: display names, the presence version and the
// channels of users who went offline. It is also the [chart.Handler] of
// every connection.
type app struct {
	log    *slog.Logger
	client clientOptions    // the page's chart.js timing, /api/config
	now    func() time.Time // time.Now; tests move it

	mu      sync.Mutex        // guards the fields below
	names   map[uint64]string // last display name each uid connected with
	left    map[uint64]leftAt // channels of users who went offline
	version uint64            // bumped on every presence change
}

// leftAt is what a user who went offline was in, and when.
type leftAt struct {
	at       time.Time
	channels []string
}

func newApp(log *slog.Logger) *app {
	return &app{
		log:    log,
		client: defaultClientOptions,
		now:    time.Now,
		names:  make(map[uint64]string),
		left:   make(map[uint64]leftAt),
	}
}

// clientOptions are the chart.js options the page takes from /api/config,
// in milliseconds as chart.js wants them. Only the operator sets them (by
// flag): the page never reads options from its own URL, which any web site
// could link to.
type clientOptions struct {
	Heartbeat        int64 `json:"heartbeat"`        // between the page's pings; 0: off
	HeartbeatTimeout int64 `json:"heartbeatTimeout"` // silence that counts as a dead connection
	MaxDelay         int64 `json:"maxDelay"`         // the reconnect backoff's cap
}

var defaultClientOptions = clientOptions{Heartbeat: 10000, HeartbeatTimeout: 10000, MaxDelay: 10000}

// newClientOptions checks the flags' durations: at least 100 ms (a
// heartbeat may be 0, off) and at most an hour.
func newClientOptions(heartbeat, heartbeatTimeout, maxBackoff time.Duration) (clientOptions, error) {
	check := func(name string, d time.Duration, zeroOK bool) error {
		if (d == 0 && zeroOK) || (d >= 100*time.Millisecond && d <= time.Hour) {
			return nil
		}
		return fmt.Errorf("-%s %v: want a duration from 100ms to 1h", name, d)
	}
	err := errors.Join(
		check("heartbeat", heartbeat, true),
		check("heartbeat-timeout", heartbeatTimeout, false),
		check("max-backoff", maxBackoff, false))
	return clientOptions{
		Heartbeat:        heartbeat.Milliseconds(),
		HeartbeatTimeout: heartbeatTimeout.Milliseconds(),
		MaxDelay:         maxBackoff.Milliseconds(),
	}, err
}

// routes returns the demo's HTTP handler: the page, the WebSocket and the API.
func (a *app) routes() http.Handler {
	static, err := fs.Sub(staticFiles, "static")
	if err != nil {
		panic(err) // the embed pattern guarantees the directory exists
	}
	mux := http.NewServeMux()
	mux.Handle("GET /", http.FileServerFS(static))
	// The library's JavaScript client, which the page imports.
	mux.Handle("GET /chart.js", chart.ClientScript)
	mux.HandleFunc("GET /ws", a.serveWS)
	mux.HandleFunc("GET /api/config", a.apiConfig)
	mux.HandleFunc("GET /api/online", a.apiOnline)
	mux.HandleFunc("GET /api/channels", a.apiChannels)
	mux.HandleFunc("POST /api/join", a.apiJoin)
	mux.HandleFunc("POST /api/leave", a.apiLeave)
	return mux
}

// serveWS hands the request to chart once the uid is known to be valid.
func (a *app) serveWS(w http.ResponseWriter, r *http.Request) {
	uid, _ := strconv.Atoi(r.FormValue("id"))
	if uid <= 0 {
		http.Error(w, "id must be a positive integer", http.StatusBadRequest)
		return
	}
	if name := cleanName(r.FormValue("name")); name != "" {
		a.mu.Lock()
		a.names[uint64(uid)] = name
		a.mu.Unlock()
	}
	chart.NewServer(w, r, uint64(uid), a)
}

// SendMessage is called for every message a client sent and the library
// accepted. The demo only logs it; a real application might store it.
func (a *app) SendMessage(msg chart.Message) {
	a.log.Info("message", "from", msg.UserId, "channel", msg.ChannelId,
		"to", msg.ToUserId, "bytes", len(msg.Content))
}

// FilterMessage runs before the library delivers a client's message:
// the presence channel is the server's alone, so a client's message to it
// is refused instead of reaching everyone as a fake online list.
func (a *app) FilterMessage(c *chart.Conn, m *chart.Message) error {
	if m.ChannelId == presenceChannel {
		return chart.Refuse("read_only", "the presence channel is read-only")
	}
	return nil
}

// LoginServer joins a user who just came online to the presence channel
// and to the lobby, or, when they went offline less than rememberFor ago,
// to the channels they had then; then it tells everyone about the new
// online list.
//
// The hub reads a connection's first frame only after LoginServer returned,
// so a chart.js page that reconnects after a cut finds itself back in its
// channels when its hello is read, and gets what it missed in them; were it
// joined later (by the page, through the API), the hub would have forgotten
// its place in those channels.
func (a *app) LoginServer(uid uint64) {
	channels, back := a.recall(uid)
	a.log.Info("login", "uid", uid, "name", a.name(uid), "back", back)
	if !back {
		channels = []string{lobbyChannel}
	}
	if err := chart.JoinChannelIds(uid, append([]string{presenceChannel}, channels...)...); err != nil {
		a.log.Warn("join on login", "uid", uid, "err", err)
	}
	a.publishPresence("online", uid)
}

// LogoutServer remembers uid's channels for its return and tells the
// remaining users that uid went offline.
func (a *app) LogoutServer(uid uint64) {
	a.log.Info("logout", "uid", uid)
	// Inside LogoutServer UserChannelIds still lists the channels uid had.
	a.remember(uid, visibleChannels(uid))
	a.publishPresence("offline", uid)
}

// remember keeps the channels of a user who went offline, at most
// maxRememberedChannels of them, for rememberFor. When maxRemembered users
// are kept, the expired entries go, and if none had expired an arbitrary
// one: a flood of made-up user ids costs other users their channels at
// worst, never the demo its memory.
func (a *app) remember(uid uint64, channels []string) {
	if len(channels) > maxRememberedChannels {
		channels = channels[:maxRememberedChannels]
	}
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.left[uid]; !ok && len(a.left) >= maxRemembered {
		for id, l := range a.left {
			if now.Sub(l.at) > rememberFor {
				delete(a.left, id)
			}
		}
		for id := range a.left {
			if len(a.left) < maxRemembered {
				break
			}
			delete(a.left, id)
		}
	}
	a.left[uid] = leftAt{at: now, channels: channels}
}

// recall returns and forgets the channels uid had when it went offline, if
// that was less than rememberFor ago.
func (a *app) recall(uid uint64) ([]string, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	l, ok := a.left[uid]
	if !ok {
		return nil, false
	}
	delete(a.left, uid)
	if a.now().Sub(l.at) > rememberFor {
		return nil, false
	}
	return l.channels, true
}

// ErrorLogServer logs what the library reports: failed upgrades, rejected
// frames, closed sockets.
func (a *app) ErrorLogServer(err error) {
	a.log.Warn("chart", "err", err)
}

// onlineUser is one entry of the online list sent to the page.
type onlineUser struct {
	UID  uint64 `json:"uid"`
	Name string `json:"name"`
}

// presence is the online list as the page receives it, both from
// /api/online and in the Content of a presence push.
type presence struct {
	Version uint64       `json:"version"`
	Event   string       `json:"event,omitempty"` // "online" or "offline"
	UID     uint64       `json:"uid,omitempty"`
	Users   []onlineUser `json:"users"`
}

// snapshot returns the online list with a new version when bump is set, or
// with the current one otherwise. The list is read under the same lock that
// orders versions, so a higher version never carries an older list.
func (a *app) snapshot(bump bool) presence {
	a.mu.Lock()
	defer a.mu.Unlock()
	if bump {
		a.version++
	}
	users := []onlineUser{}
	for _, uid := range chart.OnlineUserIds() {
		users = append(users, onlineUser{UID: uid, Name: a.names[uid]})
	}
	return presence{Version: a.version, Users: users}
}

// publishPresence pushes the current online list to every online user.
func (a *app) publishPresence(event string, uid uint64) {
	p := a.snapshot(true)
	p.Event, p.UID = event, uid
	content, err := jsonString(p)
	if err != nil {
		a.log.Error("presence", "err", err)
		return
	}
	err = chart.Publish(presenceChannel, chart.Message{Type: presenceType, Content: content})
	if err != nil {
		a.log.Warn("publish presence", "err", err)
	}
}

func (a *app) name(uid uint64) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.names[uid]
}

// cleanName trims a display name, drops control characters and caps its
// length. The page renders names as text, so this is tidiness, not escaping.
func cleanName(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return -1
		}
		return r
	}, strings.TrimSpace(s))
	if r := []rune(s); len(r) > maxNameRunes {
		s = strings.TrimSpace(string(r[:maxNameRunes]))
	}
	return s
}

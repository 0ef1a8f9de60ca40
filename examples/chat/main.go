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
//   - The [chart.Handler] joins every user to the "lobby" channel when they
//     come online and logs what the library reports.
//   - Presence is pushed, not polled: on every login and logout the server
//     publishes a system message with the full online list, via
//     [chart.Publish], to the reserved "presence" channel that each user is
//     joined to. The page fetches /api/online once per (re)connection and
//     then only applies pushes; a version number orders the two.
//   - A small JSON API (see api.go) lets the page join and leave channels with
//     [chart.JoinChannelIds] and [chart.UnJoinChannelIds].
//
// Chat messages themselves travel over the WebSocket only, in chart's wire
// format. The demo has no authentication and no history: anyone can claim any
// user id, and a page shows only what arrived while it was connected.
package main

import (
	"context"
	"embed"
	"flag"
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
)

//go:embed static
var staticFiles embed.FS

func main() {
	addr := flag.String("addr", ":8888", "address to listen on")
	flag.Parse()

	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	slog.SetDefault(logger)

	app := newApp(logger)
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

// app is the demo's state: display names and the presence version. It is
// also the [chart.Handler] of every connection.
type app struct {
	log *slog.Logger

	mu      sync.Mutex
	names   map[uint64]string // last display name each uid connected with
	version uint64            // bumped on every presence change
}

func newApp(log *slog.Logger) *app {
	return &app{log: log, names: make(map[uint64]string)}
}

// routes returns the demo's HTTP handler: the page, the WebSocket and the API.
func (a *app) routes() http.Handler {
	static, err := fs.Sub(staticFiles, "static")
	if err != nil {
		panic(err) // the embed pattern guarantees the directory exists
	}
	mux := http.NewServeMux()
	mux.Handle("GET /", http.FileServerFS(static))
	mux.HandleFunc("GET /ws", a.serveWS)
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

// LoginServer joins a user who just came online to the lobby and to the
// presence channel, then tells everyone about the new online list.
func (a *app) LoginServer(uid uint64) {
	a.log.Info("login", "uid", uid, "name", a.name(uid))
	if err := chart.JoinChannelIds(uid, presenceChannel, lobbyChannel); err != nil {
		a.log.Warn("join on login", "uid", uid, "err", err)
	}
	a.publishPresence("online", uid)
}

// LogoutServer tells the remaining users that uid went offline.
func (a *app) LogoutServer(uid uint64) {
	a.log.Info("logout", "uid", uid)
	a.publishPresence("offline", uid)
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

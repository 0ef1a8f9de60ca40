package main

import (
	"embed"
	"io/fs"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/wuyan94zl/chart"
)

const (
	// lobbyChannel is the channel every user is joined to on login.
	lobbyChannel = "lobby"
	// presenceChannel is the channel of the online list: every online user
	// is joined to it at login, and it is the demo's only channel with the
	// library's presence events (Config.PresenceChannels), so its member
	// list, which the library sends and keeps up to date, is who is online.
	// Clients cannot post to it (FilterMessage) nor join or leave it
	// (JoinServer, LeaveServer), and the page hides it.
	presenceChannel = "presence"
	// maxChannels bounds the channels a user may be in (presence aside):
	// JoinServer refuses more with "too_many_channels".
	maxChannels = 32

	// rememberFor is how long the channels of a user who went offline are
	// kept for their return: as long as the hub keeps a channel's history,
	// beyond which a returning page could not recover the channel anyway.
	rememberFor = chart.DefaultHistoryTTL
	// maxRemembered bounds how many offline users' channels are kept, and
	// maxRememberedChannels how many channels per user, so that many
	// sign-ins cannot grow the demo's memory without end.
	maxRemembered         = 10000
	maxRememberedChannels = 64
)

//go:embed static
var staticFiles embed.FS

// options configure the demo (main's flags and environment).
type options struct {
	client       clientOptions // the page's chart.js timing, /api/config
	origins      []string      // other origins allowed to use the API and the socket
	key          []byte        // signs sessions; nil: a random key
	secureCookie bool          // Secure cookies over plain HTTP too
}

// app is the demo's state: the hub, the sessions, who is online under what
// name, and the channels of users who went offline.
// It is the [chart.Handler] of every connection.
type app struct {
	log      *slog.Logger
	hub      *chart.Hub
	client   clientOptions
	origins  []string
	sessions *sessions
	now      func() time.Time // time.Now; tests move it

	mu    sync.Mutex
	users map[uint64]*user  // users with a connection or logged in
	left  map[uint64]leftAt // channels of users who went offline
}

// user is a user with a connection: its display name, from its session.
// It is dropped when its last connection has gone and it is logged out, so
// the map holds online users only, however many names were ever used.
type user struct {
	name   string
	conns  int  // connections that passed ConnectServer and have not ended
	online bool // between LoginServer and LogoutServer
}

// leftAt is what a user who went offline was in, and when.
type leftAt struct {
	at       time.Time
	channels []string
}

func newApp(log *slog.Logger, o options) *app {
	key := o.key
	if key == nil {
		var err error
		if key, err = sessionKey(""); err != nil {
			panic(err) // crypto/rand failed: nothing will work
		}
	}
	if o.client == (clientOptions{}) {
		o.client = defaultClientOptions
	}
	a := &app{
		log:      log,
		client:   o.client,
		origins:  o.origins,
		sessions: &sessions{key: key, secure: o.secureCookie, now: time.Now},
		now:      time.Now,
		users:    make(map[uint64]*user),
		left:     make(map[uint64]leftAt),
	}
	a.hub = chart.New(chart.Config{
		Handler:        a,
		Authenticate:   a.authenticate,
		AllowedOrigins: o.origins,
		Logger:         log,
		// The online list is the presence channel's member list: the
		// library sends each member the list, then the changes, gathered
		// over PresenceWindow (200 ms), so a burst of logins costs each
		// page a few frames, not one per login.
		PresenceChannels: func(id string) bool { return id == presenceChannel },
		// A bound of the library's own, beside JoinServer's.
		MaxChannelsPerUid: maxChannels + 1,
	})
	return a
}

// routes returns the demo's HTTP handler: the page, the WebSocket and the API.
func (a *app) routes() http.Handler {
	static, err := fs.Sub(staticFiles, "static")
	if err != nil {
		panic(err) // the embed pattern guarantees the directory exists
	}
	mux := http.NewServeMux()
	mux.Handle("GET /", pageHeaders(http.FileServerFS(static)))
	// The library's JavaScript client, which the page imports.
	mux.Handle("GET /chart.js", chart.ClientScript)
	// The hub: Authenticate gives it the uid, it checks the Origin.
	mux.Handle("GET /ws", a.hub)
	// The hub's metrics, for a scraper on this host (metrics.go).
	mux.HandleFunc("GET /metrics", a.metrics)
	a.apiRoutes(mux)
	return mux
}

// pageHeaders adds the page's security headers: it runs only its own
// scripts, connects only to its own origin, and cannot be framed.
func pageHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; "+
			"connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Referrer-Policy", "no-referrer")
		h.ServeHTTP(w, r)
	})
}

// authenticate is Config.Authenticate: the uid of a WebSocket is the one
// its session cookie was issued for. The display name comes with it.
func (a *app) authenticate(r *http.Request) (uint64, any, error) {
	s, err := a.sessions.read(r)
	if err != nil {
		return 0, nil, chart.Refuse("signed_out", "sign in first") // 401
	}
	return s.UID, s, nil
}

// ConnectServer runs for each connection before it registers: it closes
// the connection (4002) when the session expires, and records the user's
// display name from the session while the user has connections.
func (a *app) ConnectServer(c *chart.Conn) error {
	s, ok := c.Meta().(session)
	if !ok || !a.now().Before(s.Expires) {
		return chart.Refuse("signed_out", "the session has ended")
	}
	c.SetExpiry(s.Expires)
	a.mu.Lock()
	defer a.mu.Unlock()
	u := a.users[c.Uid()]
	if u == nil {
		u = &user{}
		a.users[c.Uid()] = u
	}
	u.name = s.Name
	u.conns++
	return nil
}

// DisconnectServer runs for each connection that ConnectServer let in.
func (a *app) DisconnectServer(c *chart.Conn, reason error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if u := a.users[c.Uid()]; u != nil {
		u.conns--
		a.forgetLocked(c.Uid(), u)
	}
}

// forgetLocked drops a user who has no connection and is logged out.
func (a *app) forgetLocked(uid uint64, u *user) {
	if u.conns <= 0 && !u.online {
		delete(a.users, uid)
	}
}

// SendMessage is called for every message a client sent and the library
// accepted. The demo only logs it; a real application might store it.
func (a *app) SendMessage(msg chart.Message) {
	a.log.Info("message", "from", msg.UserId, "channel", msg.ChannelId,
		"to", msg.ToUserId, "bytes", len(msg.Content))
}

// FilterMessage runs before the library delivers a client's message:
// the presence channel carries no messages, so a client's message to it is
// refused (error frame "read_only") instead of reaching everyone online.
func (a *app) FilterMessage(c *chart.Conn, m *chart.Message) error {
	if m.ChannelId == presenceChannel {
		return chart.Refuse("read_only", "the presence channel is read-only")
	}
	return nil
}

// LoginServer joins a user who just came online to the presence channel
// and to the lobby, or, when they went offline less than rememberFor ago,
// to the channels they had then. Joining the presence channel is what
// tells everyone online (the library's presence events).
//
// The hub reads a connection's first frame only after LoginServer returned,
// so a chart.js page that reconnects after a cut finds itself back in its
// channels when its hello is read, and gets what it missed in them; were it
// joined later (by the page's join requests), the hub would have forgotten
// its place in those channels.
func (a *app) LoginServer(uid uint64) {
	channels, back := a.recall(uid)
	if !back {
		channels = []string{lobbyChannel}
	}
	if err := a.hub.JoinChannelIds(uid, append([]string{presenceChannel}, channels...)...); err != nil {
		a.log.Warn("join on login", "uid", uid, "err", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	u := a.users[uid]
	if u == nil {
		// Its connection closed before its login ran: it is logged out
		// next. The name is unknown, the page shows "user <uid>".
		u = &user{}
		a.users[uid] = u
	}
	u.online = true
	a.log.Info("login", "uid", uid, "name", u.name, "back", back)
}

// LogoutServer remembers uid's channels for its return. The library tells
// the others that uid left the presence channel.
func (a *app) LogoutServer(uid uint64) {
	a.log.Info("logout", "uid", uid)
	// Inside LogoutServer UserChannelIds still lists the channels uid had.
	a.remember(uid, visibleChannels(a.hub, uid))
	a.mu.Lock()
	defer a.mu.Unlock()
	if u := a.users[uid]; u != nil {
		u.online = false
		a.forgetLocked(uid, u)
	}
}

// JoinServer decides a page's request to join a channel ({"join":"go"},
// chart.js's join): the library asks it after its own checks (rate limit,
// MaxChannelIdLen, MaxChannelsPerUid), and the join is the requesting
// connection's user's, never anyone else's. Channels are public rooms: any
// signed-in user may join one by name, within the demo's rule for names
// (validChannel), up to maxChannels; the presence channel is the server's.
func (a *app) JoinServer(c *chart.Conn, channelId string) error {
	if s, ok := c.Meta().(session); !ok || !a.now().Before(s.Expires) {
		return chart.Refuse("signed_out", "the session has ended")
	}
	if why := validChannel(channelId); why != "" {
		return chart.Refuse("invalid_channel", why)
	}
	if n := len(visibleChannels(a.hub, c.Uid())); n >= maxChannels {
		return chart.Refuse("too_many_channels", "you are in "+strconv.Itoa(maxChannels)+" channels already: leave one first")
	}
	a.log.Info("join", "uid", c.Uid(), "channel", channelId)
	return nil
}

// LeaveServer decides a request to leave a channel: any but presence.
func (a *app) LeaveServer(c *chart.Conn, channelId string) error {
	if channelId == presenceChannel {
		return chart.Refuse("invalid_channel", `"presence" is reserved for the server`)
	}
	a.log.Info("leave", "uid", c.Uid(), "channel", channelId)
	return nil
}

// ErrorLogServer logs what the library reports: failed upgrades, rejected
// frames, closed sockets.
func (a *app) ErrorLogServer(err error) {
	a.log.Warn("chart", "err", err)
}

// names returns the display names of those of uids who are online (the
// online list's uids come from the library's presence events, without
// names: a page asks for the names it does not know yet).
func (a *app) names(uids []uint64) map[uint64]string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[uint64]string, len(uids))
	for _, uid := range uids {
		if u := a.users[uid]; u != nil && u.online {
			out[uid] = u.name
		}
	}
	return out
}

// remember keeps the channels of a user who went offline, at most
// maxRememberedChannels of them, for rememberFor. When maxRemembered users
// are kept, the expired entries go, and if none had expired an arbitrary
// one: many sign-ins cost other users their channels at worst, never the
// demo its memory.
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

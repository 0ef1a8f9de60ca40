package main

import (
	"embed"
	"io/fs"
	"log/slog"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/wuyan94zl/chart"
)

const (
	// lobbyChannel is the channel every user is joined to on login.
	lobbyChannel = "lobby"
	// presenceChannel carries the server's presence deltas. Every online
	// user is joined to it; clients cannot post to it (FilterMessage), the
	// API refuses to join or leave it, and the page hides it.
	presenceChannel = "presence"
	// presenceType is the Message.Type of a presence delta. Deltas are
	// published by the server, so their UserId is 0, which no client can
	// forge: the library stamps client messages with the sender's uid.
	presenceType uint8 = 1

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
// name, the presence version and the channels of users who went offline.
// It is the [chart.Handler] of every connection.
type app struct {
	log      *slog.Logger
	hub      *chart.Hub
	client   clientOptions
	origins  []string
	sessions *sessions
	now      func() time.Time // time.Now; tests move it

	mu      sync.Mutex
	users   map[uint64]*user  // users with a connection or logged in
	version uint64            // of the online list: one per delta
	left    map[uint64]leftAt // channels of users who went offline
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
// the presence channel is the server's alone, so a client's message to it
// is refused (error frame "read_only") instead of reaching everyone as a
// fake delta.
func (a *app) FilterMessage(c *chart.Conn, m *chart.Message) error {
	if m.ChannelId == presenceChannel {
		return chart.Refuse("read_only", "the presence channel is read-only")
	}
	return nil
}

// LoginServer joins a user who just came online to the presence channel
// and to the lobby, or, when they went offline less than rememberFor ago,
// to the channels they had then; then it tells everyone that they joined.
//
// The hub reads a connection's first frame only after LoginServer returned,
// so a chart.js page that reconnects after a cut finds itself back in its
// channels when its hello is read, and gets what it missed in them; were it
// joined later (by the page, through the API), the hub would have forgotten
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
	a.publishLocked(delta{Presence: "join", UID: uid, Name: u.name})
}

// LogoutServer remembers uid's channels for its return and tells the
// remaining users that uid left.
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
	a.publishLocked(delta{Presence: "leave", UID: uid})
}

// ErrorLogServer logs what the library reports: failed upgrades, rejected
// frames, closed sockets.
func (a *app) ErrorLogServer(err error) {
	a.log.Warn("chart", "err", err)
}

// Presence. The online list changes by deltas: each login and logout
// publishes one small message to the presence channel, so a login costs
// each online user a frame of a few dozen bytes, not the whole list (which
// made n logins cost n² and closed every connection as a slow consumer
// with a few hundred users). A page gets the whole list once per
// connection from /api/online, with the version of the last delta it
// includes, and from then on applies the deltas of higher versions in
// order.
//
// Deltas are transient (kept in no history): a page that reconnects fetches
// the list again instead of replaying what it missed. They are published
// under a.mu, the lock that numbers them, so every connection receives them
// in version order.

// delta is the Content of a presence message, as JSON.
type delta struct {
	Presence string `json:"presence"` // "join" or "leave"
	UID      uint64 `json:"uid"`
	Name     string `json:"name,omitempty"` // join only
	Version  uint64 `json:"version"`
}

// onlineUser is one entry of the online list.
type onlineUser struct {
	UID  uint64 `json:"uid"`
	Name string `json:"name"`
}

// snapshot is the online list as /api/online gives it: it includes every
// delta up to Version.
type snapshot struct {
	Version uint64       `json:"version"`
	Users   []onlineUser `json:"users"`
}

// publishLocked numbers d and publishes it; a.mu is held.
func (a *app) publishLocked(d delta) {
	a.version++
	d.Version = a.version
	content, err := jsonString(d)
	if err == nil {
		err = a.hub.Publish(presenceChannel, chart.Message{Type: presenceType, Content: content, Transient: true})
	}
	if err != nil {
		a.log.Warn("publish presence", "err", err)
	}
}

// online returns the online list and the version of the last delta in it.
func (a *app) online() snapshot {
	a.mu.Lock()
	defer a.mu.Unlock()
	users := make([]onlineUser, 0, len(a.users))
	for uid, u := range a.users {
		if u.online {
			users = append(users, onlineUser{UID: uid, Name: u.name})
		}
	}
	sort.Slice(users, func(i, j int) bool { return users[i].UID < users[j].UID })
	return snapshot{Version: a.version, Users: users}
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

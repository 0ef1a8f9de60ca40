// Command chat is a small, complete chat application built on the chart
// library: one Go binary that serves a browser page and the WebSocket it talks
// to. It is meant to be copied: what it does for security is what a real
// application needs to do too.
//
// Run it from the repository root and open http://localhost:8888 in two
// browsers (or a normal and a private window: a browser holds one session):
//
//	go run ./examples/chat
//	go run ./examples/chat -addr 127.0.0.1:9000
//
// It shows how an application embeds chart:
//
//   - Sign-in (session.go): the page posts a display name to /api/signin and
//     gets a uid chosen by the server, in an HMAC-signed, HttpOnly,
//     SameSite=Lax cookie. There are no passwords: the point is that the
//     uid comes from the server's own signed session, never from the
//     request body or URL.
//   - /ws is the hub itself as an http.Handler: [chart.Config.Authenticate]
//     reads the session cookie, and the hub checks the Origin. The
//     connection closes with 4002 when the session expires.
//   - /chart.js is the library's JavaScript client ([chart.ClientScript]); the
//     page (static/app.js) talks to /ws through it: reconnects, recovery of
//     what it missed (protocol chart.v1), acknowledged sends.
//   - The [chart.Handler] (app.go) joins every user to the "lobby" channel
//     when they come online; a user back within [chart.DefaultHistoryTTL]
//     of going offline (a network cut, a reload) is put back in the
//     channels they had instead, before their page's hello is read, so that
//     the page recovers what was sent there meanwhile. Its FilterMessage
//     keeps the "presence" channel free of messages.
//   - Joining and leaving channels: the page asks over its socket
//     (chart.js's join and leave, {"join":"go"}); the Handler's JoinServer
//     decides (the requesting user only, at most 32 channels, a name rule)
//     and LeaveServer keeps everyone in "presence".
//   - The online list is the library's presence events: "presence" is a
//     channel with them (Config.PresenceChannels) that every online user
//     is in, so each page gets its member list, then the changes, which
//     chart.js keeps; the page asks /api/names for names it does not know.
//   - A small JSON API (api.go) for sign-in and sign-out, names, the
//     user's own channels and the client's timing (/api/config). It
//     answers only its own origin (or -origins), only application/json
//     bodies of at most 4 KiB.
//
// Flags:
//
//	-addr               address to listen on (default :8888)
//	-origins            other origins whose pages may use the API and the socket,
//	                    comma-separated (https://app.example.com); default none
//	-secure-cookie      mark the session cookie Secure although this server speaks
//	                    plain HTTP (behind a proxy that terminates TLS)
//	-heartbeat          how often the page pings the server (default 10s; 0: off)
//	-heartbeat-timeout  silence after a ping that counts as a dead connection (default 10s)
//	-max-backoff        the longest wait between the page's reconnect attempts (default 10s)
//
// The environment variable CHAT_SESSION_KEY (base64, at least 32 bytes:
// openssl rand -base64 32) is the key that signs sessions; without it each
// process makes a random one, so a restart signs everybody out.
//
// The last three flags are chart.js options the page reads from
// /api/config: the operator sets them, never the page's URL, so a link
// cannot change how a visitor's page behaves.
//
// Chat messages travel over the WebSocket only, in chart's wire format.
// The demo has no store: a page shows what arrived while it was signed in
// (kept in the tab's sessionStorage across reloads) plus what the hub's
// history gives it after a reconnect.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	addr := flag.String("addr", ":8888", "address to listen on")
	origins := flag.String("origins", "", "other origins whose pages may use the API and the socket, comma-separated (https://app.example.com)")
	secure := flag.Bool("secure-cookie", false, "mark the session cookie Secure although this server speaks plain HTTP (behind a TLS proxy)")
	heartbeat := flag.Duration("heartbeat", 10*time.Second, "how often the page pings the server (0: off)")
	heartbeatTimeout := flag.Duration("heartbeat-timeout", 10*time.Second, "silence after a ping that counts as a dead connection")
	maxBackoff := flag.Duration("max-backoff", 10*time.Second, "the longest wait between the page's reconnect attempts")
	flag.Parse()

	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	slog.SetDefault(logger)

	client, err := newClientOptions(*heartbeat, *heartbeatTimeout, *maxBackoff)
	allowed, err2 := parseOrigins(*origins)
	if err = errors.Join(err, err2); err != nil {
		fmt.Fprintln(os.Stderr, "chat:", err)
		flag.Usage()
		os.Exit(2)
	}
	key, err := sessionKey(os.Getenv(sessionKeyEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, "chat:", err)
		os.Exit(2)
	}
	if os.Getenv(sessionKeyEnv) == "" {
		logger.Info("no " + sessionKeyEnv + ": sessions are signed with a random key and end when the process does")
	}
	app := newApp(logger, options{client: client, origins: allowed, key: key, secureCookie: *secure})
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
	if err := app.hub.Shutdown(shutdownCtx); err != nil {
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
		// its headers byte by byte (slowloris) is dropped after 5 s.
		ReadHeaderTimeout: 5 * time.Second,
		// ReadTimeout bounds reading a whole request, body included: a
		// client that sends its body byte by byte is dropped after 10 s.
		// The only bodies are the API's JSON, at most maxBody (4 KiB), and
		// an upgrade request has none; the deadline does not survive the
		// upgrade.
		ReadTimeout: 10 * time.Second,
		// WriteTimeout bounds writing a response (the page, the API). It
		// is set when the request has been read and also cleared by the
		// upgrade, so it never closes a WebSocket.
		WriteTimeout: 10 * time.Second,
		// IdleTimeout closes a keep-alive connection that carries no new
		// request for a minute. A WebSocket is not idle HTTP: it is not
		// subject to it.
		IdleTimeout: time.Minute,
		// MaxHeaderBytes bounds a request's headers (the default is 1 MB).
		// The page's requests carry a session cookie of about 150 bytes;
		// 32 KiB leaves room for whatever else a browser sends.
		MaxHeaderBytes: 32 << 10,
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

// parseOrigins checks -origins: full origins (scheme://host[:port]), no
// path, no "*". A wildcard would let any web site's page act as its
// visitor, cookies included.
func parseOrigins(s string) ([]string, error) {
	var out []string
	for _, o := range strings.Split(s, ",") {
		o = strings.TrimSpace(o)
		if o == "" {
			continue
		}
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
			u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			return nil, fmt.Errorf("-origins %q: want origins like https://app.example.com (scheme and host, no path, no *)", o)
		}
		out = append(out, strings.ToLower(u.Scheme+"://"+u.Host))
	}
	return out, nil
}

package main

import (
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/wuyan94zl/chart"
)

// The JSON API the page uses next to its WebSocket. Every call but sign-in
// and config acts for the signed-in user, whose uid comes from the session
// cookie; a body that names a uid is refused (400), it is never read.
//
//	POST /api/signin  {"name":"Ann"}         -> {"uid":4821…,"name":"Ann"}, sets the session cookie
//	POST /api/signout {}                     -> {}, clears it and closes the user's connections
//	GET  /api/session                        -> {"uid":4821…,"name":"Ann"}, or 401
//	GET  /api/config                         -> {"heartbeat":10000,"heartbeatTimeout":10000,"maxDelay":10000}
//	GET  /api/names?uids=4821…,77…           -> {"names":{"4821…":"Ann"}}, of those online
//	GET  /api/channels                       -> {"channels":["go","lobby"]}
//
// Joining and leaving channels is not here: the page asks over its
// WebSocket (chart.js's join and leave), and the app's JoinServer and
// LeaveServer (app.go) decide. Who is online comes over the WebSocket too
// (the library's presence events); /api/names gives the names of uids.
//
// Every request is checked before it is handled:
//
//   - Origin: a browser sends it with every POST and every cross-origin
//     fetch; it must be this server's own origin (its Host) or one of
//     -origins, else 403 "forbidden_origin". A request without one that a
//     browser marks as cross-origin (Sec-Fetch-Site, e.g. an <img> or a
//     no-cors GET from another origin) is refused too. Requests from
//     programs (no Origin, no Sec-Fetch-Site) pass: they carry no
//     visitor's cookie unless given one.
//   - POST bodies: Content-Type application/json only, else 415
//     "unsupported_media_type" (an HTML form, or a no-cors fetch, can only
//     send text/plain, form or multipart bodies); at most maxBody bytes,
//     else 413; exactly one JSON object with the documented fields, else 400.
//   - A session, except for sign-in and config, else 401 "signed_out".
//
// Errors are {"error":"code","message":"text"} with a 4xx status.

const (
	// maxBody bounds an API request's body.
	maxBody = 4 << 10
	// maxChannelLen bounds a channel name (JoinServer's rule).
	maxChannelLen = 64
	// maxNamesPerCall bounds the uids of one /api/names call.
	maxNamesPerCall = 100
)

// nameRequest is the body of /api/signin.
type nameRequest struct {
	Name string `json:"name"`
}

// channelsResponse lists the channels a user is in, presence excluded.
type channelsResponse struct {
	Channels []string `json:"channels"`
}

// sessionResponse is who is signed in.
type sessionResponse struct {
	UID  uint64 `json:"uid"`
	Name string `json:"name"`
}

// apiError is the body of every API error.
type apiError struct {
	Error   string `json:"error"`
	Message string `json:"message"`
}

// apiHandler is an API endpoint: it gets the request's session (the zero
// session for public endpoints) and its decoded body, if it has one.
type apiHandler func(w http.ResponseWriter, r *http.Request, s session)

func (a *app) apiRoutes(mux *http.ServeMux) {
	const public, private = false, true
	mux.Handle("POST /api/signin", a.api(public, a.apiSignin))
	mux.Handle("POST /api/signout", a.api(public, a.apiSignout))
	mux.Handle("GET /api/session", a.api(private, a.apiSession))
	mux.Handle("GET /api/config", a.api(public, a.apiConfig))
	mux.Handle("GET /api/names", a.api(private, a.apiNames))
	mux.Handle("GET /api/channels", a.api(private, a.apiChannels))
	// CORS preflights, answered for -origins only.
	mux.HandleFunc("OPTIONS /api/", a.apiPreflight)
}

// api wraps an endpoint in the checks every API request passes (see the
// comment at the top of this file).
func (a *app) api(needSession bool, h apiHandler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		cross, ok := a.checkOrigin(r)
		if !ok {
			a.refused(r, "forbidden_origin")
			writeError(w, http.StatusForbidden, "forbidden_origin", "requests from other origins are refused")
			return
		}
		if cross {
			a.allowCORS(w, r)
		}
		if r.Method == http.MethodPost {
			mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
			if err != nil || mt != "application/json" {
				a.refused(r, "unsupported_media_type")
				writeError(w, http.StatusUnsupportedMediaType, "unsupported_media_type", "send application/json")
				return
			}
			r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		}
		var s session
		if needSession {
			var err error
			if s, err = a.sessions.read(r); err != nil {
				writeError(w, http.StatusUnauthorized, "signed_out", "sign in first")
				return
			}
		}
		h(w, r, s)
	})
}

// checkOrigin applies the origin policy: ok is false for a request a
// browser sent from a page of another origin that is not allowed; cross is
// true for one from an allowed other origin (it gets CORS headers).
//
// It is the hub's rule for WebSockets (the request's own Host, or
// Config.AllowedOrigins), without the hub's "*", and with Sec-Fetch-Site
// for the requests a browser sends without an Origin header.
func (a *app) checkOrigin(r *http.Request) (cross, ok bool) {
	origin := r.Header.Get("Origin")
	if origin == "" {
		// No Origin: a same-origin GET, a navigation, or a program. A
		// browser says where the request came from in Sec-Fetch-Site
		// (Chromium, Firefox and Safari send it on every request to a
		// potentially trustworthy origin, http://localhost included).
		switch r.Header.Get("Sec-Fetch-Site") {
		case "", "same-origin", "none":
			return false, true
		}
		return false, false
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false, false // "null": a sandboxed frame, a file, a data: URL
	}
	if strings.EqualFold(u.Host, r.Host) {
		return false, true
	}
	return true, slices.Contains(a.origins, strings.ToLower(u.Scheme+"://"+u.Host))
}

// refused logs a request refused for where it came from or what it sent:
// what another site's page tried to make a visitor's browser do.
func (a *app) refused(r *http.Request, code string) {
	a.log.Warn("api refused", "code", code, "method", r.Method, "path", r.URL.Path,
		"origin", clipped(r.Header.Get("Origin")), "fetch_site", clipped(r.Header.Get("Sec-Fetch-Site")),
		"content_type", clipped(r.Header.Get("Content-Type")))
}

// clipped bounds what a log line repeats of a client's header.
func clipped(s string) string {
	if len(s) > 100 {
		return s[:100] + "..."
	}
	return s
}

// allowCORS lets the page of an allowed origin read the answer and send
// the session cookie (which SameSite=Lax sends only from the same site:
// another port or subdomain of it).
func (a *app) allowCORS(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Access-Control-Allow-Origin", r.Header.Get("Origin"))
	h.Set("Access-Control-Allow-Credentials", "true")
	h.Add("Vary", "Origin")
}

// apiPreflight answers a CORS preflight from an allowed origin; any other
// is refused, and the browser then does not send the request.
func (a *app) apiPreflight(w http.ResponseWriter, r *http.Request) {
	cross, ok := a.checkOrigin(r)
	if !ok || !cross {
		a.refused(r, "forbidden_origin")
		w.WriteHeader(http.StatusForbidden)
		return
	}
	a.allowCORS(w, r)
	h := w.Header()
	h.Set("Access-Control-Allow-Methods", "GET, POST")
	h.Set("Access-Control-Allow-Headers", "Content-Type")
	h.Set("Access-Control-Max-Age", "600")
	w.WriteHeader(http.StatusNoContent)
}

// decode reads the body as exactly one JSON object of v's fields.
func decode(w http.ResponseWriter, r *http.Request, v any, usage string) bool {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		// Nothing may follow the object; reading on also finds a body
		// over maxBody whose first object fitted.
		var rest json.RawMessage
		if err = dec.Decode(&rest); err == io.EOF {
			err = nil
		} else if err == nil {
			err = errors.New("more than one JSON value")
		}
	}
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		writeError(w, http.StatusRequestEntityTooLarge, "too_large", "a request body has at most "+strconv.Itoa(maxBody)+" bytes")
		return false
	case err != nil:
		writeError(w, http.StatusBadRequest, "bad_request", "expected "+usage)
		return false
	}
	return true
}

// apiSignin starts a session for a display name, under a new uid. A
// browser that was signed in as someone else is signed out of that first:
// its connections close (4001), and its pages find the new session.
func (a *app) apiSignin(w http.ResponseWriter, r *http.Request, _ session) {
	var req nameRequest
	if !decode(w, r, &req, `{"name":"Ann"}`) {
		return
	}
	name := cleanName(req.Name)
	if err := validName(name); err != nil {
		writeError(w, http.StatusBadRequest, "invalid_name", err.Error())
		return
	}
	if old, err := a.sessions.read(r); err == nil {
		a.hub.Disconnect(old.UID, "signed in as someone else")
	}
	s, err := a.sessions.start(w, r, name)
	if err != nil {
		a.log.Error("sign in", "err", err)
		writeError(w, http.StatusInternalServerError, "internal", "could not start a session")
		return
	}
	a.log.Info("sign in", "uid", s.UID, "name", s.Name)
	writeJSON(w, http.StatusOK, sessionResponse{UID: s.UID, Name: s.Name})
}

// apiSignout clears the session cookie and closes the user's connections
// (4001: the client does not reconnect). Without a valid session it only
// clears the cookie.
func (a *app) apiSignout(w http.ResponseWriter, r *http.Request, _ session) {
	var req struct{}
	if !decode(w, r, &req, `{}`) {
		return
	}
	if s, err := a.sessions.read(r); err == nil {
		a.hub.Disconnect(s.UID, "signed out")
		a.log.Info("sign out", "uid", s.UID)
	}
	a.sessions.end(w, r)
	writeJSON(w, http.StatusOK, struct{}{})
}

func (a *app) apiSession(w http.ResponseWriter, r *http.Request, s session) {
	writeJSON(w, http.StatusOK, sessionResponse{UID: s.UID, Name: s.Name})
}

// apiConfig gives the page its chart.js timing (see clientOptions): fixed
// by the operator's flags, it takes no input.
func (a *app) apiConfig(w http.ResponseWriter, r *http.Request, _ session) {
	writeJSON(w, http.StatusOK, a.client)
}

// namesResponse maps uids (as strings: JSON keys) to display names.
type namesResponse struct {
	Names map[string]string `json:"names"`
}

// apiNames gives the display names of the online users among ?uids= (at
// most maxNamesPerCall, comma-separated): a name is shown to everyone
// online anyway, and an offline user's is not kept.
func (a *app) apiNames(w http.ResponseWriter, r *http.Request, _ session) {
	parts := strings.Split(r.URL.Query().Get("uids"), ",")
	if len(parts) > maxNamesPerCall {
		writeError(w, http.StatusBadRequest, "bad_request", "at most "+strconv.Itoa(maxNamesPerCall)+" uids")
		return
	}
	uids := make([]uint64, 0, len(parts))
	for _, p := range parts {
		uid, err := strconv.ParseUint(p, 10, 64)
		if err != nil || uid == 0 {
			writeError(w, http.StatusBadRequest, "bad_request", "expected ?uids=1,2,3")
			return
		}
		uids = append(uids, uid)
	}
	res := namesResponse{Names: make(map[string]string, len(uids))}
	for uid, name := range a.names(uids) {
		res.Names[strconv.FormatUint(uid, 10)] = name
	}
	writeJSON(w, http.StatusOK, res)
}

// apiChannels lists the signed-in user's own channels; there is no way to
// ask for anyone else's.
func (a *app) apiChannels(w http.ResponseWriter, r *http.Request, s session) {
	writeJSON(w, http.StatusOK, channelsResponse{visibleChannels(a.hub, s.UID)})
}

// validChannel returns why a channel name is refused, or "": 1 to
// maxChannelLen bytes of UTF-8, no control or formatting (bidirectional,
// zero-width) characters, no space at either end, not presence.
func validChannel(c string) string {
	switch {
	case c == "" || len(c) > maxChannelLen:
		return "a channel name has 1 to " + strconv.Itoa(maxChannelLen) + " bytes"
	case c == presenceChannel:
		return `"presence" is reserved for the server`
	case !utf8.ValidString(c):
		return "a channel name is UTF-8"
	case strings.TrimSpace(c) != c:
		return "a channel name has no space at either end"
	case strings.IndexFunc(c, func(r rune) bool { return unicode.IsControl(r) || unicode.Is(unicode.Cf, r) }) >= 0:
		return "a channel name has no control or formatting characters"
	}
	return ""
}

// visibleChannels is the user's channel list without the presence channel.
func visibleChannels(hub *chart.Hub, uid uint64) []string {
	out := slices.DeleteFunc(hub.UserChannelIds(uid), func(c string) bool {
		return c == presenceChannel
	})
	if out == nil {
		out = []string{} // encode as [], not null
	}
	return out
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, apiError{Error: code, Message: msg})
}

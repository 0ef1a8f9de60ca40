package main

import (
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/wuyan94zl/chart"
)

// The JSON API the page uses next to its WebSocket:
//
//	GET  /api/config              {"heartbeat":10000,"heartbeatTimeout":10000,"maxDelay":10000}
//	GET  /api/online              {"version":3,"users":[{"uid":7,"name":"Ann"}]}
//	GET  /api/channels?uid=7      {"channels":["go","lobby"]}
//	POST /api/join   {"uid":7,"channels":["go"]}  -> {"channels":["go","lobby"]}
//	POST /api/leave  {"uid":7,"channels":["go"]}  -> {"channels":["lobby"]}
//
// Errors are {"error":"code","message":"text"} with a 4xx status; joining or
// leaving needs the user to be online (409 "user_offline" otherwise).

// maxChannelLen bounds a channel name typed into the page.
const maxChannelLen = 64

// channelsRequest is the body of /api/join and /api/leave.
type channelsRequest struct {
	UID      uint64   `json:"uid"`
	Channels []string `json:"channels"`
}

// channelsResponse lists the channels a user is in, presence excluded.
type channelsResponse struct {
	Channels []string `json:"channels"`
}

// apiError is the body of every API error.
type apiError struct {
	Error   string `json:"error"`
	Message string `json:"message"`
}

// apiConfig gives the page its chart.js timing (see clientOptions): fixed
// by the operator's flags, it takes no input.
func (a *app) apiConfig(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, a.client)
}

func (a *app) apiOnline(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, a.snapshot(false))
}

func (a *app) apiChannels(w http.ResponseWriter, r *http.Request) {
	uid, err := strconv.ParseUint(r.FormValue("uid"), 10, 64)
	if err != nil || uid == 0 {
		writeError(w, http.StatusBadRequest, "bad_request", "uid must be a positive integer")
		return
	}
	writeJSON(w, http.StatusOK, channelsResponse{visibleChannels(uid)})
}

func (a *app) apiJoin(w http.ResponseWriter, r *http.Request) {
	a.changeChannels(w, r, "join", chart.JoinChannelIds)
}

func (a *app) apiLeave(w http.ResponseWriter, r *http.Request) {
	a.changeChannels(w, r, "leave", chart.UnJoinChannelIds)
}

// changeChannels validates a join or leave request, applies it with fn and
// answers with the user's channels afterwards.
func (a *app) changeChannels(w http.ResponseWriter, r *http.Request, op string, fn func(uint64, ...string) error) {
	var req channelsRequest
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.UID == 0 {
		writeError(w, http.StatusBadRequest, "bad_request", `expected {"uid":N,"channels":["name"]}`)
		return
	}
	channels := make([]string, 0, len(req.Channels))
	for _, c := range req.Channels {
		c = strings.TrimSpace(c)
		switch {
		case c == "" || len(c) > maxChannelLen:
			writeError(w, http.StatusBadRequest, "invalid_channel",
				"a channel name has 1 to "+strconv.Itoa(maxChannelLen)+" characters")
			return
		case c == presenceChannel:
			writeError(w, http.StatusBadRequest, "invalid_channel", `"presence" is reserved for the server`)
			return
		}
		channels = append(channels, c)
	}
	if len(channels) == 0 {
		writeError(w, http.StatusBadRequest, "invalid_channel", "no channel given")
		return
	}
	if err := fn(req.UID, channels...); err != nil {
		if errors.Is(err, chart.ErrUserOffline) {
			writeError(w, http.StatusConflict, "user_offline", "user "+strconv.FormatUint(req.UID, 10)+" is not connected")
			return
		}
		writeError(w, http.StatusBadRequest, "invalid_channel", err.Error())
		return
	}
	a.log.Info(op, "uid", req.UID, "channels", channels)
	writeJSON(w, http.StatusOK, channelsResponse{visibleChannels(req.UID)})
}

// visibleChannels is the user's channel list without the presence channel.
func visibleChannels(uid uint64) []string {
	out := slices.DeleteFunc(chart.UserChannelIds(uid), func(c string) bool {
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

// jsonString encodes v as a JSON string, for a Message's Content.
func jsonString(v any) (string, error) {
	b, err := json.Marshal(v)
	return string(b), err
}

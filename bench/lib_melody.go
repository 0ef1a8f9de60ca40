package main

import (
	"net/http"
	"strconv"
	"sync"

	"github.com/olahol/melody"
)

// melodyLib drives github.com/olahol/melody with its defaults (melody.New():
// 1 KiB upgrader buffers, 256-message session buffer that drops on
// overflow, 512-byte inbound limit, 54 s pings).
//
// Publishing uses the calls melody offers: Broadcast for the fan-out (every
// session is in the channel), BroadcastFilter on the request path for rooms
// (as melody's multichat example does), and for the per-user probe of the
// storm workload a Session.Write on a uid->session map kept in
// HandleConnect/HandleDisconnect, since melody has no addressed send.
type melodyLib struct {
	m        *melody.Melody
	workload string

	mu    sync.RWMutex
	users map[uint64]*melody.Session
}

func init() {
	register(&libSpec{
		name:     "melody",
		settings: "melody.New() defaults (Upgrader 1 KiB/1 KiB, MessageBufferSize 256, MaxMessageSize 512, PingPeriod 54 s); fan-out: Broadcast; rooms: BroadcastFilter(path == room) from HandleMessage and for server publishes; storm probe: Session.Write via a uid map",
		server:   newMelodyLib,
		client:   rawProto,
	})
}

// newMelodyLib builds the melody server for workload.
func newMelodyLib(workload string) (serverLib, error) {
	l := &melodyLib{m: melody.New(), workload: workload, users: make(map[uint64]*melody.Session)}
	if workload == wlStorm {
		l.m.HandleConnect(func(s *melody.Session) {
			uid := s.Keys["uid"].(uint64)
			l.mu.Lock()
			l.users[uid] = s
			l.mu.Unlock()
		})
		l.m.HandleDisconnect(func(s *melody.Session) {
			uid := s.Keys["uid"].(uint64)
			l.mu.Lock()
			delete(l.users, uid)
			l.mu.Unlock()
		})
	}
	if workload == wlRooms {
		l.m.HandleMessage(func(s *melody.Session, msg []byte) {
			noteRead(string(msg))
			_ = l.m.BroadcastFilter(msg, func(q *melody.Session) bool {
				return q.Request.URL.Path == s.Request.URL.Path
			})
		})
	}
	return l, nil
}

// ServeHTTP upgrades the request; it blocks for the connection's lifetime,
// as melody's HandleRequest does.
func (l *melodyLib) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	uid, _, err := requestUser(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	_ = l.m.HandleRequestWithKeys(w, r, map[string]any{"uid": uid})
}

// publish sends payload to the connections of channel.
func (l *melodyLib) publish(channel string, payload []byte) error {
	switch l.workload {
	case wlFanout:
		return l.m.Broadcast(payload)
	case wlStorm:
		uid, err := strconv.ParseUint(channel[1:], 10, 64)
		if err != nil {
			return err
		}
		l.mu.RLock()
		s := l.users[uid]
		l.mu.RUnlock()
		if s == nil {
			return errNoSuchUser
		}
		return s.Write(payload)
	default:
		path := "/ws/" + channel
		return l.m.BroadcastFilter(payload, func(q *melody.Session) bool {
			return q.Request.URL.Path == path
		})
	}
}

package chart_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"

	"github.com/gorilla/websocket"
	"github.com/wuyan94zl/chart"
)

// roomsApp lets clients join the channels named "room:..." themselves.
type roomsApp struct{ *lobby }

func (roomsApp) JoinServer(c *chart.Conn, channelId string) error {
	if strings.HasPrefix(channelId, "room:") {
		return nil // check the user's rights here
	}
	return chart.Refuse("forbidden", "no such room")
}

// Clients join rooms themselves, and the rooms carry presence events: a
// member gets the member list, then who joins and leaves.
func ExampleJoinHandler() {
	hub := chart.New(chart.Config{
		PresenceChannels: func(channelId string) bool { return strings.HasPrefix(channelId, "room:") },
	})
	defer hub.Shutdown(context.Background())
	app := roomsApp{&lobby{hub: hub, loggedIn: make(chan uint64, 1)}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		uid, _ := strconv.ParseUint(r.FormValue("id"), 10, 64) // authenticate properly in real code
		hub.NewServer(w, r, uid, app)
	}))
	defer srv.Close()

	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/?id=7", nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer ws.Close()
	ws.WriteMessage(websocket.TextMessage, []byte(`{"join":"secret"}`))
	ws.WriteMessage(websocket.TextMessage, []byte(`{"join":"room:go"}`))
	for i := 0; i < 4; i++ {
		_, frame, _ := ws.ReadMessage()
		fmt.Println(string(frame))
	}
	// Output:
	// {"error":"forbidden","message":"chart: uid 7: channel \"secret\": refused: no such room","channel_id":"secret"}
	// {"joined":"room:go"}
	// {"presence":"members","channel_id":"room:go","user_ids":[]}
	// {"presence":"join","channel_id":"room:go","user_ids":[7]}
}

package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wuyan94zl/chart"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestTwoNodes runs two nodes of the example over an in-process bus: users
// on different nodes meet in the lobby, and /online answers for both.
func TestTwoNodes(t *testing.T) {
	if b, err := newBroker("", "", 0); b != nil || err != nil {
		t.Fatalf("no flags: %v, %v; want in-memory", b, err)
	}
	bus := chart.NewMemoryBus()
	var urls []string
	var hubs []*chart.Hub
	for i := 0; i < 2; i++ {
		hub := chart.New(chart.Config{Broker: bus.Broker(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		srv := httptest.NewServer(newMux(hub))
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			hub.Shutdown(ctx)
			srv.Close()
		})
		urls = append(urls, srv.URL)
		hubs = append(hubs, hub)
	}
	dial := func(base, id string) *websocket.Conn {
		ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(base, "http")+"/ws?id="+id, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ws.Close() })
		return ws
	}
	online := func(base string) []uint64 {
		resp, err := http.Get(base + "/online")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var ids []uint64
		json.NewDecoder(resp.Body).Decode(&ids)
		return ids
	}
	a := dial(urls[0], "1")
	b := dial(urls[1], "2")
	deadline := time.Now().Add(10 * time.Second)
	for !reflect.DeepEqual(hubs[1].ChannelUserIds("lobby"), []uint64{1, 2}) {
		if time.Now().After(deadline) {
			t.Fatalf("lobby = %v", hubs[1].ChannelUserIds("lobby"))
		}
		time.Sleep(5 * time.Millisecond) // login has no event visible from here
	}
	a.WriteMessage(websocket.TextMessage, []byte(`{"channel_id":"lobby","content":"hello"}`))
	b.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, data, err := b.ReadMessage(); err != nil || !strings.Contains(string(data), `"content":"hello"`) {
		t.Fatalf("node 1 got %s, %v", data, err)
	}
	for _, u := range urls {
		if got := online(u); !reflect.DeepEqual(got, []uint64{1, 2}) {
			t.Fatalf("/online = %v", got)
		}
	}
}

// TestAllowOrigin checks -allow-origin: a page of another node may open a
// socket only when its origin is listed, as browsers send it.
func TestAllowOrigin(t *testing.T) {
	if got := origins(" http://localhost:8081, ,a.example:8443"); !reflect.DeepEqual(got, []string{"http://localhost:8081", "a.example:8443"}) {
		t.Fatalf("origins = %q", got)
	}
	if got := origins(""); got != nil {
		t.Fatalf("origins(\"\") = %q", got)
	}
	for _, tc := range []struct {
		allow, origin string
		status        int
	}{
		{"", "http://localhost:8081", http.StatusForbidden},
		{"http://localhost:8081", "http://localhost:8081", http.StatusSwitchingProtocols},
		{"http://localhost:8081", "http://localhost:8083", http.StatusForbidden},
		{"http://localhost:8081,http://localhost:8083", "http://localhost:8083", http.StatusSwitchingProtocols},
	} {
		hub := chart.New(chart.Config{AllowedOrigins: origins(tc.allow), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		srv := httptest.NewServer(newMux(hub))
		ws, resp, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/ws?id=1",
			http.Header{"Origin": {tc.origin}})
		if resp == nil || resp.StatusCode != tc.status {
			t.Errorf("-allow-origin %q, Origin %s: %v, %v; want %d", tc.allow, tc.origin, resp, err, tc.status)
		}
		if ws != nil {
			ws.Close()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		hub.Shutdown(ctx)
		cancel()
		srv.Close()
	}
}

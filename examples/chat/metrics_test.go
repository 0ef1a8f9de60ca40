package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gorilla/websocket"
)

// TestMetrics: /metrics serves the hub's statistics in the Prometheus text
// format to a loopback scraper, and the values move as users come, send
// and get refused; any other client gets 403.
func TestMetrics(t *testing.T) {
	e := newEnv(t)
	base := e.base()
	scrape := func() string {
		t.Helper()
		res, body := call(t, base, "GET", "/metrics", "", nil)
		if res.StatusCode != http.StatusOK || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/plain; version=0.0.4") {
			t.Fatalf("/metrics: %s %q", res.Status, res.Header.Get("Content-Type"))
		}
		return string(body)
	}
	want := func(text string, lines ...string) {
		t.Helper()
		for _, l := range lines {
			if !strings.Contains(text, "\n"+l+"\n") {
				t.Errorf("/metrics lacks %q:\n%s", l, text)
			}
		}
	}
	want(scrape(), "chart_connections 0", "chart_users_online 0", `chart_messages_refused_total{code="refused"} 0`,
		"# TYPE chart_delivery_seconds histogram", `chart_delivery_seconds_bucket{le="+Inf"} 0`)

	ann := signIn(t, base, "Ann")
	c := dial(t, base, ann, "", nil)
	c.loggedIn()
	// Posting to the read-only presence channel is refused by the demo's
	// FilterMessage (its own code counts as "refused").
	if err := c.ws.WriteMessage(websocket.TextMessage, []byte(`{"channel_id":"presence","content":"hi","type":3}`)); err != nil {
		t.Fatal(err)
	}
	c.nextFrame("the refusal", func(f frame) bool { return f.Error != "" })
	want(scrape(), "chart_connections 1", "chart_users_online 1", `chart_messages_refused_total{code="refused"} 1`)

	rec := httptest.NewRecorder()
	req := httptest.NewRequest("GET", "/metrics", nil)
	req.RemoteAddr = "203.0.113.7:40000"
	e.a.metrics(rec, req)
	if rec.Code != http.StatusForbidden || strings.Contains(rec.Body.String(), "chart_") {
		t.Errorf("a scrape from 203.0.113.7: %d %q, want 403 and no metrics", rec.Code, rec.Body.String())
	}
}

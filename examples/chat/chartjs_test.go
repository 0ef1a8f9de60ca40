package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestChartJSAgainstDemo runs testdata/chartjs.test.mjs (node --test): the
// library's JavaScript client (client/chart.js) asking the demo to join and
// leave channels and keeping its online list from the library's presence
// events, over real sockets. The library's own TestClientJS runs chart.js
// against a hub without JoinHandler or presence; this is the other half.
// Skipped, saying so, without Node.js 20.10 or newer (WebSocket).
func TestChartJSAgainstDemo(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed: chart.js's join, leave and presence are not tested against the demo")
	}
	args := []string{"--test", "--test-reporter=spec"}
	hasWS := func(flags ...string) bool {
		return exec.Command(node, append(flags, "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)")...).Run() == nil
	}
	switch {
	case hasWS():
	case hasWS("--experimental-websocket"): // Node 20.10+, 21
		args = append([]string{"--experimental-websocket"}, args...)
	default:
		v, _ := exec.Command(node, "--version").Output()
		t.Skipf("node %s has no WebSocket (needs Node.js 20.10 or newer)", bytes.TrimSpace(v))
	}

	e := newEnv(t)
	type user struct {
		UID    uint64 `json:"uid"`
		Cookie string `json:"cookie"`
	}
	var users []user
	for i, name := range []string{"Ann", "Cleo", "Dan", "Eve"} {
		uid := uint64(7001 + i)
		value := e.a.sessions.encode(session{UID: uid, Name: name, Expires: time.Now().Add(time.Hour)})
		users = append(users, user{uid, sessionCookie + "=" + value})
	}
	env, _ := json.Marshal(map[string]any{"url": "ws" + strings.TrimPrefix(e.base(), "http") + "/ws", "users": users})

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, append(args, "testdata/chartjs.test.mjs")...)
	cmd.Env = append(os.Environ(), "CHART_DEMO="+string(env), "NO_COLOR=1")
	out, err := cmd.CombinedOutput()
	t.Logf("%s %s:\n%s", node, strings.Join(args, " "), out)
	if err != nil {
		t.Fatalf("node --test: %v", err)
	}
}

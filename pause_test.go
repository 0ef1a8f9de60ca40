package chart_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wuyan94zl/chart"
	"github.com/wuyan94zl/chart/charttest"
)

// TestPauseChild is the hub of TestResumedNodeSparesClients, run in a
// child process (this test binary again) so that the test can stop it
// with SIGSTOP. It serves until its stdin closes.
func TestPauseChild(t *testing.T) {
	if os.Getenv("CHART_PAUSE_CHILD") != "1" {
		t.Skip("the child process of TestResumedNodeSparesClients")
	}
	hub := chart.New(chart.Config{Logger: quiet, RateLimit: 20, RateBurst: 10})
	j := &joiner{Recorder: charttest.NewRecorder(), hub: hub}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var uid uint64
		fmt.Sscan(r.FormValue("id"), &uid)
		hub.NewServer(w, r, uid, j)
	})}
	go srv.Serve(ln)
	fmt.Printf("ADDR %s\n", ln.Addr())
	bufio.NewReader(os.Stdin).ReadString('\n') // until the parent is done
	srv.Close()
	hub.Close()
}

// TestResumedNodeSparesClients: a node is paused (SIGSTOP) for 3 s while a
// client sends 5 messages a second, under its rate limit (20/s, burst
// 10). Resumed, the node reads the pause's 15 messages at once; it
// accepts them all, as sent at an honest rate, instead of refusing 5 of
// them as a flood.
func TestResumedNodeSparesClients(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("SIGSTOP")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestPauseChild$")
	cmd.Env = append(os.Environ(), "CHART_PAUSE_CHILD=1")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGCONT)
		stdin.Close()
		cmd.Wait()
	})
	var addr string
	sc := bufio.NewScanner(stdout)
	for addr == "" && sc.Scan() {
		if a, ok := strings.CutPrefix(sc.Text(), "ADDR "); ok {
			addr = a
		}
	}
	go func() {
		for sc.Scan() { // drain the child's output
		}
	}()
	if addr == "" {
		t.Fatal("the child hub did not start")
	}
	dial := func(uid int) *websocket.Conn {
		ws, _, err := websocket.DefaultDialer.Dial(fmt.Sprintf("ws://%s/ws?id=%d", addr, uid), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ws.Close() })
		return ws
	}
	sender, receiver := dial(1), dial(2)
	// Both joined "room" at login: wait until a message gets through.
	next := func(ws *websocket.Conn) map[string]any {
		t.Helper()
		ws.SetReadDeadline(time.Now().Add(charttest.Wait))
		_, b, err := ws.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		var f map[string]any
		json.Unmarshal(b, &f)
		return f
	}
	send := func(content string) {
		t.Helper()
		if err := sender.WriteJSON(map[string]any{"channel_id": "room", "content": content, "type": "3"}); err != nil {
			t.Fatal(err)
		}
	}
	for ready := false; !ready; {
		send("ready")
		receiver.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		_, b, err := receiver.ReadMessage()
		ready = err == nil && strings.Contains(string(b), "ready")
		if err != nil && !strings.Contains(err.Error(), "timeout") {
			t.Fatal(err)
		}
		if err != nil {
			// A timed-out gorilla connection cannot read again: start over.
			receiver = dial(2)
		}
	}

	cmd.Process.Signal(syscall.SIGSTOP)
	for i := 0; i < 15; i++ {
		send(fmt.Sprint("m", i))
		time.Sleep(200 * time.Millisecond) // the client's honest pace, 5/s
	}
	cmd.Process.Signal(syscall.SIGCONT)

	for i := 0; i < 15; {
		f := next(receiver)
		if f["content"] == "ready" {
			continue
		}
		if want := fmt.Sprint("m", i); f["content"] != want {
			t.Fatalf("receiver got %v, want %s", f, want)
		}
		i++
	}
	for {
		f := next(sender)
		if f["error"] != nil {
			t.Fatalf("the sender was refused after the pause: %v", f)
		}
		if f["content"] == "m14" {
			break
		}
	}
}

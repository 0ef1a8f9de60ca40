//go:build unix

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wuyan94zl/chart"
)

// These tests run the demo behind a real nginx, as issue 10 reported it:
// browsers got 403 from the origin check because the proxy rewrote Host.

// nginxLocations is the server block's body that README.md's "Behind a
// reverse proxy" shows, with UPSTREAM for the demo's address and HOSTLINE
// for the /ws location's Host line, which the failure cases vary.
const nginxLocations = `
        # The WebSocket: upgrade, forward the Host as the browser sent it.
        location = /ws {
            proxy_pass http://UPSTREAM;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
HOSTLINE            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            # Longer than chart's PingInterval (54 s): the pings keep an
            # idle chat open.
            proxy_read_timeout 120s;
        }

        # The page and the JSON API.
        location / {
            proxy_pass http://UPSTREAM;
            proxy_set_header Host $http_host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }
`

// hostHTTPHost is the working Host line: the browser's Host header, port
// included, which is what the browser's Origin names.
const hostHTTPHost = "            proxy_set_header Host $http_host;\n"

// TestBehindNginx runs the demo behind nginx: with the configuration above
// a browser's WebSocket works; without the Host line, or with $host on a
// port other than 80, the origin check refuses it with 403 and the log line
// says why.
func TestBehindNginx(t *testing.T) {
	bin := requireNginx(t)

	errs := &errorRecorder{}
	var seen sync.Map // session cookie -> http.Header of its /ws request as the demo got it
	a := newApp(slog.New(errs), options{})
	t.Cleanup(func() { a.hub.Shutdown(context.Background()) })
	routes := a.routes()
	srv := startDemo(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c, err := r.Cookie(sessionCookie); err == nil && r.URL.Path == "/ws" {
			h := r.Header.Clone()
			h.Set("Host", r.Host)
			seen.Store(c.Value, h)
		}
		routes.ServeHTTP(w, r)
	}))
	upstream := srv.Listener.Addr().String()

	t.Run("http_host", func(t *testing.T) {
		px := startNginx(t, bin, upstream, hostHTTPHost)
		base := "http://" + px.addr
		// What a browser on the page at base sends with its WebSocket.
		browser := http.Header{"Origin": {base}}

		res, err := http.Get(base + "/")
		if err != nil {
			t.Fatal(err)
		}
		page, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK || !strings.Contains(string(page), "<html") {
			t.Fatalf("GET / through nginx: HTTP %d, %.80q", res.StatusCode, page)
		}

		annM := signIn(t, base, "Ann")
		bobM := signIn(t, base, "Bob")
		ann := dial(t, base, annM, "", browser)
		ann.loggedIn()
		bob := dial(t, base, bobM, "", browser)
		bob.loggedIn()
		ann.nextDelta("join", bobM.UID)

		// The demo saw the browser's Host and the client's address.
		if v, ok := seen.Load(annM.cookie.Value); !ok {
			t.Error("the demo saw no /ws request of Ann's")
		} else if h := v.(http.Header); h.Get("Host") != px.addr || h.Get("X-Real-Ip") != "127.0.0.1" ||
			h.Get("X-Forwarded-For") != "127.0.0.1" || h.Get("Origin") != base {
			t.Errorf("demo got Host %q, X-Real-IP %q, X-Forwarded-For %q, Origin %q; want %q, 127.0.0.1, 127.0.0.1, %q",
				h.Get("Host"), h.Get("X-Real-Ip"), h.Get("X-Forwarded-For"), h.Get("Origin"), px.addr, base)
		}

		// The JSON API through nginx too, with the Origin a browser sends:
		// the API's origin check needs the Host forwarded as well.
		for _, m := range []member{annM, bobM} {
			h := m.header()
			h.Set("Origin", base)
			if res, b := call(t, base, "GET", "/api/channels", "", h); res.StatusCode != http.StatusOK {
				t.Fatalf("/api/channels through nginx with Origin %s: HTTP %d %s", base, res.StatusCode, b)
			}
		}
		// Join requests go over the sockets.
		ann.mustRequest("join", "go")
		bob.mustRequest("join", "go")

		const n = 20
		for i := range n {
			m := map[string]any{"channel_id": "go", "content": fmt.Sprintf("msg %d <b>", i), "type": 3}
			if err := ann.ws.WriteJSON(m); err != nil {
				t.Fatal(err)
			}
		}
		// Bob and Ann herself get all of them, in order.
		for _, c := range []*client{bob, ann} {
			for i := range n {
				want := fmt.Sprintf("msg %d <b>", i)
				got := c.next(want, func(m chart.Message) bool { return m.ChannelId == "go" })
				if got.UserId != annM.UID || got.Content != want || got.Type != 3 || got.SendTime == "" {
					t.Fatalf("message %d = %+v, want %q from Ann", i, got, want)
				}
			}
		}
		if err := bob.ws.WriteJSON(map[string]any{"channel_id": lobbyChannel, "content": "hi Ann"}); err != nil {
			t.Fatal(err)
		}
		if got := ann.next("Bob's reply", func(m chart.Message) bool { return m.ChannelId == lobbyChannel }); got.UserId != bobM.UID || got.Content != "hi Ann" {
			t.Errorf("ann got %+v, want Bob's reply", got)
		}

		// A close goes through nginx as well.
		bob.ws.Close()
		ann.nextDelta("leave", bobM.UID)
		ann.ws.Close()
		for _, uid := range []uint64{annM.UID, bobM.UID} {
			waitFor(t, "logged out", func() bool { return !a.hub.IsOnline(uid) })
		}
	})

	for _, tc := range []struct {
		name     string
		hostLine string
		host     func(px *nginx) string // the Host the demo receives
	}{
		// nginx's documented WebSocket configuration: Host becomes the
		// proxy_pass address.
		{"no Host line", "", func(*nginx) string { return upstream }},
		// $host has no port.
		{"host without port", "            proxy_set_header Host $host;\n", func(*nginx) string { return "127.0.0.1" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			px := startNginx(t, bin, upstream, tc.hostLine)
			origin := "http://" + px.addr
			url := "ws://" + px.addr + "/ws"
			cleo := signIn(t, origin, "Cleo")
			h := cleo.header()
			h.Set("Origin", origin)
			ws, res, err := dialer.Dial(url, h)
			if err == nil {
				ws.Close()
				t.Fatalf("dial %s with Origin %s through nginx succeeded, want 403", url, origin)
			}
			if !errors.Is(err, websocket.ErrBadHandshake) || res == nil || res.StatusCode != http.StatusForbidden {
				t.Fatalf("dial %s: %v (response %v), want HTTP 403", url, err, res)
			}
			res.Body.Close()

			// The demo's log line says what was compared and how to fix it.
			host := tc.host(px)
			logged := errs.wait(t, func(err error) bool {
				return errors.Is(err, chart.ErrOriginNotAllowed) && strings.Contains(err.Error(), strconv.Quote(origin))
			})
			for _, want := range []string{strconv.Quote(origin), strconv.Quote(host), "proxy_set_header Host $http_host", "AllowedOrigins"} {
				if !strings.Contains(logged.Error(), want) {
					t.Errorf("logged %q, want it to contain %s", logged, want)
				}
			}
			t.Logf("refused as expected, logged: %v", logged)
			if a.hub.IsOnline(cleo.UID) {
				t.Error("Cleo is online after a refused upgrade")
			}
		})
	}
}

// requireNginx returns the nginx binary's path. It skips the test when there
// is none, except with CI=true, where a missing nginx is a failure.
func requireNginx(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		for _, p := range []string{"/usr/sbin/nginx", "/usr/local/sbin/nginx"} {
			if _, serr := os.Stat(p); serr == nil {
				return p
			}
		}
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true but nginx is missing: install it (apt-get install -y nginx): %v", err)
		}
		t.Skipf("skipping: nginx not found (apt-get install -y nginx); with CI=true this fails instead")
	}
	return bin
}

// nginx is a running nginx process of one test.
type nginx struct {
	addr string // loopback host:port it listens on
	dir  string // its prefix: config, pid file, logs, temp files
}

// startNginx starts nginx in the foreground on a free loopback port, proxying
// to upstream with nginxLocations and hostLine, and waits until it accepts
// connections. It is stopped, and waited for, when the test ends.
func startNginx(t *testing.T, bin, upstream, hostLine string) *nginx {
	t.Helper()
	const attempts = 3 // another process may take the free port first
	var err error
	for range attempts {
		var px *nginx
		if px, err = tryNginx(t, bin, upstream, hostLine); err == nil {
			return px
		}
		if !strings.Contains(err.Error(), "Address already in use") {
			break
		}
	}
	t.Fatal(err)
	return nil
}

func tryNginx(t *testing.T, bin, upstream, hostLine string) (*nginx, error) {
	dir := t.TempDir()
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	px := &nginx{addr: addr, dir: dir}
	user := ""
	if os.Geteuid() == 0 {
		// Workers would otherwise run as nobody, who cannot enter the
		// test's temporary directory.
		user = "user root;\n"
	}
	conf := fmt.Sprintf(`daemon off;
master_process on;
worker_processes 1;
%spid %q;
error_log %q notice;
events {
    worker_connections 64;
}
http {
    access_log %q;
    client_body_temp_path %q;
    proxy_temp_path %q;
    fastcgi_temp_path %q;
    uwsgi_temp_path %q;
    scgi_temp_path %q;
    server {
        listen %s;
%s    }
}
`, user, px.path("nginx.pid"), px.path("error.log"), px.path("access.log"),
		px.path("client_body"), px.path("proxy"), px.path("fastcgi"), px.path("uwsgi"), px.path("scgi"),
		addr, strings.NewReplacer("UPSTREAM", upstream, "HOSTLINE", hostLine).Replace(nginxLocations))
	confPath := px.path("nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return nil, err
	}

	// -e (nginx 1.19.5+) keeps even the messages before the configuration
	// is read out of the system's log.
	cmd := exec.Command(bin, "-p", dir+"/", "-c", confPath, "-e", px.path("error.log"))
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard // everything goes to error.log
	// Its own process group: the workers can be killed with the master if
	// it does not stop by itself.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start nginx: %w", err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	stop := func() {
		select {
		case <-exited:
		default:
			// SIGTERM is nginx's fast shutdown: the master stops its
			// workers and exits once they are gone.
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				t.Errorf("nginx did not stop within 10 s of SIGTERM; killing its process group")
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				<-exited
			}
		}
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("nginx.conf:\n%s\nerror.log:\n%s", conf, px.readLog())
		}
	})

	// Ready when nginx has written its pid file, which it does after binding
	// its port, and the port accepts.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	want := strconv.Itoa(cmd.Process.Pid)
	for {
		if pid, _ := os.ReadFile(px.path("nginx.pid")); strings.TrimSpace(string(pid)) == want {
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", addr)
			if err == nil {
				c.Close()
				return px, nil
			}
		}
		select {
		case <-exited:
			return nil, fmt.Errorf("nginx exited (%v) before accepting on %s:\n%s", waitErr, addr, px.readLog())
		case <-ctx.Done():
			stop()
			return nil, fmt.Errorf("nginx did not accept on %s within 10 s:\n%s", addr, px.readLog())
		case <-tick.C:
		}
	}
}

func (px *nginx) path(name string) string { return filepath.Join(px.dir, name) }

func (px *nginx) readLog() string {
	b, err := os.ReadFile(px.path("error.log"))
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// freeAddr returns a loopback address whose port was free a moment ago.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// errorRecorder is a slog.Handler that keeps the error attributes of the
// records logged through it, for tests to wait on.
type errorRecorder struct {
	mu      sync.Mutex
	errs    []error
	changed chan struct{} // closed and replaced when an error is added
}

func (r *errorRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *errorRecorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *errorRecorder) WithGroup(string) slog.Handler            { return r }

func (r *errorRecorder) Handle(_ context.Context, rec slog.Record) error {
	rec.Attrs(func(a slog.Attr) bool {
		if err, ok := a.Value.Any().(error); ok {
			r.mu.Lock()
			r.errs = append(r.errs, err)
			if r.changed != nil {
				close(r.changed)
				r.changed = nil
			}
			r.mu.Unlock()
		}
		return true
	})
	return nil
}

// wait returns the first recorded error that matches, failing the test after
// 5 s without one.
func (r *errorRecorder) wait(t *testing.T, match func(error) bool) error {
	t.Helper()
	timeout := time.NewTimer(5 * time.Second)
	defer timeout.Stop()
	for {
		r.mu.Lock()
		for _, err := range r.errs {
			if match(err) {
				r.mu.Unlock()
				return err
			}
		}
		if r.changed == nil {
			r.changed = make(chan struct{})
		}
		changed := r.changed
		r.mu.Unlock()
		select {
		case <-changed:
		case <-timeout.C:
			r.mu.Lock()
			defer r.mu.Unlock()
			t.Fatalf("no matching error logged within 5 s; logged: %v", r.errs)
			return nil
		}
	}
}

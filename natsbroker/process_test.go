package natsbroker

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// The nats-server binary the process tests run, built once per test
// binary from the nats-server module in go.mod (its main package is at
// the module root) into a directory that TestMain removes.
var serverBin struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// natsBinary builds the nats-server binary on first use and returns its
// path.
func natsBinary(t testing.TB) string {
	t.Helper()
	serverBin.once.Do(func() {
		serverBin.dir, serverBin.err = os.MkdirTemp("", "natsbroker-test-")
		if serverBin.err != nil {
			return
		}
		goCmd, err := exec.LookPath("go")
		if err != nil {
			goCmd = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		serverBin.path = filepath.Join(serverBin.dir, "nats-server")
		cmd := exec.Command(goCmd, "build", "-o", serverBin.path, "github.com/nats-io/nats-server/v2")
		if out, err := cmd.CombinedOutput(); err != nil {
			serverBin.err = fmt.Errorf("building nats-server: %v\n%s", err, out)
		}
	})
	if serverBin.err != nil {
		t.Fatal(serverBin.err)
	}
	return serverBin.path
}

// removeBinary removes what natsBinary built (TestMain).
func removeBinary() {
	if serverBin.dir != "" {
		os.RemoveAll(serverBin.dir)
	}
}

// natsProc is a nats-server child process with JetStream on a fixed port
// and store directory, which the test kills (SIGKILL), restarts, freezes
// (SIGSTOP) and thaws (SIGCONT).
type natsProc struct {
	t    testing.TB
	port int
	dir  string // the JetStream store directory, kept across restarts
	conf string // the configuration file
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
	out  *lockedBuffer // the server's output, for failures
	mu   sync.Mutex
}

// lockedBuffer is a bytes.Buffer written by the process's output copier
// and read by the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startNATSProc starts a nats-server process with JetStream on a free
// port, its store in a fresh directory. syncAlways makes JetStream write
// and fsync each entry before acknowledging it (sync_interval: always),
// so that what a client was told is stored survives SIGKILL. The process
// is killed when the test ends, frozen or not.
func startNATSProc(t testing.TB, syncAlways bool) *natsProc {
	t.Helper()
	bin := natsBinary(t)
	dir := t.TempDir()
	p := &natsProc{t: t, dir: filepath.Join(dir, "store"), conf: filepath.Join(dir, "nats.conf")}
	js := fmt.Sprintf("jetstream {\n  store_dir: %q\n", p.dir)
	if syncAlways {
		js += "  sync_interval: always\n"
	}
	js += "}\n"
	if err := os.WriteFile(p.conf, []byte(js), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.stop)
	// A free port may be taken by another process before the server
	// listens on it: then try another.
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		p.port = freePort(t)
		if err = p.tryStart(bin); err == nil {
			return p
		}
	}
	t.Fatal(err)
	return nil
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (p *natsProc) url() string  { return "nats://" + p.addr() }
func (p *natsProc) addr() string { return "127.0.0.1:" + strconv.Itoa(p.port) }

// tryStart starts the process on p.port and returns once a plain client's
// PING is answered (10 s at most).
func (p *natsProc) tryStart(bin string) error {
	p.out = new(lockedBuffer)
	cmd := exec.Command(bin, "-c", p.conf, "-a", "127.0.0.1", "-p", strconv.Itoa(p.port), "-js")
	cmd.Stdout, cmd.Stderr = p.out, p.out
	cmd.SysProcAttr = procAttr() // killed with the test binary, if that dies first
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	p.mu.Lock()
	p.cmd, p.done = cmd, done
	p.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := p.ping(time.Second)
		if err == nil {
			return nil
		}
		select {
		case <-done:
			p.mu.Lock()
			p.cmd = nil
			p.mu.Unlock()
			return fmt.Errorf("nats-server exited at start: %v\n%s", err, p.out)
		default:
		}
		if time.Now().After(deadline) {
			p.stop()
			return fmt.Errorf("nats-server does not answer a PING: %v\n%s", err, p.out)
		}
		time.Sleep(10 * time.Millisecond) // polling a starting process: no event to wait for
	}
}

// ping connects a plain client and waits for the answer to its PING.
func (p *natsProc) ping(d time.Duration) error {
	nc, err := nats.Connect(p.url(), nats.Timeout(d), nats.NoReconnect())
	if err != nil {
		return err
	}
	defer nc.Close()
	return nc.FlushTimeout(d)
}

// kill stops the process with SIGKILL and waits until it has exited.
func (p *natsProc) kill() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// stop kills the process (t.Cleanup); SIGKILL ends a frozen one too.
func (p *natsProc) stop() { p.kill() }

// restart starts the process again on the same port and store directory.
func (p *natsProc) restart(t testing.TB) {
	t.Helper()
	if err := p.tryStart(natsBinary(t)); err != nil {
		t.Fatal(err)
	}
}

// freeze stops the process with SIGSTOP.
func (p *natsProc) freeze(t testing.TB) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		t.Fatal("freeze: nats-server is not running")
	}
	if err := p.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
}

// thaw resumes the process with SIGCONT and returns once a plain client's
// PING is answered.
func (p *natsProc) thaw(t testing.TB) {
	t.Helper()
	p.mu.Lock()
	if p.cmd == nil {
		p.mu.Unlock()
		t.Fatal("thaw: nats-server is not running")
	}
	err := p.cmd.Process.Signal(syscall.SIGCONT)
	p.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := p.ping(time.Second)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nats-server does not answer a PING after SIGCONT: %v", err)
		}
	}
}

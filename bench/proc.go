package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// errNoSuchUser is returned by a publish to a user that is not registered.
var errNoSuchUser = errors.New("no such user")

// serverProc is a server subprocess (this binary with -role server).
type serverProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	addr  string
	tr    *http.Transport
	http  *http.Client
	once  sync.Once
}

// startServer starts the server for lib and workload and waits for its
// listen address. env adds variables to the server's environment (the
// broker URL of a cluster node).
func startServer(lib, workload string, env ...string) (*serverProc, error) {
	return startRole(append([]string{"BENCH_ROLE=server", "BENCH_LIB=" + lib, "BENCH_WORKLOAD=" + workload}, env...), lib)
}

// startRole starts this binary in the role given by env (BENCH_ROLE=...)
// and waits, at most 30 s, for the "LISTEN <addr>" line on its stdout.
func startRole(env []string, name string) (*serverProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	// The role is passed in the environment so that a test binary (see
	// TestMain) can serve as well as the command.
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	lines := make(chan string, 1)
	go func() {
		br := bufio.NewReader(stdout)
		line, _ := br.ReadString('\n')
		lines <- line
		_, _ = io.Copy(io.Discard, br)
	}()
	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	var line string
	select {
	case line = <-lines:
	case <-timer.C:
	}
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "LISTEN ")
	if !ok {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("server %s did not start (got %q)", name, line)
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 1024, DisableCompression: true}
	return &serverProc{cmd: cmd, stdin: stdin, addr: addr, tr: tr,
		http: &http.Client{Transport: tr, Timeout: 60 * time.Second}}, nil
}

// ctl calls a control endpoint and returns its body.
func (s *serverProc) ctl(pathAndQuery string) ([]byte, error) {
	resp, err := s.http.Get("http://" + s.addr + pathAndQuery)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s: %s", pathAndQuery, resp.Status, b)
	}
	return b, nil
}

// publish asks the server to publish n payloads starting at seq to ch.
func (s *serverProc) publish(ch string, kind byte, seq int64, n, size int) error {
	_, err := s.ctl(fmt.Sprintf("/ctl/publish?ch=%s&kind=%c&seq=%d&n=%d&size=%d", ch, kind, seq, n, size))
	return err
}

// stats fetches the server's memory figures, after a GC when gc is set.
func (s *serverProc) stats(gc bool) (serverStats, error) {
	var st serverStats
	q := "/ctl/stats"
	if gc {
		q += "?gc=1"
	}
	b, err := s.ctl(q)
	if err != nil {
		return st, err
	}
	err = json.Unmarshal(b, &st)
	return st, err
}

// cpu returns the user+system CPU time consumed by the server so far.
func (s *serverProc) cpu() time.Duration { return procCPU(s.cmd.Process.Pid) }

// procCPU returns the user+system CPU time consumed by process pid so far.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ is 100 on Linux
}

// stop kills the server (its connections are no longer needed) and waits
// for it to exit. Killing the server before closing the clients leaves the
// TIME_WAIT sockets on the server side. stop is idempotent.
func (s *serverProc) stop() {
	s.once.Do(func() {
		_ = s.stdin.Close()
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
		s.tr.CloseIdleConnections()
	})
}

// selfCPU returns the CPU time consumed by this (client/driver) process.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// machineBusy returns the CPU time all processors spent busy so far (every
// /proc/stat "cpu" column except idle and iowait).
func machineBusy() time.Duration {
	for _, line := range strings.SplitN(readFile("/proc/stat"), "\n", 2)[:1] {
		f := strings.Fields(line)
		if len(f) < 8 || f[0] != "cpu" {
			return 0
		}
		var busy int64
		for i, v := range f[1:] {
			if i == 3 || i == 4 || i >= 8 { // idle, iowait, guest (already in user)
				continue
			}
			n, _ := strconv.ParseInt(v, 10, 64)
			busy += n
		}
		return time.Duration(busy) * time.Second / 100
	}
	return 0
}

// procIO returns the read and write system call counts (syscr, syscw) of
// /proc/<pid>/io; pid "self" is this process.
func procIO(pid string) (syscr, syscw int64) {
	for _, line := range strings.Split(readFile("/proc/"+pid+"/io"), "\n") {
		k, v, ok := strings.Cut(line, ": ")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		switch k {
		case "syscr":
			syscr = n
		case "syscw":
			syscw = n
		}
	}
	return
}

// serverSet is the server side of a measurement: one server process, or
// the chart nodes of a cluster and their broker process. Business-code
// publishes go to the first process; the CPU of every process is measured.
type serverSet struct {
	procs  []*serverProc
	broker int // pid of the broker process (redis-server, nats), 0 for none
}

// single returns the set of one server process.
func single(srv *serverProc) serverSet { return serverSet{procs: []*serverProc{srv}} }

// cpuMeter measures server, broker, client and other CPU over an interval,
// and the servers' write and the client's read system calls.
type cpuMeter struct {
	set                         serverSet
	s0, b0, c0, m0              time.Duration
	sw0, cr0                    int64
	start                       time.Time
	server, broker, clnt, other float64 // cores used on average, set by stop
	srvWrites, cliReads         int64   // system calls during the interval, set by stop
}

// startCPU begins measuring one server process.
func startCPU(srv *serverProc) *cpuMeter { return single(srv).startCPU() }

// serverCPU returns the CPU time and write system calls of the servers.
func (set serverSet) serverCPU() (cpu time.Duration, writes int64) {
	for _, p := range set.procs {
		_, w := procIO(strconv.Itoa(p.cmd.Process.Pid))
		cpu, writes = cpu+p.cpu(), writes+w
	}
	return
}

// brokerCPU returns the CPU time of the broker process, 0 without one.
func (set serverSet) brokerCPU() time.Duration {
	if set.broker == 0 {
		return 0
	}
	return procCPU(set.broker)
}

// startCPU begins measuring the set.
func (set serverSet) startCPU() *cpuMeter {
	m := &cpuMeter{set: set, b0: set.brokerCPU(), c0: selfCPU(), m0: machineBusy(), start: time.Now()}
	m.s0, m.sw0 = set.serverCPU()
	m.cr0, _ = procIO("self")
	return m
}

// stop ends the measurement. other is the machine's busy time not spent by
// the servers, the broker or the client process (other processes, and
// kernel work not charged to any): a high value means the figures are
// disturbed.
func (m *cpuMeter) stop() {
	el := time.Since(m.start).Seconds()
	if el <= 0 {
		return
	}
	s, sw := m.set.serverCPU()
	m.server = (s - m.s0).Seconds() / el
	m.broker = (m.set.brokerCPU() - m.b0).Seconds() / el
	m.clnt = (selfCPU() - m.c0).Seconds() / el
	cr, _ := procIO("self")
	m.srvWrites, m.cliReads = sw-m.sw0, cr-m.cr0
	m.other = (machineBusy()-m.m0).Seconds()/el - m.server - m.broker - m.clnt
	if m.other < 0 {
		m.other = 0
	}
}

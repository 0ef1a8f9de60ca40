package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// brokerProc is the broker server of one cluster measurement: a
// redis-server, or this binary in the "nats" role (an embedded nats-server
// with JetStream), each a separate process on a loopback port so that its
// CPU is measured apart from the nodes and the clients. Every measurement
// gets a fresh one, so no presence is left over from the previous one.
type brokerProc struct {
	kind string // "redis" or "nats"
	url  string
	pid  int
	stop func()
}

// errNoRedis is returned by startBroker when redis-server is not installed.
var errNoRedis = fmt.Errorf("redis-server is not installed (apt-get install -y redis-server)")

// startBroker starts a broker server of kind "redis" or "nats".
func startBroker(kind string) (*brokerProc, error) {
	switch kind {
	case "redis":
		return startRedis()
	case "nats":
		dir, err := os.MkdirTemp("", "bench-nats-")
		if err != nil {
			return nil, err
		}
		p, err := startRole([]string{"BENCH_ROLE=nats", "BENCH_NATS_DIR=" + dir}, "nats")
		if err != nil {
			_ = os.RemoveAll(dir)
			return nil, err
		}
		return &brokerProc{kind: kind, url: "nats://" + p.addr, pid: p.cmd.Process.Pid,
			stop: func() { p.stop(); _ = os.RemoveAll(dir) }}, nil
	}
	return nil, fmt.Errorf("unknown broker %q", kind)
}

// startRedis starts redis-server on a free loopback port, without
// persistence, and waits (at most 10 s) for it to log that it accepts
// connections.
func startRedis() (*brokerProc, error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		return nil, errNoRedis
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "notice")
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	stop := func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		found := false
		for sc.Scan() {
			if !found && strings.Contains(sc.Text(), "Ready to accept connections") {
				found = true
				ready <- true
			}
		}
		if !found {
			ready <- false
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	timer := time.NewTimer(10 * time.Second)
	defer timer.Stop()
	select {
	case ok := <-ready:
		if ok {
			return &brokerProc{kind: "redis", url: fmt.Sprintf("redis://127.0.0.1:%d", port), pid: cmd.Process.Pid, stop: stop}, nil
		}
	case <-timer.C:
	}
	stop()
	return nil, fmt.Errorf("redis-server on port %d did not start", port)
}

// redisVersion returns the version line of the installed redis-server.
func redisVersion() string {
	out, err := exec.Command("redis-server", "--version").Output()
	if err != nil {
		return "not installed"
	}
	return strings.TrimSpace(string(out))
}

// natsMain is the "nats" role: an embedded nats-server with JetStream
// (store in BENCH_NATS_DIR) on a loopback port. It prints "LISTEN <addr>"
// and exits when its standard input is closed.
func natsMain() {
	opts := &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true,
		StoreDir: os.Getenv("BENCH_NATS_DIR"), NoLog: true, NoSigs: true}
	s, err := server.NewServer(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "nats:", err)
		os.Exit(1)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		fmt.Fprintln(os.Stderr, "nats: server did not start")
		os.Exit(1)
	}
	fmt.Printf("LISTEN %s\n", s.Addr())
	_, _ = io.Copy(io.Discard, os.Stdin)
	s.Shutdown()
	os.Exit(0)
}

// natsVersion returns the version of the embedded nats-server.
func natsVersion() string { return "nats-server " + server.VERSION + " (embedded, JetStream)" }

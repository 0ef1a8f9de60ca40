package natsbroker

import "syscall"

// procAttr kills the nats-server child with SIGKILL when the test binary
// dies (a -timeout panic), so that no server outlives go test.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

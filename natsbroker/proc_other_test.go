//go:build !linux

package natsbroker

import "syscall"

// procAttr: no parent-death signal outside Linux; t.Cleanup kills the
// nats-server child.
func procAttr() *syscall.SysProcAttr { return nil }

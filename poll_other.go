//go:build !linux

package chart

import (
	"errors"
	"net"
)

// Elsewhere than on Linux, every connection keeps a read goroutine, with
// gorilla's reader (read.go, readLoop).

var errNoPoller = errors.New("chart: no poller on this platform")

func pollable(net.Conn) bool  { return false }
func pollAdd(*Conn) error     { return errNoPoller }
func pollReadable(*Conn) bool { return true }
func pollRemove(*Conn)        {}

package chart

import (
	"sync"
	"sync/atomic"
	"time"
)

// Pauses. A node that was stopped for a while (SIGSTOP, a VM migration, a
// stalled host) finds on resuming the frames its clients sent during the
// whole pause waiting in the kernel, and reads them in one burst: judged
// by the rate limit, honest clients would be refused and then closed for
// flooding. A watchdog timer, armed while the hub has connections, ticks
// every pauseTick; a tick overdue by more than pauseMin means the process
// did not run. For as long as the pause lasted (at most pauseGrace) after
// it, a message over the rate limit is accepted instead of refused. The
// backlog is what the clients sent in the pause, so this gives a hostile
// client nothing it could not have sent at the rate limit, unless it can
// pause the server.

const (
	pauseTick  = time.Second
	pauseMin   = 2 * time.Second
	pauseGrace = time.Minute
)

// pauses is a hub's watchdog. Times are on the monotonic clock, as
// durations since start.
type pauses struct {
	start time.Time // set by New
	armed atomic.Bool
	mu    sync.Mutex
	timer *time.Timer // armed while the hub has connections
	due   atomic.Int64
	grace atomic.Int64 // the end of the grace after the last pause
}

func (p *pauses) now() int64 { return int64(time.Since(p.start)) }

// watchPauses arms the watchdog if it is not; register calls it.
func (h *Hub) watchPauses() {
	p := &h.pauses
	if p.armed.Load() {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.timer != nil || h.closed.Load() {
		return
	}
	p.due.Store(p.now() + int64(pauseTick))
	p.timer = time.AfterFunc(pauseTick, h.pauseTick)
	p.armed.Store(true)
}

// pauseTick notes a pause and re-arms the watchdog while connections
// remain.
func (h *Hub) pauseTick() {
	p := &h.pauses
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	if late := now - p.due.Load(); late > int64(pauseMin) {
		p.grace.Store(now + min(late, int64(pauseGrace)))
	}
	if h.stats.conns.Load() == 0 {
		p.armed.Store(false)
		// A connection registered since the load above saw armed set.
		if h.stats.conns.Load() == 0 {
			p.timer = nil
			return
		}
		p.armed.Store(true)
	}
	if h.closed.Load() {
		p.timer = nil
		return
	}
	p.due.Store(now + int64(pauseTick))
	p.timer.Reset(pauseTick)
}

// resumed reports whether the process was paused recently, or is just
// resuming from a pause (the watchdog's tick is overdue but has not run
// yet: the readers may wake before it).
func (h *Hub) resumed() bool {
	p := &h.pauses
	now := p.now()
	return now < p.grace.Load() || p.armed.Load() && now-p.due.Load() > int64(pauseMin)
}

// stopPauses stops the watchdog; the hub is closing.
func (h *Hub) stopPauses() {
	p := &h.pauses
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.timer != nil {
		p.timer.Stop()
		p.timer = nil
	}
	p.armed.Store(false)
}

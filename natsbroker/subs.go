package natsbroker

import (
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// Subscriptions. Every call into the NATS client takes the connection's
// lock, which the client holds for seconds at a time while the server
// does not answer: while it dials and waits for the server's INFO at each
// reconnect attempt (up to the client's connect timeout, 2 s by default),
// and while its flusher waits for room in a full socket. So Subscribe and
// Unsubscribe, which the hub calls for every connection that opens or
// closes, make no such call on their caller's goroutine: they record the
// interest, and one goroutine (subscriber) brings the client's
// subscriptions to it, then sends a PING to learn that the server has
// them. A caller waits for that at most subscribeWait; while the broker
// knows the connection is down it does not wait at all. Either way the
// interest stays recorded, and the subscriber applies it when the client
// lets it: the client resubscribes by itself after reconnecting.
type subscriptions struct {
	mu      sync.Mutex
	want    map[string]bool // subject -> wanted, not yet applied
	asked   uint64          // requests made
	done    uint64          // requests applied and confirmed (or failed)
	err     error           // the outcome of the round that ended at done
	changed chan struct{}   // closed when done moves
	kick    chan struct{}
	subs    map[string]*nats.Subscription // the subscriber's own
}

func newSubscriptions() *subscriptions {
	return &subscriptions{want: make(map[string]bool), changed: make(chan struct{}),
		kick: make(chan struct{}, 1), subs: make(map[string]*nats.Subscription)}
}

// subscribe records that subj is (on) or is not wanted and waits, at
// most subscribeWait and not at all while the connection is known to be
// down, until the server has the change: messages published after it
// returns nil are received.
func (b *Broker) subscribe(subj string, on bool) error {
	s := b.sub
	s.mu.Lock()
	s.want[subj] = on
	s.asked++
	mine := s.asked
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
	if b.owned && b.down.Load() { // not connected(): it may take the client's lock
		return errDisconnected
	}
	timer := time.NewTimer(min(b.opt.Timeout, subscribeWait))
	defer timer.Stop()
	for {
		s.mu.Lock()
		if s.done >= mine {
			err := s.err
			s.mu.Unlock()
			return err
		}
		changed := s.changed
		s.mu.Unlock()
		select {
		case <-changed:
		case <-timer.C:
			return nats.ErrTimeout
		case <-b.closed:
			return errClosed
		}
	}
}

// subscriber applies the recorded interest, in rounds: it takes what was
// asked since the last round, (un)subscribes, and sends one PING for all
// of it.
func (b *Broker) subscriber() {
	defer b.wg.Done()
	s := b.sub
	for {
		select {
		case <-b.closed:
			return
		case <-s.kick:
		}
		s.mu.Lock()
		want, upTo := s.want, s.asked
		s.want = make(map[string]bool)
		s.mu.Unlock()
		var err error
		for subj, on := range want {
			sub, have := s.subs[subj]
			switch {
			case on && !have:
				sub, e := b.nc.ChanSubscribe(subj, b.msgs)
				if e != nil {
					// Not recorded by the client (a closed connection):
					// asked again with the next change.
					err = e
					s.mu.Lock()
					if _, again := s.want[subj]; !again {
						s.want[subj] = true
					}
					s.mu.Unlock()
					continue
				}
				s.subs[subj] = sub
			case !on && have:
				delete(s.subs, subj)
				sub.Unsubscribe()
			}
		}
		if err == nil {
			if b.connected() {
				err = b.nc.FlushTimeout(min(b.opt.Timeout, subscribeWait))
			} else {
				err = errDisconnected
			}
		}
		s.mu.Lock()
		s.done, s.err = upTo, err
		close(s.changed)
		s.changed = make(chan struct{})
		s.mu.Unlock()
	}
}

// unsubscribeAll drops every subscription (Close, once subscriber has
// stopped).
func (b *Broker) unsubscribeAll() {
	for subj, sub := range b.sub.subs {
		sub.Unsubscribe()
		delete(b.sub.subs, subj)
	}
}

// subscribeWait bounds how long Subscribe and Unsubscribe wait for the
// server to confirm: the hub calls them on its callers' goroutines (a
// join) and for every connection that opens or closes, so a server that
// stopped answering must not hold them for Options.Timeout. Past it they
// fail; the subscription stays, and takes effect once the server answers
// (or is made again on the next connection).
const subscribeWait = 100 * time.Millisecond

package natsbroker

import (
	"context"
	"strconv"
	"sync"

	"github.com/nats-io/nats.go"
)

// replies lets AppendBatch send many requests at once and wait for all
// their answers: one subscription on a wildcard inbox, INBOX.*, and a token
// per request. A request whose caller gave up is forgotten, so that its
// late answer is dropped.
type replies struct {
	prefix string // INBOX.
	sub    *nats.Subscription

	mu      sync.Mutex
	next    uint64
	waiting map[string]replyTo
}

// replyTo is where a request's answer goes: i on ch.
type replyTo struct {
	ch chan<- answer
	i  int
}

// answer is the answer to request i of a call.
type answer struct {
	i int
	m *nats.Msg
}

func newReplies(nc *nats.Conn) (*replies, error) {
	r := &replies{prefix: nc.NewInbox() + ".", waiting: make(map[string]replyTo)}
	sub, err := nc.Subscribe(r.prefix+"*", r.deliver)
	if err != nil {
		return nil, err
	}
	r.sub = sub
	return r, nil
}

func (r *replies) deliver(m *nats.Msg) {
	token := m.Subject[len(r.prefix):]
	r.mu.Lock()
	to, ok := r.waiting[token]
	delete(r.waiting, token)
	r.mu.Unlock()
	if ok {
		to.ch <- answer{to.i, m} // ch has room for every request of its call
	}
}

// calls is one round of requests in flight: their answers arrive on ch,
// which has room for all of them. A round's calls are not reused, so that
// no late answer of an earlier round is taken for one of this round.
type calls struct {
	r      *replies
	ch     chan answer
	tokens []string
	open   int // requests not answered yet
}

func (r *replies) calls(n int) *calls {
	return &calls{r: r, ch: make(chan answer, n)}
}

// reply returns the reply subject of request i.
func (c *calls) reply(i int) string {
	c.r.mu.Lock()
	c.r.next++
	token := strconv.FormatUint(c.r.next, 36)
	c.r.waiting[token] = replyTo{c.ch, i}
	c.r.mu.Unlock()
	c.tokens = append(c.tokens, token)
	c.open++
	return c.r.prefix + token
}

// cancel forgets the reply subject reply returned last, when its request
// could not be sent.
func (c *calls) cancel() {
	token := c.tokens[len(c.tokens)-1]
	c.tokens = c.tokens[:len(c.tokens)-1]
	c.r.mu.Lock()
	delete(c.r.waiting, token)
	c.r.mu.Unlock()
	c.open--
}

// wait calls got for each answer until all came, or ctx ends: then it
// returns ctx's error, and the requests not answered are forgotten.
func (c *calls) wait(ctx context.Context, got func(i int, m *nats.Msg)) error {
	defer c.forget()
	for ; c.open > 0; c.open-- {
		select {
		case a := <-c.ch:
			got(a.i, a.m)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// forget drops the round's tokens, answered or not.
func (c *calls) forget() {
	c.r.mu.Lock()
	for _, t := range c.tokens {
		delete(c.r.waiting, t)
	}
	c.r.mu.Unlock()
	c.tokens = nil
}
